"""Weight-only quantized drop-ins for Linear and Embedding, with upstream's checkpoint names and semantics.

Each holds `weight` int8 ([N, K] for int8, [N, K/2] two-per-byte for int4) and `weight_scale` float16 [N]: the
real weight is float32(int) * float32(scale) per output row, as upstream's CPU kernels compute it. On the CPU
the products run in glm_ms's kernels (`glm_ms.kernels`, eager and compiled, float32 arithmetic unless `fast`);
elsewhere (Ascend, or a CPU where the kernels cannot be built) the layer dequantizes its own weight just before
use and multiplies in the compute dtype.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..device import select_device
from ..kernels import kernel_library, quantized_matmul
from ..kernels.quantize import QuantizationError, QuantizedWeight, check_bits, packed_columns
from .layers import zeros_parameter


def dequantize(weight, scale, bits: int):
    """float32(int) * float32(scale) [rows, K] of int8 rows [rows, K or K/2] and their float16 scales [rows].

    Graph-safe (`bits` is checked when a cell is built): the compiled decode graphs use it.
    """
    ints = weight.astype(ms.float32)
    if bits == 4:
        # Byte b = 16 * hi + lo with hi = b >> 4 (arithmetic) and lo the low nibble as a signed value.
        hi = ops.floor(ints / 16.0)
        lo = ints - hi * 16.0
        lo = lo - (lo >= 8.0).astype(ms.float32) * 16.0
        ints = ops.stack([hi, lo], axis=-1).reshape(weight.shape[0], -1)
    return ints * scale.astype(ms.float32).reshape(-1, 1)


class QuantizedLinear(nn.Cell):
    """y = x Wᵀ + b with W = weight * weight_scale quantized per output row (`bits` 8 or 4).

    `fast` (CPU only) rounds each row of x to int16 for integer dot products, columns with outliers kept in
    float32 (`glm_ms.kernels.fast_error_bound` bounds the difference); otherwise float32 arithmetic.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool = True,
                 dtype: ms.Type = ms.float32, fast: bool = False):
        super().__init__()
        self.bits = check_bits(bits)
        self.out_features = out_features
        self.float_shape = (out_features, in_features)  # of the weight before quantization
        self.weight = zeros_parameter((out_features, packed_columns(in_features, bits)), ms.int8)
        self.weight_scale = zeros_parameter((out_features,), ms.float16)
        self.bias = zeros_parameter((out_features,), dtype) if bias else None
        self.fast = bool(fast)
        self.kernels = select_device() == "CPU" and kernel_library() is not None
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        if self.kernels:
            # One op: the bias added in float32 to the products, rounded once to x's dtype.
            return quantized_matmul(x, self.weight, self.weight_scale, self.bits, self.fast, bias=self.bias)
        # One layer's dequantized copy at a time: ordered after x, so a graph does not build them all first.
        weight = dequantize(ops.depend(self.weight, x), self.weight_scale, self.bits).astype(x.dtype)
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), weight).reshape(shape[:-1] + (self.out_features,))
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y.astype(x.dtype)


class QuantizedEmbedding(nn.Cell):
    """Token id → row of weight * weight_scale; only the gathered rows are dequantized."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.bits = check_bits(bits)
        self.float_shape = (num_embeddings, embedding_dim)  # of the weight before quantization
        self.weight = zeros_parameter((num_embeddings, packed_columns(embedding_dim, bits)), ms.int8)
        self.weight_scale = zeros_parameter((num_embeddings,), ms.float16)
        self.compute_dtype = dtype  # the rows' dtype; the model's `to_dtype` sets it

    def construct(self, ids):
        flat = ids.reshape(-1)
        rows = dequantize(ops.gather(self.weight, flat, 0), ops.gather(self.weight_scale, flat, 0), self.bits)
        return rows.reshape(ids.shape + (rows.shape[-1],)).astype(self.compute_dtype)


def fill_quantized(cell: QuantizedLinear | QuantizedEmbedding, quantized: QuantizedWeight) -> None:
    """Set a quantized cell's `weight` and `weight_scale` from numpy arrays of exactly its shapes and dtypes."""
    weight, scale = np.asarray(quantized.weight), np.asarray(quantized.scale)
    if weight.dtype != np.int8 or tuple(weight.shape) != tuple(cell.weight.shape):
        raise QuantizationError(f"quantized weight must be int8 {list(cell.weight.shape)}, not {weight.dtype} "
                                f"{list(weight.shape)}")
    if scale.dtype != np.float16 or tuple(scale.shape) != tuple(cell.weight_scale.shape):
        raise QuantizationError(f"weight_scale must be float16 {list(cell.weight_scale.shape)}, not "
                                f"{scale.dtype} {list(scale.shape)}")
    for param, array in ((cell.weight, weight), (cell.weight_scale, scale)):
        array = np.ascontiguousarray(array)
        param.set_data(Tensor.from_numpy(array) if array.flags.writeable else Tensor(array))
