"""ChatGLM-6B, top to bottom: 2D rotary → self-attention → GELU MLP → GLM block → transformer → causal LM.

Attribute names equal the checkpoint's (`transformer.layers.{i}.attention.query_key_value`, …) so the name
table is the identity. Positions are 2D: [batch, 2, seq] = (position, block position).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..cells.attention import cache_attention, fused_attention_here
from ..cells.kv_cache import KVCache
from ..cells.layers import Embedding, LayerNorm, Linear, residual_add
from ..cells.masks import PromptMask
from ..config import ChatGLMConfig
from ..errors import GenerationError
from ..kernels import activation
from ..kernels.attention import rotary_2d
from ..positions import position_ids_2d, prefix_lm_mask
from .base import CausalLM, CausalLMOutput, host_array, last_position

# ----------------------------------------------------------------------------- 2D rotary


def rotary_tables(rotary_dim: int, num_positions: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [num_positions, rotary_dim] (float32) for one rotary of width `rotary_dim`."""
    inv_freq = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))
    # Upstream builds inv_freq in float32 then stores it as float16; the rounded values are what it trained with.
    inv_freq = inv_freq.astype(np.float16).astype(np.float32)
    freqs = np.arange(num_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb.astype(np.float64)).astype(np.float32), np.sin(emb.astype(np.float64)).astype(np.float32)


class RotaryEmbedding2D(nn.Cell):
    """Looks up cos/sin for (position, block position) pairs, concatenated over the two halves of a head."""

    def __init__(self, rotary_dim: int, num_positions: int):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.num_positions = 0
        self.cos = self.sin = None
        self.ensure(num_positions)

    def ensure(self, num_positions: int, dtype: ms.Type = ms.float32) -> None:
        """Tables covering positions [0, num_positions) in `dtype` (upstream recomputes them on demand).

        Kept in the compute dtype, the rows a step gathers need no Cast (a Cast commutes with a gather).
        """
        if num_positions > self.num_positions or self.cos.dtype != dtype:
            self.num_positions = max(num_positions, self.num_positions)
            cos, sin = rotary_tables(self.rotary_dim, self.num_positions)
            self.cos, self.sin = Tensor(cos).astype(dtype), Tensor(sin).astype(dtype)

    def construct(self, position_ids, dtype):
        """position_ids [b, 2, s] → cos, sin [b, s, 1, 2 * rotary_dim] in `dtype`."""
        pos, block = position_ids[:, 0], position_ids[:, 1]
        cos = ops.concat([ops.gather(self.cos, pos, 0), ops.gather(self.cos, block, 0)], -1)
        sin = ops.concat([ops.gather(self.sin, pos, 0), ops.gather(self.sin, block, 0)], -1)
        return cos.expand_dims(2).astype(dtype), sin.expand_dims(2).astype(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate both halves of each head of x [b, s, heads, head_dim] ("rotate_half" within each half)."""
    quarter = x.shape[-1] // 4
    a, b, c, d = ops.split(x, quarter, axis=-1)
    rotated = ops.concat([-b, a, -d, c], -1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------- attention, MLP, block


class SelfAttention(nn.Cell):
    """Attention of GLM block `layer_id` (0-based) with its own static KV cache."""

    def __init__(self, config: ChatGLMConfig, layer_id: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        # Upstream divides q by (layer_id + 1) to keep fp16 scores in range; the attention undoes it in float32.
        self.layer_scale = float(layer_id + 1)
        self.query_scale = 1.0 / (math.sqrt(self.head_dim) * self.layer_scale)
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size, dtype=dtype)
        self.dense = Linear(config.hidden_size, config.hidden_size, dtype=dtype)
        # On the CPU, glm_ms's kernels split and rotate q/k/v and read the cache (cells.attention.cache_attention).
        self.fused_attention = fused_attention_here()
        self.kv_cache = KVCache(self.num_heads, self.head_dim, dtype=dtype)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]; keys/values of x written at `cache_positions`, then cache slots
        [0, L) read under mask [b, 1, s, L] (True = masked)."""
        b, s, _ = x.shape
        qkv = self.query_key_value(x)
        if self.fused_attention and x.dtype in (ms.float32, ms.float16):
            # One kernel for the ~18 ops below (the same values): per layer and token, MindSpore's cost per op
            # on the CPU is a large part of a quantized model's decode time.
            q, k, v = rotary_2d(qkv, cos, sin, self.query_scale)
        else:
            # The fused output is laid out per head: [heads, (q | k | v) of head_dim each], not three thirds.
            q, k, v = ops.split(qkv.reshape(b, s, self.num_heads, 3 * self.head_dim), self.head_dim, axis=-1)
            q = (apply_rotary(q, cos, sin) * self.query_scale).transpose(0, 2, 1, 3)
            k = apply_rotary(k, cos, sin)
        # Only the cache slots the mask covers are read.
        keys, values = self.kv_cache(k, v, cache_positions)
        context = cache_attention(q, keys, values, mask, self.layer_scale, self.fused_attention)
        return self.dense(context.transpose(0, 2, 1, 3).reshape(b, s, self.num_heads * self.head_dim))


def gelu_tanh(x: Tensor, kernel: bool = False) -> Tensor:
    """0.5x(1 + tanh(0.7978845608028654 x (1 + 0.044715 x²))): the GELU approximation upstream writes by hand.

    `kernel` (the CPU with glm_ms's kernels) computes it in float32 and rounds once, as upstream's float16 GELU does.
    """
    if kernel and x.dtype in (ms.float32, ms.float16):
        return activation.gelu_tanh(x)
    # The fused op computes exactly that formula; a hand-written ops.tanh is only good to ~1e-4 on CPU.
    return ops.gelu(x, approximate="tanh")


class GeluMLP(nn.Cell):
    """dense → tanh-approximated GELU → dense (not gated, despite upstream's "GLU" name)."""

    def __init__(self, hidden_size: int, inner_hidden_size: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.dense_h_to_4h = Linear(hidden_size, inner_hidden_size, dtype=dtype)
        self.dense_4h_to_h = Linear(inner_hidden_size, hidden_size, dtype=dtype)
        # MindSpore's GeLU takes 0.5-1 ms per call on the CPU for ChatGLM-6B's width; glm_ms's kernel, microseconds.
        self.gelu_kernel = fused_attention_here()

    def construct(self, x):
        return self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x), self.gelu_kernel))


class GLMBlock(nn.Cell):
    """LN → attention → alpha residual → LN → GELU MLP → alpha residual."""

    def __init__(self, config: ChatGLMConfig, layer_id: int, dtype: ms.Type = ms.float32):
        super().__init__()
        # GLM's deep-norm: the residual adds the *normalized* input times sqrt(2 * num_layers). Upstream's
        # GLMBlock defaults num_layers=28 and ChatGLMModel never passes the config's value, so it is always 28.
        self.alpha = math.sqrt(2 * 28)
        self.input_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
        self.attention = SelfAttention(config, layer_id, dtype=dtype)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
        self.mlp = GeluMLP(config.hidden_size, config.inner_hidden_size, dtype=dtype)
        self.residual_kernel = fused_attention_here()  # the sums in one CPU kernel (cells.layers.residual_add)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]."""
        attention_input = self.input_layernorm(x)
        attention_output = self.attention(attention_input, cos, sin, mask, cache_positions)
        h = residual_add(attention_input, attention_output, self.alpha, self.residual_kernel)
        mlp_input = self.post_attention_layernorm(h)
        return residual_add(mlp_input, self.mlp(mlp_input), self.alpha, self.residual_kernel)


# ----------------------------------------------------------------------------- the network


class ChatGLMModel(nn.Cell):
    """`transformer.*`: word embeddings → GLM blocks → final LayerNorm."""

    def __init__(self, config: ChatGLMConfig, dtype: ms.Type = ms.float32):
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.CellList([GLMBlock(config, i, dtype=dtype) for i in range(config.num_layers)])
        self.final_layernorm = LayerNorm(config.hidden_size, config.layernorm_epsilon, dtype=dtype)
        self.rotary = RotaryEmbedding2D(config.rotary_dim, config.max_sequence_length)

    def construct(self, input_ids, position_ids, mask, cache_positions, output_hidden_states=False):
        """input_ids [b, s] → (hidden [b, s, hidden], each block's input + the final output if asked)."""
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


# lm_head shares the word embedding matrix (upstream ties them; checkpoints store both copies).
TIED_WEIGHTS = {"lm_head.weight": "transformer.word_embeddings.weight"}


class ChatGLMCausalLM(CausalLM):
    """ChatGLM-6B: `transformer` (embeddings, blocks, final LN) and `lm_head` tied to the embeddings."""

    config_class = ChatGLMConfig
    tied_weights = TIED_WEIGHTS

    def __init__(self, config: ChatGLMConfig, dtype: str | ms.Type | None = None):
        super().__init__(config, dtype)
        self.transformer = ChatGLMModel(config, dtype=self.compute_dtype)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False, dtype=self.compute_dtype)
        self.lm_head.weight = self.transformer.word_embeddings.weight
        self.set_train(False)

    def attention_layers(self) -> list[nn.Cell]:
        """The attention Cell of every block."""
        return [layer.attention for layer in self.transformer.layers]

    def position_tables(self) -> nn.Cell:
        """The 2D rotary Cell."""
        return self.transformer.rotary

    def forward_step(self, input_ids, position_ids, mask, cache_positions, last_only=False):
        """Tokens [b, s] at positions [b, 2, s], keys written at `cache_positions`; float32 logits [b, s|1, vocab].

        Tensors in, tensors out: the unit the compiled decode path builds its graphs on.
        """
        mask, cache_positions = self.prefixed(mask, cache_positions)
        hidden, _ = self.transformer(input_ids, position_ids, mask, cache_positions)
        if last_only:
            hidden = last_position(hidden)
        return self.lm_head(hidden).astype(ms.float32)

    def construct(self, input_ids, position_ids=None, attention_mask=None, output_hidden_states=False):
        """The eager forward users call, without reuse of a cache; mask and positions built as upstream if absent."""
        ids = self.check_ids(input_ids)
        mask, positions = self.prefix_inputs(ids, attention_mask, position_ids)
        batch, seq = ids.shape
        self.allocate_cache(batch, seq)
        mask, slots = self.prefixed(Tensor(mask), Tensor(np.arange(seq, dtype=np.int32)))
        hidden, states = self.transformer(Tensor(ids.astype(np.int32)), Tensor(positions.astype(np.int32)), mask,
                                          slots, output_hidden_states)
        return CausalLMOutput(logits=self.lm_head(hidden).astype(ms.float32), hidden_states=states)

    def prompt_inputs(self, ids: np.ndarray, attention_mask: Any = None,
                      position_ids: Any = None) -> tuple[PromptMask, np.ndarray]:
        """Mask (bool [b, 1, s, s], True = masked) and 2D positions [b, 2, s]: given ones checked, else built per
        row. The context sees itself both ways (prefix LM), so the mask is dense."""
        c = self.config
        batch, seq = ids.shape
        if attention_mask is None:
            attention_mask = np.stack([prefix_lm_mask(row, c.bos_token_id) for row in ids.tolist()])
        if position_ids is None:
            position_ids = np.stack([position_ids_2d(row, c.bos_token_id, c.mask_token_id, c.gmask_token_id,
                                                     prefer_gmask=True) for row in ids.tolist()])
        mask, positions = host_array(attention_mask), host_array(position_ids)
        if mask.dtype != np.bool_ or mask.shape != (batch, 1, seq, seq):
            raise GenerationError(f"attention_mask must be bool [{batch}, 1, {seq}, {seq}] (True = masked, as the "
                                  f"tokenizer returns it), got {mask.dtype} {list(mask.shape)}")
        if positions.shape != (batch, 2, seq) or not np.issubdtype(positions.dtype, np.integer):
            raise GenerationError(f"position_ids must be integers [{batch}, 2, {seq}], got {positions.dtype} "
                                  f"{list(positions.shape)}")
        if (positions < 0).any():
            raise GenerationError("position_ids must be >= 0")
        return PromptMask.given(mask), positions.astype(np.int64)

    def next_position_ids(self, last: np.ndarray) -> np.ndarray:
        """Positions [b, 2, 1] of the next generated token given the previous token's."""
        nxt = last.copy()
        nxt[:, 1] += 1  # a new token keeps the mask position and advances the block position by one
        return nxt
