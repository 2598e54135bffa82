"""ChatGLM-6B feed-forward: dense → tanh-approximated GELU → dense (not gated, despite upstream's "GLU" name)."""
from mindspore import nn, ops

import mindspore as ms

from .layers import Linear


def gelu_tanh(x):
    """0.5x(1 + tanh(0.7978845608028654 x (1 + 0.044715 x²))): the GELU approximation upstream writes by hand."""
    # The fused op computes exactly that formula; a hand-written ops.tanh is only good to ~1e-4 on CPU.
    return ops.gelu(x, approximate="tanh")


class GeluMLP(nn.Cell):
    """hidden → inner → hidden."""

    def __init__(self, hidden_size, inner_hidden_size, dtype=ms.float32):
        super().__init__()
        self.dense_h_to_4h = Linear(hidden_size, inner_hidden_size, dtype=dtype)
        self.dense_4h_to_h = Linear(inner_hidden_size, hidden_size, dtype=dtype)

    def construct(self, x):
        return self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x)))
