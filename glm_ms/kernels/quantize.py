"""Upstream ChatGLM's weight-only quantization, in numpy (MindSpore-free).

Per output row n of a float16 weight W [N, K]: scale[n] = max_k |W[n, k]| / qmax in float16 (qmax 7 for int4,
127 for int8) and int = round(W / scale) with the quotient rounded to float16 first, then half to even, no clamp:
what `model.half().quantize(bits)` gives on a GPU, hence what the published int4/int8 checkpoints hold. int4 is
packed two per byte, [N, K/2]: column 2j in the high nibble, 2j+1 in the low one (3, -2, 7, -7 -> 0x3e, 0x79).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from glm_ms.errors import WeightError

BITS = (4, 8)
ROWS_PER_PASS = 1024  # rows quantized at a time: the float16 temporaries stay small for a [16384, 4096] weight


class QuantizationError(WeightError):
    """A weight that cannot be quantized (not 2-D, not finite, odd K for int4) or a bit width other than 4/8."""


class QuantizedWeight(NamedTuple):
    """int8 integers ([N, K], or [N, K/2] packed for int4) and the float16 scale [N] of each output row."""
    weight: np.ndarray
    scale: np.ndarray


def check_bits(bits: int) -> int:
    """`bits` if it is 4 or 8, else QuantizationError."""
    if isinstance(bits, bool) or bits not in BITS:
        raise QuantizationError(f"quantization bits must be 4 or 8, not {bits!r}")
    return int(bits)


def packed_columns(k: int, bits: int) -> int:
    """Columns of the stored int8 weight for K input columns (K/2 for int4)."""
    if check_bits(bits) == 4:
        if k % 2:
            raise QuantizationError(f"int4 packs two columns per byte: K must be even, not {k}")
        return k // 2
    return k


def input_columns(stored: int, bits: int) -> int:
    """Input columns K of a stored int8 weight with `stored` columns (2 * stored for int4)."""
    return stored * 2 if check_bits(bits) == 4 else stored


def pack_int4(values: np.ndarray) -> np.ndarray:
    """[N, K] int4 values (int8 in [-8, 7]) -> [N, K/2] int8, column 2j in the high nibble."""
    values = np.asarray(values)
    packed_columns(values.shape[-1], 4)
    if values.size and (values.min() < -8 or values.max() > 7):
        raise QuantizationError("int4 values must lie in [-8, 7]")
    u = values.astype(np.int8).view(np.uint8)
    return ((u[..., 0::2] << 4) | (u[..., 1::2] & 0x0F)).astype(np.uint8).view(np.int8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """[N, K/2] packed int8 -> [N, K] int8 values (high nibble first), sign-extended as upstream's kernels do."""
    packed = np.asarray(packed, dtype=np.int8)
    hi = packed >> 4
    lo = (packed.view(np.uint8) << 4).view(np.int8) >> 4
    return np.stack([hi, lo], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _rows(weight: np.ndarray, bits: int) -> np.ndarray:
    if weight.ndim != 2:
        raise QuantizationError(f"only 2-D weights are quantized, not shape {weight.shape}")
    if not np.issubdtype(weight.dtype, np.floating):
        raise QuantizationError(f"quantizing needs a floating-point weight, not {weight.dtype}")
    packed_columns(weight.shape[1], bits)
    # float32/float64 weights are rounded to float16 first, as upstream's model.half().quantize(bits) does.
    return weight.astype(np.float16, copy=False)


def quantize_rows(weight: np.ndarray, bits: int) -> QuantizedWeight:
    """Quantize a 2-D float16 weight [N, K] per output row exactly as upstream's published checkpoints.

    Rows that are all zero get scale 0 and integers 0 (upstream would divide 0 by 0 there).
    """
    weight = _rows(np.asarray(weight), check_bits(bits))
    qmax = np.float16(2 ** (bits - 1) - 1)
    n, k = weight.shape
    # Integers are packed pass by pass: no [N, K] int8 copy of a large int4 matrix (the 1 GB embedding table).
    ints = np.empty((n, packed_columns(k, bits)), dtype=np.int8)
    scale = np.empty(n, dtype=np.float16)
    for start in range(0, n, ROWS_PER_PASS):
        rows = weight[start:start + ROWS_PER_PASS]
        if not np.isfinite(rows).all():
            raise QuantizationError("cannot quantize a weight holding inf or NaN")
        # numpy's float16 division computes in float32 and rounds to float16, as torch's CUDA half division does.
        row_scale = (np.abs(rows).max(axis=1, initial=np.float16(0)) / qmax).astype(np.float16)
        with np.errstate(divide="ignore", invalid="ignore"):
            quotient = (rows / row_scale[:, None]).astype(np.float16)
        quotient[row_scale == 0] = 0
        values = np.rint(quotient).astype(np.int8)  # rint: half to even, as torch.round
        ints[start:start + len(rows)] = pack_int4(values) if bits == 4 else values
        scale[start:start + len(rows)] = row_scale
    return QuantizedWeight(ints, scale)


def dequantize_rows(weight: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """float32(int) * float32(scale) as [N, K] float32: upstream's CPU weight for a quantized linear."""
    ints = unpack_int4(weight) if check_bits(bits) == 4 else np.asarray(weight, dtype=np.int8)
    return ints.astype(np.float32) * np.asarray(scale, dtype=np.float32)[:, None]


def fast_error_bound(x: np.ndarray, weight: np.ndarray, scale: np.ndarray, bits: int,
                     threshold: float = 6.0) -> np.ndarray:
    """Upper bound of |fast - exact| for each output [..., N] of the fast quantized matmul on these inputs.

    Fast mode rounds each row of x to int16 after setting aside the columns where any row has |x| > threshold
    (they are added in float32), so an element moves by at most max|x_row| / 65534 over the other columns; the
    bound adds float32 rounding of the result. When over a quarter of the columns are outliers the kernel runs
    exact mode, and the bound is float32 rounding alone.
    """
    w = np.abs(dequantize_rows(weight, scale, bits).astype(np.float64))
    flat = np.asarray(x, dtype=np.float64).reshape(-1, w.shape[1])
    outliers = ~(np.abs(flat) <= threshold).all(axis=0)
    rounding = 4 * np.finfo(np.float32).eps * (np.abs(flat) @ w.T)
    if 4 * outliers.sum() > w.shape[1]:
        bound = rounding
    else:
        amax = np.abs(np.where(outliers, 0.0, flat)).max(axis=1, initial=0.0)
        bound = amax[:, None] / 65534 * w[:, ~outliers].sum(axis=1)[None, :] + rounding
    return bound.reshape(*np.shape(x)[:-1], w.shape[0])
