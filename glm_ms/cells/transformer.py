"""ChatGLMModel: word embeddings → GLM blocks → final LayerNorm (attribute names as in the checkpoint)."""
from mindspore import nn
import mindspore as ms

from .block import GLMBlock
from .layers import Embedding, LayerNorm
from .rotary import RotaryEmbedding2D


class ChatGLMModel(nn.Cell):
    """The `transformer.*` part of ChatGLM-6B."""

    def __init__(self, config, dtype=ms.float32):
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.CellList([GLMBlock(config, i, dtype=dtype) for i in range(config.num_layers)])
        self.final_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
        self.rotary = RotaryEmbedding2D(config.rotary_dim, config.max_sequence_length)

    def construct(self, input_ids, position_ids, mask, cache_positions, output_hidden_states=False):
        """input_ids [b, s] → (hidden [b, s, hidden], per-layer inputs + final output if asked)."""
        x = self.word_embeddings(input_ids)
        cos, sin = self.rotary(position_ids, x.dtype)
        states = ()
        for layer in self.layers:
            if output_hidden_states:
                states = states + (x,)
            x = layer(x, cos, sin, mask, cache_positions)
        x = self.final_layernorm(x)
        if output_hidden_states:
            states = states + (x,)
        return x, states
