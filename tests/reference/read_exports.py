#!/usr/bin/env python3
"""Independent reader/checker of `bitnet export` outputs (struct + json + numpy only).

Parses, from the bytes up and without using the exporter's code:
  * Hugging Face directories: config.json and model.safetensors, in both quantization layouts
    (online: F32 latent weights; offline: uint8 [out/4, in] ternary codes, unpacked here, times
    `<name>.weight_scale`), plus the tokenizer files when present;
  * GGUF v3 files: header, typed metadata, tensor infos, alignment, tensor data (F32 / F16);
  * optionally the SentencePiece model (a minimal protobuf walk) to check the GGUF vocabulary.
Everything is compared with a reference safetensors file of the latent weights (HF names) whose
__metadata__ carries the model shape (vocab_size, d_model, n_layers, n_heads, n_kv_heads,
ffn_dim, tie_embeddings, rope_theta, norm_eps, context_length). Ternarization is recomputed here
from SPEC §2: a = max(mean|W|, 1e-5), s = fl32(1/a), c = clip(rint(W*s), -1, 1), Wq = c/s.

Exit status 0 when everything matches; otherwise every mismatch is printed and the status is 1.
  read_exports.py --reference latent.safetensors|run/model.safetensors [--hf DIR] [--hf-offline DIR] [--gguf FILE]
                  [--gguf-f16 FILE] [--tokenizer tokenizer.model]
  read_exports.py --selftest
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

ERRORS = []


def err(msg):
    ERRORS.append(msg)
    print("MISMATCH: " + msg)


def check(cond, msg):
    if not cond:
        err(msg)
    return cond


# ---- safetensors ------------------------------------------------------------------------------

ST_DTYPES = {"F32": "<f4", "F16": "<f2", "U8": "u1", "I8": "i1", "I32": "<i4", "I64": "<i8", "F64": "<f8"}


def read_safetensors(path):
    """-> (ordered list of (name, dtype, shape, array), metadata). Checks the container layout."""
    with open(path, "rb") as f:
        raw = f.read()
    check(len(raw) >= 8, f"{path}: too short")
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__", {})
    entries = []
    for name, info in header.items():
        entries.append((info["data_offsets"][0], name, info))
    entries.sort()
    out = []
    expect = 0
    for begin, name, info in entries:
        end = info["data_offsets"][1]
        dt = np.dtype(ST_DTYPES[info["dtype"]])
        count = int(np.prod(info["shape"], dtype=np.int64)) if info["shape"] else 1
        check(begin == expect, f"{path}: {name} starts at {begin}, expected {expect} (data must be contiguous)")
        check(end - begin == count * dt.itemsize, f"{path}: {name} spans {end - begin} bytes, shape needs "
                                                  f"{count * dt.itemsize}")
        arr = np.frombuffer(data[begin:end], dtype=dt).reshape(info["shape"])
        out.append((name, info["dtype"], list(info["shape"]), arr))
        expect = end
    check(expect == len(data), f"{path}: {len(data) - expect} trailing bytes after the last tensor")
    return out, meta


# ---- ternarization (SPEC §2), recomputed independently ------------------------------------------

def ternary(w):
    """-> (codes int8, a float32, wq float32)."""
    w = np.asarray(w, dtype=np.float32)
    a = np.float32(max(float(np.mean(np.abs(w.astype(np.float64)))), 1e-5))
    s = np.float32(1.0) / a
    codes = np.clip(np.rint(w * s), -1, 1).astype(np.int8)
    wq = (codes.astype(np.float32) / s).astype(np.float32)
    return codes, a, wq


def codes_with_scale(w, a):
    s = np.float32(1.0) / np.float32(a)
    return np.clip(np.rint(np.asarray(w, np.float32) * s), -1, 1).astype(np.int8)


def unpack(packed):
    """uint8 [R, in] -> int8 [4R, in]: row i*R + r comes from bits 2i..2i+1 of byte [r, :], minus 1."""
    R = packed.shape[0]
    out = np.zeros((4 * R,) + packed.shape[1:], dtype=np.int8)
    for i in range(4):
        out[i * R:(i + 1) * R] = ((packed >> (2 * i)) & 3).astype(np.int8) - 1
    return out


def pack(codes):
    R = codes.shape[0] // 4
    p = np.zeros((R,) + codes.shape[1:], dtype=np.uint8)
    for i in range(4):
        p |= ((codes[i * R:(i + 1) * R] + 1).astype(np.uint8) << (2 * i))
    return p


BITLINEAR = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
             "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


def is_bitlinear(name):
    return name.endswith(BITLINEAR)


# ---- reference ----------------------------------------------------------------------------------

class Reference:
    """The latent weights. Either a file with the shape in __metadata__ (what test_export_hf writes),
    or a trainer model file (model.safetensors of a run: optimizer moments and the embedded
    tokenizer are skipped); for the latter, the sizes come from the tensor shapes and the head
    counts / rope_theta / eps / context length from the exported config.json (`hint`)."""

    def __init__(self, path, hint=None):
        tensors, meta = read_safetensors(path)
        tensors = [t for t in tensors if not t[0].startswith("optim.") and t[0] != "tokenizer.model"]
        self.w = {n: a for n, _, _, a in tensors}
        self.order = [n for n, _, _, _ in tensors]
        self.m = meta
        if "n_heads" not in meta:
            if hint is None:
                raise SystemExit(f"{path}: no shape metadata; give --hf or --hf-offline so config.json supplies it")
            emb = self.w["model.embed_tokens.weight"]
            meta = dict(meta)
            meta.update({
                "vocab_size": emb.shape[0], "d_model": emb.shape[1],
                "n_layers": sum(1 for n in self.w if n.endswith(".input_layernorm.weight")),
                "ffn_dim": self.w["model.layers.0.mlp.gate_proj.weight"].shape[0],
                "tie_embeddings": "false" if "lm_head.weight" in self.w else "true",
                "n_heads": hint["num_attention_heads"], "n_kv_heads": hint["num_key_value_heads"],
                "rope_theta": hint["rope_theta"], "norm_eps": hint["rms_norm_eps"],
                "context_length": hint["max_position_embeddings"]})
            print(f"reference {path}: shape from tensors, heads/theta/eps/context from config.json")
        g = lambda k: int(meta[k])
        self.V, self.d, self.L = g("vocab_size"), g("d_model"), g("n_layers")
        self.H, self.Hkv, self.F = g("n_heads"), g("n_kv_heads"), g("ffn_dim")
        self.ctx = g("context_length")
        self.tied = meta["tie_embeddings"] == "true"
        self.theta = float(meta["rope_theta"])
        self.eps = float(meta["norm_eps"])
        hd = self.d // self.H
        want = {"model.embed_tokens.weight": [self.V, self.d], "model.norm.weight": [self.d]}
        if not self.tied:
            want["lm_head.weight"] = [self.V, self.d]
        for i in range(self.L):
            p = f"model.layers.{i}."
            want.update({
                p + "input_layernorm.weight": [self.d], p + "post_attention_layernorm.weight": [self.d],
                p + "self_attn.q_proj.weight": [self.H * hd, self.d],
                p + "self_attn.k_proj.weight": [self.Hkv * hd, self.d],
                p + "self_attn.v_proj.weight": [self.Hkv * hd, self.d],
                p + "self_attn.o_proj.weight": [self.d, self.H * hd],
                p + "self_attn.attn_sub_norm.weight": [self.d],
                p + "mlp.gate_proj.weight": [self.F, self.d], p + "mlp.up_proj.weight": [self.F, self.d],
                p + "mlp.down_proj.weight": [self.d, self.F], p + "mlp.ffn_sub_norm.weight": [self.F]})
        check(set(want) == set(self.w), f"reference: names differ from the expected HF set: "
                                        f"missing {sorted(set(want) - set(self.w))}, extra {sorted(set(self.w) - set(want))}")
        for n, s in want.items():
            if n in self.w:
                check(list(self.w[n].shape) == s, f"reference: {n} has shape {list(self.w[n].shape)}, want {s}")
        self.shapes = want


# ---- Hugging Face -------------------------------------------------------------------------------

def check_hf(ref, d, offline):
    tag = "hf-offline" if offline else "hf"
    print(f"[{tag}] {d}")
    cfg = json.load(open(os.path.join(d, "config.json")))
    expect = {
        "model_type": "bitnet", "architectures": ["BitNetForCausalLM"], "hidden_size": ref.d,
        "intermediate_size": ref.F, "num_hidden_layers": ref.L, "num_attention_heads": ref.H,
        "num_key_value_heads": ref.Hkv, "vocab_size": ref.V, "tie_word_embeddings": ref.tied,
        "attention_bias": False, "torch_dtype": "float32", "max_position_embeddings": ref.ctx,
    }
    for k, v in expect.items():
        check(cfg.get(k) == v, f"{tag} config.json: {k} = {cfg.get(k)!r}, want {v!r}")
    check(cfg.get("hidden_act") in ("relu2", "silu"), f"{tag} config.json: hidden_act {cfg.get('hidden_act')!r}")
    check(abs(cfg.get("rms_norm_eps", -1) - ref.eps) <= 1e-12, f"{tag} config.json: rms_norm_eps {cfg.get('rms_norm_eps')}")
    check(abs(cfg.get("rope_theta", -1) - ref.theta) <= 1e-6, f"{tag} config.json: rope_theta {cfg.get('rope_theta')}")
    q = cfg.get("quantization_config", {})
    check(q.get("quant_method") == "bitnet", f"{tag}: quant_method {q.get('quant_method')!r}")
    check(q.get("linear_class") == "autobitlinear", f"{tag}: linear_class {q.get('linear_class')!r}")
    check(q.get("quantization_mode") == ("offline" if offline else "online"),
          f"{tag}: quantization_mode {q.get('quantization_mode')!r}")

    tensors, meta = read_safetensors(os.path.join(d, "model.safetensors"))
    check(meta.get("format") == "pt", f"{tag}: __metadata__ format {meta.get('format')!r}")
    got = {n: (dt, sh, a) for n, dt, sh, a in tensors}
    want_names = set(ref.shapes)
    if offline:
        want_names |= {n[:-len("weight")] + "weight_scale" for n in ref.shapes if is_bitlinear(n)}
    check(set(got) == want_names, f"{tag}: tensor names differ: missing {sorted(want_names - set(got))}, "
                                  f"extra {sorted(set(got) - want_names)}")
    check(("lm_head.weight" in got) == (not ref.tied), f"{tag}: lm_head.weight presence vs tie_embeddings={ref.tied}")
    n_packed = 0
    for n, shape in ref.shapes.items():
        if n not in got:
            continue
        dt, sh, a = got[n]
        w = ref.w[n]
        if offline and is_bitlinear(n):
            n_packed += 1
            out, inn = shape
            check(dt == "U8" and sh == [out // 4, inn], f"{tag}: {n} is {dt} {sh}, want U8 {[out // 4, inn]}")
            sname = n[:-len("weight")] + "weight_scale"
            if sname not in got:
                continue
            sdt, ssh, sa = got[sname]
            check(sdt == "F32" and ssh == [1], f"{tag}: {sname} is {sdt} {ssh}, want F32 [1]")
            scale = np.float32(sa.reshape(-1)[0])
            codes_ref, a_ref, wq_ref = ternary(w)
            check(abs(float(scale) - float(a_ref)) <= 1e-6 * float(a_ref),
                  f"{tag}: {sname} = {scale!r}, mean|W| = {a_ref!r}")
            codes = unpack(a)
            check(np.array_equal(codes, codes_with_scale(w, scale)), f"{tag}: {n}: unpacked codes differ from "
                  f"clip(rint(W/a)) ({int(np.sum(codes != codes_with_scale(w, scale)))} entries)")
            check(np.all(np.isin(a & 3, [0, 1, 2])) and np.all(np.isin((a >> 6) & 3, [0, 1, 2])),
                  f"{tag}: {n}: 2-bit field value 3 (codes must be q+1 in 0..2)")
            deq = codes.astype(np.float32) * scale
            err_ = float(np.max(np.abs(deq - wq_ref))) if deq.size else 0.0
            check(err_ <= 1e-6 * float(scale), f"{tag}: {n}: codes*weight_scale differs from a*round(W/a) by {err_}")
        else:
            check(dt == "F32" and sh == shape, f"{tag}: {n} is {dt} {sh}, want F32 {shape}")
            if dt == "F32" and sh == shape:
                check(np.array_equal(a.view(np.uint32), w.view(np.uint32)), f"{tag}: {n}: values differ from the latent")
    if offline:
        print(f"  {n_packed} packed BitLinear weights unpacked and re-scaled")
    tok = os.path.join(d, "tokenizer.model")
    if os.path.exists(tok):
        tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
        check(tc.get("tokenizer_class") == "LlamaTokenizer", f"{tag}: tokenizer_class {tc.get('tokenizer_class')!r}")
        check(tc.get("add_bos_token") is True and tc.get("add_eos_token") is False, f"{tag}: add_bos/eos_token")
        for f in ("special_tokens_map.json", "generation_config.json"):
            check(os.path.exists(os.path.join(d, f)), f"{tag}: {f} missing")
    print(f"  {len(tensors)} tensors checked")


# ---- GGUF ---------------------------------------------------------------------------------------

GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "string",
              9: "array", 10: "u64", 11: "i64", 12: "f64"}


class Cursor:
    def __init__(self, b):
        self.b, self.p = b, 0

    def take(self, fmt):
        n = struct.calcsize(fmt)
        if self.p + n > len(self.b):
            raise ValueError("truncated")
        (v,) = struct.unpack_from(fmt, self.b, self.p)
        self.p += n
        return v

    def string(self):
        n = self.take("<Q")
        s = self.b[self.p:self.p + n]
        if len(s) != n:
            raise ValueError("truncated string")
        self.p += n
        return s.decode("utf-8")

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("<I"), self.take("<Q")
            return (et, [self.value(et) for _ in range(n)])
        return self.take(GGUF_SCALAR[t])


def read_gguf(path):
    b = open(path, "rb").read()
    c = Cursor(b)
    check(b[:4] == b"GGUF", f"{path}: magic {b[:4]!r}")
    c.p = 4
    version, nt, nkv = c.take("<I"), c.take("<Q"), c.take("<Q")
    kv = {}
    for _ in range(nkv):
        k = c.string()
        t = c.take("<I")
        check(k not in kv, f"{path}: duplicate key {k}")
        kv[k] = (t, c.value(t))
    infos = []
    for _ in range(nt):
        name = c.string()
        nd = c.take("<I")
        ne = [c.take("<Q") for _ in range(nd)]
        infos.append((name, ne, c.take("<I"), c.take("<Q")))
    align = kv.get("general.alignment", (4, 32))[1]
    start = (c.p + align - 1) // align * align
    return version, kv, infos, start, b


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    i, rest = parts[2], ".".join(parts[3:])
    m = {"input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
         "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
         "self_attn.attn_sub_norm.weight": "attn_sub_norm", "post_attention_layernorm.weight": "ffn_norm",
         "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
         "mlp.ffn_sub_norm.weight": "ffn_sub_norm"}
    return f"blk.{i}.{m[rest]}.weight"


def sp_pieces(path):
    """SentencePiece ModelProto: repeated pieces (field 1) {piece=1 string, score=2 float, type=3 enum}."""
    b = open(path, "rb").read()

    def varint(p):
        v = s = 0
        while True:
            x = b[p]
            p += 1
            v |= (x & 0x7F) << s
            s += 7
            if not x & 0x80:
                return v, p

    pieces, p = [], 0
    while p < len(b):
        key, p = varint(p)
        f, wt = key >> 3, key & 7
        if wt == 2:
            n, p = varint(p)
            body, p = b[p:p + n], p + n
            if f == 1:
                piece, score, typ, q = "", 0.0, 1, 0
                while q < len(body):
                    k2, q = varint_in(body, q)
                    f2, w2 = k2 >> 3, k2 & 7
                    if f2 == 1 and w2 == 2:
                        n2, q = varint_in(body, q)
                        piece, q = body[q:q + n2].decode("utf-8"), q + n2
                    elif f2 == 2 and w2 == 5:
                        (score,) = struct.unpack_from("<f", body, q)
                        q += 4
                    elif f2 == 3 and w2 == 0:
                        typ, q = varint_in(body, q)
                    else:
                        q = skip_in(body, q, w2)
                pieces.append((piece, np.float32(score), typ))
        elif wt == 0:
            _, p = varint(p)
        elif wt == 5:
            p += 4
        elif wt == 1:
            p += 8
        else:
            raise ValueError("bad proto")
    return pieces


def varint_in(b, p):
    v = s = 0
    while True:
        x = b[p]
        p += 1
        v |= (x & 0x7F) << s
        s += 7
        if not x & 0x80:
            return v, p


def skip_in(b, p, wt):
    if wt == 0:
        return varint_in(b, p)[1]
    if wt == 1:
        return p + 8
    if wt == 5:
        return p + 4
    if wt == 2:
        n, p = varint_in(b, p)
        return p + n
    raise ValueError("bad wire type")


def check_gguf(ref, path, f16, pieces):
    tag = "gguf-f16" if f16 else "gguf"
    print(f"[{tag}] {path}")
    version, kv, infos, start, b = read_gguf(path)
    check(version == 3, f"{tag}: version {version}")
    arch = kv.get("general.architecture", (None, None))
    check(arch[0] == 8 and arch[1] in ("bitnet-b1.58", "bitnet"), f"{tag}: general.architecture {arch}")
    A = arch[1]
    want = {
        "general.name": (8, None), "general.alignment": (4, 32),
        f"{A}.context_length": (4, ref.ctx), f"{A}.embedding_length": (4, ref.d), f"{A}.block_count": (4, ref.L),
        f"{A}.feed_forward_length": (4, ref.F), f"{A}.attention.head_count": (4, ref.H),
        f"{A}.attention.head_count_kv": (4, ref.Hkv), f"{A}.vocab_size": (4, ref.V),
        f"{A}.rope.dimension_count": (4, ref.d // ref.H),
        f"{A}.rope.freq_base": (6, np.float32(ref.theta)), f"{A}.attention.layer_norm_rms_epsilon": (6, np.float32(ref.eps)),
        "tokenizer.ggml.model": (8, "llama"), "tokenizer.ggml.bos_token_id": (4, None),
        "tokenizer.ggml.eos_token_id": (4, None), "tokenizer.ggml.unknown_token_id": (4, None),
        "tokenizer.ggml.add_bos_token": (7, True),
    }
    for k, (t, v) in want.items():
        if k not in kv:
            err(f"{tag}: metadata key {k} missing")
            continue
        gt, gv = kv[k]
        check(gt == t, f"{tag}: {k} has type {TYPE_NAMES.get(gt)}, want {TYPE_NAMES[t]}")
        if v is not None:
            check((np.float32(gv) == v) if t == 6 else gv == v, f"{tag}: {k} = {gv!r}, want {v!r}")
    for k, et in (("tokenizer.ggml.tokens", 8), ("tokenizer.ggml.scores", 6), ("tokenizer.ggml.token_type", 5)):
        if k not in kv:
            err(f"{tag}: {k} missing")
            continue
        t, (gt, vals) = kv[k]
        check(t == 9 and gt == et, f"{tag}: {k} is {TYPE_NAMES.get(t)} of {TYPE_NAMES.get(gt)}, want array of {TYPE_NAMES[et]}")
        check(len(vals) == ref.V, f"{tag}: {k} has {len(vals)} entries, vocab_size {ref.V}")
    if all(k in kv for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")):
        types = kv["tokenizer.ggml.token_type"][1][1]
        check(all(1 <= t <= 6 for t in types), f"{tag}: token types outside 1..6")
        for k in ("bos", "eos", "unknown"):
            key = f"tokenizer.ggml.{k}_token_id"
            if key in kv:
                check(kv[key][1] < ref.V, f"{tag}: {key} {kv[key][1]} >= vocab")
        if pieces is not None:
            toks, scores = kv["tokenizer.ggml.tokens"][1][1], kv["tokenizer.ggml.scores"][1][1]
            for i, (p, s, t) in enumerate(pieces[:ref.V]):
                if toks[i] != p or np.float32(scores[i]) != s or types[i] != t:
                    err(f"{tag}: token {i} is ({toks[i]!r}, {scores[i]}, {types[i]}), tokenizer.model has ({p!r}, {s}, {t})")
                    break
            check(kv["tokenizer.ggml.bos_token_id"][1] == next(i for i, x in enumerate(pieces) if x[0] == "<s>"),
                  f"{tag}: bos id")

    names = [n for n, _, _, _ in infos]
    want_names = [gguf_name(n) for n in ref.order]
    check(sorted(names) == sorted(want_names), f"{tag}: tensor names differ: missing {sorted(set(want_names) - set(names))}, "
                                               f"extra {sorted(set(names) - set(want_names))}")
    check(("output.weight" in names) == (not ref.tied), f"{tag}: output.weight presence vs tie_embeddings={ref.tied}")
    align = kv.get("general.alignment", (4, 32))[1]
    prev_end = 0
    by_gguf = {gguf_name(n): n for n in ref.order}
    for name, ne, typ, off in infos:  # tensor-info order must be data order
        check(off % align == 0, f"{tag}: {name} offset {off} not aligned to {align}")
        check(off >= prev_end, f"{tag}: {name} at {off} overlaps the previous tensor (ends {prev_end}) / out of order")
        hf = by_gguf.get(name)
        if hf is None:
            continue
        shape = ref.shapes[hf]
        check(ne == shape[::-1], f"{tag}: {name} ne {ne}, want {shape[::-1]} (innermost first)")
        bl = is_bitlinear(hf)
        want_t = 1 if (f16 and bl) else 0
        check(typ == want_t, f"{tag}: {name} ggml type {typ}, want {want_t}")
        item = 2 if typ == 1 else 4
        n = int(np.prod(ne))
        raw = b[start + off:start + off + n * item]
        check(len(raw) == n * item, f"{tag}: {name} data truncated")
        prev_end = off + n * item
        if len(raw) != n * item:
            continue
        arr = np.frombuffer(raw, dtype="<f2" if typ == 1 else "<f4").reshape(shape)
        w = ref.w[hf]
        if bl:
            _, _, wq = ternary(w)
            expect = wq.astype(np.float16) if typ == 1 else wq
            # compared as values: the exporter (like torch) writes -0.0 where a negative weight rounds to 0
            check(np.array_equal(arr, expect),
                  f"{tag}: {name}: values differ from a*clip(rint(W/a)){' in f16' if typ == 1 else ''} "
                  f"(max |diff| {float(np.max(np.abs(arr.astype(np.float32) - expect.astype(np.float32))))})")
            vals = np.unique(arr.astype(np.float32))
            check(len(vals) <= 3, f"{tag}: {name}: {len(vals)} distinct values, ternary has <= 3")
        else:
            check(np.array_equal(arr.view(np.uint32), w.view(np.uint32)), f"{tag}: {name}: values differ from the latent")
    check(start + prev_end <= len(b), f"{tag}: file shorter than its tensor data")
    print(f"  {len(kv)} metadata keys, {len(infos)} tensors checked (data at {start}, alignment {align})")


# ---- self test ----------------------------------------------------------------------------------

def selftest():
    # transformers/integrations/bitnet.py, unpack_weights docstring example
    packed = np.array([[0b10100001, 0b00011000], [0b10010000, 0b00001010]], dtype=np.uint8)
    want = np.array([[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]], dtype=np.int8)
    check(np.array_equal(unpack(packed), want), "selftest: unpack of the transformers docstring example")
    rng = np.random.default_rng(0)
    c = rng.integers(-1, 2, size=(12, 5)).astype(np.int8)
    check(np.array_equal(unpack(pack(c)), c), "selftest: pack/unpack round trip")
    w = rng.normal(size=(8, 8)).astype(np.float32)
    codes, a, wq = ternary(w)
    check(set(np.unique(codes)) <= {-1, 0, 1} and a > 0, "selftest: ternary")
    print("selftest ok" if not ERRORS else "selftest FAILED")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference")
    ap.add_argument("--hf")
    ap.add_argument("--hf-offline")
    ap.add_argument("--gguf")
    ap.add_argument("--gguf-f16")
    ap.add_argument("--tokenizer")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        selftest()
        return 1 if ERRORS else 0
    if not a.reference:
        ap.error("--reference is required")
    hint = None
    for d in (a.hf, a.hf_offline):
        if d and os.path.exists(os.path.join(d, "config.json")):
            hint = json.load(open(os.path.join(d, "config.json")))
            break
    ref = Reference(a.reference, hint)
    pieces = sp_pieces(a.tokenizer) if a.tokenizer else None
    try:
        if a.hf:
            check_hf(ref, a.hf, False)
        if a.hf_offline:
            check_hf(ref, a.hf_offline, True)
        if a.gguf:
            check_gguf(ref, a.gguf, False, pieces)
        if a.gguf_f16:
            check_gguf(ref, a.gguf_f16, True, pieces)
    except Exception as e:  # a parse failure is a mismatch too
        err(f"exception: {type(e).__name__}: {e}")
    if ERRORS:
        print(f"FAILED: {len(ERRORS)} mismatch(es)")
        return 1
    print("OK: all exports match the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
