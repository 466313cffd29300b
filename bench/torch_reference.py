#!/usr/bin/env python3
"""PyTorch reference trainer for speed comparison: the BitNet a4.8 model of docs/SPEC.md §1-§2, same shapes.

Written from SPEC for `bench/compare` (Debian's python3-torch 1.13, CPU). Quantizers use the usual
straight-through formulation y = x + (q(x) - x).detach(), which is how BitNet is trained in
PyTorch. Prints one JSON line: tokens/s (median step), ms/step, peak RSS.
Tuning applied: torch.set_num_threads(--threads), OPENBLAS_CORETYPE / allocator are set by the
caller (bench/compare), no autograd anomaly checks, inference of nothing on the hot path.
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


def ste(x, q):
    return x + (q - x).detach()


def q_int8(x):
    s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    return ste(x, (x * s).round().clamp(-128, 127) / s)


def q_int4(x, mult=1.0):
    s = SQRT7 / (x.abs().mean(-1, keepdim=True) * mult).clamp(min=1e-5)
    return ste(x, (x * s).round().clamp(-8, 7) / s)


_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def q_fp4(x):
    s = 6.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    t = x * s
    a = t.abs()
    v = 0.5 * ((a > 0.25).float() + (a >= 0.75).float() + (a > 1.25).float() + (a >= 1.75).float()) \
        + (a > 2.5).float() + (a >= 3.5).float() + 2.0 * (a > 5.0).float()
    return ste(x, torch.sign(t) * v / s)


def topk(x, ratio=0.5):
    k = math.ceil(ratio * x.shape[-1])
    idx = x.abs().topk(k, dim=-1).indices
    mask = torch.zeros_like(x).scatter_(-1, idx, 1.0)
    return ste(x, x * mask)


def ternary(w):
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return ste(w, (w * s).round().clamp(-1, 1) / s)


MODES = {  # (weights ternary, QA, QO, QF, QD)
    "fp": (False, None, None, None, None),
    "w158a8": (True, q_int8, q_int8, q_int8, q_int8),
    "a4.8": (True, q_int4, lambda x: q_int8(topk(x)), q_int4, q_int8),
}


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class BitLinear(nn.Linear):
    def __init__(self, i, o):
        super().__init__(i, o, bias=False)
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, xq, tern):
        return F.linear(xq, ternary(self.weight) if tern else self.weight)


class Block(nn.Module):
    def __init__(self, d, h, ffn, T, theta=10000.0):
        super().__init__()
        self.h, self.hd = h, d // h
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (BitLinear(d, d) for _ in range(4))
        self.sub_a, self.sub_f = RMSNorm(d), RMSNorm(ffn)
        self.gate, self.up, self.down = BitLinear(d, ffn), BitLinear(d, ffn), BitLinear(ffn, d)
        half = self.hd // 2
        inv = theta ** (-torch.arange(0, half, dtype=torch.float64) * 2 / self.hd)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        self.register_buffer("mask", torch.full((T, T), float("-inf")).triu(1), persistent=False)

    def rope(self, x):
        half = self.hd // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * self.cos - x2 * self.sin, x2 * self.cos + x1 * self.sin], -1)

    def forward(self, x, mode):
        tern, QA, QO, QF, QD = MODES[mode]
        B, T, d = x.shape
        a = self.n1(x)
        aq = QA(a) if QA else a
        q = self.rope(self.q(aq, tern).view(B, T, self.h, self.hd).transpose(1, 2))
        k = self.rope(self.k(aq, tern).view(B, T, self.h, self.hd).transpose(1, 2))
        v = self.v(aq, tern).view(B, T, self.h, self.hd).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd) + self.mask, -1)
        o = self.sub_a((p @ v).transpose(1, 2).reshape(B, T, d))
        h = x + self.o(QO(o) if QO else o, tern)
        f = self.n2(h)
        fq = QF(f) if QF else f
        z = self.sub_f(F.relu(self.gate(fq, tern)).square() * self.up(fq, tern))
        return h + self.down(QD(z) if QD else z, tern)


class Model(nn.Module):
    def __init__(self, V, d, L, h, ffn, T):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d, h, ffn, T) for _ in range(L))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, V, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, x, y, mode):
        h = self.emb(x)
        for b in self.blocks:
            h = b(h, mode)
        logits = self.head(self.norm(h))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mode", default="a4.8", choices=sorted(MODES))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Model(a.vocab, a.d, a.layers, a.heads, a.ffn, a.seq)
    decay = [p for n, p in m.named_parameters() if p.dim() == 2 and "emb" not in n]
    other = [p for n, p in m.named_parameters() if not (p.dim() == 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, a.vocab, (a.batch, a.seq))
    y = torch.randint(0, a.vocab, (a.batch, a.seq))
    times = []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m(x, y, a.mode)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if s >= a.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "mode": a.mode, "threads": a.threads,
                      "tokens_per_s": a.batch * a.seq / step, "ms_per_step": step * 1e3,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


if __name__ == "__main__":
    main()
