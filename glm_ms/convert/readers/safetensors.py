"""Read safetensors shards one tensor at a time: the `safetensors` package validates the file, our reads copy
each tensor out with plain file reads (no memory map, so a shard's pages never count in the process's RSS)."""
from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CheckpointError
from .layout import LazyTensor

_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.float32, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
          "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}
_MAX_HEADER = 100 << 20  # the safetensors package's own limit on the JSON header


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(data start, header dict) of a safetensors file the package has already opened (and so validated)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER:
            raise CheckpointError(f"{path}: safetensors header of {n} bytes is too large")
        return 8 + n, json.loads(f.read(n))


def read_tensor(path: Path, header: tuple[int, dict[str, Any]], name: str) -> np.ndarray:
    """One tensor of a validated safetensors file as a numpy array (bfloat16 widened to float32)."""
    data_start, entries = header
    entry = entries[name]
    kind = entry["dtype"]
    if kind not in _NUMPY:
        raise CheckpointError(f"{path}: {name}: unsupported dtype {kind}")
    shape = tuple(entry["shape"])
    stored = np.dtype("<u2" if kind == "BF16" else _NUMPY[kind]).newbyteorder("<")
    begin, end = entry["data_offsets"]
    out = np.empty(int(np.prod(shape, dtype=np.int64)), stored)
    if end - begin != out.nbytes:
        raise CheckpointError(f"{path}: {name}: {end - begin} bytes do not match {kind} shape {shape}")
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        if f.readinto(out.view(np.uint8)) != out.nbytes:
            raise CheckpointError(f"{path}: {name}: the file ends inside the tensor")
    if kind == "BF16":  # bfloat16 is the top half of a float32, so widening is exact
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out.reshape(shape)


def safetensors_tensors(path: Path, stack: contextlib.ExitStack) -> list[LazyTensor]:
    """The tensors of a safetensors file; each `load()` reads one tensor (`stack`: the torch reader's interface)."""
    from safetensors import safe_open  # imported here so torch-only users need not have it

    try:
        with safe_open(str(path), framework="np") as f:  # opening validates the file; reads need no handle
            header = read_header(path)
            out = []
            for name in f.keys():
                sl = f.get_slice(name)
                kind = sl.get_dtype()
                if kind not in _NUMPY:
                    raise CheckpointError(f"{path}: {name}: unsupported dtype {kind}")

                def load(name: str = name) -> np.ndarray:
                    try:
                        return read_tensor(path, header, name)
                    except CheckpointError:
                        raise
                    except Exception as exc:  # the package only parses: any failure means a bad file
                        raise CheckpointError(f"{path}: cannot read {name} ({type(exc).__name__}: {exc})") from exc
                out.append(LazyTensor(name, tuple(int(s) for s in sl.get_shape()), np.dtype(_NUMPY[kind]), load))
        return out
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors only parses: any failure means a bad or unsupported file
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(exc).__name__}: {exc})") from exc
