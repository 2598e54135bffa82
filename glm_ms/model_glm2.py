"""ChatGLM2-6B / ChatGLM3-6B language model Cell: same methods as `ChatGLMCausalLM`, the second-generation math.

Positions are 1-D; they travel as [batch, 1, seq] so the generation loop, written for ChatGLM-6B's [batch, 2, seq],
handles both without knowing which model it drives.
"""
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from .cells.glm2_transformer import ChatGLM2Model
from .config import ChatGLM2Config, ConfigError
from .device import default_dtype, select_device
from .model import CausalLMOutput, ChatGLMCausalLM, resolve_dtype


@dataclass
class ChatGLM2Output(CausalLMOutput):
    """`CausalLMOutput` plus what upstream also exposes: the normed last hidden state and each layer's cache.

    hidden_states: the input of every block, then the last block's output before `final_layernorm`.
    past_key_values: per layer (keys, values) [b, key/value heads, seq, head_dim], keys rotated.
    """
    last_hidden_state: Tensor = None
    past_key_values: tuple = ()


def padding_attention_mask(padding_mask):
    """Upstream's `get_masks` for a prompt: bool [b, 1, s, s], True = masked, from a 0/1 padding mask [b, s].

    Causal, pad columns masked, and (upstream quirk) pad *rows* masked nowhere, so pads attend to everything;
    their outputs are never used, but they are part of the logits upstream returns.
    """
    keep = np.asarray(padding_mask).astype(bool)
    batch, seq = keep.shape
    allowed = np.tril(np.ones((seq, seq), dtype=bool))[None] & keep[:, None, :]
    allowed |= ~keep[:, :, None]
    return ~allowed[:, None]


class ChatGLM2CausalLM(ChatGLMCausalLM):
    """ChatGLM2/3: `transformer` = embedding, encoder (blocks, final norm), untied `output_layer`, rotary tables."""

    def __init__(self, config, dtype=None):
        # The ChatGLM-6B constructor builds ChatGLM-6B cells; this class shares its methods, not its cells.
        nn.Cell.__init__(self)
        if not isinstance(config, ChatGLM2Config):
            raise TypeError(f"ChatGLM2CausalLM needs a ChatGLM2Config, got {type(config).__name__}")
        select_device()
        self.config = config
        self.compute_dtype = resolve_dtype(dtype or default_dtype())
        self.transformer = ChatGLM2Model(config, dtype=self.compute_dtype)
        self.set_train(False)

    # ----- tensors in, tensors out: the unit the compiled decode path builds on -----
    def forward_step(self, input_ids, position_ids, mask, cache_positions, last_only=False):
        """Tokens [b, s] at positions [b, 1, s] through the model, keys written at `cache_positions`; logits [b, s|1, vocab]."""
        b, s = input_ids.shape
        hidden, _ = self.transformer(input_ids, position_ids.reshape(b, s), mask, cache_positions)
        if last_only:
            hidden = hidden[:, -1:]
        return self.transformer.output_layer(hidden).astype(ms.float32)

    def _attention_layers(self):
        return [layer.self_attention for layer in self.transformer.encoder.layers]

    def allocate_cache(self, batch, capacity):
        """Fresh static KV caches (key/value groups) for `batch` rows of up to `capacity` tokens."""
        self.transformer.rotary_pos_emb.ensure(capacity + 1)
        for attention in self._attention_layers():
            attention.kv_cache.allocate(batch, capacity, self.compute_dtype)

    def reorder_cache(self, index):
        """Keep cache rows `index` (beam search)."""
        index = Tensor(np.asarray(index, dtype=np.int32))
        for attention in self._attention_layers():
            attention.kv_cache.reorder(index)

    # ----- the eager forward users call: model(input_ids) -----
    def construct(self, input_ids, position_ids=None, attention_mask=None, output_hidden_states=False):
        """Full forward without reuse of a cache; mask and positions built as upstream when not given."""
        ids = self.check_ids(input_ids)
        mask, positions = self.prefix_inputs(ids, attention_mask, position_ids)
        batch, seq = ids.shape
        self.allocate_cache(batch, seq)
        hidden, states = self.transformer(Tensor(ids.astype(np.int32)), Tensor(positions[:, 0].astype(np.int32)),
                                          Tensor(mask), Tensor(np.arange(seq, dtype=np.int32)),
                                          output_hidden_states)
        caches = tuple((a.kv_cache.key[:, :, :seq], a.kv_cache.value[:, :, :seq]) for a in self._attention_layers())
        return ChatGLM2Output(logits=self.transformer.output_layer(hidden).astype(ms.float32), hidden_states=states,
                              last_hidden_state=hidden, past_key_values=caches)

    def prefix_inputs(self, ids, attention_mask=None, position_ids=None):
        """Mask [b, 1, s, s] (True = masked) and positions [b, 1, s], from what the tokenizer returns or built.

        attention_mask: None (nothing padded), the tokenizer's 0/1 padding mask [b, s], or a bool [b, 1, s, s]
        mask used as given. position_ids: None (0…s−1 in every row, as upstream), [b, s] or [b, 1, s].
        """
        batch, seq = ids.shape
        if isinstance(attention_mask, Tensor):
            attention_mask = attention_mask.asnumpy()
        if isinstance(position_ids, Tensor):
            position_ids = position_ids.asnumpy()
        if attention_mask is None:
            mask = padding_attention_mask(np.ones((batch, seq), dtype=bool))
        else:
            attention_mask = np.asarray(attention_mask)
            if attention_mask.shape == (batch, seq):
                mask = padding_attention_mask(attention_mask)
            elif attention_mask.shape == (batch, 1, seq, seq) and attention_mask.dtype == np.bool_:
                mask = attention_mask
            else:
                raise ValueError(f"attention_mask must be a 0/1 padding mask [{batch}, {seq}] or a bool mask "
                                 f"[{batch}, 1, {seq}, {seq}] (True = masked), got {attention_mask.dtype} "
                                 f"{list(attention_mask.shape)}")
        if position_ids is None:
            positions = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
        else:
            positions = np.asarray(position_ids)
            if positions.shape not in ((batch, seq), (batch, 1, seq)) or not np.issubdtype(positions.dtype, np.integer):
                raise ValueError(f"position_ids must be integers [{batch}, {seq}] (or [{batch}, 1, {seq}]), "
                                 f"got {positions.dtype} {list(positions.shape)}")
            if (positions < 0).any():
                raise ValueError("position_ids must be >= 0")
        return mask, positions.reshape(batch, 1, seq).astype(np.int64)

    def next_position_ids(self, last):
        """Positions [b, 1, 1] of the next generated token: one past the previous token's."""
        return last + 1

    # ----- weights -----
    def load_named_tensors(self, named_tensors, map_name=None, source="checkpoint"):
        """Fill weights from (checkpoint name, numpy array) pairs with the ChatGLM2/3 name table by default."""
        if map_name is None:
            from .convert.names import map_glm2_name as map_name
        return super().load_named_tensors(named_tensors, map_name, source)
