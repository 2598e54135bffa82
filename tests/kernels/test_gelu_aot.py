"""ChatGLM-6B's GELU kernel against a float64 statement of the formula on every build level (called directly),
eagerly and inside `mindspore.jit`, float32 and float16, odd shapes; clear return codes."""
import numpy as np
import pytest

from tests.kernels.aot import call_into


def reference(x: np.ndarray) -> np.ndarray:
    """float64 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x³))) of x's values."""
    v = x.astype(np.float64)
    return 0.5 * v * (1.0 + np.tanh(0.7978845608028654 * v * (1.0 + 0.044715 * v * v)))


def values(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    flat = x.reshape(-1)
    edges = np.array([0.0, -0.0, 30.0, -30.0, 1e-6, -12.0, 6.5], dtype)[:flat.size]
    flat[:edges.size] = edges
    return x


def check(got: np.ndarray, x: np.ndarray) -> None:
    want = reference(x)
    assert got.dtype == x.dtype and got.shape == x.shape
    if x.dtype == np.float32:
        # float32 arithmetic: a few units in the last place, absolute where the tail's tiny values amplify the
        # rounding of u (MindSpore's own float32 GeLU is off by as much there).
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    else:
        # Computed in float32, rounded once: the correctly rounded float16 value, or (at a near-tie) its neighbour.
        ulps = np.abs(got.view(np.int16).astype(np.int64) - want.astype(np.float16).view(np.int16).astype(np.int64))
        assert ulps.max() <= 1 and np.mean(ulps) < 0.01


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 1, 16384), (3, 5, 37), (70000,)])
def test_gelu_is_the_formula(library, dtype, shape):
    x = values(shape, dtype)
    out = np.full(shape, np.nan, dtype)
    assert call_into(library.path, "glm_gelu_tanh", [x], [out]) == 0
    check(out, x)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gelu_eager_and_compiled_alike(dtype):
    import mindspore as ms
    from mindspore import Tensor

    from glm_ms.device import select_device
    select_device("CPU")
    from glm_ms.models.chatglm import gelu_tanh

    def by_kernel(t):
        return gelu_tanh(t, True)

    x = values((2, 3, 300), np.dtype(dtype))
    eager = by_kernel(Tensor(x)).asnumpy()
    compiled = ms.jit(by_kernel)(Tensor(x)).asnumpy()
    check(eager, x)
    assert np.array_equal(eager, compiled)


def test_gelu_refuses_what_it_does_not_take(simd_library):
    x = values((4, 6), np.float32)
    path = simd_library.path
    assert call_into(path, "glm_gelu_tanh", [x], [np.empty((4, 6), np.float32)]) == 0
    assert call_into(path, "glm_gelu_tanh", [x], [np.empty((4, 6), np.float16)]) == 2      # dtypes differ
    assert call_into(path, "glm_gelu_tanh", [x.astype(np.int8)], [np.empty((4, 6), np.int8)]) == 2
    assert call_into(path, "glm_gelu_tanh", [x], [np.empty((4, 7), np.float32)]) == 3      # shapes differ
    assert call_into(path, "glm_gelu_tanh", [x], [np.empty((24,), np.float32)]) == 3
