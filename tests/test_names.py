"""Name table: covers the real ChatGLM-6B checkpoint exactly, shapes agree with the files and the model."""
import json
from pathlib import Path

import numpy as np
import pytest

from glm_ms.convert.names import (CHATGLM_6B, CHATGLM_6B_NAMES, UnknownTensorError, expand_targets, map_name,
                                  mindspore_to_upstream, table_for_config)

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "chatglm-6b-real-manifest"
TINY = FIXTURES / "tiny-chatglm-6b"


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def real_index():
    return _json(REAL / "pytorch_model.bin.index.json")["weight_map"]


@pytest.fixture(scope="module")
def real_config():
    return _json(REAL / "config.json")


def test_real_index_every_key_maps_or_is_an_explicit_drop(real_index, real_config):
    assert len(real_index) == 368 and real_config["num_layers"] == 28
    mapped, dropped = {}, []
    for name in real_index:
        target = CHATGLM_6B.map_name(name)  # raises on a name the table does not know
        if target is None:
            dropped.append(name)
        else:
            assert target not in mapped, f"{name} and {mapped.get(target)} both map to {target}"
            mapped[target] = name
    assert sorted(dropped) == sorted(f"transformer.layers.{i}.attention.rotary_emb.inv_freq" for i in range(28))
    # Exactly the parameters the config implies: nothing missing, nothing extra.
    assert set(mapped) == set(CHATGLM_6B.expected_shapes(real_config))
    assert len(mapped) == 340 == 4 + 12 * 28
    layers = {int(t.split(".")[2]) for t in mapped if t.startswith("transformer.layers.")}
    assert layers == set(range(28))


def test_expected_shapes_account_for_the_real_shard_bytes(real_config):
    # fp16 bytes the shapes imply, plus the dropped inv_freq buffers (32 fp16 values per layer), must be
    # what the eight real shards hold, up to the zip/pickle overhead (~1 MB for 368 tensors).
    shapes = CHATGLM_6B.expected_shapes(real_config)
    implied = sum(int(np.prod(s)) for s in shapes.values()) * 2 + 28 * 32 * 2
    files = _json(REAL / "files.json")["files"]
    on_disk = sum(f["size"] for f in files if f["path"].endswith(".bin"))
    assert len([f for f in files if f["path"].endswith(".bin")]) == 8
    assert implied <= on_disk < implied + 4 * 2**20
    assert shapes["transformer.word_embeddings.weight"] == (130528, 4096)
    assert shapes["transformer.layers.27.mlp.dense_h_to_4h.weight"] == (16384, 4096)
    assert shapes["transformer.layers.0.attention.query_key_value.weight"] == (3 * 4096, 4096)


def test_table_targets_and_shapes_agree():
    config = _json(TINY / "config.json")
    assert sorted(expand_targets(CHATGLM_6B_NAMES, config["num_layers"])) == sorted(CHATGLM_6B.expected_shapes(config))


def test_expected_shapes_match_the_model_parameters():
    from glm_ms.config import ChatGLMConfig
    from glm_ms.models.chatglm import TIED_WEIGHTS, ChatGLMCausalLM

    config = _json(TINY / "config.json")
    model = ChatGLMCausalLM(ChatGLMConfig.from_dict(config), dtype="float32")
    params = {n: tuple(p.shape) for n, p in model.weight_parameters().items()}
    expected = CHATGLM_6B.expected_shapes(config)
    # The model holds the tied pair as one parameter; the checkpoint (and the table) has both names.
    assert CHATGLM_6B.tied == TIED_WEIGHTS
    for name, shape in expected.items():
        assert params[TIED_WEIGHTS.get(name, name)] == shape, name
    assert set(params) == {TIED_WEIGHTS.get(n, n) for n in expected}


@pytest.mark.parametrize("name", [
    "transformer.layers.0.attention.rotary_emb.weight",
    "transformer.prefix_encoder.embedding.weight",  # p-tuning weights are not part of the base model
    "transformer.layers.x.input_layernorm.weight",
    "lm_head.bias",
    "word_embeddings.weight",
])
def test_unknown_names_are_errors(name):
    with pytest.raises(UnknownTensorError, match="not in the"):
        CHATGLM_6B.map_name(name)
    with pytest.raises(UnknownTensorError):
        map_name(name)


def test_layer_numbers_are_substituted():
    assert CHATGLM_6B.map_name("transformer.layers.17.mlp.dense_4h_to_h.bias") == \
        "transformer.layers.17.mlp.dense_4h_to_h.bias"
    assert CHATGLM_6B.map_name("transformer.layers.3.attention.rotary_emb.inv_freq") is None


@pytest.mark.parametrize("name, expected", [
    ("transformer.layers.0.input_layernorm.gamma", "transformer.layers.0.input_layernorm.weight"),
    ("transformer.layers.0.input_layernorm.beta", "transformer.layers.0.input_layernorm.bias"),
    ("transformer.final_layernorm.gamma", "transformer.final_layernorm.weight"),
    ("transformer.word_embeddings.embedding_table", "transformer.word_embeddings.weight"),
    ("transformer.layers.0.attention.dense.weight", "transformer.layers.0.attention.dense.weight"),
    ("lm_head.weight", "lm_head.weight"),
])
def test_mindspore_names(name, expected):
    assert mindspore_to_upstream(name) == expected


def test_family_detection():
    assert table_for_config(_json(REAL / "config.json")) is CHATGLM_6B
    assert table_for_config(_json(TINY / "config.json")) is CHATGLM_6B
    with pytest.raises(UnknownTensorError, match="model family not recognised"):
        table_for_config({"model_type": "llama", "hidden_size": 8})
