"""The deep-norm residual kernel x * alpha + y: MindSpore's Mul and Add bit for bit, in both dtypes, on every build
level, eager and inside `mindspore.jit`; its argument checks."""
import math

import numpy as np
import pytest

from tests.kernels.aot import call_into

ALPHA = math.sqrt(2 * 28)


def _values(shape, dtype, seed):
    # Magnitudes from float16's subnormals to past its range once scaled, both signs.
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * np.exp(rng.uniform(-12, 9, shape))).astype(dtype)


def _reference(x, y, alpha):
    """MindSpore's float16 rounding: alpha to float16, the float32 product to float16, then the float32 sum."""
    with np.errstate(over="ignore"):
        if x.dtype == np.float16:
            product = (x.astype(np.float32) * np.float32(np.float16(alpha))).astype(np.float16)
            return (product.astype(np.float32) + y.astype(np.float32)).astype(np.float16)
        return x * np.float32(alpha) + y


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 1, 4096), (3, 2, 130)])
def test_the_kernel_rounds_as_the_reference(library, dtype, shape):
    x, y = _values(shape, dtype, 1), _values(shape, dtype, 2)
    for alpha in (ALPHA, 1.0, 0.1):
        out = np.full(shape, np.nan, dtype)
        assert call_into(library.path, "glm_scaled_add", [x, y, np.float32([alpha])], [out]) == 0
        assert out.tobytes() == _reference(x, y, alpha).tobytes(), (alpha, shape)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("alpha", [ALPHA, 1.0])  # ChatGLM-6B's deep-norm sum; ChatGLM2's plain one
def test_eager_and_compiled_equal_mindspores_mul_and_add(simd_library, dtype, alpha):
    ms = pytest.importorskip("mindspore")
    from glm_ms.cells.layers import residual_add
    from glm_ms.device import select_device
    select_device("CPU")
    x, y = _values((2, 3, 4096), dtype, 3), _values((2, 3, 4096), dtype, 4)
    ops_path = residual_add(ms.Tensor(x), ms.Tensor(y), alpha).asnumpy()
    assert ops_path.tobytes() == _reference(x, y, alpha).tobytes()  # what the reference models

    def kernel(a, b):
        return residual_add(a, b, alpha, True)

    for run in (kernel, ms.jit(kernel)):
        out = run(ms.Tensor(x), ms.Tensor(y))
        assert out.dtype == ms.Tensor(x).dtype and out.asnumpy().tobytes() == ops_path.tobytes()


def test_bad_arguments_return_an_error_code(simd_library):
    path, x = simd_library.path, np.ones((2, 3), np.float32)
    alpha = np.float32([2.0])
    assert call_into(path, "glm_scaled_add", [x, x, alpha], [np.empty((2, 3), np.float32)]) == 0
    assert call_into(path, "glm_scaled_add", [x, x], [np.empty((2, 3), np.float32)]) == 1
    assert call_into(path, "glm_scaled_add", [x, x.astype(np.float16), alpha], [np.empty((2, 3), np.float32)]) == 2
    assert call_into(path, "glm_scaled_add", [x, x, alpha], [np.empty((2, 3), np.float16)]) == 2
    assert call_into(path, "glm_scaled_add", [x.astype(np.int8)] * 2 + [alpha], [np.empty((2, 3), np.int8)]) == 2
    assert call_into(path, "glm_scaled_add", [x, x, alpha.astype(np.float16)], [np.empty((2, 3), np.float32)]) == 2
    assert call_into(path, "glm_scaled_add", [x, np.ones((3, 2), np.float32), alpha],
                     [np.empty((2, 3), np.float32)]) == 3
    assert call_into(path, "glm_scaled_add", [x, x, np.float32([1, 2])], [np.empty((2, 3), np.float32)]) == 3
    assert call_into(path, "glm_scaled_add", [x, x, alpha], [np.empty((6,), np.float32)]) == 3
