"""Read safetensors shards one tensor at a time (the `safetensors` package; bfloat16 by hand, numpy has none)."""
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


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(data start, header dict); the package has already validated the header when this runs."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER:
            raise CheckpointError(f"{path}: safetensors header of {n} bytes is too large")
        return 8 + n, json.loads(f.read(n))


def _read_bf16(path: Path, header: tuple[int, dict[str, Any]], name: str) -> np.ndarray:
    data_start, entries = header
    entry = entries[name]
    shape = tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if end - begin != 2 * int(np.prod(shape, dtype=np.int64)):
        raise CheckpointError(f"{path}: {name}: {end - begin} bytes do not match bfloat16 shape {shape}")
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        raw = np.frombuffer(f.read(end - begin), dtype="<u2")
    # bfloat16 is the top half of a float32, so widening is exact.
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def safetensors_tensors(path: Path, stack: contextlib.ExitStack) -> list[LazyTensor]:
    """The tensors of a safetensors file; each `load()` reads one tensor."""
    from safetensors import safe_open  # imported here so torch-only users need not have it

    try:
        f = stack.enter_context(safe_open(str(path), framework="np"))
        header = None
        out = []
        for name in f.keys():
            sl = f.get_slice(name)
            kind = sl.get_dtype()
            if kind not in _NUMPY:
                raise CheckpointError(f"{path}: {name}: unsupported dtype {kind}")
            if kind == "BF16" and header is None:
                header = _header(path)

            def load(name: str = name, kind: str = kind) -> np.ndarray:
                try:
                    return _read_bf16(path, header, name) if kind == "BF16" else f.get_tensor(name)
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
