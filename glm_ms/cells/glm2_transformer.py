"""ChatGLM2/3 `transformer`: embedding → encoder (blocks, final norm) → output_layer; names as in the checkpoint."""
from mindspore import nn
import mindspore as ms

from .glm2_block import GLM2Block, make_norm
from .layers import Embedding, Linear
from .rotary_pairs import PairRotaryEmbedding


class GLM2Embedding(nn.Cell):
    """`transformer.embedding`: the word embeddings (no position embeddings; rotary happens in attention)."""

    def __init__(self, config, dtype=ms.float32):
        super().__init__()
        self.word_embeddings = Embedding(config.padded_vocab_size, config.hidden_size, dtype=dtype)

    def construct(self, input_ids):
        return self.word_embeddings(input_ids)


class GLM2Encoder(nn.Cell):
    """`transformer.encoder`: the blocks and, with `post_layer_norm`, the final norm."""

    def __init__(self, config, dtype=ms.float32):
        super().__init__()
        self.layers = nn.CellList([GLM2Block(config, i + 1, dtype=dtype) for i in range(config.num_layers)])
        self.post_layer_norm = bool(config.post_layer_norm)
        if self.post_layer_norm:
            self.final_layernorm = make_norm(config, dtype)

    def construct(self, x, cos, sin, mask, cache_positions, output_hidden_states=False):
        """x [b, s, hidden] → (normed output, (input of every block..., last block's output) if asked)."""
        states = ()
        for layer in self.layers:
            if output_hidden_states:
                states = states + (x,)
            x = layer(x, cos, sin, mask, cache_positions)
        if output_hidden_states:
            states = states + (x,)
        if self.post_layer_norm:
            x = self.final_layernorm(x)
        return x, states


class ChatGLM2Model(nn.Cell):
    """The `transformer.*` part of ChatGLM2/3, output layer included (untied, over the padded vocabulary)."""

    def __init__(self, config, dtype=ms.float32):
        super().__init__()
        self.embedding = GLM2Embedding(config, dtype=dtype)
        self.rotary_pos_emb = PairRotaryEmbedding(config.rotary_dim, config.seq_length, base=config.rotary_base)
        self.encoder = GLM2Encoder(config, dtype=dtype)
        self.output_layer = Linear(config.hidden_size, config.padded_vocab_size, bias=False, dtype=dtype)

    def construct(self, input_ids, position_ids, mask, cache_positions, output_hidden_states=False):
        """input_ids, position_ids [b, s] → (final hidden [b, s, hidden], hidden states if asked)."""
        x = self.embedding(input_ids)
        cos, sin = self.rotary_pos_emb(position_ids, x.dtype)
        return self.encoder(x, cos, sin, mask, cache_positions, output_hidden_states)
