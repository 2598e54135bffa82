"""Parameter-holding primitives whose attribute names match the checkpoint: Linear, Embedding, LayerNorm, RMSNorm;
and the blocks' residual sum."""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..device import select_device
from ..kernels import half_matmul
from ..kernels.residual import scaled_add


_NUMPY_DTYPES = {ms.float16: np.float16, ms.float32: np.float32, ms.int8: np.int8}


def zeros_parameter(shape: tuple[int, ...], dtype: ms.Type) -> Parameter:
    """A Parameter of zeros in `dtype` (float16, float32 or int8) that costs no memory until it is filled."""
    # Shares numpy's lazily mapped zeros in `dtype` itself: an unloaded 6B model costs no resident memory, and
    # (unlike an op's output, which stays in MindSpore's memory pool) the buffer is freed when loading replaces it.
    return Parameter(Tensor.from_numpy(np.zeros(shape, dtype=_NUMPY_DTYPES[dtype])))


def _ones(size: int) -> Parameter:
    return Parameter(Tensor(np.ones((size,), dtype=np.float32)))


class Linear(nn.Cell):
    """y = x Wᵀ + b with W stored [out, in] as in the checkpoint."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = zeros_parameter((out_features, in_features), dtype)
        self.bias = zeros_parameter((out_features,), dtype) if bias else None
        # transpose_b reads W as stored; ops.matmul(x, W.T) would copy the weight every call (~20x slower).
        self.matmul = ops.MatMul(transpose_b=True)
        # MindSpore's CPU MatMul has no float16 kernel: it would cast the whole weight to float32 on every call
        # (and a compiled graph keeps every cast alive). glm_ms's float16 kernel reads the weight as stored.
        self.half_kernel = select_device() == "CPU"

    def construct(self, x):
        shape = x.shape
        if self.half_kernel and self.weight.dtype == ms.float16:
            # One op: float32 products and sums, the bias added in float32, rounded once to x's dtype.
            return half_matmul(x, self.weight, self.bias)
        y = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape[:-1] + (self.weight.shape[0],))


class Embedding(nn.Cell):
    """Token id → row of `weight` [vocab, hidden]."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = zeros_parameter((num_embeddings, embedding_dim), dtype)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis whose statistics are always taken in float32.

    Its parameters stay float32 whatever the model's dtype (`dtype` only keeps the layers' signature alike):
    they are read in float32 anyway, and float16 copies would cost a Cast per call.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = _ones(hidden_size)
        self.bias = zeros_parameter((hidden_size,), ms.float32)
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        # fp16 variance over 4096 channels overflows/loses precision; the reference and 910A kernels use fp32.
        y, _, _ = self.norm(x.astype(ms.float32), self.weight, self.bias)
        return y.astype(x.dtype)


class RMSNorm(nn.Cell):
    """x / sqrt(mean(x²) + eps) * weight over the last axis: no bias, no centring, statistics in float32.

    The weight stays float32 whatever the model's dtype, as LayerNorm's.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = _ones(hidden_size)
        self.eps = eps

    def construct(self, x):
        # Upstream takes the variance in float32 and multiplies in float32 too (fp16 * fp32 promotes), casting
        # back only at the end; fp16 squares of 4096 channels would overflow.
        h = x.astype(ms.float32)
        variance = ops.mean(h * h, -1, True)
        return (self.weight * (h * ops.rsqrt(variance + self.eps))).astype(x.dtype)


def residual_add(x: Tensor, y: Tensor, alpha: float = 1.0, kernel: bool = False) -> Tensor:
    """x * alpha + y (x + y for alpha 1); `kernel` (the CPU with glm_ms's kernels) does it in one op, rounded as
    MindSpore's ops are: their float16 Mul and Add take ~0.17 ms each on the CPU at ChatGLM-6B's width."""
    if kernel and x.dtype == y.dtype and x.dtype in (ms.float32, ms.float16):
        return scaled_add(x, y, alpha)
    return x + y if alpha == 1.0 else x * alpha + y


def float32_parameter_ids(model: nn.Cell) -> set[int]:
    """ids of the norm parameters, which stay float32 when the model's dtype changes."""
    return {id(p) for _, cell in model.cells_and_names() if isinstance(cell, (LayerNorm, RMSNorm))
            for p in cell.get_parameters()}
