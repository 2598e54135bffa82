"""The one attention function of every family, so a fused kernel (FlashAttentionScore on 910B) can replace it.

The query heads that share a key/value group are stacked as rows of that group ([b, groups, r·s, d]), so
multi-query attention reads each group's keys as they are and the mask [b, 1, s, L] is broadcast over heads,
never copied per head. Scores over many keys (a prefill chunk against a long cache) are taken in key blocks
with a running softmax, as flash attention does, so they never take more than about `BLOCK_BYTES`.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

MASK_FILL = -10000.0  # upstream fills masked scores with -10000 (not -inf); fully masked rows stay finite
BLOCK_BYTES = 64 << 20  # float32 scores of one key block; decode steps and short prompts fit in one block


def key_block(rows: int, keys: int, block_bytes: int | None = None) -> int:
    """Keys per block so that `rows` query rows' float32 scores fit in `block_bytes` (default `BLOCK_BYTES`),
    a multiple of 128."""
    block = max((block_bytes or BLOCK_BYTES) // (4 * rows) // 128 * 128, 128)
    return min(block, keys)


def _masked_scores(query: Tensor, key: Tensor, mask: Tensor, layer_scale: float) -> Tensor:
    """float32 scores [b, g, r·s, n] with masked ones set to MASK_FILL, the layer scale undone."""
    b, g, rows, _ = query.shape
    s, n = mask.shape[2], key.shape[2]
    scores = ops.BatchMatMul(transpose_b=True)(query, key).reshape(b, g, rows // s, s, n)
    # Upstream skips the fill when nothing is masked; filling an all-False mask is the same no-op.
    scores = ops.masked_fill(scores, mask.reshape(b, 1, 1, s, n), ops.scalar_to_tensor(MASK_FILL, scores.dtype))
    # q was divided by the layer scale to keep fp16 scores in range; the factor is undone here, in float32.
    return scores.reshape(b, g, rows, n).astype(ms.float32) * layer_scale


def scaled_masked_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, layer_scale: float,
                            block: int | None = None) -> Tensor:
    """softmax(q·kᵀ masked) · v for q [b, g, r·s, d] (r heads per key/value group, head-major rows), k/v
    [b, g, L, d] and mask [b, 1, s, L] (True = masked); keys in blocks of `block` (default: `key_block`)."""
    b, g, rows, _ = query.shape
    keys = key.shape[2]
    block = block or key_block(b * g * rows, keys)
    if block >= keys:
        probs = ops.softmax(_masked_scores(query, key, mask, layer_scale), axis=-1).astype(value.dtype)
        return ops.BatchMatMul()(probs, value)
    # Running softmax: keep each row's max so far (peak), the sum of exp(score - peak) and the weighted values,
    # rescaling both by exp(old peak - new peak) when a block raises the peak. The loop bounds are shapes,
    # so a compiled graph unrolls it.
    scores = _masked_scores(query, key[:, :, :block], mask[:, :, :, :block], layer_scale)
    peak = scores.max(-1, keepdims=True)
    weights = ops.exp(scores - peak)
    total = weights.sum(-1, keepdims=True)
    context = ops.BatchMatMul()(weights.astype(value.dtype), value[:, :, :block]).astype(ms.float32)
    for start in range(block, keys, block):
        stop = min(start + block, keys)
        scores = _masked_scores(query, key[:, :, start:stop], mask[:, :, :, start:stop], layer_scale)
        new_peak = ops.maximum(peak, scores.max(-1, keepdims=True))
        fade = ops.exp(peak - new_peak)
        weights = ops.exp(scores - new_peak)
        total = total * fade + weights.sum(-1, keepdims=True)
        block_context = ops.BatchMatMul()(weights.astype(value.dtype), value[:, :, start:stop])
        context = context * fade + block_context.astype(ms.float32)
        peak = new_peak
    return (context / total).astype(value.dtype)
