#!/usr/bin/env python3
"""PyTorch GPU peer for speed comparison: the BitNet a4.8 model of docs/SPEC.md, tuned as PyTorch users tune it.

Written from SPEC §1-§2 for `bench/compare --device cuda`, starting from the CPU peer
bench/torch_reference.py: the same model and the same FAQ-style straight-through quantizers
y = x + (q(x) - x).detach() (modes fp / w158a8 / a4.8). GPU tuning: bf16 autocast, SDPA causal
attention (flash), fused AdamW, TF32 matmuls, optionally torch.compile. The shape comes from a
bitnet config file (model.*, data.seq_len, data.micro_batch; --set KEY=VALUE overrides), the
FLOP count and the bf16 peak are the ones `bitnet bench` uses (trainers/train/bench.cpp,
autograd/cuda/ceiling.cu). Prints one JSON line: medians of the timed steps, MFU, peak memory.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SQRT7 = math.sqrt(7.0)
HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


# ---- config: the bitnet YAML (PyYAML when installed, else the flat subset configs/ use) ----

def scalar(s):
    s = s.strip().strip("'\"")
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    for kind in (int, float):
        try:
            return kind(s)
        except ValueError:
            pass
    return s


def mini_yaml(text):
    """`section:` + indented `key: value`, or `section: {k: v, ...}`; list items are skipped."""
    out, sec = {}, None
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip() or line.strip().startswith("-"):
            continue
        key, _, val = line.strip().partition(":")
        val = val.strip()
        if not raw[0].isspace():
            if val.startswith("{"):
                out[key] = {k.strip(): scalar(v) for k, v in
                            (kv.split(":", 1) for kv in val.strip("{}").split(",") if ":" in kv)}
                sec = None
            elif val:
                out[key], sec = scalar(val), None
            else:
                sec = out.setdefault(key, {})
        elif sec is not None and val:
            sec[key] = scalar(val)
    return out


def load_config(path, sets):
    text = open(path).read()
    try:
        import yaml
        cfg = yaml.safe_load(text) or {}
    except ImportError:
        cfg = mini_yaml(text)
    for s in sets:
        key, eq, val = s.partition("=")
        if not eq or "." not in key:
            raise ValueError(f"--set {s!r}: expected section.key=value")
        sec, name = key.split(".", 1)
        cfg.setdefault(sec, {})[name] = scalar(val)
    return cfg


def get(cfg, key, default):
    sec, name = key.split(".")
    v = (cfg.get(sec) or {}).get(name)
    return default if v is None else type(default)(v)


# ---- quantizers (SPEC §2, STE in the FAQ style) ----

def ste(x, q):
    return x + (q - x).detach()


def q_int8(x):
    s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    return ste(x, (x * s).round().clamp(-128, 127) / s)


def q_int4(x):
    s = SQRT7 / x.abs().mean(-1, keepdim=True).clamp(min=1e-5)
    return ste(x, (x * s).round().clamp(-8, 7) / s)


def topk_k(ratio, cols):  # SPEC §2.6
    r = ratio * cols
    return min(max(math.ceil(r - max(1e-6, r * 2.0 ** -22)), 1), cols)


def topk(x, k):
    mask = torch.zeros_like(x).scatter_(-1, x.abs().topk(k, dim=-1).indices, 1.0)
    return ste(x, x * mask)


def ternary(w):
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return ste(w, (w * s).round().clamp(-1, 1) / s)


def mode_table(mode, d, ratio):  # (weights ternary, QA, QO, QF, QD), SPEC §2.8
    k = topk_k(ratio, d)
    return {"fp": (False, None, None, None, None),
            "w158a8": (True, q_int8, q_int8, q_int8, q_int8),
            "a4.8": (True, q_int4, lambda x: q_int8(topk(x, k)), q_int4, q_int8)}[mode]


MODES = ("a4.8", "fp", "w158a8")


# ---- model (SPEC §1) ----

class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):  # in fp32 under autocast, as the Llama-style models do
        x = x.float()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class BitLinear(nn.Linear):
    def __init__(self, i, o, std, tern):
        super().__init__(i, o, bias=False)
        nn.init.normal_(self.weight, std=std)
        self.tern = tern

    def forward(self, x):
        return F.linear(x, ternary(self.weight) if self.tern else self.weight)


class Block(nn.Module):
    def __init__(self, m, quant, sdpa):
        super().__init__()
        d, f = m["d"], m["ffn"]
        self.h, self.hkv, self.hd, self.sdpa = m["heads"], m["kv_heads"], d // m["heads"], sdpa
        tern, self.QA, self.QO, self.QF, self.QD = quant
        kv = self.hkv * self.hd
        lin = lambda i, o: BitLinear(i, o, m["init_std"], tern)  # noqa: E731
        self.n1, self.n2 = RMSNorm(d, m["eps"]), RMSNorm(d, m["eps"])
        self.q, self.k, self.v, self.o = lin(d, d), lin(d, kv), lin(d, kv), lin(d, d)
        self.sub_a, self.sub_f = RMSNorm(d, m["eps"]), RMSNorm(f, m["eps"])
        self.gate, self.up, self.down = lin(d, f), lin(d, f), lin(f, d)

    def rope(self, x, cos, sin):  # rotate-half, SPEC §1.3
        half = self.hd // 2
        x1, x2 = x[..., :half], x[..., half:]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    def forward(self, x, cos, sin, mask):
        B, T, d = x.shape
        a = self.n1(x)
        A = self.QA(a) if self.QA else a
        q = self.rope(self.q(A).view(B, T, self.h, self.hd).transpose(1, 2), cos, sin)
        k = self.rope(self.k(A).view(B, T, self.hkv, self.hd).transpose(1, 2), cos, sin)
        v = self.v(A).view(B, T, self.hkv, self.hd).transpose(1, 2)
        if self.hkv != self.h:  # GQA: query head h reads kv head h // (H / Hkv)
            k, v = (t.repeat_interleave(self.h // self.hkv, dim=1) for t in (k, v))
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd) + mask, -1) @ v
        o = self.sub_a(o.transpose(1, 2).reshape(B, T, d))
        h = x + self.o(self.QO(o) if self.QO else o)
        F_ = self.n2(h)
        F_ = self.QF(F_) if self.QF else F_
        z = self.sub_f(F.relu(self.gate(F_)).square() * self.up(F_))
        return h + self.down(self.QD(z) if self.QD else z)


class Model(nn.Module):
    def __init__(self, m, mode, sdpa):
        super().__init__()
        d, T, hd = m["d"], m["seq"], m["d"] // m["heads"]
        quant = mode_table(mode, d, m["topk_ratio"])
        self.emb = nn.Embedding(m["vocab"], d)
        nn.init.normal_(self.emb.weight, std=m["init_std"])
        self.blocks = nn.ModuleList(Block(m, quant, sdpa) for _ in range(m["layers"]))
        self.norm = RMSNorm(d, m["eps"])
        self.head = None
        if not m["tie"]:
            self.head = nn.Linear(d, m["vocab"], bias=False)
            nn.init.normal_(self.head.weight, std=m["init_std"])
        inv = m["theta"] ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        self.register_buffer("mask", None if sdpa else torch.full((T, T), float("-inf")).triu(1),
                             persistent=False)

    def forward(self, x, y):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h, self.cos, self.sin, self.mask)
        logits = F.linear(self.norm(h), self.emb.weight if self.head is None else self.head.weight)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1))


# ---- what `bitnet bench` reports ----

def train_flops_per_step(m, tokens):  # trainers/train/bench.cpp train_flops_per_step
    d, kv = m["d"], m["kv_heads"] * (m["d"] // m["heads"])
    linear = m["layers"] * (2 * d * d + 2 * kv * d + 3 * d * m["ffn"])
    return (6.0 * (linear + m["vocab"] * d) + 12.0 * m["layers"] * d * m["seq"]) * tokens


def nominal_bf16_tflops(name):  # autograd/cuda/ceiling.cu nominal_bf16_tflops (dense, SXM)
    for part, tf in (("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("B200", 2250.0)):
        if part in name:
            return tf
    return 0.0


def measured_bf16_tflops(dev):  # as bench.cpp falls back to: bf16 8192^3, median of 5
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b, t = torch.randn_like(a), []
    for i in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        if i:
            t.append(time.perf_counter() - t0)
    return 2 * 8192 ** 3 / statistics.median(t) / 1e12


def has(obj, name):  # hasattr, for torch.backends.cuda.matmul (raises AssertionError on unknown names)
    try:
        getattr(obj, name)
        return True
    except (AttributeError, AssertionError):
        return False


def set_tf32(on):
    mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if has(mm, "fp32_precision"):  # torch >= 2.9: only the new API (mixing the two raises)
        mm.fp32_precision = "tf32" if on else "ieee"
        if has(getattr(cudnn, "conv", None), "fp32_precision"):
            cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    else:
        mm.allow_tf32 = cudnn.allow_tf32 = on


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/paper/700m.yaml", help="bitnet config (model.*, data.*)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. model.d_model=256 (repeatable)")
    ap.add_argument("--mode", default="a4.8", choices=MODES)
    ap.add_argument("--micro-batch", type=int, help="sequences per step (default: data.micro_batch)")
    ap.add_argument("--seq", type=int, help="sequence length (default: data.seq_len)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    ap.add_argument("--no-autocast", action="store_true", help="fp32 instead of bf16 autocast")
    ap.add_argument("--no-sdpa", action="store_true", help="explicit masked softmax attention")
    ap.add_argument("--no-fused", action="store_true", help="AdamW without fused=True")
    ap.add_argument("--no-tf32", action="store_true", help="keep fp32 matmuls in full fp32")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {a.device}: torch {torch.__version__} sees no CUDA device")
    if a.compile and not hasattr(torch, "compile"):
        ap.error(f"--compile needs torch >= 2.0 (this is torch {torch.__version__})")
    try:
        cfg = load_config(a.config, a.set)
    except OSError as e:
        ap.error(f"--config: {e}")
    except ValueError as e:
        ap.error(str(e))
    m = {"vocab": get(cfg, "model.vocab_size", 32000), "d": get(cfg, "model.d_model", 512),
         "layers": get(cfg, "model.n_layers", 8), "heads": get(cfg, "model.n_heads", 8),
         "kv_heads": get(cfg, "model.n_kv_heads", 0), "ffn": get(cfg, "model.ffn_dim", 1536),
         "theta": get(cfg, "model.rope_theta", 10000.0), "eps": get(cfg, "model.norm_eps", 1e-5),
         "tie": get(cfg, "model.tie_embeddings", False), "init_std": get(cfg, "model.init_std", 0.02),
         "topk_ratio": get(cfg, "model.topk_ratio", 0.5),
         "seq": a.seq or get(cfg, "data.seq_len", 256)}
    m["kv_heads"] = m["kv_heads"] or m["heads"]
    B = a.micro_batch or get(cfg, "data.micro_batch", 8)
    if m["d"] % m["heads"] or (m["d"] // m["heads"]) % 2:
        ap.error(f"model.d_model {m['d']} / model.n_heads {m['heads']}: must give an even head_dim")
    if m["heads"] % m["kv_heads"]:
        ap.error(f"model.n_kv_heads {m['kv_heads']}: must divide model.n_heads {m['heads']}")
    if B < 1 or m["seq"] < 1:
        ap.error(f"micro-batch {B} and seq {m['seq']}: must be >= 1")
    if get(cfg, "model.glu", "relu2") != "relu2":
        ap.error("model.glu: only relu2 (the paper's ReLU²GLU) is implemented here")
    T, sdpa = m["seq"], HAVE_SDPA and not a.no_sdpa
    tf32 = cuda and not a.no_tf32
    if cuda:
        set_tf32(tf32)
    torch.manual_seed(a.seed)
    model = Model(m, a.mode, sdpa).to(dev)
    params = sum(p.numel() for p in model.parameters())
    # AdamW groups as SPEC §5.1: BitLinear weights and an untied head decayed; norms, embedding not.
    emb_decay = get(cfg, "optim.decay_embeddings", False)
    decayed = lambda n, p: p.dim() == 2 and (emb_decay or not n.startswith("emb"))  # noqa: E731
    groups = [{"params": [p for n, p in model.named_parameters() if decayed(n, p)],
               "weight_decay": get(cfg, "schedule.wd1", 0.1)},
              {"params": [p for n, p in model.named_parameters() if not decayed(n, p)], "weight_decay": 0.0}]
    hyper = dict(lr=get(cfg, "schedule.peak1", 1.5e-3), eps=get(cfg, "optim.eps", 1e-8),
                 betas=(get(cfg, "optim.beta1", 0.9), get(cfg, "optim.beta2", 0.95)))
    fused = False
    if cuda and not a.no_fused:
        try:
            opt, fused = torch.optim.AdamW(groups, fused=True, **hyper), True
        except (TypeError, RuntimeError):  # this torch has no fused AdamW
            pass
    if not fused:
        opt = torch.optim.AdamW(groups, **hyper)
    clip = get(cfg, "optim.grad_clip", 1.0)
    run = torch.compile(model, mode=a.compile_mode) if a.compile else model
    autocast = not a.no_autocast
    g = torch.Generator().manual_seed(7)  # synthetic tokens, as `bitnet bench`
    x = torch.randint(0, m["vocab"], (B, T), generator=g).to(dev)
    y = torch.randint(0, m["vocab"], (B, T), generator=g).to(dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = run(x, y)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return loss.detach().clone()  # (a CUDA-graph replay would overwrite the output)

    times, losses = [], []
    for s in range(a.warmup + a.steps):
        if s == a.warmup and cuda:
            sync()
            torch.cuda.reset_peak_memory_stats(dev)
        sync()
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
    losses = [float(v) for v in losses]  # read after the timing: no extra round trip per step
    sec = statistics.median_high(times)  # bench.cpp's median: v[n / 2] of the sorted times
    tokens = B * T
    flops = train_flops_per_step(m, tokens)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    peak = nominal_bf16_tflops(name) if cuda else 0.0
    peak_src = "datasheet" if peak else None
    if cuda and not peak:
        peak, peak_src = measured_bf16_tflops(dev), "measured bf16 8192^3"
    tflops = flops / sec / 1e12
    out = {"impl": "pytorch", "config": a.config, "mode": a.mode, "device": str(dev),
           "tokens_per_s": tokens / sec, "ms_per_step": sec * 1e3,
           "ms_steps": [round(t * 1e3, 3) for t in times], "steps_timed": a.steps, "warmup": a.warmup,
           "gflop_per_step": flops / 1e9, "tflops": tflops,
           "peak_tflops": peak or None, "peak_source": peak_src, "mfu": tflops / peak if peak else None,
           "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if cuda
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "peak RSS",
           "peak_reserved_bytes": torch.cuda.max_memory_reserved(dev) if cuda else None,
           "params": params, "micro_batch": B, "seq": T, "tokens_per_step": tokens,
           "loss_first": losses[0], "loss_last": losses[-1],
           "settings": {"torch": torch.__version__, "device_name": name,
                        "compile": a.compile_mode if a.compile else False,
                        "autocast": "bfloat16" if autocast else None, "sdpa": sdpa,
                        "fused_adamw": fused, "tf32": tf32}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
