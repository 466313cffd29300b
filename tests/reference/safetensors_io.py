"""Minimal safetensors reader/writer (struct + json + numpy; no safetensors package).

File layout:
    u64 little-endian N | N bytes of JSON header | tensor data
JSON header: {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
              "__metadata__": {str: str}}
Offsets are relative to the start of the data section; tensors are stored contiguously,
little-endian, row-major, in header order. The header is padded with spaces so that N is a
multiple of 8.
"""
import json
import struct

import numpy as np

_DTYPES = {
    "F32": np.dtype("<f4"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    # extras, handy for debugging; the golden files use only the three above
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
}
_NAMES = {(v.kind, v.itemsize): k for k, v in _DTYPES.items()}


def _as_numpy(t):
    """Accept numpy arrays or torch tensors (detached, moved to CPU)."""
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def save_file(tensors, path, metadata=None):
    """Write `tensors` (dict name -> array/tensor, order kept) to `path`."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        a = _as_numpy(t)
        key = _NAMES.get((a.dtype.kind, a.dtype.itemsize))
        if key is None:
            raise TypeError(f"{name}: unsupported dtype {a.dtype}")
        raw = np.ascontiguousarray(a, dtype=_DTYPES[key]).tobytes()
        header[name] = {"dtype": key, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)


def load_file(path):
    """Return (dict name -> numpy array, metadata dict)."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack_from("<Q", buf, 0)
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        a = np.frombuffer(buf, dtype=dt, count=(e - b) // dt.itemsize, offset=base + b)
        out[name] = a.reshape(info["shape"]).copy()
    return out, metadata
