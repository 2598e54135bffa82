"""Each ChatGLM-6B cell against a small numpy statement of the upstream rule."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from glm_ms.cells import KVCache, LayerNorm, Linear, apply_rotary, gelu_tanh, rotary_tables, scaled_masked_attention
from glm_ms.device import select_device

select_device("CPU")
rng = np.random.default_rng(0)


def test_linear_uses_checkpoint_layout():
    lin = Linear(5, 3)
    w, b = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    lin.weight.set_data(Tensor(w))
    lin.bias.set_data(Tensor(b))
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(lin(Tensor(x)).asnumpy(), x @ w.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16])
def test_layernorm_statistics_in_float32(dtype):
    ln = LayerNorm(64, dtype=dtype)
    # Values whose fp16 variance would overflow (x² > 65504) still normalize correctly.
    x = (rng.standard_normal((3, 64)) * 300).astype(np.float32)
    out = ln(Tensor(x).astype(dtype))
    assert out.dtype == dtype
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    tol = 1e-5 if dtype == ms.float32 else 5e-3
    np.testing.assert_allclose(out.astype(ms.float32).asnumpy(), ref, atol=tol)


def test_gelu_is_the_tanh_formula():
    x = np.linspace(-8, 8, 401).astype(np.float32)
    ref = 0.5 * x * (1 + np.tanh(0.7978845608028654 * x * (1 + 0.044715 * x * x)))
    np.testing.assert_allclose(gelu_tanh(Tensor(x)).asnumpy(), ref, atol=2e-6)


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


def test_attention_mask_fill_and_layer_scale():
    q = rng.standard_normal((1, 2, 3, 4)).astype(np.float32)
    k = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    v = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    mask = np.zeros((1, 1, 3, 5), bool)
    mask[..., 3:] = True
    mask[0, 0, 2, :] = True  # a fully masked row: upstream's -10000 fill gives a uniform average, not NaN
    layer_scale = 3.0
    out = scaled_masked_attention(Tensor(q / layer_scale), Tensor(k), Tensor(v), Tensor(mask), layer_scale).asnumpy()
    scores = np.where(mask, -10000.0, np.einsum("bhsd,bhtd->bhst", q / layer_scale, k)) * layer_scale
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, probs @ v, atol=1e-5)
    np.testing.assert_allclose(out[0, :, 2], v[0].mean(1), atol=1e-5)


def test_kv_cache_written_in_place_at_positions():
    cache = KVCache(num_heads=2, head_dim=3)
    cache.allocate(batch=2, capacity=6, dtype=ms.float32)
    k = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    keys, values = cache(Tensor(k), Tensor(-k), Tensor(np.array([1, 4], np.int32)))
    expect = np.zeros((2, 2, 6, 3), np.float32)
    expect[:, :, [1, 4]] = k
    np.testing.assert_array_equal(cache.key.asnumpy(), expect)
    np.testing.assert_array_equal(values.asnumpy(), -expect)
    cache.reorder(Tensor(np.array([1, 1], np.int32)))
    np.testing.assert_array_equal(cache.key.asnumpy()[0], expect[1])
    cache.allocate(batch=1, capacity=9, dtype=ms.float32)  # resize gives zeroed buffers of the new shape
    assert cache.key.shape == (1, 2, 9, 3) and not cache.key.asnumpy().any()
