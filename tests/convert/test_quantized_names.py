"""The name tables know the quantized layouts: `weight_scale` rows, packed int4 shapes, the config's keys."""
import pytest

from glm_ms import families
from glm_ms.convert.names import CHATGLM_6B, Quantization, requested_quantization
from glm_ms.convert.readers.layout import find_checkpoint, open_shard
from glm_ms.errors import ConfigError
from glm_ms.kernels import QuantizationError
from tests.models import quantized_fixtures as q


@pytest.mark.parametrize("variant", q.VARIANTS)
def test_expected_shapes_are_the_int_checkpoints_own(variant):
    folder = q.QUANTIZED[variant]
    detected = families.detect(folder)
    table = detected.family.load("names")
    ckpt = find_checkpoint(folder)
    with open_shard(ckpt, ckpt.shards[0]) as lazy:
        held = {table.map_name(t.name): t.shape for t in lazy if table.map_name(t.name) is not None}
    stored = Quantization(q.bits_of(variant))
    expected = table.expected_shapes(detected.config, stored)
    assert {table.tied.get(n, n) for n in held} == {table.tied.get(n, n) for n in expected}
    assert all(held[name] == shape for name, shape in expected.items() if name in held)
    assert sorted(table.quantized_modules(detected.config.num_layers, stored)) == \
        sorted(q.golden_json(variant)["quantized_linears"])
    assert set(expected) <= set(table.targets(detected.config.num_layers, stored))  # rows cover every config


@pytest.mark.parametrize("data, expected", [
    ({}, None), ({"quantization_bit": 0}, None), ({"quantization_bit": None}, None),
    ({"quantization_bit": 8}, Quantization(8)), ({"quantization_bit": 4, "quantization_embeddings": True},
                                                 Quantization(4, True)),
])
def test_quantization_from_config(data, expected):
    assert Quantization.from_config(data) == expected


@pytest.mark.parametrize("data", [{"quantization_bit": 2}, {"quantization_bit": False},
                                  {"quantization_bit": 8, "quantization_embeddings": "yes"}])
def test_bad_quantization_keys_are_config_errors(data):
    with pytest.raises(ConfigError, match="my/config.json"):
        Quantization.from_config(data, source="my/config.json")


def test_embeddings_quantized_add_the_shared_scale_and_its_tie():
    quantization = Quantization(4, True)
    modules = CHATGLM_6B.quantized_modules(2, quantization)
    assert modules[-2:] == ["transformer.word_embeddings", "lm_head"]
    assert CHATGLM_6B.tied_for(quantization) == {"lm_head.weight": "transformer.word_embeddings.weight",
                                                "lm_head.weight_scale": "transformer.word_embeddings.weight_scale"}
    assert CHATGLM_6B.tied_for(Quantization(4)) == CHATGLM_6B.tied


def test_requested_quantization():
    assert requested_quantization(None, None) is None
    assert requested_quantization(None, 8) == Quantization(8)
    assert requested_quantization(Quantization(4), None) == Quantization(4)
    assert requested_quantization(Quantization(4), 4, embeddings=True) == Quantization(4, True)
    assert requested_quantization(Quantization(4, True), 4) == Quantization(4, True)
    with pytest.raises(QuantizationError, match="already quantized to int4"):
        requested_quantization(Quantization(4), 8)
    with pytest.raises(QuantizationError, match="quantize_embeddings needs"):
        requested_quantization(None, None, embeddings=True)
