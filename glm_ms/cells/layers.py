"""Parameter-holding primitives whose attribute names match the checkpoint: Linear, Embedding, LayerNorm, RMSNorm."""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


def _zeros(shape: tuple[int, ...], dtype: ms.Type) -> Parameter:
    # Shares numpy's lazily mapped zeros in `dtype` itself: an unloaded 6B model costs no resident memory, and
    # (unlike an op's output, which stays in MindSpore's memory pool) the buffer is freed when loading replaces it.
    return Parameter(Tensor.from_numpy(np.zeros(shape, dtype=np.float16 if dtype == ms.float16 else np.float32)))


def _ones(size: int, dtype: ms.Type) -> Parameter:
    return Parameter(Tensor(np.ones((size,), dtype=np.float32)).astype(dtype))


class Linear(nn.Cell):
    """y = x Wᵀ + b with W stored [out, in] as in the checkpoint."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = _zeros((out_features, in_features), dtype)
        self.bias = _zeros((out_features,), dtype) if bias else None
        # transpose_b reads W as stored; ops.matmul(x, W.T) would copy the weight every call (~20x slower).
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        shape = x.shape
        y = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape[:-1] + (self.weight.shape[0],))


class Embedding(nn.Cell):
    """Token id → row of `weight` [vocab, hidden]."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = _zeros((num_embeddings, embedding_dim), dtype)

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis whose statistics are always taken in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = _ones(hidden_size, dtype)
        self.bias = _zeros((hidden_size,), dtype)
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        # fp16 variance over 4096 channels overflows/loses precision; the reference and 910A kernels use fp32.
        y, _, _ = self.norm(x.astype(ms.float32), self.weight.astype(ms.float32), self.bias.astype(ms.float32))
        return y.astype(x.dtype)


class RMSNorm(nn.Cell):
    """x / sqrt(mean(x²) + eps) * weight over the last axis: no bias, no centring, statistics in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, dtype: ms.Type = ms.float32):
        super().__init__()
        self.weight = _ones(hidden_size, dtype)
        self.eps = eps

    def construct(self, x):
        # Upstream takes the variance in float32 and multiplies in float32 too (fp16 * fp32 promotes), casting
        # back only at the end; fp16 squares of 4096 channels would overflow.
        h = x.astype(ms.float32)
        variance = ops.mean(h * h, -1, True)
        return (self.weight.astype(ms.float32) * (h * ops.rsqrt(variance + self.eps))).astype(x.dtype)
