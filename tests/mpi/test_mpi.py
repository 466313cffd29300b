#!/usr/bin/env python3
"""Multi-rank checks of `bitnet train` under mpirun -np 2 --oversubscribe (run by ctest).

1. Equivalence: 2 ranks x micro-batch 4 equal 1 rank x micro-batch 8 (same global batch): identical
   first-step loss, loss trajectory within float-reduction tolerance, parameters after one step
   within fp32 rounding (Adam normalises gradients, so this bounds the gradient difference).
2. Ranks started with different configs are detected at start with a clear message.
3. A rank killed with SIGKILL ends the whole job within seconds, with a message naming it.
Usage: test_mpi.py BITNET_BINARY SOURCE_DIR
"""
import json
import os
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


def read_st(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    h.pop("__metadata__", None)
    return {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4")
            for k, v in h.items() if v["dtype"] == "F32" and not k.startswith("optim.")}


tmp = tempfile.mkdtemp(prefix="bitnet_mpi_")
shard(f"{tmp}/train.bin", 60000, 1)
shard(f"{tmp}/val.bin", 6000, 2)
base = ["--set", f"data.train={tmp}/train.bin", "--set", f"data.val={tmp}/val.bin", "--set", "training.eval_every=0", "--set", "schedule.warmup=0",
        "--quiet"]


def train(launcher, out, steps, extra=()):
    cmd = launcher + [BIN, "train", CFG, *base, "--set", f"training.steps={steps}", "--set", f"training.out_dir={tmp}/{out}",
                      *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)

# 1. equivalence
for steps in (1, 20):
    r1 = train([], f"one_{steps}", steps)
    r2 = train(MPI, f"two_{steps}", steps, ["--set", "data.micro_batch=4"])
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
        p1, p2 = read_st(f"{tmp}/one_1/model.safetensors"), read_st(f"{tmp}/two_1/model.safetensors")
        d = max(float(np.max(np.abs(p1[k] - p2[k]))) for k in p1)
        check(d < 1e-5, f"parameters after one step agree (max |diff| {d:.2e}; one Adam step moves each by ~lr = 3e-3)")

# 2. different configs on different ranks
cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "1", BIN, "train", CFG, *base, "--set", "training.steps=5",
       "--set", f"training.out_dir={tmp}/mismatch", ":", "-np", "1", BIN, "train", CFG, *base, "--set",
       "training.steps=5", "--set", "model.ffn_dim=96", "--set", f"training.out_dir={tmp}/mismatch"]
t0 = time.time()
r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
msg = r.stdout + r.stderr
check(r.returncode != 0 and "different config or different training data" in msg and "ranks 1" in msg,
      f"mismatched configs refused at start in {time.time() - t0:.1f} s: " + (msg.strip().splitlines() or ["(no output)"])[0])

# 3. a killed rank ends the job
p = subprocess.Popen(MPI + [BIN, "train", CFG, *base, "--set", "training.steps=1000000", "--set",
                            f"training.out_dir={tmp}/killed", "--set", "data.micro_batch=4"],
                     env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
time.sleep(4)
pids = subprocess.run(["pgrep", "-f", f"training.out_dir={tmp}/killed"], capture_output=True, text=True).stdout.split()
ranks = [int(x) for x in pids if int(x) != p.pid and "bitnet" in open(f"/proc/{x}/cmdline").read()] if pids else []
check(len(ranks) >= 2, f"found the rank processes ({ranks})")
if ranks:
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
    check("signal 9" in out or "Killed" in out, "mpirun's message names the killed rank: " +
          " ".join(l for l in out.splitlines() if "rank" in l or "signal" in l)[:300])
else:
    p.kill()

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
