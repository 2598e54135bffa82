"""The MindSpore functions over the kernels, eager and inside `mindspore.jit`, and their MindSpore-ops fallback."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn  # noqa: E402

from glm_ms.device import select_device  # noqa: E402
from glm_ms.kernels import (QuantizationError, dense_matmul, dequantize, dequantize_rows,  # noqa: E402
                            fast_error_bound, half_matmul, kernel_library, quantized_matmul)
from tests.kernels.conftest import random_weights  # noqa: E402

SHAPES = [(7, 10), (33, 130), (17, 258)]
BITS = {"int8": 8, "int4": 4}


@pytest.fixture(scope="module", autouse=True)
def cpu(simd_library):
    select_device("CPU")
    assert kernel_library() == simd_library  # the functions below run the kernels, not the fallback


def _x(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def _run(kind, x, w, fast=False):
    stored = [Tensor(a) for a in w.stored(kind)]
    if kind == "half":
        return half_matmul(Tensor(x), *stored).asnumpy()
    return quantized_matmul(Tensor(x), *stored, BITS[kind], fast=fast).asnumpy()


class Linear(nn.Cell):
    """What a quantized linear cell does: the kernel on its stored weight (bits None: a float16 weight)."""

    def __init__(self, bits, fast=False):
        super().__init__()
        self.bits, self.fast = bits, fast

    def construct(self, x, weight, scale):
        if self.bits is None:
            return half_matmul(x, weight) + scale  # scale: a zero bias here
        return quantized_matmul(x, weight, scale, self.bits, fast=self.fast)


@pytest.mark.parametrize("kind", ["int8", "int4", "half"])
@pytest.mark.parametrize("n, k", SHAPES)
def test_eager_exact_matches_float64(kind, n, k):
    w = random_weights(n, k, seed=n)
    for m in range(1, 18):
        x = _x((m, k), seed=m)
        y = _run(kind, x, w)
        assert y.dtype == np.float32 and y.shape == (m, n)
        assert _rel(y, w.reference(x, kind)) <= 1e-5, (kind, m)


@pytest.mark.parametrize("kind", list(BITS))
@pytest.mark.parametrize("n, k", SHAPES)
def test_eager_fast_within_its_bound(kind, n, k):
    w = random_weights(n, k, seed=k)
    for m in (1, 2, 5, 16, 17):
        x = _x((m, k), seed=m)
        x[0, k // 2] = 40.0  # an outlier column
        y = _run(kind, x, w, fast=True)
        assert (np.abs(y - w.reference(x, kind)) <= fast_error_bound(x, *w.stored(kind), BITS[kind])).all()


@pytest.mark.parametrize("kind, fast", [("int8", False), ("int4", False), ("half", False), ("int8", True),
                                        ("int4", True)])
def test_inside_jit_equals_eager(kind, fast):
    w = random_weights(33, 130, seed=3)
    scale = w.stored(kind)[1] if kind != "half" else np.zeros(33, np.float32)
    step = ms.jit(Linear(BITS.get(kind), fast))
    for m in (1, 17):
        x = _x((m, 130), seed=m)
        jitted = step(Tensor(x), Tensor(w.stored(kind)[0]), Tensor(scale)).asnumpy()
        assert jitted.tobytes() == _run(kind, x, w, fast).tobytes()
        if not fast:
            assert _rel(jitted, w.reference(x, kind)) <= 1e-5


def test_sequence_batch_inputs_and_views():
    w = random_weights(9, 34, seed=4)
    x = _x((5, 2, 34), seed=5)  # [seq, batch, hidden] as ChatGLM-6B's layers see it
    y = _run("int4", x, w)
    assert y.shape == (5, 2, 9) and _rel(y, w.reference(x, "int4")) <= 1e-5
    transposed = Tensor(_x((34, 3), seed=6)).transpose(1, 0)  # a strided view
    y = quantized_matmul(transposed, Tensor(w.int8), Tensor(w.scale8), 8).asnumpy()
    assert _rel(y, w.reference(transposed.asnumpy(), "int8")) <= 1e-5
    rows = Tensor(_x((6, 34), seed=7))[2:5]
    y = half_matmul(rows, Tensor(w.half)).asnumpy()
    assert _rel(y, w.reference(rows.asnumpy(), "half")) <= 1e-5


class Biased(nn.Cell):
    """A linear layer's one kernel call: the products, the bias and the rounding to x's dtype."""

    def __init__(self, kind, fast):
        super().__init__()
        self.bits, self.fast = BITS.get(kind), fast

    def construct(self, x, weight, scale, bias):
        if self.bits is None:
            return half_matmul(x, weight, bias)
        return quantized_matmul(x, weight, scale, self.bits, fast=self.fast, bias=bias)


@pytest.mark.parametrize("kind, fast", [("int8", False), ("int4", False), ("half", False), ("int8", True),
                                        ("int4", True)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_bias_is_added_in_float32_and_rounded_once(kind, fast, dtype):
    # What a float16 Linear did in five ops (Cast x, kernel, Cast bias, Add, Cast): the same bits from one.
    w = random_weights(33, 130, seed=8)
    weight, scale = [Tensor(a) for a in w.stored(kind)] if kind != "half" else (Tensor(w.half), None)
    bias = (np.random.default_rng(9).standard_normal(33) * 4).astype(dtype)
    biased = Biased(kind, fast)
    for m in (1, 3, 17):
        x = Tensor(_x((m, 130), seed=m).astype(dtype))
        unbiased = half_matmul(x.astype(ms.float32), weight) if kind == "half" else quantized_matmul(
            x.astype(ms.float32), weight, scale, BITS[kind], fast=fast)
        expected = (unbiased.asnumpy() + bias.astype(np.float32)).astype(dtype)
        for run in (biased, ms.jit(biased)):
            y = run(x, weight, scale, Tensor(bias))
            assert y.dtype == x.dtype and y.shape == (m, 33)
            assert y.asnumpy().tobytes() == expected.tobytes(), (kind, fast, m)
    no_bias = half_matmul(x, weight) if kind == "half" else quantized_matmul(x, weight, scale, BITS[kind], fast=fast)
    assert no_bias.dtype == x.dtype and no_bias.asnumpy().tobytes() == unbiased.asnumpy().astype(dtype).tobytes()


def test_float16_activations_are_computed_in_float32():
    w = random_weights(7, 10, seed=8)
    x = _x((3, 10), seed=9).astype(np.float16)
    y = quantized_matmul(Tensor(x), Tensor(w.int8), Tensor(w.scale8), 8)
    assert y.dtype == ms.float16
    assert _rel(y.asnumpy().astype(np.float64), w.reference(x, "int8")) <= 1e-3  # float16's own rounding
    bf16 = quantized_matmul(Tensor(x).astype(ms.bfloat16), Tensor(w.int8), Tensor(w.scale8), 8)
    assert bf16.dtype == ms.bfloat16
    assert _rel(bf16.astype(ms.float32).asnumpy(), w.reference(x, "int8")) <= 1e-2


@pytest.mark.parametrize("kind", ["int8", "int4", "half"])
def test_the_ops_fallback_matches_float64(kind):
    w = random_weights(33, 130, seed=10)
    x = _x((4, 130), seed=11)
    dense = Tensor(w.half) if kind == "half" else dequantize(*[Tensor(a) for a in w.stored(kind)], BITS[kind])
    if kind != "half":
        assert dense.asnumpy().tobytes() == dequantize_rows(*w.stored(kind), BITS[kind]).tobytes()
    assert _rel(dense_matmul(Tensor(x), dense).asnumpy(), w.reference(x, kind)) <= 1e-5


def test_the_int4_fallback_unpacks_every_byte():
    every = np.arange(-128, 128, dtype=np.int16).astype(np.int8).reshape(16, 16)
    scale = np.ones(16, np.float16)
    assert dequantize(Tensor(every), Tensor(scale), 4).asnumpy().tolist() == dequantize_rows(every, scale, 4).tolist()


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_bad_arguments_are_clear_errors(mode):
    w = random_weights(7, 10, seed=12)
    x, q8, s8 = Tensor(_x((2, 10))), Tensor(w.int8), Tensor(w.scale8)
    zero = Tensor(np.zeros(7, np.float32))
    cases = [
        (5, (x, q8, s8), "must be 4 or 8, not 5"),
        (4, (x, q8, s8), r"x \(2, 10\) does not match the int4 weight's 20 input"),
        (4, (Tensor(_x((2, 9))), Tensor(w.int4), Tensor(w.scale4)), "does not match the int4 weight's 10"),
        (8, (x, q8, Tensor(w.scale8[:3])), r"scale must be float16 \[N\] = \[7\]"),
        (8, (x, Tensor(w.half), s8), "int8 weight must be a 2-D Int8"),
        (8, (x, q8, Tensor(w.scale8.astype(np.float32))), "scale must be float16"),
        (None, (x, q8, zero), "half weight must be a 2-D Float16"),
        (8, (Tensor(np.ones((2, 10), np.int32)), q8, s8), "x must be a floating-point tensor"),
    ]
    for bits, inputs, message in cases:
        cell = Linear(bits)
        with pytest.raises(QuantizationError, match=message):
            (cell if mode == "eager" else ms.jit(cell))(*inputs)
    for kind, bias in (("int8", np.zeros(6, np.float32)), ("half", np.zeros(7, np.int32)),
                       ("int8", np.zeros((1, 7), np.float16))):
        cell = Biased(kind, False)
        with pytest.raises(QuantizationError, match=r"bias must be a floating-point \[N\] = \[7\]"):
            (cell if mode == "eager" else ms.jit(cell))(x, Tensor(w.half) if kind == "half" else q8, s8,
                                                       Tensor(bias))


FALLBACK = textwrap.dedent("""\
    import logging, sys
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor
    from glm_ms.device import select_device
    from glm_ms.kernels import kernel_library, quantized_matmul, half_matmul, quantize_rows, dequantize_rows
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    select_device("CPU")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 6)).astype(np.float16)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    q = quantize_rows(w, 4)
    ref = x.astype(np.float64) @ dequantize_rows(q.weight, q.scale, 4).astype(np.float64).T
    y = quantized_matmul(Tensor(x), Tensor(q.weight), Tensor(q.scale), 4, fast=True).asnumpy()
    h = half_matmul(Tensor(x), Tensor(w)).asnumpy()
    print("library", kernel_library())
    print("int4 error", float(np.abs(y - ref).max() / np.abs(ref).max()))
    print("half error", float(np.abs(h - x.astype(np.float64) @ w.astype(np.float64).T).max()))
    """)


@pytest.mark.parametrize("env, logged", [({"GLM_MS_KERNELS": "off"}, False),
                                         ({"GLM_MS_CXX": "/nonexistent/g++"}, True)])
def test_without_kernels_the_functions_use_mindspore_ops(tmp_path, env, logged):
    run_env = {**os.environ, "GLM_MS_CACHE": str(tmp_path), **env}
    out = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, env=run_env,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines() if not line.startswith("LOG"))
    assert lines["library"] == "None"
    assert float(lines["int4 error"]) <= 1e-6 and float(lines["half error"]) <= 1e-5
    warning = "C++ compiler '/nonexistent/g++' not usable"
    assert (warning in out.stdout + out.stderr) is logged
    if logged:
        assert "apt-get install g++" in out.stdout + out.stderr and "falls back" in out.stdout + out.stderr
