"""cache_attention: the CPU attention kernel (decode steps and prompt chunks), reading the slot-major cache where it lies, gives the
MindSpore-ops path's result (float64 reference of upstream's rule), eagerly and compiled, float32 and float16."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from glm_ms.cells.attention import MASK_FILL, cache_attention
from glm_ms.device import select_device

select_device("CPU")
rng = np.random.default_rng(0)


def reference(q, keys, values, mask, layer_scale):
    """float64 softmax(q·kᵀ·scale, masked → MASK_FILL·scale)·v over slots 0..W-1 of [C, b, g, d] buffers."""
    width = mask.shape[-1]
    k = keys[:width].astype(np.float64).transpose(1, 2, 0, 3)
    v = values[:width].astype(np.float64).transpose(1, 2, 0, 3)
    b, g, rows, _ = q.shape
    s = mask.shape[2]
    scores = np.einsum("bgrd,bgtd->bgrt", q.astype(np.float64), k) * layer_scale
    row_mask = np.tile(mask[:, :, :, :], (1, 1, rows // s, 1))  # row i is query position i % s
    scores = np.where(row_mask, MASK_FILL * layer_scale, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("b, g, r, s, d, capacity, width", [
    (1, 2, 16, 1, 128, 300, 257),   # ChatGLM2's shape of a decode step: 16 query heads per key/value group
    (2, 3, 1, 3, 13, 9, 9),         # odd head size, a short piece of 3 tokens, every slot read
    (3, 1, 2, 2, 8, 70, 65),        # one group, width past one key block
    (1, 2, 8, 20, 16, 150, 140),    # a prompt chunk: 160 rows per group, a running softmax over slot blocks
])
@pytest.mark.parametrize("compiled", [False, True])
def test_the_kernel_gives_the_mindspore_path(dtype, b, g, r, s, d, capacity, width, compiled):
    q = (rng.standard_normal((b, g, r * s, d)) / 3).astype(dtype)
    keys = rng.standard_normal((capacity, b, g, d)).astype(dtype)
    values = rng.standard_normal((capacity, b, g, d)).astype(dtype)
    mask = rng.random((b, 1, s, width)) < 0.3
    mask[0, 0, 0, :] = True  # a fully masked row: a uniform average of the values, as upstream's fill gives
    layer_scale = 2.0

    def run(fused):
        def attend(q, k, v, m):
            return cache_attention(q, k, v, m, layer_scale, fused=fused)
        f = ms.jit(attend) if compiled else attend
        return f(Tensor(q), Tensor(keys), Tensor(values), Tensor(mask)).asnumpy().astype(np.float64)

    want = reference(q, keys, values, mask, layer_scale)
    fused, plain = run(True), run(False)
    tol = 1e-5 if dtype == np.float32 else 2e-3
    np.testing.assert_allclose(fused, want, atol=tol * np.abs(want).max())
    np.testing.assert_allclose(fused, plain, atol=tol * np.abs(want).max())
    np.testing.assert_allclose(fused[0, :, 0], values[:width, 0].astype(np.float64).mean(0), atol=tol * 4)
