"""Elementwise CPU kernels (`ops.Custom(func_type="aot")`, eager and inside `mindspore.jit`) for steps MindSpore's CPU
ops take far longer over: ChatGLM-6B's tanh-approximated GELU (MindSpore's GeLU: 0.5-1 ms per layer and token
for 16384 values) and a linear layer's bias with the casts around it (tens of microseconds per op, per layer)."""
from __future__ import annotations

import functools

import mindspore as ms
from mindspore import Tensor, ops

from .matmul import kernel_library


@functools.lru_cache(maxsize=None)
def _gelu() -> ops.Custom:
    return ops.Custom(f"{kernel_library().path}:glm_gelu_tanh", out_shape=lambda x: x,
                      out_dtype=lambda dtype: dtype, func_type="aot")


@functools.lru_cache(maxsize=None)
def _bias_add(half: bool) -> ops.Custom:
    # One kernel name per output dtype: MindSpore infers a Custom op's output dtype once per function name.
    dtype = ms.float16 if half else ms.float32
    return ops.Custom(f"{kernel_library().path}:glm_bias_add_{'f16' if half else 'f32'}", out_shape=lambda y, _: y,
                      out_dtype=lambda *_: dtype, func_type="aot")


def gelu_tanh(x: Tensor) -> Tensor:
    """0.5x(1 + tanh(0.7978845608028654 x (1 + 0.044715 x²))) of a float32 or float16 x, in float32 and rounded
    once to x's dtype."""
    return _gelu()(x)


def bias_add(y: Tensor, bias: Tensor, dtype: ms.Type) -> Tensor:
    """(y + float32(bias)).astype(dtype) for a float32 y [..., N] and a float32 or float16 bias [N], bit for bit,
    in one op; `dtype` float32 or float16."""
    return _bias_add(dtype == ms.float16)(y, bias)
