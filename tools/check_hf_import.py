#!/usr/bin/env python3
"""Checks `bitnet`'s Hugging Face import against transformers (for the machine with torch +
transformers): builds small random BitNetForCausalLM models with transformers, saves them the way
the Hub does (save_pretrained, safetensors, bf16, several shards), lets `bitnet eval` import each
directory and dump its w158a8 logits, and compares them with transformers' logits; then exports
the imported model back (`bitnet export --format hf`) and compares transformers on the export
(round trip).

    python3 tools/check_hf_import.py --bitnet build/release/trainers/bitnet --out $OUT/hfcheck \
        [--device cpu|cuda] [--tol 1e-3] [--tokens 24]

Cases: ReLU² and SiLU, GQA and MHA, tied and untied; all bf16 latent weights (online
AutoBitLinear) saved with a small max_shard_size (3+ shards and model.safetensors.index.json),
plus one offline case (packed uint8 + weight_scale, the transformers `autobitlinear` class).

One line per case and stage: max |Δlogit| and the max relative difference max|Δ| / max|ref|
against transformers, PASS if the relative difference is <= --tol (default 1e-3, the tolerance of
tools/check_hf.py). Exit status 1 if any case fails. No network: the models come from
BitNetConfig + from_config-style construction, never from the Hub.

transformers computes the w158a8 arithmetic with quantization_config {quant_method: bitnet,
linear_class: autobitlinear, quantization_mode: online}: WeightQuant (absmean ternary) on the
latent weights and ActQuant (INT8 absmax per token) on every BitLinear input (docs/EXPORT.md).
As in tools/check_hf.py, torch.compile is disabled (TORCHDYNAMO_DISABLE=1; transformers decorates
those quantizers with @torch.compile), TF32 is off, the forward runs in fp32 (the bf16 weights
upcast: bitnet imports them as fp32 too) with eager attention.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

try:
    import numpy as np
except ImportError:
    sys.exit("error: tools/check_hf_import.py needs numpy (and torch + transformers)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_hf import read_st  # noqa: E402  (the safetensors reader of the export check)

CASES = [  # name, hidden_act, heads, kv heads, tied, layout
    ("relu2-gqa-tied", "relu2", 4, 2, True, "online"),
    ("relu2-gqa-untied", "relu2", 4, 1, False, "online"),
    ("silu-mha-tied", "silu", 4, 4, True, "online"),
    ("silu-gqa-untied", "silu", 4, 2, False, "online"),
    ("relu2-gqa-untied-offline", "relu2", 4, 2, False, "offline"),
]


def run(cmd, log):
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}); last lines of {log}:\n"
                           + "".join(open(log).readlines()[-15:]))


def pack(codes):
    """transformers' offline layout (integrations/bitnet.py pack_weights / unpack_weights): int8
    codes [4R, in] in {-1, 0, 1} -> uint8 [R, in], byte [r, c] = sum_i (codes[i*R + r, c] + 1) << 2i."""
    R = codes.shape[0] // 4
    u = (codes.to(torch_mod().int32) + 1)
    out = u[0:R].clone()
    for i in range(1, 4):
        out |= u[i * R:(i + 1) * R] << (2 * i)
    return out.to(torch_mod().uint8)


def torch_mod():
    import torch
    return torch


def quant_config(layout):
    return {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": layout,
            "modules_to_not_convert": None, "use_rms_norm": False}


def make_case(torch, transformers, name, act, heads, kv, tied, layout, d, seed):
    """A random BitNetForCausalLM saved to d (bf16, sharded); returns the config dict."""
    from transformers import BitNetConfig, BitNetForCausalLM
    torch.manual_seed(seed)
    cfg = BitNetConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=heads, num_key_value_heads=kv, hidden_act=act,
                       max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                       bos_token_id=1, eos_token_id=2)  # rope_theta: BitNetConfig's default
    model = BitNetForCausalLM(cfg).eval()  # plain nn.Linear: the latent weights
    with torch.no_grad():  # move norm gains and weights away from their init so they all matter
        for n, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    if layout == "online":
        model = model.to(torch.bfloat16)
        model.save_pretrained(d, safe_serialization=True, max_shard_size="200KB")
        c = json.load(open(os.path.join(d, "config.json")))
        c["quantization_config"] = quant_config("online")
        json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=2)
    else:  # offline: packed codes, weight_scale = mean|W| (the autobitlinear convention)
        model.save_pretrained(d, safe_serialization=True, max_shard_size="200KB")
        from safetensors.torch import load_file, save_file
        idx_path = os.path.join(d, "model.safetensors.index.json")
        files = sorted(set(json.load(open(idx_path))["weight_map"].values())) if os.path.exists(idx_path) \
            else ["model.safetensors"]
        wm = {}
        for f in files:
            sd = load_file(os.path.join(d, f))
            out = {}
            for k, w in sd.items():
                if k.endswith("_proj.weight"):
                    w = w.float()
                    a = w.abs().mean().clamp(min=1e-5)
                    codes = (w / a).round().clamp(-1, 1)
                    out[k] = pack(codes.to(torch.int8))
                    out[k[:-len("weight")] + "weight_scale"] = a.reshape(1).float()
                    wm[k[:-len("weight")] + "weight_scale"] = f
                else:
                    out[k] = w
                wm[k] = f
            save_file(out, os.path.join(d, f), metadata={"format": "pt"})
        if os.path.exists(idx_path):
            idx = json.load(open(idx_path))
            idx["weight_map"] = wm
            json.dump(idx, open(idx_path, "w"), indent=2)
        c = json.load(open(os.path.join(d, "config.json")))
        c["quantization_config"] = quant_config("offline")
        json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=2)
    return json.load(open(os.path.join(d, "config.json")))


def hf_logits(torch, d, ids, dev):
    from transformers import BitNetForCausalLM
    m = BitNetForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    m = m.to(dev).eval()
    q = m.model.layers[0].self_attn.q_proj
    kind = f"{type(q).__name__}(online_quant={getattr(q, 'online_quant', '?')})"
    with torch.no_grad():
        out = m(torch.tensor([ids], device=dev)).logits[0].float().cpu().numpy().astype(np.float64)
    return out, kind


def bitnet_logits(bitnet, d, ids, dump, log):
    run([bitnet, "eval", d, "--mode", "w158a8", "--no-attn", "--dump-logits", dump,
         "--tokens", ",".join(map(str, ids))], log)
    t, _ = read_st(dump)
    return t["logits_float"].astype(np.float64), t["logits"].astype(np.float64)


def compare(got, want):
    diff = np.abs(got - want)
    return float(diff.max()), float(diff.max() / max(np.abs(want).max(), 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bitnet", required=True, help="the bitnet binary (build/release/trainers/bitnet)")
    ap.add_argument("--out", required=True, help="work directory (created; cases written below it)")
    ap.add_argument("--device", default=None, help="transformers device (default: cuda if available)")
    ap.add_argument("--tol", type=float, default=1e-3, help="max relative logits difference (default 1e-3)")
    ap.add_argument("--tokens", type=int, default=24, help="sequence length of the check (default 24)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    if not (os.path.isfile(a.bitnet) and os.access(a.bitnet, os.X_OK)):
        print(f"error: --bitnet {a.bitnet}: not an executable file (build it: cmake --build --preset release)")
        return 2
    try:
        import torch
        import transformers
        from transformers import BitNetConfig  # noqa: F401  (BitNet support: transformers >= 4.52)
    except ImportError as e:
        print(f"error: this check needs torch and a transformers with BitNet support: {e}")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(a.out, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {dev}; "
          f"{a.tokens} tokens; tolerance: max relative difference {a.tol:g}")

    rng = np.random.default_rng(a.seed)
    ids = [1] + [int(x) for x in rng.integers(3, 512, a.tokens - 1)]
    results = []  # (case, stage, max|Δ|, rel, ok, note)
    for i, (name, act, heads, kv, tied, layout) in enumerate(CASES):
        d = os.path.join(a.out, name)
        shutil.rmtree(d, ignore_errors=True)
        try:
            make_case(torch, transformers, name, act, heads, kv, tied, layout, d, a.seed + i)
            shards = len([f for f in os.listdir(d) if f.endswith(".safetensors")])
            want, kind = hf_logits(torch, d, ids, dev)
            flt, integer = bitnet_logits(a.bitnet, d, ids, os.path.join(a.out, name + ".dump.safetensors"),
                                         os.path.join(a.out, name + ".eval.log"))
            mx, rel = compare(flt, want)
            results.append((name, "import (bitnet eval, logits_float)", mx, rel, rel <= a.tol,
                            f"{kind}, {shards} shards, {layout}"))
            mx, rel = compare(integer, want)  # information: the integer inference engine
            results.append((name, "import (integer engine, info only)", mx, rel, None, ""))
            # Round trip: export the imported model, transformers on the export.
            x = os.path.join(a.out, name + ".export")
            shutil.rmtree(x, ignore_errors=True)
            run([a.bitnet, "export", d, "--format", "hf", "--out", x], os.path.join(a.out, name + ".export.log"))
            back, kind2 = hf_logits(torch, x, ids, dev)
            mx, rel = compare(back, want)
            results.append((name, "round trip (transformers on bitnet's export)", mx, rel, rel <= a.tol, kind2))
        except Exception as e:  # report and go on with the other cases
            results.append((name, "ERROR", float("nan"), float("nan"), False, f"{type(e).__name__}: {e}"))

    bad = 0
    for name, stage, mx, rel, ok, note in results:
        bad += ok is False
        print(f"{'info' if ok is None else 'PASS' if ok else 'FAIL'}  {name:26s} {stage:46s} max|Δlogit| {mx:.3e}  "
              f"max relative {rel:.3e} (tol {a.tol:g})  [{note}]")
    counted = sum(ok is not None for *_, ok, _ in results)
    print("OK" if not bad else f"FAILED: {bad} of {counted}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
