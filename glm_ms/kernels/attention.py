"""The CPU attention kernels as MindSpore functions, eagerly and inside `mindspore.jit` (`ops.Custom(func_type="aot")`
primitives, like the matmuls): softmax(q·kᵀ masked)·v read straight from a slot-major static cache, for a decode
step or a prompt chunk; and ChatGLM-6B's split + 2D rotary + query scaling of the fused query/key/value output."""
from __future__ import annotations

import functools

import mindspore as ms
from mindspore import Tensor, ops

from .matmul import kernel_library


@functools.lru_cache(maxsize=None)
def _primitive() -> ops.Custom:
    return ops.Custom(f"{kernel_library().path}:glm_cached_attention", out_shape=lambda q, *_: q,
                      out_dtype=lambda *_: ms.float32, func_type="aot")


def cached_attention(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor, layer_scale: float,
                     masked_score: float) -> Tensor:
    """float32 [b, g, R, d]: softmax over slots 0..W-1 of (q·k · layer_scale, or masked_score where mask [b, 1, s, W]
    is True), times the values; keys/values are the cache buffers [capacity, b, g, d] as they are stored, float32
    or float16 like the query."""
    scale = Tensor([layer_scale, masked_score], ms.float32)
    return _primitive()(query, keys, values, mask.astype(ms.bool_), scale)


@functools.lru_cache(maxsize=None)
def _rotary_primitive() -> ops.Custom:
    def shapes(qkv, cos, *_):
        b, s, width = qkv
        d = cos[-1]
        heads = width // (3 * d)
        return [b, heads, s, d], [b, s, heads, d], [b, s, heads, d]
    return ops.Custom(f"{kernel_library().path}:glm_rotary_2d", out_shape=shapes,
                      out_dtype=lambda dtype, *_: (dtype, dtype, dtype), func_type="aot")


def rotary_2d(qkv: Tensor, cos: Tensor, sin: Tensor, query_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """ChatGLM-6B's fused output qkv [b, s, heads · (q | k | v)] → q [b, heads, s, d] rotated and times
    `query_scale`, k [b, s, heads, d] rotated, v [b, s, heads, d], with cos/sin [b, s, 1, d] (float32 or float16,
    all alike); bit for bit what `models.chatglm.apply_rotary` computes with MindSpore ops."""
    return _rotary_primitive()(qkv, cos, sin, Tensor([query_scale], ms.float32))
