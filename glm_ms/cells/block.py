"""One GLM block: post-LN-style residuals that add the *normalized* input scaled by alpha."""
import math

from mindspore import nn
import mindspore as ms

from .attention import SelfAttention
from .layers import LayerNorm
from .mlp import GeluMLP


class GLMBlock(nn.Cell):
    """LN → attention → alpha residual → LN → GELU MLP → alpha residual."""

    def __init__(self, config, layer_id, dtype=ms.float32):
        super().__init__()
        # GLM's deep-norm: the residual adds the normalized input times sqrt(2 * num_layers). Upstream's
        # GLMBlock defaults num_layers=28 and ChatGLMModel never passes the config's value, so it is always 28.
        self.alpha = math.sqrt(2 * 28)
        self.input_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
        self.attention = SelfAttention(config, layer_id, dtype=dtype)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
        self.mlp = GeluMLP(config.hidden_size, config.inner_hidden_size, dtype=dtype)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]."""
        attention_input = self.input_layernorm(x)
        h = attention_input * self.alpha + self.attention(attention_input, cos, sin, mask, cache_positions)
        mlp_input = self.post_attention_layernorm(h)
        return mlp_input * self.alpha + self.mlp(mlp_input)
