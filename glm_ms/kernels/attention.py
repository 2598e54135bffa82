"""The CPU attention kernel as a MindSpore function: softmax(q·kᵀ masked)·v read straight from a slot-major static
cache, for a decode step or a prompt chunk, eagerly and inside `mindspore.jit` (an `ops.Custom(func_type="aot")`
primitive, like the matmuls)."""
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
