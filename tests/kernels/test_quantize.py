"""The numpy quantizer against upstream's published arithmetic: the fixtures' checkpoints byte for byte."""
import json

import numpy as np
import pytest

from glm_ms.errors import GlmMsError, WeightError
from glm_ms.kernels import (QuantizationError, dequantize_rows, pack_int4, quantize_rows, unpack_int4)
from tests.kernels.conftest import load_torch
from tests.support import FIXTURES

QUANTIZED = ["tiny-chatglm-6b-int8", "tiny-chatglm-6b-int4", "tiny-chatglm2-6b-int4"]


def _fixture(name):
    folder = FIXTURES / name
    golden = json.loads((folder / "golden.json").read_text(encoding="utf-8"))
    base = {}
    for shard in sorted((FIXTURES / golden["base_fixture"]).glob("pytorch_model-*.bin")):
        base.update(load_torch(shard))
    return golden, base, load_torch(folder / "pytorch_model.bin")


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantizing_the_base_gives_the_checkpoint_bytes(name):
    golden, base, checkpoint = _fixture(name)
    bits = golden["quantization_bit"]
    assert golden["quantized_linears"]
    for linear in golden["quantized_linears"]:
        ours = quantize_rows(base[f"{linear}.weight"], bits)
        assert ours.weight.dtype == np.int8 and ours.scale.dtype == np.float16
        assert ours.weight.tobytes() == checkpoint[f"{linear}.weight"].tobytes(), linear
        assert ours.weight.shape == checkpoint[f"{linear}.weight"].shape
        assert ours.scale.tobytes() == checkpoint[f"{linear}.weight_scale"].tobytes(), linear


@pytest.mark.parametrize("name", QUANTIZED)
def test_dequantized_error_matches_the_recorded_float16_quotient_effect(name):
    # upstream rounds w / scale to float16 before rounding, so |int * scale - w| can exceed scale / 2: the
    # fixture records how far, and for how many elements, over every quantized linear.
    golden, base, _ = _fixture(name)
    bits = golden["quantization_bit"]
    recorded = golden["quantization"]["dequantized_vs_base_fp16"]
    over = []
    for linear in golden["quantized_linears"]:
        w = base[f"{linear}.weight"]
        q = quantize_rows(w, bits)
        error = np.abs(dequantize_rows(q.weight, q.scale, bits).astype(np.float64) - w.astype(np.float64))
        over.append((error / q.scale.astype(np.float64)[:, None]).ravel())
    over = np.concatenate(over)
    assert over.size == recorded["elements"]
    assert over.max() == pytest.approx(recorded["max_abs_err_over_scale"], rel=1e-6)
    assert int((over > 0.5).sum()) == recorded["elements_over_half_scale"]


def test_int4_packing_puts_the_even_column_in_the_high_nibble():
    packed = pack_int4(np.array([[3, -2, 7, -7]], np.int8))
    assert packed.view(np.uint8).tolist() == [[0x3E, 0x79]]
    assert unpack_int4(packed).tolist() == [[3, -2, 7, -7]]


def test_int4_example_from_a_checkpoint():
    golden, _, checkpoint = _fixture("tiny-chatglm-6b-int4")
    example = golden["quantization"]["int4_packing"]["example_from_checkpoint"]
    stored = checkpoint[example["tensor"]]
    assert stored[0, :2].tolist() == example["row0_first_bytes"]
    assert unpack_int4(stored)[0, :4].tolist() == example["row0_first_int4_values"]


def test_every_byte_unpacks_and_packs_back():
    every = np.arange(-128, 128, dtype=np.int16).astype(np.int8).reshape(16, 16)
    values = unpack_int4(every)
    assert values.min() == -8 and values.max() == 7
    assert values[:, 0::2].tolist() == (every >> 4).tolist()
    assert pack_int4(values).tobytes() == every.tobytes()


def test_scale_and_integers_follow_the_float16_formula():
    w = np.array([[7.0, 3.5, 2.5, -0.5], [-1.0, 0.25, 0.5, 0.0]], np.float16)
    q = quantize_rows(w, 8)
    assert q.scale.tolist() == [np.float16(7.0) / np.float16(127), np.float16(1.0) / np.float16(127)]
    expected = np.rint((w / q.scale[:, None]).astype(np.float16)).astype(np.int8)
    assert q.weight.tolist() == expected.tolist()
    q4 = quantize_rows(w, 4)
    assert q4.scale.tolist() == [1.0, np.float16(1.0) / np.float16(7)]
    assert unpack_int4(q4.weight).tolist() == [[7, 4, 2, 0], [-7, 2, 4, 0]]  # 3.5 -> 4, 2.5 -> 2: half to even


def test_float32_weights_are_rounded_to_float16_first():
    w = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    for bits in (4, 8):
        a, b = quantize_rows(w, bits), quantize_rows(w.astype(np.float16), bits)
        assert a.weight.tobytes() == b.weight.tobytes() and a.scale.tobytes() == b.scale.tobytes()


def test_zero_rows_quantize_to_zero():
    w = np.zeros((2, 4), np.float16)
    w[1] = [1, -2, 3, -4]
    for bits in (4, 8):
        q = quantize_rows(w, bits)
        assert q.scale[0] == 0
        assert not dequantize_rows(q.weight, q.scale, bits)[0].any()
        assert np.isfinite(dequantize_rows(q.weight, q.scale, bits)).all()


def test_many_rows_are_quantized_in_passes_like_one():
    w = (np.random.default_rng(2).standard_normal((2500, 8)) * 0.1).astype(np.float16)
    q = quantize_rows(w, 8)
    for start in (0, 1024, 2048):
        part = quantize_rows(w[start:start + 300], 8)
        assert part.weight.tobytes() == q.weight[start:start + 300].tobytes()
        assert part.scale.tobytes() == q.scale[start:start + 300].tobytes()


@pytest.mark.parametrize("bits", [0, 2, 3, 16, True, 4.5, "8"])
def test_other_bit_widths_are_refused(bits):
    with pytest.raises(QuantizationError, match="must be 4 or 8"):
        quantize_rows(np.ones((2, 4), np.float16), bits)


def test_int4_needs_an_even_number_of_columns():
    with pytest.raises(QuantizationError, match="K must be even, not 5"):
        quantize_rows(np.ones((2, 5), np.float16), 4)
    assert quantize_rows(np.ones((2, 5), np.float16), 8).weight.shape == (2, 5)


@pytest.mark.parametrize("weight, message", [
    (np.ones(4, np.float16), "2-D"),
    (np.ones((2, 2, 2), np.float16), "2-D"),
    (np.ones((2, 4), np.int8), "floating-point"),
    (np.array([[1, np.inf]], np.float16), "inf or NaN"),
    (np.array([[1, np.nan]], np.float32), "inf or NaN"),
])
def test_unquantizable_weights_are_refused(weight, message):
    with pytest.raises(QuantizationError, match=message) as caught:
        quantize_rows(weight, 8)
    assert isinstance(caught.value, WeightError) and isinstance(caught.value, GlmMsError)
    assert isinstance(caught.value, ValueError)


def test_out_of_range_int4_values_cannot_be_packed():
    with pytest.raises(QuantizationError, match=r"\[-8, 7\]"):
        pack_int4(np.array([[8, 0]], np.int8))
