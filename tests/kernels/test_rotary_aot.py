"""ChatGLM-6B's split + 2D rotary + query scaling kernel: bit for bit the MindSpore ops it replaces, on every build
level (called directly), eagerly and inside `mindspore.jit`, float32 and float16, odd shapes; clear return codes."""
import numpy as np
import pytest

from tests.kernels.aot import call_into

SHAPES = [(1, 1, 4, 8), (2, 5, 3, 16), (1, 7, 32, 128), (3, 2, 1, 4), (1, 3, 5, 36), (2, 3, 2, 32), (1, 2, 3, 64)]


def inputs(b, s, heads, d, dtype, seed=0):
    """qkv [b, s, heads·3d] and cos/sin [b, s, 1, d] as the model builds them, plus the query scale."""
    from glm_ms.models.chatglm import rotary_tables
    rng = np.random.default_rng(seed)
    qkv = (rng.standard_normal((b, s, heads * 3 * d)) * 3).astype(dtype)
    cos, sin = rotary_tables(d // 2, 64)
    pos = rng.integers(0, 64, (b, 2, s))
    table = lambda t: np.concatenate([t[pos[:, 0]], t[pos[:, 1]]], -1)[:, :, None].astype(dtype)  # noqa: E731
    return qkv, table(cos), table(sin), 1.0 / (np.sqrt(d) * 3.0)


def reference(qkv, cos, sin, scale):
    """numpy in the inputs' dtype: each product and sum rounded to it, as MindSpore's separate ops are."""
    b, s, width = qkv.shape
    d = cos.shape[-1]
    x = qkv.reshape(b, s, width // (3 * d), 3 * d)

    def rotate(t):
        a, bb, c, e = np.split(t, 4, axis=-1)
        return t * cos + np.concatenate([-bb, a, -e, c], -1) * sin
    q = rotate(x[..., :d]) * qkv.dtype.type(scale)
    return q.transpose(0, 2, 1, 3), rotate(x[..., d:2 * d]), x[..., 2 * d:]


def run(path, qkv, cos, sin, scale):
    b, s, width = qkv.shape
    d = cos.shape[-1]
    heads = width // (3 * d)
    outs = [np.full(shape, np.nan, qkv.dtype) for shape in ((b, heads, s, d), (b, s, heads, d), (b, s, heads, d))]
    rc = call_into(path, "glm_rotary_2d", [qkv, cos, sin, np.array([scale], np.float32)], outs)
    return rc, outs


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_rotary_is_the_ops_arithmetic_bit_for_bit(library, dtype, shape):
    qkv, cos, sin, scale = inputs(*shape, dtype)
    rc, got = run(library.path, qkv, cos, sin, scale)
    assert rc == 0
    for name, g, want in zip("qkv", got, reference(qkv, cos, sin, scale)):
        assert g.dtype == want.dtype and np.array_equal(g, want), name


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rotary_equals_the_model_ops_eager_and_compiled(dtype):
    import mindspore as ms
    from mindspore import Tensor, ops

    from glm_ms.device import select_device
    select_device("CPU")
    from glm_ms.kernels.attention import rotary_2d
    from glm_ms.models.chatglm import apply_rotary

    b, s, heads, d = 2, 3, 4, 16
    qkv, cos, sin, scale = (Tensor(a) if isinstance(a, np.ndarray) else a for a in inputs(b, s, heads, d, dtype))

    def by_ops(qkv, cos, sin):
        q, k, v = ops.split(qkv.reshape(b, s, heads, 3 * d), d, axis=-1)
        return (apply_rotary(q, cos, sin) * scale).transpose(0, 2, 1, 3), apply_rotary(k, cos, sin), v

    def by_kernel(qkv, cos, sin):
        return rotary_2d(qkv, cos, sin, scale)

    want = [t.asnumpy() for t in by_ops(qkv, cos, sin)]
    for fn in (by_kernel, ms.jit(by_kernel)):
        got = [t.asnumpy() for t in fn(qkv, cos, sin)]
        for name, g, w in zip("qkv", got, want):
            assert g.dtype == w.dtype and np.array_equal(g, w), name


def test_rotary_refuses_what_it_does_not_take(simd_library):
    qkv, cos, sin, scale = inputs(1, 2, 3, 8, np.float32)
    path = simd_library.path
    assert run(path, qkv, cos, sin, scale)[0] == 0
    assert run(path, qkv.astype(np.float16), cos, sin, scale)[0] == 2        # dtypes differ
    assert run(path, qkv[..., :-1], cos, sin, scale)[0] == 3                  # not heads · 3d wide
    assert run(path, qkv, cos[:, :1], sin[:, :1], scale)[0] == 3              # cos of another length
    odd = inputs(1, 2, 3, 6, np.float32)                                      # head size not a multiple of 4
    assert run(path, *odd)[0] == 3
