#!/usr/bin/python3
"""PyTorch reference for optim::AdamW (docs/SPEC.md §5): writes tests/golden/adamw_ref.safetensors.

Three parameters as in a tiny model: "w" [7,5] (a matrix, decayed), "g" [5] (a norm gain, not
decayed) and "model.embed_tokens.weight" [11,3] (an embedding, not decayed by default). Six steps
of torch.optim.AdamW (betas 0.9/0.95, eps 1e-8, single-tensor path) with seeded gradients, the LR
and weight decay of each step following a small two-stage schedule (SPEC §5 formulas, set on the
param groups before every step; the no-decay group keeps weight_decay 0).

File contents (all F32):
    init.<name>                    initial values
    grad.<t>.<name>                gradient fed at step t (t = 0..5, the 0-based schedule index)
    lr [6], wd [6]                 LR and weight decay of each step
    step.<t>.param.<name>          parameter after step t
    step.<t>.exp_avg.<name>        first moment after step t
    step.<t>.exp_avg_sq.<name>     second moment after step t
Metadata: "schedule" (JSON of the schedule fields), "adamw" (JSON betas/eps), "names", "steps".

The LR / WD of each step are rounded to float32 before use, so that the C++ side (which reads
them from the F32 tensors) feeds torch's exact values. The gradients mix magnitudes from 1e-9
(where eps dominates the denominator) to 10, and include exact zeros.

Usage (system interpreter, it has torch 1.13):
    /usr/bin/python3 tests/reference/adamw_ref.py --out tests/golden
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

SHAPES = {"w": (7, 5), "g": (5,), "model.embed_tokens.weight": (11, 3)}
DECAY = {"w": True, "g": False, "model.embed_tokens.weight": False}
BETAS = (0.9, 0.95)
EPS = 1e-8
# Small two-stage schedule (optim::Schedule fields); steps t = 0..total-1.
SCHEDULE = dict(lr_kind="two-stage", peak1=2e-2, peak2=1.2e-2, warmup=2, total=6, switch_step=3,
                end_ratio=0.1, wd_kind="two-stage", wd1=0.1, wd2=0.02)


def lr_at(s, t):
    """Two-stage linear LR: peak1*t/warmup in warm-up, then
    peak*(1 - (1-end_ratio)*(t-warmup)/(total-warmup)), peak = peak1 before the switch, peak2 after."""
    if t < s["warmup"]:
        return s["peak1"] * t / s["warmup"]
    peak = s["peak1"] if t < s["switch_step"] else s["peak2"]
    return peak * (1 - (1 - s["end_ratio"]) * (t - s["warmup"]) / (s["total"] - s["warmup"]))


def wd_at(s, t):
    """Two-stage weight decay: wd1 before the switch step, wd2 from it on."""
    return s["wd1"] if t < s["switch_step"] else s["wd2"]


def f32(x):
    """Round a Python float to the nearest float32 and return it as a Python float."""
    return float(np.float32(x))


def make_gradient(gen, shape, t):
    """Normal values times per-element magnitudes 10^U(-9, 1); a few exact zeros."""
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    mag = torch.pow(10.0, torch.empty(shape, dtype=torch.float64).uniform_(-9, 1, generator=gen))
    g = g * mag
    zero = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.08
    g[zero] = 0.0
    return g.to(torch.float32)


def run(out_dir):
    gen = torch.Generator().manual_seed(20240611)
    init = {
        "w": 0.5 * torch.randn(SHAPES["w"], generator=gen),
        "g": 1.0 + 0.1 * torch.randn(SHAPES["g"], generator=gen),
        "model.embed_tokens.weight": 0.3 * torch.randn(SHAPES["model.embed_tokens.weight"],
                                                       generator=gen),
    }
    params = {n: torch.nn.Parameter(v.clone()) for n, v in init.items()}
    decay = [params[n] for n in SHAPES if DECAY[n]]
    no_decay = [params[n] for n in SHAPES if not DECAY[n]]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=0.0, betas=BETAS, eps=EPS, weight_decay=0.0, amsgrad=False,
                            foreach=False, maximize=False)

    out = {f"init.{n}": v for n, v in init.items()}
    lrs, wds = [], []
    for t in range(SCHEDULE["total"]):
        lr, wd = f32(lr_at(SCHEDULE, t)), f32(wd_at(SCHEDULE, t))
        lrs.append(lr)
        wds.append(wd)
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd
        opt.param_groups[1]["lr"] = lr
        opt.param_groups[1]["weight_decay"] = 0.0
        for n, p in params.items():
            p.grad = make_gradient(gen, SHAPES[n], t)
            out[f"grad.{t}.{n}"] = p.grad.clone()
        opt.step()
        for n, p in params.items():
            st = opt.state[p]
            assert int(st["step"].item()) == t + 1
            out[f"step.{t}.param.{n}"] = p.detach().clone()
            out[f"step.{t}.exp_avg.{n}"] = st["exp_avg"].clone()
            out[f"step.{t}.exp_avg_sq.{n}"] = st["exp_avg_sq"].clone()
    out["lr"] = torch.tensor(lrs, dtype=torch.float32)
    out["wd"] = torch.tensor(wds, dtype=torch.float32)
    # lr / wd were rounded to float32 before use: the stored F32 values are exact.
    assert all(float(a) == b for a, b in zip(out["lr"].tolist(), lrs))

    meta = {
        "schedule": json.dumps(SCHEDULE),
        "adamw": json.dumps({"beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS}),
        "names": json.dumps(list(SHAPES)),
        "decay": json.dumps(DECAY),
        "steps": str(SCHEDULE["total"]),
        "torch": torch.__version__,
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "adamw_ref.safetensors")
    safetensors_io.save_file(out, path, meta)
    print(f"wrote {path} ({len(out)} tensors)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden")
    ap.add_argument("--out", default=default, help="directory for adamw_ref.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run(args.out)


if __name__ == "__main__":
    main()
