"""One ChatGLM2/3 block: pre-norm residuals around multi-query attention and the SwiGLU MLP (no scaling)."""
from mindspore import nn
import mindspore as ms

from .layers import LayerNorm
from .mq_attention import MultiQueryAttention
from .rmsnorm import RMSNorm
from .swiglu import SwiGLUMLP


def make_norm(config, dtype):
    """RMSNorm for the released models (`rmsnorm: true`), LayerNorm with bias otherwise."""
    if config.rmsnorm:
        return RMSNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
    return LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)


class GLM2Block(nn.Cell):
    """norm → attention → residual → norm → MLP → residual."""

    def __init__(self, config, layer_number, dtype=ms.float32):
        super().__init__()
        self.post_norm_residual = bool(config.apply_residual_connection_post_layernorm)
        self.input_layernorm = make_norm(config, dtype)
        self.self_attention = MultiQueryAttention(config, layer_number, dtype=dtype)
        self.post_attention_layernorm = make_norm(config, dtype)
        self.mlp = SwiGLUMLP(config.hidden_size, config.ffn_hidden_size, bias=config.add_bias_linear, dtype=dtype)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]."""
        normed = self.input_layernorm(x)
        h = (normed if self.post_norm_residual else x) + self.self_attention(normed, cos, sin, mask, cache_positions)
        normed = self.post_attention_layernorm(h)
        return (normed if self.post_norm_residual else h) + self.mlp(normed)
