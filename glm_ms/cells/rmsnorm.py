"""RMSNorm of ChatGLM2/3: x / sqrt(mean(x²) + eps) * weight, statistics in float32, no bias, no centring."""
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
import mindspore as ms


class RMSNorm(nn.Cell):
    """Root-mean-square norm over the last axis."""

    def __init__(self, hidden_size, eps=1e-5, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones((hidden_size,), dtype=np.float32)).astype(dtype))
        self.eps = eps

    def construct(self, x):
        # Upstream takes the variance in float32 and multiplies in float32 too (fp16 * fp32 promotes), casting
        # back only at the end; fp16 squares of 4096 channels would overflow.
        h = x.astype(ms.float32)
        variance = ops.mean(h * h, -1, True)
        return (self.weight.astype(ms.float32) * (h * ops.rsqrt(variance + self.eps))).astype(x.dtype)
