"""The one attention function of every family, so a fused kernel (FlashAttentionScore on 910B) can replace it."""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

MASK_FILL = -10000.0  # upstream fills masked scores with -10000 (not -inf); fully masked rows stay finite


def scaled_masked_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, layer_scale: float) -> Tensor:
    """softmax(q·kᵀ masked) · v for q [b, h, s, d], k/v [b, h, L, d], mask [b, 1, s, L] (True = masked)."""
    scores = ops.BatchMatMul(transpose_b=True)(query, key)
    # Upstream skips the fill when nothing is masked; filling an all-False mask is the same no-op.
    scores = ops.masked_fill(scores, mask, ops.scalar_to_tensor(MASK_FILL, scores.dtype))
    # q was divided by the layer scale to keep fp16 scores in range; the factor is undone here, in float32.
    probs = ops.softmax(scores.astype(ms.float32) * layer_scale, axis=-1).astype(value.dtype)
    return ops.BatchMatMul()(probs, value)
