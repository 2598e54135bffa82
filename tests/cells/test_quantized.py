"""The quantized cells and the float16 Linear against float64 numpy on the dequantized weights, eager and jit."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from glm_ms.cells.layers import Linear
from glm_ms.cells.quantized import QuantizedEmbedding, QuantizedLinear, fill_quantized
from glm_ms.device import select_device
from glm_ms.kernels import QuantizationError, dequantize_rows, quantize_rows

select_device("CPU")
rng = np.random.default_rng(0)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def quantized_linear(n, k, bits, bias=True, fast=False):
    w = rng.standard_normal((n, k)).astype(np.float16)
    cell = QuantizedLinear(k, n, bits, bias=bias, fast=fast)
    q = quantize_rows(w, bits)
    fill_quantized(cell, q)
    b = rng.standard_normal(n).astype(np.float32) if bias else np.zeros(n, np.float32)
    if bias:
        cell.bias.set_data(Tensor(b))
    return cell, dequantize_rows(q.weight, q.scale, bits).astype(np.float64), b


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n, k, bias", [(7, 10, True), (33, 130, False), (64, 64, True)])
def test_quantized_linear_is_x_times_the_dequantized_weight(bits, n, k, bias):
    cell, w, b = quantized_linear(n, k, bits, bias)
    assert cell.weight.dtype == ms.int8 and cell.weight.shape == (n, k if bits == 8 else k // 2)
    assert cell.weight_scale.dtype == ms.float16 and cell.weight_scale.shape == (n,)
    jitted = ms.jit(cell)
    for shape in [(1, k), (3, 5, k), (17, k)]:
        x = rng.standard_normal(shape).astype(np.float32)
        ref = x.astype(np.float64) @ w.T + b
        eager = cell(Tensor(x)).asnumpy()
        assert eager.dtype == np.float32 and eager.shape == shape[:-1] + (n,)
        assert rel(eager, ref) <= 1e-5
        assert jitted(Tensor(x)).asnumpy().tobytes() == eager.tobytes()


def test_quantized_linear_in_float16_returns_float16():
    cell, w, b = quantized_linear(9, 16, 8)
    cell.bias.set_dtype(ms.float16)
    x = rng.standard_normal((2, 16)).astype(np.float16)
    y = cell(Tensor(x))
    assert y.dtype == ms.float16
    ref = x.astype(np.float64) @ w.T + b.astype(np.float16)
    assert rel(y.asnumpy(), ref) <= 1e-3


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_embedding_dequantizes_the_gathered_rows(bits):
    table = rng.standard_normal((50, 12)).astype(np.float16)
    cell = QuantizedEmbedding(50, 12, bits)
    q = quantize_rows(table, bits)
    fill_quantized(cell, q)
    ids = np.array([[0, 49, 3, 3], [7, 1, 2, 0]], np.int32)
    ref = dequantize_rows(q.weight, q.scale, bits)[ids]
    np.testing.assert_array_equal(cell(Tensor(ids)).asnumpy(), ref)
    np.testing.assert_array_equal(ms.jit(cell)(Tensor(ids)).asnumpy(), ref)


def test_fill_checks_shapes_and_dtypes():
    cell = QuantizedLinear(8, 4, 4)
    good = quantize_rows(rng.standard_normal((4, 8)).astype(np.float16), 4)
    with pytest.raises(QuantizationError, match=r"int8 \[4, 4\]"):
        fill_quantized(cell, quantize_rows(rng.standard_normal((4, 8)).astype(np.float16), 8))
    with pytest.raises(QuantizationError, match="weight_scale must be float16"):
        fill_quantized(cell, type(good)(good.weight, good.scale.astype(np.float32)))
    with pytest.raises(QuantizationError, match="K must be even"):
        QuantizedLinear(7, 4, 4)


def test_float16_linear_on_the_cpu_is_float32_arithmetic_rounded_once():
    lin = Linear(130, 33, dtype=ms.float16)
    w = rng.standard_normal((33, 130)).astype(np.float16)
    b = rng.standard_normal(33).astype(np.float16)
    lin.weight.set_data(Tensor(w))
    lin.bias.set_data(Tensor(b))
    x = rng.standard_normal((3, 130)).astype(np.float16)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    for y in (lin(Tensor(x)), ms.jit(lin)(Tensor(x))):
        assert y.dtype == ms.float16
        # One float16 rounding of the float32 result: within half an ulp of float16 (2**-11 relative).
        np.testing.assert_allclose(y.asnumpy().astype(np.float64), ref, rtol=2 ** -11, atol=1e-6)
