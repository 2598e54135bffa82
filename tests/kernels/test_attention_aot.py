"""The cache-attention kernel of both builds, called directly, against a float64 reference: decode steps (work split
by slots) and prompt chunks (more than 64 rows per group: row blocks with a running softmax), odd head sizes, rows
that are not a multiple of the register tiles, widths past a slot block, float16 caches, every slot masked in a
row, slots past the last one seen left unread, and clear return codes for inputs it does not take."""
import numpy as np
import pytest

from tests.kernels.aot import call

MASKED = -10000.0


def reference(q, keys, values, mask, layer_scale):
    width = mask.shape[-1]
    k = keys[:width].astype(np.float64).transpose(1, 2, 0, 3)
    v = values[:width].astype(np.float64).transpose(1, 2, 0, 3)
    rows, s = q.shape[2], mask.shape[2]
    scores = np.einsum("bgrd,bgtd->bgrt", q.astype(np.float64), k) * layer_scale
    scores = np.where(np.tile(mask, (1, 1, rows // s, 1)), MASKED * layer_scale, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("b, g, r, s, d, capacity, width", [
    (1, 2, 16, 1, 128, 200, 130), (2, 3, 5, 1, 40, 70, 70), (1, 4, 1, 7, 33, 9, 8), (3, 1, 2, 2, 8, 1, 1),
    (1, 2, 16, 9, 128, 300, 200),   # a prompt chunk: 144 rows per group, row blocks of 64 and a partial one
    (2, 1, 3, 23, 37, 150, 131)])   # odd head size, 69 rows, widths past two slot blocks
def test_cached_attention_matches_float64(library, dtype, b, g, r, s, d, capacity, width):
    rng = np.random.default_rng(d)
    q = (rng.standard_normal((b, g, r * s, d)) / 3).astype(dtype)
    keys = rng.standard_normal((capacity, b, g, d)).astype(dtype)
    values = rng.standard_normal((capacity, b, g, d)).astype(dtype)
    mask = rng.random((b, 1, s, width)) < 0.3
    mask[-1, 0, -1, :] = True
    scale = np.array([1.5, MASKED * 1.5], np.float32)
    rc, out = call(library.path, "glm_cached_attention", [q, keys, values, mask, scale], q.shape)
    assert rc == 0
    want = reference(q, keys, values, mask, 1.5)
    np.testing.assert_allclose(out, want, atol=1e-5 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("rows", [1, 100])  # a decode step (split by slots) and a chunk (row blocks)
def test_slots_past_the_last_one_seen_are_not_read(library, rows):
    rng = np.random.default_rng(rows)
    b, g, d, width, used = 2, 2, 24, 300, 131  # a long bucketed prefix, of which the first `used` slots are in use
    q = rng.standard_normal((b, g, rows, d)).astype(np.float32)
    keys = rng.standard_normal((width, b, g, d)).astype(np.float32)
    values = rng.standard_normal((width, b, g, d)).astype(np.float32)
    keys[used:] = values[used:] = np.nan  # what a read of them would spread
    mask = np.ones((b, 1, rows, width), bool)
    mask[..., :used] = rng.random((b, 1, rows, used)) < 0.3
    mask[0, 0, :, used - 1] = False  # the last slot in use is seen
    mask[1, 0, 0, :] = True          # a row that sees nothing
    scale = np.array([0.5, MASKED * 0.5], np.float32)
    rc, out = call(library.path, "glm_cached_attention", [q, keys, values, mask, scale], q.shape)
    assert rc == 0
    want = reference(q, keys[:used], values[:used], mask[..., :used], 0.5)
    np.testing.assert_allclose(out, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_cached_attention_refuses_what_it_does_not_take(simd_library):
    q = np.zeros((1, 2, 4, 8), np.float32)
    cache = np.zeros((5, 1, 2, 8), np.float32)
    scale = np.array([1.0, MASKED], np.float32)
    ok = [q, cache, cache, np.zeros((1, 1, 1, 5), bool), scale]
    assert call(simd_library.path, "glm_cached_attention", ok, q.shape)[0] == 0
    wider = [q, cache, cache, np.zeros((1, 1, 1, 6), bool), scale]           # more slots read than the cache has
    half_cache = [q, cache.astype(np.float16), cache, ok[3], scale]           # dtypes that differ
    rows_not_by_positions = [np.zeros((1, 2, 65, 8), np.float32), cache, cache, np.zeros((1, 1, 2, 5), bool), scale]
    assert call(simd_library.path, "glm_cached_attention", wider, q.shape)[0] == 3
    assert call(simd_library.path, "glm_cached_attention", half_cache, q.shape)[0] == 2
    assert call(simd_library.path, "glm_cached_attention", rows_not_by_positions, (1, 2, 65, 8))[0] == 3
