"""The one attention function of every family, so a fused kernel (FlashAttentionScore on 910B) can replace it.

`cache_attention` reads the static cache's slot-major buffers: on the CPU a decode step or a prompt chunk goes
through glm_ms's fused kernel, which reads the slots where they lie and holds no scores of rows × slots; otherwise
the slots in use are taken heads first and `scaled_masked_attention` runs in MindSpore ops.

The query heads that share a key/value group are stacked as rows of that group ([b, groups, r·s, d]), so
multi-query attention reads each group's keys as they are and the mask [b, 1, s, L] is broadcast over heads,
never copied per head. Scores over many keys (a prefill chunk against a long cache) are taken in key blocks
with a running softmax, as flash attention does, so they never take more than about `BLOCK_BYTES`.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

from ..device import select_device
from ..kernels.attention import cached_attention
from ..kernels.matmul import kernel_library
from .kv_cache import heads_major

MASK_FILL = -10000.0  # upstream fills masked scores with -10000 (not -inf); fully masked rows stay finite
BLOCK_BYTES = 64 << 20  # float32 scores of one key block; decode steps and short prompts fit in one block


def key_block(rows: int, keys: int, block_bytes: int | None = None) -> int:
    """Keys per block so that `rows` query rows' float32 scores fit in `block_bytes` (default `BLOCK_BYTES`),
    a multiple of 128."""
    block = max((block_bytes or BLOCK_BYTES) // (4 * rows) // 128 * 128, 128)
    return min(block, keys)


def _masked_scores(query: Tensor, key: Tensor, mask: Tensor, layer_scale: float) -> Tensor:
    """float32 scores [b, g, r·s, n] times the layer scale, masked ones MASK_FILL times it."""
    b, g, rows, _ = query.shape
    s, n = mask.shape[2], key.shape[2]
    r = rows // s
    # q was divided by the layer scale to keep fp16 scores in range; the factor is undone here, in float32.
    scores = ops.BatchMatMul(transpose_b=True)(query, key).astype(ms.float32).reshape(b, g, r, s, n)
    # scores·keep + fill with keep = scale (unmasked) or 0, fill = 0 or MASK_FILL·scale: exactly upstream's fill
    # for finite scores. Both are tiled over the heads of the block: MindSpore's CPU kernels run equal shapes
    # about ten times faster than broadcast ones, and a block's tile is no larger than its scores.
    masked = mask.reshape(b, 1, 1, s, n).astype(ms.float32)
    keep = ops.tile((1.0 - masked) * layer_scale, (1, g, r, 1, 1))
    fill = ops.tile(masked * (MASK_FILL * layer_scale), (1, g, r, 1, 1))
    return (scores * keep + fill).reshape(b, g, rows, n)


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
    # Blocks of keys, each through the fused softmax, combined as flash attention does: with the running row
    # max `peak`, `total` = Σ sum_b·exp(max_b - peak) and `context` the blocks' outputs weighted alike, a block
    # raising the peak rescales both by exp(old peak - new peak). The loop bounds are shapes, so a compiled
    # graph unrolls it.
    part, peak, total = _block(query, key, value, mask, layer_scale, 0, block)
    context = part * total
    for start in range(block, keys, block):
        part, part_peak, part_total = _block(query, key, value, mask, layer_scale, start, min(start + block, keys))
        new_peak = ops.maximum(peak, part_peak)
        fade, part_weight = ops.exp(peak - new_peak), part_total * ops.exp(part_peak - new_peak)
        context = context * fade + part * part_weight
        total = total * fade + part_weight
        peak = new_peak
    return (context / total).astype(value.dtype)


def _block(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, layer_scale: float, start: int,
           stop: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keys start..stop-1: softmax-weighted values (float32 [b, g, r·s, d]), each row's max score and
    Σ exp(score - max) ([b, g, r·s, 1])."""
    scores = _masked_scores(query, key[:, :, start:stop], mask[:, :, :, start:stop], layer_scale)
    probs = ops.softmax(scores, axis=-1)
    # A row's largest probability is exp(0) / Σ exp(score - max): its inverse is the sum, with no second exp
    # over the block (and no loss of precision in fully masked rows, whose max is MASK_FILL·scale).
    total = 1.0 / probs.max(-1, keepdims=True)
    part = ops.BatchMatMul()(probs.astype(value.dtype), value[:, :, start:stop]).astype(ms.float32)
    return part, scores.max(-1, keepdims=True), total


def fused_attention_here() -> bool:
    """Whether `cache_attention(..., fused=True)` may use the CPU kernel: the CPU, with glm_ms's kernels built."""
    return select_device() == "CPU" and kernel_library() is not None


def cache_attention(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor, layer_scale: float,
                    fused: bool = False) -> Tensor:
    """`scaled_masked_attention` over slots 0..L-1 (L = mask's last dimension) of a KVCache's buffers
    [capacity, b, g, d]; `fused` (the CPU with glm_ms's kernels) reads them with the attention kernel."""
    if fused and query.dtype == keys.dtype and keys.dtype in (ms.float32, ms.float16):
        # The kernel's float32 scores are _masked_scores' (q·k·scale, MASK_FILL·scale where masked).
        return cached_attention(query, keys, values, mask, layer_scale, MASK_FILL * layer_scale).astype(values.dtype)
    width = mask.shape[-1]
    return scaled_masked_attention(query, heads_major(keys, width), heads_major(values, width), mask, layer_scale)
