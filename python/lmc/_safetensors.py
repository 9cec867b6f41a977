"""safetensors files with numpy alone (the format: an 8-byte little-endian header length, a JSON
header, the tensors' bytes), for the inputs and outputs of the commands that read and write
them (``lmc.grad``, ``lmc.generate``)."""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, Mapping, Union

import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v).str: k for k, v in _DTYPES.items()}


def read_safetensors(path: Union[str, "os.PathLike[str]"]) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors file, as numpy arrays (BF16 widened to float32)."""
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = memoryview(data)[8 + length :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = body[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")).copy()
        out[name] = array.reshape(info["shape"])
    return out


def read_safetensors_metadata(path: Union[str, "os.PathLike[str]"]) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors file (string keys and values; empty when none)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return dict(header.get("__metadata__") or {})


def write_safetensors(path: Union[str, "os.PathLike[str]"], tensors: Mapping[str, np.ndarray]) -> None:
    """Writes numpy arrays as a safetensors file."""
    header = {}
    blobs = []
    offset = 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        dtype = _NAMES.get(array.dtype.newbyteorder("<").str)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: safetensors has no dtype for {array.dtype}")
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
