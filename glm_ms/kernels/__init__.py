"""glm_ms's CPU kernels for weight-only quantized (int8, int4) and float16 linear layers, and decode attention.

`quantized_matmul(x, weight, scale, bits, fast=False, bias=None)` and `half_matmul(x, weight, bias=None)` are
MindSpore functions (eager and inside `mindspore.jit`; a whole linear layer in one op, in x's dtype), loaded with
MindSpore on first use (`glm_ms.kernels.attention.cached_attention` reads the static KV cache where it lies); the
numpy quantizer (`quantize_rows`, the published checkpoints' arithmetic) and the kernel builder (`build_library`,
`clear_cache`) need no MindSpore.
"""
from __future__ import annotations

from .build import KernelBuildError, KernelLibrary, build_library, cache_dir, clear_cache, kernels_enabled
from .quantize import (BITS, QuantizationError, QuantizedWeight, check_bits, dequantize_rows, fast_error_bound,
                       pack_int4, quantize_rows, unpack_int4)

_MINDSPORE_API = ("quantized_matmul", "half_matmul", "dense_matmul", "dequantize", "kernel_library",
                  "DEFAULT_THRESHOLD")


def __getattr__(name: str):
    # The MindSpore-facing functions live in .matmul, imported (with MindSpore) only when first asked for, then
    # kept as module attributes: MindSpore's graph compiler resolves `kernels.name` without calling __getattr__,
    # so inside `mindspore.jit` import the names (`from glm_ms.kernels import quantized_matmul`).
    if name in _MINDSPORE_API:
        from . import matmul
        value = globals()[name] = getattr(matmul, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BITS", "KernelBuildError", "KernelLibrary", "QuantizationError", "QuantizedWeight", "build_library",
           "cache_dir", "check_bits", "clear_cache", "dequantize_rows", "fast_error_bound", "kernels_enabled",
           "pack_int4", "quantize_rows", "unpack_int4", *_MINDSPORE_API]
