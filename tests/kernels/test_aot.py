"""Every kernel of both builds (AVX2 and portable), called directly, against float64 references: odd shapes,
M = 1..17 (fused rows and row blocks), fast mode within its bound, outliers, non-finite inputs, bad arguments."""
import json

import numpy as np
import pytest

from glm_ms.kernels import dequantize_rows, fast_error_bound
from tests.kernels.aot import call, call_into
from tests.kernels.conftest import load_torch, random_weights
from tests.support import FIXTURES

SHAPES = [(1, 2), (7, 10), (9, 34), (33, 130), (17, 258), (64, 200)]  # (N, K): K not a multiple of 8/16/32
ROWS = list(range(1, 18)) + [33]
EXACT = {"int8": "glm_int8_matmul", "int4": "glm_int4_matmul", "half": "glm_half_matmul"}
BITS = {"int8": 8, "int4": 4}


def _x(m, k, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal((m, k)) * scale).astype(np.float32)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("kind", list(EXACT))
@pytest.mark.parametrize("n, k", SHAPES)
def test_exact_kernels_match_float64(library, kind, n, k):
    w = random_weights(n, k, seed=n + k)
    for m in ROWS:
        x = _x(m, k, seed=m)
        rc, y = call(library.path, EXACT[kind], [x, *w.stored(kind)], (m, n))
        assert rc == 0
        assert _rel(y, w.reference(x, kind)) <= 1e-5, (kind, m, n, k)


@pytest.mark.parametrize("kind", list(BITS))
@pytest.mark.parametrize("n, k", SHAPES)
def test_fast_kernels_stay_within_their_bound(library, kind, n, k):
    w = random_weights(n, k, seed=n * k)
    for m in ROWS:
        x = _x(m, k, seed=m + 100)
        if k > 10:
            x[:, k // 3] *= 20  # an outlier column (|x| > 6 in some row), added in float32
        rc, y = call(library.path, EXACT[kind] + "_fast", [x, *w.stored(kind), np.float32([6.0])], (m, n))
        assert rc == 0
        exact = w.reference(x, kind)
        bound = fast_error_bound(x, *w.stored(kind), BITS[kind], 6.0)
        assert (np.abs(y - exact) <= bound).all(), (kind, m, n, k)
        assert _rel(y, exact) <= 2e-4


@pytest.mark.parametrize("kind", list(BITS))
def test_fast_mode_keeps_outlier_columns_exact(simd_library, kind):
    # A huge outlier would crush the int16 resolution of its row; set aside, the rest keeps full resolution.
    w = random_weights(64, 256, seed=5)
    x = _x(3, 256, seed=6)
    x[1, 17] = 3000.0
    x[2, 200] = -1e4
    rc, y = call(simd_library.path, EXACT[kind] + "_fast", [x, *w.stored(kind), np.float32([6.0])], (3, 64))
    exact = w.reference(x, kind)
    assert rc == 0 and np.abs(y - exact).max() <= fast_error_bound(x, *w.stored(kind), BITS[kind]).max()
    assert _rel(y, exact) < 1e-4
    rc, no_outliers = call(simd_library.path, EXACT[kind] + "_fast", [x, *w.stored(kind), np.float32([np.inf])],
                           (3, 64))
    assert _rel(no_outliers, exact) > 10 * _rel(y, exact)  # what the float32 columns buy


@pytest.mark.parametrize("kind", list(BITS))
def test_fast_mode_with_mostly_outliers_is_exact_mode(simd_library, kind):
    w = random_weights(16, 40, seed=7)
    x = _x(2, 40, seed=8, scale=50.0)  # most |x| > 6
    rc, fast = call(simd_library.path, EXACT[kind] + "_fast", [x, *w.stored(kind), np.float32([6.0])], (2, 16))
    rc2, exact = call(simd_library.path, EXACT[kind], [x, *w.stored(kind)], (2, 16))
    assert rc == rc2 == 0 and fast.tobytes() == exact.tobytes()


@pytest.mark.parametrize("kind", list(BITS))
def test_non_finite_activations_propagate_in_both_modes(simd_library, kind):
    w = random_weights(8, 64, seed=9)
    x = _x(3, 64, seed=10)
    x[0, 5], x[1, 9] = np.nan, np.inf
    for name, extra in ((EXACT[kind], []), (EXACT[kind] + "_fast", [np.float32([6.0])])):
        rc, y = call(simd_library.path, name, [x, *w.stored(kind), *extra], (3, 8))
        assert rc == 0
        assert np.isnan(y[0]).all() and not np.isfinite(y[1]).any() and np.isfinite(y[2]).all()


def test_every_build_agrees_with_the_portable_one(library, portable_library):
    w = random_weights(33, 130, seed=11)
    x = _x(5, 130, seed=12)
    for kind, name in EXACT.items():
        _, a = call(library.path, name, [x, *w.stored(kind)], (5, 33))
        _, b = call(portable_library.path, name, [x, *w.stored(kind)], (5, 33))
        assert _rel(a, b) <= 2e-6
    for kind in BITS:  # integer dot products: identical up to the last float32 rounding
        _, a = call(library.path, EXACT[kind] + "_fast", [x, *w.stored(kind), np.float32([6.0])], (5, 33))
        _, b = call(portable_library.path, EXACT[kind] + "_fast", [x, *w.stored(kind), np.float32([6.0])], (5, 33))
        assert _rel(a, b) <= 1e-6


@pytest.mark.parametrize("kind", list(BITS))
def test_fast_mode_is_the_same_integer_arithmetic_at_every_level(library, portable_library, kind):
    # Each level sums the integer products in its own lanes and blocks (AVX-512 VNNI, int4 in byte products there,
    # AVX2, scalar); the sums are exact integers at every level, so the outputs agree bit for bit. Rows at the int16
    # extremes and weights at the int8/int4 extremes fill the int32 lanes as far as any input can; K spans several
    # integer blocks and a tail, for int4 in steps of a byte (two columns) too.
    rng = np.random.default_rng(21)
    n, k = 19, 2 * (2 * 2048 + 64) + 18
    w = random_weights(n, k, seed=22)
    weight, scale = w.stored(kind)
    weight = weight.copy()
    weight[0] = -128 if kind == "int8" else np.int8(-0x78)  # int4: -8 in every nibble (0x88)
    weight[1] = 127 if kind == "int8" else np.int8(0x77)
    for m in (1, 2, 3, 4, 5, 17):
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[0] = 1.0  # every element the row's max: int16 32767 everywhere
        if m > 1:
            x[1] = -1.0
            x[1, 7] = 50.0  # an outlier column (left in float32)
        out = []
        for lib in (library, portable_library):
            rc, y = call(lib.path, EXACT[kind] + "_fast", [x, weight, scale, np.float32([6.0])], (m, n))
            assert rc == 0
            out.append(y)
        np.testing.assert_array_equal(out[0].view(np.uint32), out[1].view(np.uint32), err_msg=f"{kind} m={m}")


@pytest.mark.parametrize("kind, fast", [(kind, False) for kind in EXACT] + [(kind, True) for kind in BITS])
def test_float16_ends_and_the_bias_round_once(library, kind, fast):
    # y = float32 products + float32(bias), rounded once to y's dtype: float16 x in, float16 y out.
    name, extra = EXACT[kind] + ("_fast" if fast else ""), [np.float32([6.0])] if fast else []
    w = random_weights(33, 130, seed=21)
    for m in (1, 5, 17):
        x = _x(m, 130, seed=m).astype(np.float16)
        _, products = call(library.path, name, [x.astype(np.float32), *w.stored(kind), *extra], (m, 33))
        for bias in (np.linspace(-3, 3, 33).astype(np.float16), np.linspace(-3, 3, 33).astype(np.float32)):
            y = np.full((m, 33), np.nan, np.float16)
            assert call_into(library.path, name, [x, *w.stored(kind), *extra, bias], [y]) == 0
            assert y.tobytes() == (products + bias.astype(np.float32)).astype(np.float16).tobytes()
            y32 = np.full((m, 33), np.nan, np.float32)
            assert call_into(library.path, name, [x.astype(np.float32), *w.stored(kind), *extra, bias], [y32]) == 0
            assert y32.tobytes() == (products + bias.astype(np.float32)).tobytes()
        y = np.full((m, 33), np.nan, np.float16)
        assert call_into(library.path, name, [x, *w.stored(kind), *extra], [y]) == 0
        assert y.tobytes() == products.astype(np.float16).tobytes()


def test_leading_dimensions_are_rows(simd_library):
    w = random_weights(9, 34, seed=13)
    x = _x(6, 34, seed=14).reshape(3, 2, 34)
    rc, y = call(simd_library.path, "glm_int8_matmul", [x, w.int8, w.scale8], (3, 2, 9))
    assert rc == 0 and _rel(y, w.reference(x, "int8")) <= 1e-5


def test_empty_inputs(simd_library):
    w = random_weights(4, 6, seed=15)
    rc, y = call(simd_library.path, "glm_int8_matmul", [np.zeros((0, 6), np.float32), w.int8, w.scale8], (0, 4))
    assert rc == 0 and y.shape == (0, 4)
    rc, y = call(simd_library.path, "glm_half_matmul", [np.ones((2, 0), np.float32), np.zeros((3, 0), np.float16)],
                 (2, 3))
    assert rc == 0 and not y.any()


@pytest.mark.parametrize("name, inputs, out, code", [
    ("glm_int8_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.int8)], (2, 3), 1),  # no scale
    # float16 x with a float32 y
    ("glm_int8_matmul", [np.ones((2, 4), np.float16), np.ones((3, 4), np.int8), np.ones(3, np.float16)], (2, 3), 2),
    ("glm_int8_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.int8), np.ones(3, np.float32)], (2, 3), 2),
    ("glm_int8_matmul", [np.ones((2, 5), np.float32), np.ones((3, 4), np.int8), np.ones(3, np.float16)], (2, 3), 3),
    ("glm_int4_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.int8), np.ones(3, np.float16)], (2, 3), 3),
    ("glm_int8_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.int8), np.ones(2, np.float16)], (2, 3), 3),
    ("glm_half_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.float16)], (2, 4), 3),
    ("glm_int8_matmul_fast", [np.ones((2, 4), np.float32), np.ones((3, 4), np.int8), np.ones(3, np.float16),
                              np.ones(2, np.float32)], (2, 3), 3),
    ("glm_int8_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.int8), np.ones(3, np.float16),
                         np.ones(2, np.float32)], (2, 3), 3),  # bias [2] for N = 3
    ("glm_int8_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.int8), np.ones(3, np.float16),
                         np.ones(3, np.int8)], (2, 3), 2),
    ("glm_half_matmul", [np.ones((2, 4), np.float32), np.ones((3, 4), np.float16), np.ones(3, np.float32),
                         np.ones(3, np.float32)], (2, 3), 1),
    ("glm_int4_matmul_fast", [np.ones((2, 4), np.float32), np.ones((3, 2), np.int8), np.ones(3, np.float16),
                              np.ones(1, np.float32), np.ones((1, 3), np.float32)], (2, 3), 3),
])
def test_bad_arguments_return_an_error_code(simd_library, name, inputs, out, code):
    rc, _ = call(simd_library.path, name, inputs, out)
    assert rc == code


@pytest.mark.parametrize("name", ["tiny-chatglm-6b-int8", "tiny-chatglm-6b-int4", "tiny-chatglm2-6b-int4"])
def test_fast_mode_on_the_fixtures_layers(simd_library, name):
    # The checkpoints' own integers and scales against the hidden states entering layer 0 (golden of the base):
    # fast mode stays within its bound, about 2-4e-5 of the largest output here.
    golden = json.loads((FIXTURES / name / "golden.json").read_text(encoding="utf-8"))
    hidden = np.load(FIXTURES / golden["base_fixture"] / "golden.npz")
    checkpoint = load_torch(FIXTURES / name / "pytorch_model.bin")
    bits = golden["quantization_bit"]
    kernel = f"glm_int{bits}_matmul_fast"
    checked = 0
    for linear in golden["quantized_linears"]:
        w, scale = checkpoint[f"{linear}.weight"], checkpoint[f"{linear}.weight_scale"]
        for i in range(len(golden["prompts"])):
            x = hidden[f"fwd{i}_hidden0"].reshape(-1, hidden[f"fwd{i}_hidden0"].shape[-1]).astype(np.float32)
            if x.shape[1] != w.shape[1] * (2 if bits == 4 else 1):
                continue  # dense_4h_to_h takes the MLP's width
            rc, y = call(simd_library.path, kernel, [x, w, scale, np.float32([6.0])], (x.shape[0], w.shape[0]))
            exact = x.astype(np.float64) @ dequantize_rows(w, scale, bits).astype(np.float64).T
            assert rc == 0 and (np.abs(y - exact) <= fast_error_bound(x, w, scale, bits)).all()
            assert _rel(y, exact) < 1e-4
            checked += 1
    assert checked >= 3 * len(golden["prompts"])
