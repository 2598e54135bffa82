"""ChatGLM-6B's own components (models/chatglm.py) against a small numpy statement of the upstream rule."""
import numpy as np
import pytest
from mindspore import Tensor

from glm_ms.device import select_device
from glm_ms.models.chatglm import apply_rotary, gelu_tanh, rotary_tables

select_device("CPU")
rng = np.random.default_rng(0)


@pytest.mark.parametrize("kernel", [False, True])
def test_gelu_is_the_tanh_formula(kernel):
    x = np.linspace(-8, 8, 401).astype(np.float32)
    ref = 0.5 * x * (1 + np.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)))
    np.testing.assert_allclose(gelu_tanh(Tensor(x), kernel).asnumpy(), ref, atol=2e-6)


def test_rotary_inv_freq_rounded_to_fp16():
    cos, sin = rotary_tables(8, 4)
    inv = np.array([1.0, 0.1, 0.01, 0.001], np.float16).astype(np.float32)  # fp16-rounded, as upstream stores
    f = np.arange(4, dtype=np.float32)[:, None] * inv
    np.testing.assert_allclose(cos, np.cos(np.concatenate([f, f], -1)), atol=1e-7)
    np.testing.assert_allclose(sin, np.sin(np.concatenate([f, f], -1)), atol=1e-7)
    assert inv[1] != np.float32(0.1)  # the rounding is real


def test_apply_rotary_rotates_each_half_of_the_head():
    x = rng.standard_normal((1, 3, 2, 16)).astype(np.float32)
    cos = rng.standard_normal((1, 3, 1, 16)).astype(np.float32)
    sin = rng.standard_normal((1, 3, 1, 16)).astype(np.float32)

    def rotate_half(v):
        h = v.shape[-1] // 2
        return np.concatenate([-v[..., h:], v[..., :h]], -1)

    # Upstream: q1, q2 = q.chunk(2); each half is rotated with its own cos/sin using rotate_half.
    q1, q2 = x[..., :8], x[..., 8:]
    ref = np.concatenate([q1 * cos[..., :8] + rotate_half(q1) * sin[..., :8],
                          q2 * cos[..., 8:] + rotate_half(q2) * sin[..., 8:]], -1)
    np.testing.assert_allclose(apply_rotary(Tensor(x), Tensor(cos), Tensor(sin)).asnumpy(), ref, atol=1e-6)
