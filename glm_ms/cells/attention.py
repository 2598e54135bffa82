"""ChatGLM-6B self-attention: per-head fused QKV, 2D rotary, layer-scaled scores, float32 softmax."""
import math

from mindspore import nn, ops
import mindspore as ms

from .kv_cache import KVCache
from .layers import Linear
from .rotary import apply_rotary

MASK_FILL = -10000.0  # upstream fills masked scores with -10000 (not -inf); fully masked rows stay finite


def scaled_masked_attention(query, key, value, mask, layer_scale):
    """softmax(q·kᵀ masked) · v for q [b, h, s, d], k/v [b, h, L, d], mask [b, 1, s, L] (True = masked).

    The one place attention is computed, so a fused kernel (FlashAttentionScore on 910B) can replace it.
    """
    scores = ops.BatchMatMul(transpose_b=True)(query, key)
    # Upstream skips the fill when nothing is masked; filling an all-False mask is the same no-op.
    scores = ops.masked_fill(scores, mask, ops.scalar_to_tensor(MASK_FILL, scores.dtype))
    # q was divided by (layer_id+1) to keep fp16 scores in range; the factor is undone here, in float32.
    probs = ops.softmax(scores.astype(ms.float32) * layer_scale, axis=-1).astype(value.dtype)
    return ops.BatchMatMul()(probs, value)


class SelfAttention(nn.Cell):
    """Attention of GLM block `layer_id` with its own static KV cache."""

    def __init__(self, config, layer_id, dtype=ms.float32):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.layer_scale = float(layer_id + 1)
        self.query_scale = 1.0 / (math.sqrt(self.head_dim) * self.layer_scale)
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size, dtype=dtype)
        self.dense = Linear(config.hidden_size, config.hidden_size, dtype=dtype)
        self.kv_cache = KVCache(self.num_heads, self.head_dim, dtype=dtype)

    def construct(self, x, cos, sin, mask, cache_positions):
        """x [b, s, hidden] → [b, s, hidden]; keys/values of x are written at `cache_positions`."""
        b, s, _ = x.shape
        # The fused output is laid out per head: [heads, (q | k | v) of head_dim each], not three thirds.
        qkv = self.query_key_value(x).reshape(b, s, self.num_heads, 3 * self.head_dim)
        q, k, v = ops.split(qkv, self.head_dim, axis=-1)
        q = apply_rotary(q, cos, sin) * self.query_scale
        k = apply_rotary(k, cos, sin)
        keys, values = self.kv_cache(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), cache_positions)
        context = scaled_masked_attention(q.transpose(0, 2, 1, 3), keys, values, mask, self.layer_scale)
        return self.dense(context.transpose(0, 2, 1, 3).reshape(b, s, self.num_heads * self.head_dim))
