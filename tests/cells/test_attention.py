"""scaled_masked_attention against the upstream rule: -10000 fill, layer scale undone in float32."""
import numpy as np
from mindspore import Tensor

from glm_ms.cells.attention import scaled_masked_attention
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
