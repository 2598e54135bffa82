"""scaled_masked_attention against the upstream rule: -10000 fill, layer scale undone in float32; grouped query rows
and key blocks give the same result as one softmax over all keys."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from glm_ms.cells.attention import BLOCK_BYTES, key_block, scaled_masked_attention
from glm_ms.device import select_device

select_device("CPU")
rng = np.random.default_rng(0)


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


def _reference(q, k, v, mask, layer_scale):
    """numpy: q [b, g, r·s, d] head-major rows of each group, k/v [b, g, L, d], mask [b, 1, s, L]."""
    b, g, rows, d = q.shape
    s = mask.shape[2]
    scores = np.einsum("bgrsd,bgtd->bgrst", q.reshape(b, g, rows // s, s, d), k)
    scores = np.where(mask[:, :, None], -10000.0, scores) * layer_scale
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bgrst,bgtd->bgrsd", probs, v).reshape(b, g, rows, d)


@pytest.mark.parametrize("compiled", [False, True])
def test_grouped_rows_and_key_blocks_equal_one_softmax(compiled):
    b, g, r, s, keys, d = 2, 2, 3, 5, 300, 8  # 300 keys: blocks of 128 leave a partial last block
    q = rng.standard_normal((b, g, r * s, d)).astype(np.float32)
    k = rng.standard_normal((b, g, keys, d)).astype(np.float32)
    v = rng.standard_normal((b, g, keys, d)).astype(np.float32)
    mask = rng.random((b, 1, s, keys)) < 0.4
    mask[0, 0, 1] = True          # fully masked row
    mask[1, 0, 2, :200] = True    # a row whose first blocks are all masked
    ref = _reference(q, k, v, mask, 2.0)

    class Attend(nn.Cell):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def construct(self, *args):
            return scaled_masked_attention(*args, 2.0, self.block)

    for block in (None, 128, keys):
        fn = Attend(block)
        fn = ms.jit(fn) if compiled else fn
        out = fn(Tensor(q), Tensor(k), Tensor(v), Tensor(mask)).asnumpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5, err_msg=f"block {block}")


def test_key_blocks_bound_the_scores():
    assert key_block(rows=32, keys=32768) == 32768  # a decode step: one block
    rows = 32 * 512                                  # 32 heads, a 512-token chunk
    block = key_block(rows, 32768)
    assert block % 128 == 0 and 4 * rows * block <= BLOCK_BYTES < 4 * rows * (block + 128)
    assert key_block(10 ** 9, 5000) == 128           # never below one 128-key block
