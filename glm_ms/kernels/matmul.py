"""MindSpore functions over glm_ms's CPU kernels: y = x . dequant(W)^T + b for int8, int4 and float16 weights.

They run eagerly and inside `mindspore.jit` (the kernels are `ops.Custom(func_type="aot")` primitives; the
checks run once, when the graph is built). Any number of rows works: up to 16 share one pass over the weights,
more go in blocks of 16. Where the kernels are unavailable (switched off with $GLM_MS_KERNELS=off, no compiler,
a failed build: logged once) the same functions dequantize with MindSpore ops and use MatMul instead.
"""
from __future__ import annotations

import functools
import logging

import mindspore as ms
from mindspore import Tensor, ops

from .build import KernelBuildError, KernelLibrary, build_library, kernels_enabled
from .quantize import QuantizationError, check_bits, input_columns

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 6.0  # LLM.int8()'s outlier threshold: columns with a larger |x| stay float32 in fast mode
_matmul_t = ops.MatMul(transpose_b=True)


@functools.lru_cache(maxsize=None)
def kernel_library() -> KernelLibrary | None:
    """This process's kernel library, built on first use; None where the kernels are off or cannot be built."""
    if not kernels_enabled():
        return None
    try:
        return build_library()
    except KernelBuildError as err:
        logger.warning("%s\nglm_ms falls back to dequantizing with MindSpore ops (slower, more memory).", err)
        return None


@functools.lru_cache(maxsize=None)
def _kernel(name: str, inputs: int) -> ops.Custom:
    # Cached, so a graph built twice (or by two cells) shares one primitive; called at graph-build time in jit.
    # One primitive per arity (with or without a bias). y has x's dtype, float32 or float16.
    path = kernel_library().path
    return ops.Custom(f"{path}:{name}", out_shape=lambda x, w, *_: list(x[:-1]) + [w[0]],
                      out_dtype=lambda x, *_: x, func_type="aot")


def _known(size: int) -> bool:
    return size is not None and size >= 0  # -1 / None: a dynamic dimension, checked when the kernel runs


@ops.constexpr
def _plan(x: tuple, w: tuple, s: tuple | None, b: tuple | None, bits: int | None, fast: bool) -> str:
    """Checks (shape, dtype) of x, weight, scale and bias; the kernel's name, or "" for the MindSpore-ops path."""
    (x_shape, x_dtype), (w_shape, w_dtype) = x, w
    what = "half" if bits is None else f"int{check_bits(bits)}"
    wanted = ms.float16 if bits is None else ms.int8
    if len(w_shape) != 2 or w_dtype != wanted:
        raise QuantizationError(f"{what} weight must be a 2-D {wanted} [N, K], not {w_dtype} {tuple(w_shape)}")
    k = w_shape[1] if bits is None else input_columns(w_shape[1], bits)
    if len(x_shape) < 1 or (_known(x_shape[-1]) and _known(k) and x_shape[-1] != k):
        raise QuantizationError(f"x {tuple(x_shape)} does not match the {what} weight's {k} input columns")
    if x_dtype not in (ms.float32, ms.float16, ms.bfloat16):
        raise QuantizationError(f"x must be a floating-point tensor, not {x_dtype}")
    if s is not None and (len(s[0]) != 1 or s[1] != ms.float16
                          or (_known(s[0][0]) and _known(w_shape[0]) and s[0][0] != w_shape[0])):
        raise QuantizationError(f"scale must be float16 [N] = [{w_shape[0]}], not {s[1]} {tuple(s[0])}")
    if b is not None and (len(b[0]) != 1 or b[1] not in (ms.float32, ms.float16, ms.bfloat16)
                          or (_known(b[0][0]) and _known(w_shape[0]) and b[0][0] != w_shape[0])):
        raise QuantizationError(f"bias must be a floating-point [N] = [{w_shape[0]}], not {b[1]} {tuple(b[0])}")
    if fast and bits is None:
        raise QuantizationError("fast mode needs int8 or int4 weights")
    if kernel_library() is None:
        return ""
    return f"glm_{what}_matmul{'_fast' if fast else ''}"


def _as_float32(x: Tensor) -> Tensor:
    return x if x.dtype == ms.float32 else x.astype(ms.float32)


def _kernel_float(x: Tensor) -> Tensor:
    """x as the kernels read it: float32 and float16 as they are, bfloat16 as float32."""
    return x if x.dtype in (ms.float32, ms.float16) else x.astype(ms.float32)


def _shape_of(t: Tensor | None) -> tuple | None:
    return None if t is None else (t.shape, t.dtype)


def _finish(y: Tensor, bias: Tensor | None, dtype: ms.Type) -> Tensor:
    """float32 products y + float32(bias), rounded once to `dtype` (the MindSpore-ops path's epilogue)."""
    if bias is not None:
        y = y + _as_float32(bias)
    return y if y.dtype == dtype else y.astype(dtype)


def _call(name: str, x: Tensor, bias: Tensor | None, *args: Tensor) -> Tensor:
    """The kernel on x, args, then the bias if any, as a Tensor of x's dtype."""
    inputs = (_kernel_float(x),) + args + (() if bias is None else (_kernel_float(bias),))
    y = _kernel(name, len(inputs))(*inputs)
    return y if y.dtype == x.dtype else y.astype(x.dtype)


def dequantize(weight: Tensor, scale: Tensor, bits: int) -> Tensor:
    """float32(int) * float32(scale) as a float32 [N, K] Tensor, with MindSpore ops (upstream's CPU weight)."""
    ints = weight.astype(ms.float32)
    if check_bits(bits) == 4:
        # b = 16 * hi + lo_unsigned with hi = b >> 4 (arithmetic); lo is lo_unsigned as a signed nibble.
        hi = ops.floor(ints / 16.0)
        lo = ints - hi * 16.0
        lo = lo - (lo >= 8.0).astype(ms.float32) * 16.0
        ints = ops.stack([hi, lo], axis=-1).reshape(weight.shape[0], -1)
    return ints * scale.astype(ms.float32).reshape(-1, 1)


def dense_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """x [..., K] . weight [N, K]^T with MindSpore's MatMul, float32, as [..., N]."""
    flat = _as_float32(x).reshape(-1, x.shape[-1])
    return _matmul_t(flat, _as_float32(weight)).reshape(x.shape[:-1] + (weight.shape[0],))


def quantized_matmul(x: Tensor, weight: Tensor, scale: Tensor, bits: int, fast: bool = False,
                     threshold: float = DEFAULT_THRESHOLD, bias: Tensor | None = None) -> Tensor:
    """x [..., K] . (weight * scale)^T + bias in x's dtype; weight int8 [N, K] (bits 8) or packed [N, K/2] (bits 4).

    Exact mode is float32 arithmetic on float32(int) * float32(scale), upstream's CPU semantics, the bias
    added in float32 and the sum rounded once to x's dtype. `fast` rounds each row of x to int16 for integer dot
    products, keeping columns with |x| > threshold in float32; see `fast_error_bound` for how far it may be from
    exact mode.
    """
    name = _plan((x.shape, x.dtype), (weight.shape, weight.dtype), (scale.shape, scale.dtype), _shape_of(bias),
                 bits, fast)
    if not name:
        return _finish(dense_matmul(x, dequantize(weight, scale, bits)), bias, x.dtype)
    if fast:
        return _call(name, x, bias, weight, scale, Tensor([threshold], ms.float32))
    return _call(name, x, bias, weight, scale)


def half_matmul(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [..., K] . weight^T + bias in x's dtype for a float16 weight [N, K], without a float32 copy of it.

    float32 products and sums, the bias added in float32, rounded once to x's dtype.
    """
    name = _plan((x.shape, x.dtype), (weight.shape, weight.dtype), None, _shape_of(bias), None, False)
    if not name:
        return _finish(dense_matmul(x, weight), bias, x.dtype)
    return _call(name, x, bias, weight)
