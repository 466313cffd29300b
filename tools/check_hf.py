#!/usr/bin/env python3
"""Loads `bitnet export` Hugging Face directories with transformers' BitNetForCausalLM and compares
their logits with the C++ model's (for the machine that has torch + transformers + accelerate).

    bitnet export RUN --format hf         --out hf_online  --reference ref.safetensors
    bitnet export RUN --format hf-offline --out hf_offline
    python3 tools/check_hf.py --reference ref.safetensors --online hf_online --offline hf_offline \
        [--device cuda] [--tol 1e-3] [--out hf_logits.safetensors] [--emulate]

ref.safetensors (written by `bitnet export --reference`) holds `input_ids` I32 [1, T],
`logits.w158a8` F32 [T, V] (the C++ forward with ternary weights and INT8 absmax per-token
activations on every BitLinear input: the arithmetic transformers' AutoBitLinear computes),
`logits.trained` (the mode the model was saved in, e.g. a4.8: shown for information only) and,
when the model has a tokenizer, `tokenizer.text` / `tokenizer.ids` (checked against AutoTokenizer).

Prints, per export, max |Δ| and the max relative difference max|Δ| / max|ref|; exits 1 if a
relative difference exceeds --tol, a tokenization differs, or a load fails.
torch.compile is disabled (TORCHDYNAMO_DISABLE=1) unless --compile: transformers decorates its
BitNet quantizers with @torch.compile, and eager mode keeps the arithmetic plain fp32. TF32 is off.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

DT = {"F32": "<f4", "I32": "<i4", "U8": "u1", "F16": "<f2", "I64": "<i8"}


def read_st(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    meta = h.pop("__metadata__", {})
    out = {}
    for k, v in h.items():
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out, meta


def write_st(path, tensors):
    names = {np.dtype("<f4"): "F32", np.dtype("<i4"): "I32"}
    header, blobs, off = {}, [], 0
    for k, a in tensors.items():
        a = np.ascontiguousarray(a)
        raw = a.tobytes()
        header[k] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    js = json.dumps(header).encode()
    js += b" " * ((-len(js)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + b"".join(blobs))


def emulate(d, ids, torch):
    """A plain-torch transcription of what transformers computes for BitNetForCausalLM with
    AutoBitLinear (modeling_bitnet.py + integrations/bitnet.py), reading the exported files
    directly: for machines without transformers, and as a check of our reading of that code."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    st, _ = read_st(os.path.join(d, "model.safetensors"))
    W = {k: torch.tensor(np.array(v)) for k, v in st.items()}
    offline = cfg["quantization_config"]["quantization_mode"] == "offline"
    H, Hkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    hd, eps, L = D // H, cfg["rms_norm_eps"], cfg["num_hidden_layers"]

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def act_quant(x):  # ActQuant: INT8 absmax per token
        s = 127 / x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
        return (x * s).round().clamp(-128, 127) / s

    def lin(x, name):
        w = W[name + ".weight"]
        if offline:  # unpack_weights: row i*R + r from bits 2i of byte [r], minus 1; output * weight_scale
            R = w.shape[0]
            codes = torch.cat([((w.to(torch.int32) >> (2 * i)) & 3) for i in range(4)], 0).float() - 1
            return torch.nn.functional.linear(act_quant(x), codes) * W[name + ".weight_scale"]
        s = 1.0 / w.abs().mean().clamp(min=1e-5)  # WeightQuant
        return torch.nn.functional.linear(act_quant(x), (w * s).round().clamp(-1, 1) / s)

    T = ids.shape[1]
    x = W["model.embed_tokens.weight"][ids[0].cpu()]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    fr = torch.arange(T).float()[:, None] * inv[None, :]
    emb = torch.cat((fr, fr), -1)
    cos, sin = emb.cos(), emb.sin()
    rot = lambda t: torch.cat((-t[..., hd // 2:], t[..., :hd // 2]), -1)
    mask = torch.full((T, T), float("-inf")).triu(1)
    act = (lambda g: torch.relu(g) ** 2) if cfg["hidden_act"] == "relu2" else torch.nn.functional.silu
    for i in range(L):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").view(T, H, hd).transpose(0, 1)
        k = lin(h, p + "self_attn.k_proj").view(T, Hkv, hd).transpose(0, 1)
        v = lin(h, p + "self_attn.v_proj").view(T, Hkv, hd).transpose(0, 1)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
        a = torch.softmax(q @ k.transpose(1, 2) * hd ** -0.5 + mask, -1) @ v
        a = rms(a.transpose(0, 1).reshape(T, D), W[p + "self_attn.attn_sub_norm.weight"])
        x = x + lin(a, p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        m = act(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj")
        x = x + lin(rms(m, W[p + "mlp.ffn_sub_norm.weight"]), p + "mlp.down_proj")
    x = rms(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return (x @ head.T).double().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--online")
    ap.add_argument("--offline")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--tol", type=float, default=1e-3, help="max relative logits difference (default 1e-3)")
    ap.add_argument("--out", help="write the transformers logits here (safetensors)")
    ap.add_argument("--compile", action="store_true", help="leave torch.compile enabled")
    ap.add_argument("--emulate", action="store_true",
                    help="no transformers: run a plain-torch transcription of its BitNet forward instead")
    a = ap.parse_args()
    if not a.compile:
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

    import torch
    if a.emulate:
        ref, meta = read_st(a.reference)
        ids = torch.tensor(ref["input_ids"].astype(np.int64))
        want = ref["logits.w158a8"].astype(np.float64)
        bad = []
        for tag, d in (("online", a.online), ("offline", a.offline)):
            if d:
                got = emulate(d, ids, torch)
                rel = float(np.abs(got - want).max() / np.abs(want).max())
                print(f"== {tag} (emulated transformers forward): max relative {rel:.3e} vs C++ w158a8")
                if not rel <= a.tol:
                    bad.append(tag)
        print("FAILED: " + ", ".join(bad) if bad else "OK")
        return 1 if bad else 0
    import transformers
    from transformers import AutoTokenizer, BitNetForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ref, meta = read_st(a.reference)
    ids = torch.tensor(ref["input_ids"].astype(np.int64), device=dev)
    want = ref["logits.w158a8"].astype(np.float64)
    trained = ref.get("logits.trained")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {dev}; "
          f"{ids.shape[1]} tokens, vocab {want.shape[1]}; model saved in mode {meta.get('trained_mode')}")

    failures, outputs = [], {}
    for tag, d in (("online", a.online), ("offline", a.offline)):
        if not d:
            continue
        print(f"== {tag}: {d}")
        try:
            model = BitNetForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
            model = model.to(dev).eval()
        except Exception as e:  # report and go on with the other export
            failures.append(f"{tag}: load failed: {type(e).__name__}: {e}")
            print(f"  LOAD FAILED: {type(e).__name__}: {e}")
            continue
        q = model.model.layers[0].self_attn.q_proj
        info = f"  q_proj: {type(q).__name__}"
        if hasattr(q, "online_quant"):
            info += f", online_quant={q.online_quant}"
        if hasattr(q, "weight_scale"):
            info += f", weight_scale={float(q.weight_scale.reshape(-1)[0]):.6g}"
        w = q.weight.detach().float()
        info += f", weight {tuple(w.shape)} {w.dtype}, {int(torch.unique(w).numel())} distinct values"
        print(info)
        with torch.no_grad():
            got = model(ids).logits[0].float().cpu().numpy().astype(np.float64)
        outputs[f"logits.{tag}"] = got.astype(np.float32)
        if got.shape != want.shape:
            failures.append(f"{tag}: logits shape {got.shape}, want {want.shape}")
            continue
        diff = np.abs(got - want)
        rel = float(diff.max() / max(np.abs(want).max(), 1e-30))
        agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
        print(f"  vs C++ w158a8: max|Δ| {diff.max():.3e}, max relative {rel:.3e}, argmax agreement {agree:.3f}")
        if trained is not None and meta.get("trained_mode") != "w158a8":
            rt = float(np.abs(got - trained).max() / max(np.abs(trained).max(), 1e-30))
            print(f"  (vs C++ {meta.get('trained_mode')} logits: max relative {rt:.3e}; transformers has no "
                  f"INT4/top-K path, so this difference is expected)")
        if not rel <= a.tol:
            failures.append(f"{tag}: max relative difference {rel:.3e} > tol {a.tol:g}")
        if "tokenizer.text" in ref and os.path.exists(os.path.join(d, "tokenizer.model")):
            text = ref["tokenizer.text"].tobytes().decode("utf-8")
            want_ids = [int(x) for x in ref["tokenizer.ids"]]
            for fast in (False, True):
                try:
                    tok = AutoTokenizer.from_pretrained(d, use_fast=fast)
                    got_ids = tok(text, add_special_tokens=False)["input_ids"]
                    ok = got_ids == want_ids
                    print(f"  tokenizer ({type(tok).__name__}): {'matches' if ok else 'DIFFERS'} on {text!r}")
                    if not ok:
                        print(f"    transformers {got_ids}\n    bitnet       {want_ids}")
                        failures.append(f"{tag}: {type(tok).__name__} tokenization differs")
                except Exception as e:
                    print(f"  tokenizer (use_fast={fast}) failed: {type(e).__name__}: {e}")
                    failures.append(f"{tag}: tokenizer use_fast={fast} failed: {e}")
    if a.out and outputs:
        outputs["input_ids"] = ref["input_ids"].astype(np.int32)
        write_st(a.out, outputs)
        print(f"wrote {a.out}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
