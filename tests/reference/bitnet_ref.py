#!/usr/bin/python3
"""PyTorch reference for BitNet a4.8 (docs/SPEC.md §1 model, §2 quantizers, §3 sparsity).

Writes the golden files the C++ tests compare against:
    model_ref.safetensors  parameters, tokens, and per activation mode: loss, logits,
                           gradients of every parameter, sparsity figures
    quant_ref.safetensors  quantizer inputs and dequantized outputs

Usage (system interpreter, it has torch):
    /usr/bin/python3 tests/reference/bitnet_ref.py --out tests/golden
    /usr/bin/python3 tests/reference/bitnet_ref.py --check

Op orders below are part of the contract (the C++ kernels follow them so that float32
results agree to rounding): see the comments at each quantizer, rmsnorm and rope.
Note: in torch, `scalar / tensor` is computed as `scalar * reciprocal(tensor)`; every scale
below that must be a true float32 division is therefore written tensor / tensor.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

MODES = ["fp", "w158a8", "a4.8", "a4.8-fp4", "int4-all"]
SQRT7_F32 = torch.tensor(2.6457513110645906, dtype=torch.float32)
FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

GOLDEN_CONFIG = dict(vocab_size=96, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2,
                     ffn_dim=64, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False,
                     batch=2, seq_len=9)


# --------------------------------------------------------------------------------------------
# Quantizers: forward functions (no autograd). Activations are per row of [tokens, features].
# --------------------------------------------------------------------------------------------

def q_ternary(w):
    """Per-tensor ternary: a = mean|W| (f64 accumulate -> f32), clamp 1e-5; s = 1/a;
    Wq = clamp(round(W*s), -1, 1) / s."""
    a = w.abs().to(torch.float64).mean().to(w.dtype).clamp(min=1e-5)
    s = a.reciprocal()
    return (w * s).round().clamp(-1, 1) / s


def q_int8(x):
    """INT8 absmax: g = max|x| clamp 1e-5; s = 127/g (as (1/g)*127); y = clamp(round(x*s), -128, 127) / s."""
    g = x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    s = 127.0 / g   # as the BitNet/transformers code: torch evaluates scalar/tensor as (1/g)*127
    return (x * s).round().clamp(-128, 127) / s


def q_int4(x, mult=1.0):
    """INT4 absmean: b = f32(sum_f64|x| / cols) * mult, clamp 1e-5; s = f32(sqrt 7)/b;
    y = clamp(round(x*s), -8, 7) / s."""
    cols = x.shape[-1]
    b = (x.abs().sum(-1, keepdim=True, dtype=torch.float64) / cols).to(x.dtype) * mult
    b = b.clamp(min=1e-5)
    s = SQRT7_F32.to(x.dtype) / b
    return (x * s).round().clamp(-8, 7) / s


def fp4_snap(t):
    """Nearest E2M1 grid point of |t| with ties to the even grid index, sign kept.
    Midpoints: .25->0 .75->1 1.25->1 1.75->2 2.5->2 3.5->4 5->4."""
    a = t.abs()
    v = torch.zeros_like(a)
    for i in range(len(FP4_GRID) - 1):
        lo, hi = FP4_GRID[i], FP4_GRID[i + 1]
        mid = 0.5 * (lo + hi)
        up = (a >= mid) if (i + 1) % 2 == 0 else (a > mid)   # tie goes to the even index
        v = torch.where(up, torch.full_like(a, hi), v)
    return torch.where(t < 0, -v, v)


def q_fp4(x):
    """FP4 E2M1 MinMax: s = 6 / clamp(max|x|, 1e-5); y = snap(x*s) / s."""
    m = x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    s = 6.0 / m     # scalar/tensor: (1/m)*6, as torch evaluates it
    return fp4_snap(x * s) / s


def topk_mask(x, ratio=0.5):
    """Keep the k = ceil(ratio*cols) largest |x| per row (ties: lower index kept), zero the rest."""
    cols = x.shape[-1]
    k = int(math.ceil(ratio * cols))
    order = torch.sort(x.abs(), dim=-1, descending=True, stable=True).indices
    keep = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    keep.scatter_(-1, order[..., :k], True)
    return torch.where(keep, x, torch.zeros_like(x))


class STE(torch.autograd.Function):
    """Forward: fn(x) exactly. Backward: gradient passed through unchanged (to every element)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def ste(fn):
    return lambda x: STE.apply(x, fn)


def identity(x):
    return x


QUANTIZERS = {
    "none": identity,
    "int8": ste(q_int8),
    "int4": ste(q_int4),
    "int4x2": ste(lambda x: q_int4(x, 2.0)),
    "fp4": ste(q_fp4),
    "topk+int8": lambda x: ste(q_int8)(ste(topk_mask)(x)),
    "topk+fp4": lambda x: ste(q_fp4)(ste(topk_mask)(x)),
}

# mode -> (weight quantizer, QA, QO, QF, QD)
MODE_TABLE = {
    "fp": ("none", "none", "none", "none", "none"),
    "w158a8": ("ternary", "int8", "int8", "int8", "int8"),
    "a4.8": ("ternary", "int4", "topk+int8", "int4", "int8"),
    "a4.8-fp4": ("ternary", "fp4", "topk+fp4", "fp4", "int8"),
    "int4-all": ("ternary", "int4", "int4", "int4", "int4x2"),
}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def param_shapes(cfg):
    V, d, ffn = cfg["vocab_size"], cfg["d_model"], cfg["ffn_dim"]
    H, Hkv = cfg["n_heads"], cfg["n_kv_heads"]
    hd = d // H
    shapes = {"model.embed_tokens.weight": (V, d)}
    for i in range(cfg["n_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (H * hd, d),
            p + "self_attn.k_proj.weight": (Hkv * hd, d),
            p + "self_attn.v_proj.weight": (Hkv * hd, d),
            p + "self_attn.o_proj.weight": (d, H * hd),
            p + "self_attn.attn_sub_norm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (ffn, d),
            p + "mlp.up_proj.weight": (ffn, d),
            p + "mlp.down_proj.weight": (d, ffn),
            p + "mlp.ffn_sub_norm.weight": (ffn,),
        })
    shapes["model.norm.weight"] = (d,)
    if not cfg["tie_embeddings"]:
        shapes["lm_head.weight"] = (V, d)
    return shapes


def init_params(cfg, std=0.02, dtype=torch.float32):
    """Matrices/embedding ~ N(0, std); norm gains 1 + 0.1*N(0,1). Call after manual_seed."""
    params = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            params[name] = 1.0 + 0.1 * torch.randn(shape, dtype=dtype)
        else:
            params[name] = std * torch.randn(shape, dtype=dtype)
    return params


def rmsnorm(x, g, eps):
    """r = f32(1/sqrt(mean_f64(x_f64^2) + eps)); y = g * (x * r)."""
    ms = x.to(torch.float64).pow(2).mean(-1, keepdim=True)
    r = torch.sqrt(ms + eps).reciprocal().to(x.dtype)
    return g * (x * r)


def rope_cos_sin(T, hd, theta, dtype):
    """angle(t, i) = t * theta^(-2i/hd) for i < hd/2, in float64; cos/sin in float64, cast."""
    half = hd // 2
    i = torch.arange(half, dtype=torch.float64)
    inv_freq = torch.tensor(theta, dtype=torch.float64) ** (-(2.0 * i) / hd)
    t = torch.arange(T, dtype=torch.float64)
    ang = t[:, None] * inv_freq[None, :]                 # [T, half]
    return torch.cos(ang).to(dtype), torch.sin(ang).to(dtype)


def rope(x, cos, sin):
    """Rotate-half. x: [B, heads, T, hd]; y1 = x1*c - x2*s, y2 = x2*c + x1*s."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SparsityStats:
    """Zero counts of the quantized inputs, pooled over all layers."""

    KEYS = ("qkv", "out", "gate_in", "relu2_gate", "down")

    def __init__(self):
        self.zeros = {k: 0 for k in self.KEYS}
        self.total = {k: 0 for k in self.KEYS}

    def add(self, key, t):
        self.zeros[key] += int((t.detach() == 0).sum())
        self.total[key] += t.numel()

    def frac(self, key):
        return self.zeros[key] / self.total[key]

    def figures(self, cfg):
        """[QKV, Out, Up, Gate, Down, Overall] (SPEC §3)."""
        d, ffn, H, Hkv = cfg["d_model"], cfg["ffn_dim"], cfg["n_heads"], cfg["n_kv_heads"]
        hd = d // H
        qkv, out, gate, down = (self.frac(k) for k in ("qkv", "out", "gate_in", "down"))
        up = 1.0 - (1.0 - gate) * (1.0 - self.frac("relu2_gate"))   # up input == gate input
        sizes = [(H * hd * d, qkv), (Hkv * hd * d, qkv), (Hkv * hd * d, qkv),
                 (d * H * hd, out), (ffn * d, gate), (ffn * d, up), (d * ffn, down)]
        overall = sum(n * f for n, f in sizes) / sum(n for n, _ in sizes)
        return [qkv, out, up, gate, down, overall]


def forward(params, tokens, cfg, mode, stats=None):
    """tokens [B, T+1] int64. Returns (loss, logits [B*T, V])."""
    wq_name, qa, qo, qf, qd = MODE_TABLE[mode]
    QA, QO, QF, QD = (QUANTIZERS[n] for n in (qa, qo, qf, qd))
    Wt = ste(q_ternary) if wq_name == "ternary" else identity
    eps = cfg["norm_eps"]
    H, Hkv = cfg["n_heads"], cfg["n_kv_heads"]
    d = cfg["d_model"]
    hd = d // H
    group = H // Hkv

    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    B, T = inputs.shape
    emb = params["model.embed_tokens.weight"]
    x = F.embedding(inputs.reshape(-1), emb)               # [B*T, d]
    cos, sin = rope_cos_sin(T, hd, cfg["rope_theta"], x.dtype)
    scale = torch.tensor(1.0 / math.sqrt(hd), dtype=x.dtype)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)    # j > i

    def note(key, t):
        if stats is not None:
            stats.add(key, t)

    for i in range(cfg["n_layers"]):
        p = lambda n: params[f"model.layers.{i}.{n}"]  # noqa: E731
        # attention
        a = rmsnorm(x, p("input_layernorm.weight"), eps)
        aq = QA(a)
        note("qkv", aq)
        q = aq @ Wt(p("self_attn.q_proj.weight")).t()
        k = aq @ Wt(p("self_attn.k_proj.weight")).t()
        v = aq @ Wt(p("self_attn.v_proj.weight")).t()
        q = q.reshape(B, T, H, hd).transpose(1, 2)            # [B, H, T, hd]
        k = k.reshape(B, T, Hkv, hd).transpose(1, 2)          # [B, Hkv, T, hd]
        v = v.reshape(B, T, Hkv, hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k = k.repeat_interleave(group, dim=1)                 # query head h uses kv head h//group
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) * scale
        scores = scores.masked_fill(causal, float("-inf"))
        P = torch.softmax(scores, dim=-1)
        o = (P @ v).transpose(1, 2).reshape(B * T, H * hd)
        o = rmsnorm(o, p("self_attn.attn_sub_norm.weight"), eps)
        oq = QO(o)
        note("out", oq)
        h = x + oq @ Wt(p("self_attn.o_proj.weight")).t()
        # feed-forward (ReLU² GLU)
        f = rmsnorm(h, p("post_attention_layernorm.weight"), eps)
        fq = QF(f)
        note("gate_in", fq)
        g = fq @ Wt(p("mlp.gate_proj.weight")).t()
        u = fq @ Wt(p("mlp.up_proj.weight")).t()
        r2 = torch.relu(g).pow(2)
        note("relu2_gate", r2)
        z = r2 * u
        z = rmsnorm(z, p("mlp.ffn_sub_norm.weight"), eps)
        zq = QD(z)
        note("down", zq)
        x = h + zq @ Wt(p("mlp.down_proj.weight")).t()

    head = params["model.embed_tokens.weight" if cfg["tie_embeddings"] else "lm_head.weight"]
    logits = rmsnorm(x, params["model.norm.weight"], eps) @ head.t()
    loss = F.cross_entropy(logits, targets.reshape(-1))
    return loss, logits


def run_mode(params, tokens, cfg, mode):
    """Fresh leaves, forward + backward. Returns loss, logits, grads, sparsity figures."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    stats = SparsityStats()
    loss, logits = forward(leaves, tokens, cfg, mode, stats)
    loss.backward()
    grads = {n: t.grad.detach().clone() for n, t in leaves.items()}
    return loss.detach(), logits.detach(), grads, stats.figures(cfg)


# --------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------

def make_model_golden(path):
    cfg = dict(GOLDEN_CONFIG)
    torch.manual_seed(0)
    params = init_params(cfg, std=0.1)
    tokens = torch.randint(0, cfg["vocab_size"], (cfg["batch"], cfg["seq_len"] + 1))
    out = {}
    for n, t in params.items():
        out["param." + n] = t
    out["tokens"] = tokens.to(torch.int32)
    summary = {}
    for m in MODES:
        loss, logits, grads, sp = run_mode(params, tokens, cfg, m)
        out[m + ".loss"] = loss.reshape(1)
        out[m + ".logits"] = logits
        for n, g in grads.items():
            out[f"{m}.grad.{n}"] = g
        out[m + ".sparsity"] = torch.tensor(sp, dtype=torch.float32)
        summary[m] = (float(loss), sp)
    meta = {
        "format": "pt",
        "config": json.dumps(cfg),
        "modes": json.dumps(MODES),
        "sparsity_order": json.dumps(["qkv", "out", "up", "gate", "down", "overall"]),
        "note": "inputs=tokens[:, :-1], targets=tokens[:, 1:]; logits rows are b*T+t",
    }
    safetensors_io.save_file(out, path, meta)
    return summary


def quant_inputs():
    """[7,37] gaussian rows + tie rows + an all-zero row; [5,33] weight."""
    g = torch.Generator().manual_seed(1234)
    cols = 37
    x = torch.randn(7, cols, generator=g)
    x[3] *= 1e-3                                    # small-scale row
    x[5] *= 50.0                                    # large-scale row
    # INT8 rounding ties: max|x| = 127 -> s = 1, values on k + 0.5
    r_int8 = torch.tensor([127.0] + [(j - 18) + 0.5 for j in range(1, cols)])
    # FP4 grid ties: max|x| = 6 -> s = 1, every midpoint of the grid with both signs
    mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    vals = [6.0] + mids + [-m for m in mids] + list(FP4_GRID) + [-v for v in FP4_GRID[1:]]
    r_fp4 = torch.tensor((vals + [0.1] * cols)[:cols])
    # top-K ties: every |x| equal (keep the first 19 by index), signs alternate
    r_tk = torch.tensor([1.5 if j % 2 == 0 else -1.5 for j in range(cols)])
    # top-K ties at the boundary: distinct large values then a run of equal magnitudes
    r_tk2 = torch.tensor([10.0 - j for j in range(10)] + [0.75 * (-1) ** j for j in range(cols - 10)])
    # constant row (every |x| equal: top-K ties everywhere, INT4 maps each entry to round(sqrt 7))
    r_const = torch.full((cols,), 0.3)
    r_zero = torch.zeros(cols)
    x = torch.cat([x, torch.stack([r_int8, r_fp4, r_tk, r_tk2, r_const, r_zero])], 0)
    w = 0.05 * torch.randn(5, 33, generator=g)
    w[0, :5] = 0.0
    return x.float(), w.float()


def make_quant_golden(path):
    x, w = quant_inputs()
    out = {
        "quant.input": x,
        "quant.int8": q_int8(x),
        "quant.int4": q_int4(x),
        "quant.int4x2": q_int4(x, 2.0),
        "quant.fp4": q_fp4(x),
        "quant.topk0.5": topk_mask(x),
        "quant.topk0.5+int8": q_int8(topk_mask(x)),
        "quant.topk0.5+fp4": q_fp4(topk_mask(x)),
        "quant.weight": w,
        "quant.ternary": q_ternary(w),
    }
    safetensors_io.save_file(out, path, {"format": "pt",
                                         "note": "rows are tokens; all outputs dequantized"})
    return out


# --------------------------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------------------------

def self_check():
    ok = True

    def report(name, cond, detail=""):
        nonlocal ok
        ok &= bool(cond)
        print(f"[{'PASS' if cond else 'FAIL'}] {name} {detail}")

    # (a) STE backward is the identity for every quantizer (masked elements included)
    torch.manual_seed(1)
    x = torch.randn(6, 21)
    gout = torch.randn(6, 21)
    for name in ["int8", "int4", "int4x2", "fp4", "topk+int8", "topk+fp4"]:
        xl = x.clone().requires_grad_(True)
        QUANTIZERS[name](xl).backward(gout)
        report(f"STE identity {name}", torch.equal(xl.grad, gout))
    wl = x.clone().requires_grad_(True)
    ste(q_ternary)(wl).backward(gout)
    report("STE identity ternary", torch.equal(wl.grad, gout))

    # (b) fp-mode gradients vs finite differences (gradcheck, float64, tiny config)
    cfg = dict(vocab_size=11, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=12,
               rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, batch=2, seq_len=5)
    torch.manual_seed(2)
    params = init_params(cfg, std=0.3, dtype=torch.float64)
    tokens = torch.randint(0, cfg["vocab_size"], (cfg["batch"], cfg["seq_len"] + 1))
    names = list(params)

    def fn(*ps):
        loss, logits = forward(dict(zip(names, ps)), tokens, cfg, "fp")
        return loss, logits

    leaves = [params[n].clone().requires_grad_(True) for n in names]
    report("gradcheck fp mode (float64)",
           torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4))
    cfg_t = dict(cfg, tie_embeddings=True)
    params_t = {n: t for n, t in params.items() if n != "lm_head.weight"}
    names_t = list(params_t)
    leaves_t = [params_t[n].clone().requires_grad_(True) for n in names_t]
    report("gradcheck fp mode, tied embeddings",
           torch.autograd.gradcheck(
               lambda *ps: forward(dict(zip(names_t, ps)), tokens, cfg_t, "fp")[0],
               leaves_t, eps=1e-6, atol=1e-6, rtol=1e-4))

    # (c) sanity figures on N(0,1): INT4 absmean ~12% zeros, INT8 absmax ~1.2%
    torch.manual_seed(3)
    z = torch.randn(1024, 4096)
    z4 = float((q_int4(z) == 0).float().mean())
    z8 = float((q_int8(z) == 0).float().mean())
    report("int4 zero fraction ~12%", abs(z4 - 0.12) < 0.005, f"({100 * z4:.2f}%)")
    report("int8 zero fraction ~1.2%", 0.009 < z8 < 0.014, f"({100 * z8:.2f}%)")

    # extra: tie handling
    t = torch.tensor([[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -2.5, -5.0]])
    want = torch.tensor([[6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.0, -2.0, -4.0]])
    report("fp4 ties to even grid index", torch.equal(q_fp4(t), want))
    tk = topk_mask(torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]]))
    report("top-K ties keep lower index", torch.equal(tk, torch.tensor([[1.0, -1.0, 1.0, 0, 0]])))
    r = q_int8(torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]]))
    report("int8 rounds half to even",
           torch.equal(r, torch.tensor([[127.0, 0.0, 2.0, 2.0, 0.0, -2.0]])))
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="directory for model_ref/quant_ref.safetensors")
    ap.add_argument("--check", action="store_true", help="run the self-check")
    args = ap.parse_args()
    if not args.out and not args.check:
        ap.error("give --out DIR and/or --check")
    rc = 0
    if args.check:
        rc = 0 if self_check() else 1
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        mpath = os.path.join(args.out, "model_ref.safetensors")
        qpath = os.path.join(args.out, "quant_ref.safetensors")
        summary = make_model_golden(mpath)
        make_quant_golden(qpath)
        print(f"{mpath}: {os.path.getsize(mpath)} bytes")
        print(f"{qpath}: {os.path.getsize(qpath)} bytes")
        print("sparsity order: qkv out up gate down overall")
        for m, (loss, sp) in summary.items():
            print(f"{m:9s} loss {loss:.6f}  sparsity " + " ".join(f"{v:.4f}" for v in sp))
    return rc


if __name__ == "__main__":
    sys.exit(main())
