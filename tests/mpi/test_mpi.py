#!/usr/bin/env python3
"""Multi-rank checks of `bitnet train` under mpirun -np 2 --oversubscribe (run by ctest).

1. Equivalence: 2 ranks x micro-batch 4 equal 1 rank x micro-batch 8 (same global batch): identical
   first-step loss, loss trajectory within float-reduction tolerance, parameters after one step
   within fp32 rounding (Adam normalises gradients, so this bounds the gradient difference).
2. Resume on another world size: a checkpoint of 2 ranks resumed on 1 (and of 1 rank on 2) trains
   on exactly the samples of the uninterrupted run (per-sample traces of every rank), with its loss
   trajectory and final parameters to float-reduction tolerance.
3. ZeRO-1 (training.zero1) on 2 ranks equals the unsharded run bit for bit (parameters, moments,
   losses, gradient norms) with half the optimizer state per rank; its checkpoints resume without
   ZeRO-1 on 1 rank (bit-identical to resuming the unsharded checkpoint) and with it on 2 ranks.
4. Ranks started with different configs or different data are detected at start with a clear message.
5. A rank killed with SIGKILL ends the whole job within seconds, with a message naming it, and the
   last checkpoint loads (the run resumes from it on 1 rank).
6. `bitnet sweep` under mpirun: each run trains on both ranks, equal to `bitnet train` on 2 ranks.
Usage: test_mpi.py BITNET_BINARY SOURCE_DIR
"""
import glob
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

BIN, SRC = sys.argv[1], sys.argv[2]
CFG = os.path.join(SRC, "configs", "tiny.yaml")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
MPI = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def shard(path, n, seed):
    r = np.random.default_rng(seed)
    toks, cur = [], 1
    for u, v in zip(r.random(n), r.integers(0, 256, n)):
        cur = (cur * 37 + 11) % 256 if u < 0.9 else int(v)
        toks.append(cur)
    with open(path, "wb") as f:
        f.write(b"BNTOKSH\0" + struct.pack("<IIQQ", 1, 2, n, 256) + struct.pack(f"<{n}H", *toks))


def losses(run):
    return [json.loads(l)["loss"] for l in open(os.path.join(run, "metrics.jsonl")) if '"loss"' in l]


def read_st(path, moments=False):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    h.pop("__metadata__", None)
    return {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4")
            for k, v in h.items() if v["dtype"] == "F32" and moments == k.startswith("optim.")}


def max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def bit_identical(a, b):
    return sorted(a) == sorted(b) and all(np.array_equal(a[k].view("<u4"), b[k].view("<u4")) for k in a)


def metrics(run, keys=("loss", "grad_norm", "lr", "tokens")):
    return [tuple(j[k] for k in keys) for j in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "loss" in j]


def state_bytes(out):
    """Bytes of AdamW moments per rank, from the start-up line of a multi-rank run."""
    line = next((l for l in out.splitlines() if l.startswith("optimizer state per rank:")), "")
    return [int(x) for x in line.split(":")[1].split("bytes")[0].split(",")] if line else []


def trace(prefix, ranks):
    """sample index -> (window, rank) over every rank's trace file; fails on a sample seen twice."""
    seen, dup = {}, []
    for r in range(ranks):
        for line in open(f"{prefix}.rank{r}"):
            i, w = map(int, line.split())
            if i in seen:
                dup.append(i)
            seen[i] = (w, r)
    return seen, dup


tmp = tempfile.mkdtemp(prefix="bitnet_mpi_")
shard(f"{tmp}/train.bin", 60000, 1)
shard(f"{tmp}/val.bin", 6000, 2)
base = ["--set", f"data.train={tmp}/train.bin", "--set", f"data.val={tmp}/val.bin", "--set", "training.eval_every=0", "--set", "schedule.warmup=0",
        "--quiet"]


def train(launcher, out, steps, extra=(), quiet=True):
    cmd = launcher + [BIN, "train", CFG, *(base if quiet else base[:-1]), "--set", f"training.steps={steps}",
                      "--set", f"training.out_dir={tmp}/{out}", *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)

# 1. equivalence (the 20-step runs also write checkpoints at step 10 and traces for 2.)
G, T = 8, 20  # global batch (sequences per step), steps
for steps in (1, 20):
    extra = ["--set", "checkpoint.every=10"] if steps == T else []
    r1 = train([], f"one_{steps}", steps, extra + (["--trace-samples", f"{tmp}/trace_one"] if steps == T else []))
    r2 = train(MPI, f"two_{steps}", steps, extra + ["--set", "data.micro_batch=4"] +
               (["--trace-samples", f"{tmp}/trace_two"] if steps == T else []), quiet=steps != T)
    check(r1.returncode == 0 and r2.returncode == 0, f"{steps}-step runs succeed (1 rank: {r1.returncode}, 2 ranks: {r2.returncode})"
          + ("" if r2.returncode == 0 else "\n" + r2.stderr[-2000:]))
    if r1.returncode or r2.returncode:
        continue
    a, b = losses(f"{tmp}/one_{steps}"), losses(f"{tmp}/two_{steps}")
    check(len(a) == len(b) == steps, f"{steps} loss lines on both")
    check(abs(a[0] - b[0]) <= 1e-6 * abs(a[0]), f"first-step loss equal: {a[0]:.7f} vs {b[0]:.7f}")
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    check(worst < 2e-3, f"{steps}-step loss trajectory within 2e-3 relative (max {worst:.2e})")
    if steps == 1:
        # The gradient norm is the direct gradient check (Adam's update is scale-invariant, so the
        # parameters alone would not notice a missing 1/N). After one Adam step each parameter moves
        # by lr * g / (|g| + eps): identical to fp32 rounding except where |g| is near eps, where
        # the reduction order may move it by up to lr — a handful of the 107K elements.
        ((g1,),), ((g2,),) = metrics(f"{tmp}/one_1", ("grad_norm",)), metrics(f"{tmp}/two_1", ("grad_norm",))
        check(abs(g1 - g2) <= 1e-6 * g1, f"gradient norm after all-reduce equal: {g1:.9f} vs {g2:.9f}")
        p1, p2 = read_st(f"{tmp}/one_1/model.safetensors"), read_st(f"{tmp}/two_1/model.safetensors")
        diffs = np.concatenate([np.abs(p1[k] - p2[k]) for k in p1])
        off = int(np.sum(diffs > 1e-6))
        check(off <= 1e-4 * diffs.size and diffs.max() <= 3e-3,
              f"parameters after one step agree: {off} of {diffs.size} differ by > 1e-6 (max {diffs.max():.2e} <= lr = 3e-3)")

one_p = read_st(f"{tmp}/one_{T}/model.safetensors")
drift = max_diff(one_p, read_st(f"{tmp}/two_{T}/model.safetensors"))  # 2 ranks vs 1 after T steps: reduction order only
print(f"     (2-rank vs 1-rank parameter drift after {T} steps: {drift:.2e})")
one_tr, dup = trace(f"{tmp}/trace_one", 1)
check(sorted(one_tr) == list(range(T * G)) and not dup, f"1-rank trace: samples 0..{T * G - 1} once each")
two_tr, dup = trace(f"{tmp}/trace_two", 2)
check(sorted(two_tr) == list(range(T * G)) and not dup and all(two_tr[i][0] == one_tr[i][0] for i in two_tr) and
      all(two_tr[i][1] == (i % G) // 4 for i in two_tr),
      "2-rank trace: the same samples and windows, rank r taking rows 4r..4r+3 of each batch")

# 2. resume on another world size: 2 ranks -> 1 rank, and 1 rank -> 2 ranks, from the step-10 checkpoints
for src, launcher, name, extra in ((f"two_{T}", [], "resumed_2to1", []),
                                   (f"one_{T}", MPI, "resumed_1to2", ["--set", "data.micro_batch=4"])):
    ck = f"{tmp}/{src}/checkpoints/step-000000010.h5"
    r = train(launcher, name, T, extra + ["--resume", ck, "--trace-samples", f"{tmp}/trace_{name}"])
    check(r.returncode == 0, f"{name}: resume of {src}'s step-10 checkpoint succeeds" + ("" if r.returncode == 0 else "\n" + r.stderr[-2000:]))
    if r.returncode:
        continue
    check("re-sharded from sample 80 on" in r.stderr, f"{name}: the resume notes the re-sharding: " +
          next((l for l in r.stderr.splitlines() if "re-sharded" in l), "(no note)")[:200])
    ranks = 1 if not launcher else 2
    tr, dup = trace(f"{tmp}/trace_{name}", ranks)
    check(sorted(tr) == list(range(10 * G, T * G)) and not dup and all(tr[i][0] == one_tr[i][0] for i in tr),
          f"{name}: trains on samples {10 * G}..{T * G - 1} exactly once each, the uninterrupted run's windows "
          f"({len(tr)} samples, {len(dup)} repeated)")
    a, b = metrics(f"{tmp}/one_{T}"), metrics(f"{tmp}/{name}")
    check(len(b) == T and [x[2:] for x in a] == [x[2:] for x in b], f"{name}: {T} metric lines, same LR and token counts")
    worst = max(abs(x[0] - y[0]) / abs(x[0]) for x, y in zip(a, b))
    check(worst < 2e-3, f"{name}: loss trajectory within 2e-3 relative of the uninterrupted run (max {worst:.2e})")
    d = max_diff(one_p, read_st(f"{tmp}/{name}/model.safetensors"))
    check(d < max(4 * drift, 1e-5), f"{name}: final parameters within float-reduction drift of the uninterrupted run "
          f"(max |diff| {d:.2e}, 2-rank drift {drift:.2e})")

# 3 ranks (uneven slices, cut inside the gradient buckets): ZeRO-1 equals the unsharded run
MPI3 = ["mpirun", "-np", "3", "--oversubscribe", "--bind-to", "none"]
runs3 = [train(MPI3, f"three_{z}", 10, ["--set", "data.micro_batch=2", "--set", f"training.zero1={z}"], quiet=False)
         for z in ("false", "true")]
check(all(r.returncode == 0 for r in runs3), "3-rank runs with and without ZeRO-1 succeed" +
      "".join("\n" + r.stderr[-1500:] for r in runs3 if r.returncode))
if all(r.returncode == 0 for r in runs3):
    full3 = 2 * 4 * sum(v.size for v in one_p.values())
    zb = state_bytes(runs3[1].stdout)
    check(len(zb) == 3 and sum(zb) == full3 and max(zb) <= full3 // 3 + full3 // 64,
          f"ZeRO-1 on 3 ranks: {zb} bytes of moments per rank, together {full3} (cut by 3)")
    a3, b3 = read_st(f"{tmp}/three_false/model.safetensors"), read_st(f"{tmp}/three_true/model.safetensors")
    am, bm = read_st(f"{tmp}/three_false/model.safetensors", True), read_st(f"{tmp}/three_true/model.safetensors", True)
    worst = max(abs(x[0] - y[0]) / abs(x[0]) for x, y in zip(metrics(f"{tmp}/three_false"), metrics(f"{tmp}/three_true")))
    d3 = max(max_diff(a3, b3), max_diff(am, bm))
    # 3-way sums may be ordered differently by MPI_Allreduce and MPI_Reduce_scatter: float tolerance
    check(worst < 1e-5 and d3 < 1e-4, f"ZeRO-1 on 3 ranks equals the unsharded run (loss {worst:.1e} relative, "
          f"parameters and moments {d3:.1e}; bit-identical: {bit_identical(a3, b3) and bit_identical(am, bm)})")

# another global batch is refused by rank 0 (the only rank that reads the checkpoint) and ends the job
t0 = time.time()
r = train(MPI, "resumed_bad", T, ["--set", "data.micro_batch=2", "--resume", f"{tmp}/two_{T}/checkpoints/step-000000010.h5"])
msg = r.stdout + r.stderr
check(r.returncode != 0 and "global batch (data.micro_batch x data.grad_accum x ranks): checkpoint 4 x 1 x 2 = 8, this run 2 x 1 x 2 = 4" in msg,
      f"a resume with another global batch is refused in {time.time() - t0:.1f} s: " +
      next((l.strip() for l in msg.splitlines() if "global batch" in l), "(no message)")[:200])

# 3. ZeRO-1: bit-identical to the unsharded 2-rank run, half the optimizer state per rank
z = train(MPI, "zero1", T, ["--set", "data.micro_batch=4", "--set", "checkpoint.every=10", "--set", "training.zero1=true"], quiet=False)
check(z.returncode == 0, "ZeRO-1 run succeeds" + ("" if z.returncode == 0 else "\n" + z.stderr[-2000:]))
if z.returncode == 0:
    full = 2 * 4 * sum(v.size for v in one_p.values())  # bytes of both moments, unsharded
    zb, db = state_bytes(z.stdout), state_bytes(r2.stdout)
    check(db == [full, full], f"unsharded: every rank holds {full} bytes of moments ({db})")
    check(len(zb) == 2 and sum(zb) == full and max(zb) <= full // 2 + full // 64,
          f"ZeRO-1: the ranks hold {zb} bytes of moments, together the {full} of one copy (cut by 2)")
    zp, dp = f"{tmp}/zero1/model.safetensors", f"{tmp}/two_{T}/model.safetensors"
    check(bit_identical(read_st(zp), read_st(dp)), "ZeRO-1 parameters bit-identical to the unsharded run")
    check(bit_identical(read_st(zp, True), read_st(dp, True)), "ZeRO-1 moments (gathered to rank 0) bit-identical")
    check(metrics(f"{tmp}/zero1") == metrics(f"{tmp}/two_{T}"), "ZeRO-1 losses and gradient norms identical")
    # its checkpoint resumes without ZeRO-1 on 1 rank, exactly like the unsharded checkpoint does
    r = train([], "zero1_to_1", T, ["--resume", f"{tmp}/zero1/checkpoints/step-000000010.h5"])
    check(r.returncode == 0 and bit_identical(read_st(f"{tmp}/zero1_to_1/model.safetensors", True) | read_st(f"{tmp}/zero1_to_1/model.safetensors"),
                                              read_st(f"{tmp}/resumed_2to1/model.safetensors", True) | read_st(f"{tmp}/resumed_2to1/model.safetensors")),
          "ZeRO-1 checkpoint resumed on 1 rank without ZeRO-1: bit-identical to resuming the unsharded one" +
          ("" if r.returncode == 0 else "\n" + r.stderr[-2000:]))
    # and with ZeRO-1 on 2 ranks (moments scattered from rank 0): bit-identical to the uninterrupted ZeRO-1 run
    r = train(MPI, "zero1_resumed", T, ["--set", "data.micro_batch=4", "--set", "training.zero1=true", "--resume",
                                        f"{tmp}/zero1/checkpoints/step-000000010.h5"])
    check(r.returncode == 0 and bit_identical(read_st(f"{tmp}/zero1_resumed/model.safetensors", True), read_st(zp, True)) and
          bit_identical(read_st(f"{tmp}/zero1_resumed/model.safetensors"), read_st(zp)),
          "ZeRO-1 checkpoint resumed with ZeRO-1 on 2 ranks: bit-identical to the uninterrupted run" +
          ("" if r.returncode == 0 else "\n" + r.stderr[-2000:]))

# 4. different configs, or different data, on different ranks
shard(f"{tmp}/other.bin", 60000, 3)
for what, diff in (("config", ["--set", "model.ffn_dim=96"]), ("data", ["--set", f"data.train={tmp}/other.bin"])):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "1", BIN, "train", CFG, *base, "--set", "training.steps=5",
           "--set", f"training.out_dir={tmp}/mismatch", ":", "-np", "1", BIN, "train", CFG, *base, "--set",
           "training.steps=5", *diff, "--set", f"training.out_dir={tmp}/mismatch"]
    t0 = time.time()
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    msg = r.stdout + r.stderr
    check(r.returncode != 0 and "ranks 1 were started with a different config or different training data" in msg,
          f"mismatched {what} refused at start in {time.time() - t0:.1f} s: " +
          next((l for l in msg.splitlines() if "different" in l), "(no message)")[:200])

# 5. a killed rank ends the job; the last checkpoint stays loadable
p = subprocess.Popen(MPI + [BIN, "train", CFG, *base, "--set", "training.steps=1000000", "--set",
                            f"training.out_dir={tmp}/killed", "--set", "data.micro_batch=4", "--set", "checkpoint.every=5"],
                     env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
deadline = time.time() + 60  # kill mid-training, once checkpoints exist (the machine may be slow)
while time.time() < deadline and len(glob.glob(f"{tmp}/killed/checkpoints/step-*.h5")) < 2 and p.poll() is None:
    time.sleep(0.2)
time.sleep(0.5)
pids = subprocess.run(["pgrep", "-f", f"training.out_dir={tmp}/killed"], capture_output=True, text=True).stdout.split()
ranks = [int(x) for x in pids if int(x) != p.pid and "bitnet" in open(f"/proc/{x}/cmdline").read()] if pids else []
check(len(ranks) >= 2, f"found the rank processes ({ranks})")
def world_rank(pid):
    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return next((int(e.split(b"=")[1]) for e in env if e.startswith(b"OMPI_COMM_WORLD_RANK=")), -1)


if ranks:
    victim = world_rank(ranks[-1])
    os.kill(ranks[-1], signal.SIGKILL)
    t0 = time.time()
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        check(False, "job ended after a rank was killed (it hung)")
    dt = time.time() - t0
    check(p.returncode != 0 and dt < 15, f"job ended {dt:.1f} s after the kill with status {p.returncode}")
    named = [l for l in out.splitlines() if f"rank {victim}" in l and ("signal 9" in l or "Killed" in l)]
    check(victim >= 0 and bool(named), f"the message names the killed rank {victim}: " + (named or ["(none)"])[0][:200])
    ck = sorted(glob.glob(f"{tmp}/killed/checkpoints/step-*.h5"))
    check(bool(ck), f"checkpoints written before the kill ({[os.path.basename(c) for c in ck]})")
    if ck:  # the newest complete checkpoint loads: resume it on 1 rank for two more steps
        step = int(os.path.basename(ck[-1])[5:14])
        r = train([], "killed_resumed", step + 2, ["--resume", f"{tmp}/killed"], quiet=False)
        check(r.returncode == 0 and f"at step {step}" in r.stdout and len(losses(f"{tmp}/killed_resumed")) == step + 2,
              f"the last checkpoint (step {step}) loads: resumed on 1 rank and trained to step {step + 2}" +
              ("" if r.returncode == 0 else "\n" + r.stderr[-2000:]))
else:
    p.kill()

# 6. bitnet sweep under mpirun: every run data-parallel on both ranks, the same losses as the
# same run trained by `bitnet train` on 2 ranks, the table written once (rank 0)
sw = f"{tmp}/sweep.yaml"
sets = [base[i + 1] for i in range(0, len(base) - 1, 2) if base[i] == "--set"]
with open(sw, "w") as f:
    f.write(f"base: {CFG}\nout_dir: {tmp}/sweep\nset: {json.dumps(sets + ['training.steps=6', 'data.micro_batch=4'])}\n"
            "variants:\n  - {name: low, set: [schedule.peak1=1e-3]}\n  - {name: high}\n")
r = subprocess.run(MPI + [BIN, "sweep", sw, "--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
check(r.returncode == 0, "sweep under mpirun -np 2 succeeds" + ("" if r.returncode == 0 else "\n" + r.stderr[-2000:]))
if r.returncode == 0:
    rows = [json.loads(l) for l in open(f"{tmp}/sweep/sweep.jsonl")]
    check([x["status"] for x in rows] == ["finished", "finished"], f"both sweep runs finished: {[x['status'] for x in rows]}")
    worlds = [json.load(open(f"{tmp}/sweep/{n}/run.json"))["world"] for n in ("low", "high")]
    check(worlds == [2, 2], f"each sweep run trained on 2 ranks: {worlds}")
    r2 = train(MPI, "sweep_low_direct", 6, ["--set", "data.micro_batch=4", "--set", "schedule.peak1=1e-3"])
    check(r2.returncode == 0 and losses(f"{tmp}/sweep/low") == losses(f"{tmp}/sweep_low_direct"),
          "the sweep's run equals the same 2-rank bitnet train run loss for loss")
    check(r.stdout.count("table:") == 1, "the sweep's summary printed once (rank 0)")

print(f"{len(failures)} failed")
if not failures:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(1 if failures else 0)
