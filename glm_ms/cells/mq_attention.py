"""ChatGLM2/3 self-attention: fused QKV with bias, grouped (multi-query) keys/values, pair rotary, causal mask."""
import math

from mindspore import nn, ops
import mindspore as ms

from .attention import scaled_masked_attention
from .kv_cache import KVCache
from .layers import Linear
from .rotary_pairs import apply_pair_rotary


class MultiQueryAttention(nn.Cell):
    """Attention of block `layer_number` (1-based, as upstream) with a static cache of its key/value groups."""

    def __init__(self, config, layer_number, dtype=ms.float32):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        # multi_query_attention lays the fused output out as [all q | all k | all v]; without it, per head
        # [(q | k | v) of head_dim each], as in ChatGLM-6B.
        self.grouped = bool(config.multi_query_attention)
        # Upstream divides q by layer_number (apply_query_key_layer_scaling) to keep fp16 scores in range and
        # multiplies the scores back in float32 before the softmax; float32 results are unchanged by it.
        self.layer_scale = float(layer_number) if config.apply_query_key_layer_scaling else 1.0
        self.query_scale = 1.0 / (math.sqrt(self.head_dim) * self.layer_scale)
        qkv_size = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.query_key_value = Linear(config.hidden_size, qkv_size,
                                      bias=config.add_bias_linear or config.add_qkv_bias, dtype=dtype)
        self.dense = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.add_bias_linear,
                            dtype=dtype)
        self.kv_cache = KVCache(self.num_kv_heads, self.head_dim, dtype=dtype)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]; mask [b, 1, s, capacity] (True = masked); keys written at `cache_positions`."""
        b, s, _ = x.shape
        h, g, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.query_key_value(x)
        if self.grouped:
            q, k, v = ops.split(qkv, [h * d, g * d, g * d], axis=-1)
            q, k, v = q.reshape(b, s, h, d), k.reshape(b, s, g, d), v.reshape(b, s, g, d)
        else:
            q, k, v = ops.split(qkv.reshape(b, s, h, 3 * d), d, axis=-1)
        q = apply_pair_rotary(q, cos, sin) * self.query_scale
        k = apply_pair_rotary(k, cos, sin)
        keys, values = self.kv_cache(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), cache_positions)
        # Head j reads key/value group j // (h / g). Rather than copying each group h/g times, fold the heads
        # of a group into the query rows: q [b, g, (h/g)·s, d] against the cache's [b, g, L, d] as it is.
        r = h // g
        q = q.transpose(0, 2, 1, 3).reshape(b, g, r * s, d)
        if r > 1:
            mask = ops.tile(mask, (1, 1, r, 1))  # [b, 1, r·s, L], rows in the same (head, position) order as q
        context = scaled_masked_attention(q, keys, values, mask, self.layer_scale)
        context = context.reshape(b, h, s, d).transpose(0, 2, 1, 3).reshape(b, s, h * d)
        return self.dense(context)
