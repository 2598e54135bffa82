"""ChatGLM2/3's own components (models/chatglm2.py) against a small numpy statement of the upstream rule, on
shapes other than the fixtures'."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from glm_ms.config import ChatGLM2Config
from glm_ms.device import select_device
from glm_ms.errors import ConfigError
from glm_ms.models.chatglm2 import (MultiQueryAttention, PairRotaryEmbedding, SwiGLUMLP, apply_pair_rotary,
                                    pair_rotary_tables)

select_device("CPU")
rng = np.random.default_rng(0)


def _config(**kw):
    base = dict(padded_vocab_size=64, hidden_size=48, num_layers=1, num_attention_heads=6, kv_channels=12,
                ffn_hidden_size=40, multi_query_group_num=2)
    base.update(kw)
    return ChatGLM2Config(**base)


def test_swiglu_gates_first_half_with_silu():
    mlp = SwiGLUMLP(8, 5)
    w1 = rng.standard_normal((10, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 5)).astype(np.float32)
    mlp.dense_h_to_4h.weight.set_data(Tensor(w1))
    mlp.dense_4h_to_h.weight.set_data(Tensor(w2))
    assert mlp.dense_h_to_4h.bias is None and mlp.dense_4h_to_h.bias is None
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    h = x @ w1.T
    a, b = h[..., :5], h[..., 5:]
    ref = (a / (1 + np.exp(-a)) * b) @ w2.T
    np.testing.assert_allclose(mlp(Tensor(x)).asnumpy(), ref, rtol=1e-5, atol=1e-5)


def test_pair_rotary_tables_follow_upstream_theta():
    cos, sin = pair_rotary_tables(8, 50, base=10000.0)  # kv_channels 16: rotary over 8 dims, 4 pairs
    theta = 1.0 / 10000 ** (np.arange(0, 8, 2) / 8)
    ang = np.arange(50)[:, None] * theta
    np.testing.assert_allclose(cos, np.cos(ang), atol=2e-6)
    np.testing.assert_allclose(sin, np.sin(ang), atol=2e-6)
    cos50, _ = pair_rotary_tables(8, 50, base=10000.0 * 50)  # rope_ratio 50 stretches the base
    np.testing.assert_allclose(cos50, np.cos(np.arange(50)[:, None] / (500000.0 ** (np.arange(0, 8, 2) / 8))),
                               atol=2e-6)


def test_apply_pair_rotary_turns_adjacent_pairs_of_the_first_half():
    head_dim, positions = 16, np.array([[0, 3, 7, 100]])
    rot = PairRotaryEmbedding(head_dim // 2, 8)
    rot.ensure(101)
    cos, sin = rot(Tensor(positions.astype(np.int32)), ms.float32)
    x = rng.standard_normal((1, 4, 3, head_dim)).astype(np.float32)
    out = apply_pair_rotary(Tensor(x), cos, sin).asnumpy()
    theta = 1.0 / 10000 ** (np.arange(0, 8, 2) / 8)
    ang = positions[0][:, None, None] * theta  # [s, 1, pairs]
    x0, x1 = x[..., 0:8:2], x[..., 1:8:2]
    ref = x.copy()
    ref[..., 0:8:2] = x0 * np.cos(ang) - x1 * np.sin(ang)
    ref[..., 1:8:2] = x1 * np.cos(ang) + x0 * np.sin(ang)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_array_equal(out[..., 8:], x[..., 8:])  # second half of each head untouched


def _reference_attention(x, w, b, wo, heads, groups, d, positions, mask, grouped=True):
    s = x.shape[0]
    qkv = x @ w.T + b
    if grouped:
        q = qkv[:, :heads * d].reshape(s, heads, d)
        k = qkv[:, heads * d:(heads + groups) * d].reshape(s, groups, d)
        v = qkv[:, (heads + groups) * d:].reshape(s, groups, d)
    else:
        per = qkv.reshape(s, heads, 3 * d)
        q, k, v = per[..., :d], per[..., d:2 * d], per[..., 2 * d:]
    theta = 1.0 / 10000 ** (np.arange(0, d // 2, 2) / (d // 2))
    ang = positions[:, None, None] * theta

    def rope(t):
        t = t.copy()
        t0, t1 = t[..., 0:d // 2:2].copy(), t[..., 1:d // 2:2].copy()
        t[..., 0:d // 2:2] = t0 * np.cos(ang) - t1 * np.sin(ang)
        t[..., 1:d // 2:2] = t1 * np.cos(ang) + t0 * np.sin(ang)
        return t

    q, k = rope(q), rope(k)
    group_of_head = np.arange(heads) // (heads // groups)  # head j reads group j // (heads / groups)
    k, v = k[:, group_of_head], v[:, group_of_head]
    scores = np.einsum("snd,tnd->nst", q, k) / math.sqrt(d)
    scores = np.where(mask[None], -np.inf, scores)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("nst,tnd->snd", p, v).reshape(s, heads * d) @ wo.T


@pytest.mark.parametrize("heads, groups, grouped", [(6, 2, True), (6, 1, True), (6, 6, True), (4, 4, False)])
def test_attention_groups_heads_and_caches_only_the_groups(heads, groups, grouped):
    d, hidden, s = 12, 40, 5
    config = _config(hidden_size=hidden, num_attention_heads=heads, kv_channels=d, multi_query_group_num=groups,
                     multi_query_attention=grouped)
    attn = MultiQueryAttention(config, layer_number=3)
    g = groups if grouped else heads
    w = rng.standard_normal(((heads + 2 * g) * d, hidden)).astype(np.float32) * 0.3
    b = rng.standard_normal((heads + 2 * g) * d).astype(np.float32) * 0.1
    wo = rng.standard_normal((hidden, heads * d)).astype(np.float32) * 0.3
    attn.query_key_value.weight.set_data(Tensor(w))
    attn.query_key_value.bias.set_data(Tensor(b))
    attn.dense.weight.set_data(Tensor(wo))
    assert attn.dense.bias is None
    attn.kv_cache.allocate(1, s, ms.float32)
    x = rng.standard_normal((s, hidden)).astype(np.float32)
    positions = np.arange(s) + 2
    rot = PairRotaryEmbedding(d // 2, 16)
    cos, sin = rot(Tensor(positions[None].astype(np.int32)), ms.float32)
    mask = ~np.tril(np.ones((s, s), bool))
    out = attn(Tensor(x[None]), cos, sin, Tensor(mask[None, None]), Tensor(np.arange(s, dtype=np.int32)))
    ref = _reference_attention(x, w, b, wo, heads, g, d, positions, mask, grouped)
    np.testing.assert_allclose(out.asnumpy()[0], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert attn.kv_cache.held(s)[0].shape == (1, g, s, d)  # the cache holds key/value groups, not expanded heads


def test_config_derives_sizes_and_rejects_contradictions():
    c = _config(kv_channels=0)
    assert (c.head_dim, c.rotary_dim, c.num_kv_heads, c.vocab_size) == (8, 4, 2, 64)
    assert _config(multi_query_attention=False).num_kv_heads == 6
    with pytest.raises(ConfigError, match="multi_query_group_num"):
        _config(multi_query_group_num=4)
    with pytest.raises(ConfigError, match="kv_channels"):
        _config(kv_channels=10)
