"""Calls a kernel of a built library directly (ctypes, no MindSpore) with MindSpore's AOT calling convention."""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

DTYPE_NAMES = {np.dtype(np.float32): b"float32", np.dtype(np.float16): b"float16", np.dtype(np.int8): b"int8",
               np.dtype(np.bool_): b"bool"}


@functools.lru_cache(maxsize=None)
def _library(path: str) -> ctypes.CDLL:
    return ctypes.CDLL(path)


def call(path: Path, name: str, inputs: list[np.ndarray], out_shape: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """(return code, float32 output) of kernel `name` on `inputs`."""
    out = np.full(out_shape, np.nan, np.float32)
    return call_into(path, name, inputs, [out]), out


def call_into(path: Path, name: str, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> int:
    """The return code of kernel `name` on `inputs`, writing into the (contiguous) arrays `outputs`."""
    arrays = [np.ascontiguousarray(a) for a in inputs] + outputs
    n = len(arrays)
    shapes = [(ctypes.c_int64 * max(a.ndim, 1))(*a.shape) for a in arrays]
    fn = getattr(_library(str(path)), name)
    fn.restype = ctypes.c_int
    return fn(n, (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays]), (ctypes.c_int * n)(*[a.ndim for a in arrays]),
              (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shapes]),
              (ctypes.c_char_p * n)(*[DTYPE_NAMES[a.dtype] for a in arrays]), None, None)
