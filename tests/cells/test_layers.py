"""The shared layers against a small numpy statement of the upstream rule."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from glm_ms.cells.layers import LayerNorm, Linear, RMSNorm
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


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16])
def test_rmsnorm_statistics_in_float32(dtype):
    norm = RMSNorm(64, dtype=dtype)
    w = (1 + 0.1 * rng.standard_normal(64)).astype(np.float32)
    norm.weight.set_data(Tensor(w).astype(dtype))
    # fp16 squares of these would overflow (x² > 65504); no mean is subtracted.
    x = (rng.standard_normal((3, 64)) * 300 + 50).astype(np.float32)
    out = norm(Tensor(x).astype(dtype))
    assert out.dtype == dtype
    w = w.astype(np.float16).astype(np.float32) if dtype == ms.float16 else w
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w
    tol = 1e-5 if dtype == ms.float32 else 5e-3
    np.testing.assert_allclose(out.astype(ms.float32).asnumpy(), ref, atol=tol * np.abs(ref).max())
