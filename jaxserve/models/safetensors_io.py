"""Minimal safetensors reader/writer over numpy memory maps (bf16 through ml_dtypes).

The format: an 8-byte little-endian header length, a JSON header mapping tensor names to
{dtype, shape, data_offsets}, then the raw bytes. Reading maps the file and slices it, so a
tensor costs nothing until it is used and no framework (torch, jax) is needed.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from jaxserve.errors import CheckpointError
from jaxserve.utils import atomic_open

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Lazy access to the tensors of one `.safetensors` file."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (truncated header)")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise CheckpointError(
                    f"{path}: not a safetensors file (header of {n} bytes, file of {size})"
                )
            try:
                self.header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
        if not isinstance(self.header, dict):
            raise CheckpointError(f"{path}: not a safetensors file (header is not an object)")
        self.header.pop("__metadata__", None)
        self._base = 8 + n
        self._size = size
        self._map = None

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header") from None
        if dtype not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
        want = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if not 0 <= start <= end or end - start != want:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has {end - start} bytes for shape {shape} {dtype}"
            )
        if self._base + end > self._size:
            raise CheckpointError(
                f"{self.path}: truncated: tensor {name!r} ends at byte {self._base + end}, the "
                f"file has {self._size}"
            )
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._map[self._base + start : self._base + end]
        return raw.view(_DTYPES[dtype]).reshape(shape)


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None) -> None:
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr).reshape(np.shape(arr))
        if arr.dtype not in _NAMES:
            raise ValueError(f"cannot save tensor {name!r} of dtype {arr.dtype}")
        blob = arr.tobytes()
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    if metadata:
        header["__metadata__"] = metadata
    data = json.dumps(header, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 8)  # keep tensor data aligned
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(data)))
        f.write(data)
        for blob in blobs:
            f.write(blob)
