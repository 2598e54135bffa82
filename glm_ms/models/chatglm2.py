"""ChatGLM2-6B / ChatGLM3-6B, top to bottom: pair rotary → multi-query attention → SwiGLU MLP → block →
embedding / encoder / transformer → causal LM.

Positions are 1-D; they travel as [batch, 1, seq] so the generation loop, which also drives ChatGLM-6B's
[batch, 2, seq], handles both without knowing which model it drives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..cells.attention import cache_attention, fused_attention_here
from ..cells.kv_cache import KVCache
from ..cells.layers import Embedding, LayerNorm, Linear, RMSNorm, residual_add
from ..cells.masks import PromptMask
from ..config import ChatGLM2Config
from ..errors import GenerationError
from .base import CausalLM, CausalLMOutput, host_array, last_position

# ----------------------------------------------------------------------------- pair rotary


def pair_rotary_tables(rotary_dim: int, num_positions: int, base: float = 10000.0,
                       position_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [num_positions, rotary_dim // 2] (float32): pair i at position p turns by
    (p / position_scale) * base^(-2i/rotary_dim).

    Computed the way upstream does it in float32 (theta, p / position_scale and their product rounded to
    float32); the `rotary_pos_emb.inv_freq` buffer of checkpoints is not used, as upstream recomputes it too.
    """
    theta = (1.0 / (np.float32(base) ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim))))
    theta = theta.astype(np.float32)
    positions = np.arange(num_positions, dtype=np.float32) / np.float32(position_scale)
    angles = np.outer(positions, theta).astype(np.float32)
    return (np.cos(angles.astype(np.float64)).astype(np.float32),
            np.sin(angles.astype(np.float64)).astype(np.float32))


class PairRotaryEmbedding(nn.Cell):
    """Looks up cos/sin for position ids; the tables grow on demand (upstream sizes them by seq_length).

    `base` and `position_scale` carry the config's `rope_ratio` rule (see ChatGLM2Config.rope_scaling).
    """

    def __init__(self, rotary_dim: int, num_positions: int, base: float = 10000.0, position_scale: float = 1.0):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.base = base
        self.position_scale = position_scale
        self.num_positions = 0
        self.cos = self.sin = None
        self.ensure(num_positions)

    def ensure(self, num_positions: int, dtype: ms.Type = ms.float32) -> None:
        """Tables covering positions [0, num_positions) in `dtype` (the compute dtype: no Cast of gathered rows)."""
        if num_positions > self.num_positions or self.cos.dtype != dtype:
            self.num_positions = max(num_positions, self.num_positions)
            cos, sin = pair_rotary_tables(self.rotary_dim, self.num_positions, self.base, self.position_scale)
            self.cos, self.sin = Tensor(cos).astype(dtype), Tensor(sin).astype(dtype)

    def construct(self, position_ids, dtype):
        """position_ids [b, s] → cos, sin [b, s, 1, rotary_dim // 2, 1] in `dtype` (upstream casts the cache too)."""
        b, s = position_ids.shape
        n = self.rotary_dim // 2
        cos = ops.gather(self.cos, position_ids, 0).reshape(b, s, 1, n, 1)
        sin = ops.gather(self.sin, position_ids, 0).reshape(b, s, 1, n, 1)
        return cos.astype(dtype), sin.astype(dtype)


def apply_pair_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the first 2n dims of x [b, s, heads, head_dim]; the rest passes through."""
    b, s, h, d = x.shape
    n = cos.shape[-2]
    rot, rest = ops.split(x, [2 * n, d - 2 * n], axis=-1)
    even, odd = ops.split(rot.reshape(b, s, h, n, 2), 1, axis=-1)
    # The same products and sums as upstream (x0·cos − x1·sin, x1·cos + x0·sin), so float32 results agree bitwise.
    turned = ops.concat([even * cos - odd * sin, odd * cos + even * sin], -1).reshape(b, s, h, 2 * n)
    return ops.concat([turned, rest], -1)


# ----------------------------------------------------------------------------- attention, MLP, block


class MultiQueryAttention(nn.Cell):
    """Attention of block `layer_number` (1-based, as upstream) with a static cache of its key/value groups."""

    def __init__(self, config: ChatGLM2Config, layer_number: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        # multi_query_attention lays the fused output out as [all q | all k | all v]; without it, per head
        # [(q | k | v) of head_dim each], as in ChatGLM-6B.
        self.grouped = bool(config.multi_query_attention)
        # apply_query_key_layer_scaling: q divided by layer_number, undone in float32 by the attention.
        self.layer_scale = float(layer_number) if config.apply_query_key_layer_scaling else 1.0
        self.query_scale = 1.0 / (math.sqrt(self.head_dim) * self.layer_scale)
        qkv_size = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = Linear(config.hidden_size, qkv_size,
                                      bias=config.add_bias_linear or config.add_qkv_bias, dtype=dtype)
        self.dense = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.add_bias_linear,
                            dtype=dtype)
        # On the CPU, glm_ms's decode-attention kernel reads the cache (see cells.attention.cache_attention).
        self.fused_attention = fused_attention_here()
        self.kv_cache = KVCache(self.num_kv_heads, self.head_dim, dtype=dtype)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]; keys written at `cache_positions`, then cache slots [0, L) read
        under mask [b, 1, s, L] (True = masked)."""
        b, s, _ = x.shape
        h, g, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.query_key_value(x)
        if self.grouped:
            # narrow, not an uneven ops.split: on the CPU its StridedSlices cost ~0.1 ms more per layer.
            q, k, v = (ops.narrow(qkv, -1, 0, h * d), ops.narrow(qkv, -1, h * d, g * d),
                       ops.narrow(qkv, -1, (h + g) * d, g * d))
            q, k, v = q.reshape(b, s, h, d), k.reshape(b, s, g, d), v.reshape(b, s, g, d)
        else:
            q, k, v = ops.split(qkv.reshape(b, s, h, 3 * d), d, axis=-1)
        q = apply_pair_rotary(q, cos, sin) * self.query_scale
        k = apply_pair_rotary(k, cos, sin)
        # Only the cache slots the mask covers are read: those in use (a bucketed prefix when compiled).
        keys, values = self.kv_cache(k, v, cache_positions)
        # Head j reads key/value group j // (h / g). Rather than copying each group h/g times, fold the heads
        # of a group into the query rows: q [b, g, (h/g)·s, d] against the cache's [b, g, L, d] as it is.
        q = q.transpose(0, 2, 1, 3).reshape(b, g, (h // g) * s, d)
        context = cache_attention(q, keys, values, mask, self.layer_scale, self.fused_attention)
        context = context.reshape(b, h, s, d).transpose(0, 2, 1, 3).reshape(b, s, h * d)
        return self.dense(context)


class SwiGLUMLP(nn.Cell):
    """dense_h_to_4h → SwiGLU (silu of the first half times the second) → dense_4h_to_h."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, bias: bool = False, dtype: ms.Type = ms.float32):
        super().__init__()
        self.ffn_hidden_size = ffn_hidden_size
        self.dense_h_to_4h = Linear(hidden_size, 2 * ffn_hidden_size, bias=bias, dtype=dtype)
        self.dense_4h_to_h = Linear(ffn_hidden_size, hidden_size, bias=bias, dtype=dtype)

    def construct(self, x):
        gate, up = ops.split(self.dense_h_to_4h(x), self.ffn_hidden_size, axis=-1)
        # ops.silu is the fused kernel (accurate to ~1e-7 on CPU, unlike a hand-written x * sigmoid(x) chain).
        return self.dense_4h_to_h(ops.silu(gate) * up)


def make_norm(config: ChatGLM2Config, dtype: ms.Type) -> nn.Cell:
    """RMSNorm for the released models (`rmsnorm: true`), LayerNorm with bias otherwise."""
    if config.rmsnorm:
        return RMSNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
    return LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)


class GLM2Block(nn.Cell):
    """norm → attention → residual → norm → MLP → residual (pre-norm, no scaling)."""

    def __init__(self, config: ChatGLM2Config, layer_number: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.post_norm_residual = bool(config.apply_residual_connection_post_layernorm)
        self.input_layernorm = make_norm(config, dtype)
        self.self_attention = MultiQueryAttention(config, layer_number, dtype=dtype)
        self.post_attention_layernorm = make_norm(config, dtype)
        self.mlp = SwiGLUMLP(config.hidden_size, config.ffn_hidden_size, bias=config.add_bias_linear, dtype=dtype)
        self.residual_kernel = fused_attention_here()  # the sums in one CPU kernel (cells.layers.residual_add)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]."""
        normed = self.input_layernorm(x)
        attention_output = self.self_attention(normed, cos, sin, mask, cache_positions)
        h = residual_add(normed if self.post_norm_residual else x, attention_output, kernel=self.residual_kernel)
        normed = self.post_attention_layernorm(h)
        return residual_add(normed if self.post_norm_residual else h, self.mlp(normed), kernel=self.residual_kernel)


# ----------------------------------------------------------------------------- the network


class GLM2Embedding(nn.Cell):
    """`transformer.embedding`: the word embeddings (no position embeddings; rotary happens in attention)."""

    def __init__(self, config: ChatGLM2Config, dtype: ms.Type = ms.float32):
        super().__init__()
        self.word_embeddings = Embedding(config.padded_vocab_size, config.hidden_size, dtype=dtype)

    def construct(self, input_ids):
        return self.word_embeddings(input_ids)


class GLM2Encoder(nn.Cell):
    """`transformer.encoder`: the blocks and, with `post_layer_norm`, the final norm."""

    def __init__(self, config: ChatGLM2Config, dtype: ms.Type = ms.float32):
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
    """`transformer.*`: embedding → encoder; the untied output layer over the padded vocabulary; rotary tables."""

    def __init__(self, config: ChatGLM2Config, dtype: ms.Type = ms.float32):
        super().__init__()
        self.embedding = GLM2Embedding(config, dtype=dtype)
        self.rotary_pos_emb = PairRotaryEmbedding(config.rotary_dim, config.seq_length, base=config.rotary_base,
                                                  position_scale=config.rotary_position_scale)
        self.encoder = GLM2Encoder(config, dtype=dtype)
        self.output_layer = Linear(config.hidden_size, config.padded_vocab_size, bias=False, dtype=dtype)

    def construct(self, input_ids, position_ids, mask, cache_positions, output_hidden_states=False):
        """input_ids, position_ids [b, s] → (final hidden [b, s, hidden], hidden states if asked)."""
        x = self.embedding(input_ids)
        cos, sin = self.rotary_pos_emb(position_ids, x.dtype)
        return self.encoder(x, cos, sin, mask, cache_positions, output_hidden_states)


@dataclass
class ChatGLM2Output(CausalLMOutput):
    """`CausalLMOutput` plus what upstream also exposes: the normed last hidden state and each layer's cache.

    hidden_states: the input of every block, then the last block's output before `final_layernorm`.
    past_key_values: per layer (keys, values) [b, key/value heads, seq, head_dim], keys rotated (after the
    P-tuning prefix, if any).
    """
    last_hidden_state: Tensor = None
    past_key_values: tuple = ()


class ChatGLM2CausalLM(CausalLM):
    """ChatGLM2/3: `transformer` = embedding, encoder (blocks, final norm), untied `output_layer`, rotary tables."""

    config_class = ChatGLM2Config

    def __init__(self, config: ChatGLM2Config, dtype: str | ms.Type | None = None):
        super().__init__(config, dtype)
        self.transformer = ChatGLM2Model(config, dtype=self.compute_dtype)
        self.set_train(False)

    def attention_layers(self) -> list[nn.Cell]:
        """The attention Cell of every block."""
        return [layer.self_attention for layer in self.transformer.encoder.layers]

    def position_tables(self) -> nn.Cell:
        """The pair rotary Cell."""
        return self.transformer.rotary_pos_emb

    def forward_step(self, input_ids, position_ids, mask, cache_positions, last_only=False):
        """Tokens [b, s] at positions [b, 1, s], keys written at `cache_positions`; float32 logits [b, s|1, vocab].

        Tensors in, tensors out: the unit the compiled decode path builds its graphs on.
        """
        b, s = input_ids.shape
        mask, cache_positions = self.prefixed(mask, cache_positions)
        hidden, _ = self.transformer(input_ids, position_ids.reshape(b, s), mask, cache_positions)
        if last_only:
            hidden = last_position(hidden)
        return self.transformer.output_layer(hidden).astype(ms.float32)

    def construct(self, input_ids, position_ids=None, attention_mask=None, output_hidden_states=False):
        """The eager forward users call, without reuse of a cache; mask and positions built as upstream if absent."""
        ids = self.check_ids(input_ids)
        mask, positions = self.prefix_inputs(ids, attention_mask, position_ids)
        batch, seq = ids.shape
        self.allocate_cache(batch, seq)
        mask, slots = self.prefixed(Tensor(mask), Tensor(np.arange(seq, dtype=np.int32)))
        hidden, states = self.transformer(Tensor(ids.astype(np.int32)), Tensor(positions[:, 0].astype(np.int32)),
                                          mask, slots, output_hidden_states)
        held = self.prefix_length + seq  # a P-tuning prefix comes first, as in upstream's past_key_values
        caches = tuple(a.kv_cache.held(held) for a in self.attention_layers())
        return ChatGLM2Output(logits=self.transformer.output_layer(hidden).astype(ms.float32), hidden_states=states,
                              last_hidden_state=hidden, past_key_values=caches)

    @property
    def max_positions(self) -> int:
        """`seq_length`: upstream's rotary table has that many rows, so no token may sit past it."""
        return self.config.seq_length

    def prompt_inputs(self, ids: np.ndarray, attention_mask: Any = None,
                      position_ids: Any = None) -> tuple[PromptMask, np.ndarray]:
        """The prompt's mask (rows on demand) and positions [b, 1, s], from what the tokenizer returns or built.

        attention_mask: None (nothing padded), the tokenizer's 0/1 padding mask [b, s] (upstream's causal
        `get_masks`), or a bool mask [b, 1, s, s] used as given. position_ids: None (0…s−1 in every row, as
        upstream), [b, s] or [b, 1, s].
        """
        batch, seq = ids.shape
        if attention_mask is None:
            mask = PromptMask.causal(np.ones((batch, seq), dtype=bool))
        else:
            attention_mask = host_array(attention_mask)
            if attention_mask.shape == (batch, seq):
                mask = PromptMask.causal(attention_mask)
            elif attention_mask.shape == (batch, 1, seq, seq) and attention_mask.dtype == np.bool_:
                mask = PromptMask.given(attention_mask)
            else:
                raise GenerationError(f"attention_mask must be a 0/1 padding mask [{batch}, {seq}] or a bool mask "
                                      f"[{batch}, 1, {seq}, {seq}] (True = masked), got {attention_mask.dtype} "
                                      f"{list(attention_mask.shape)}")
        if position_ids is None:
            positions = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
        else:
            positions = host_array(position_ids)
            if positions.shape not in ((batch, seq), (batch, 1, seq)) or not np.issubdtype(positions.dtype, np.integer):
                raise GenerationError(f"position_ids must be integers [{batch}, {seq}] (or [{batch}, 1, {seq}]), "
                                      f"got {positions.dtype} {list(positions.shape)}")
            if (positions < 0).any():
                raise GenerationError("position_ids must be >= 0")
        return mask, positions.reshape(batch, 1, seq).astype(np.int64)

    def next_position_ids(self, last: np.ndarray) -> np.ndarray:
        """Positions [b, 1, 1] of the next generated token: one past the previous token's."""
        return last + 1
