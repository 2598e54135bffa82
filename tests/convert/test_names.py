"""Name tables: cover the real checkpoints exactly, shapes agree with the files and the models, unknown names fail."""
import json

import numpy as np
import pytest

from glm_ms import families
from glm_ms.config import ChatGLM2Config
from glm_ms.convert.names import CHATGLM2, CHATGLM_6B, mindspore_to_upstream
from glm_ms.errors import UnknownTensorError
from tests.support import FAMILY_FOLDERS, REAL_MANIFESTS, SECOND_GENERATION


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _config(folder):
    return families.detect(folder).config


@pytest.fixture(scope="module")
def real_index():
    return _json(REAL_MANIFESTS["chatglm-6b"] / "pytorch_model.bin.index.json")["weight_map"]


def test_real_index_every_key_maps_or_is_an_explicit_drop(real_index):
    config = _config(REAL_MANIFESTS["chatglm-6b"])
    assert len(real_index) == 368 and config.num_layers == 28
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
    assert set(mapped) == set(CHATGLM_6B.expected_shapes(config))
    assert len(mapped) == 340 == 4 + 12 * 28
    layers = {int(t.split(".")[2]) for t in mapped if t.startswith("transformer.layers.")}
    assert layers == set(range(28))


def test_expected_shapes_account_for_the_real_shard_bytes():
    # fp16 bytes the shapes imply, plus the dropped inv_freq buffers (32 fp16 values per layer), must be
    # what the eight real shards hold, up to the zip/pickle overhead (~1 MB for 368 tensors).
    shapes = CHATGLM_6B.expected_shapes(_config(REAL_MANIFESTS["chatglm-6b"]))
    implied = sum(int(np.prod(s)) for s in shapes.values()) * 2 + 28 * 32 * 2
    files = _json(REAL_MANIFESTS["chatglm-6b"] / "files.json")["files"]
    on_disk = sum(f["size"] for f in files if f["path"].endswith(".bin"))
    assert len([f for f in files if f["path"].endswith(".bin")]) == 8
    assert implied <= on_disk < implied + 4 * 2**20
    assert shapes["transformer.word_embeddings.weight"] == (130528, 4096)
    assert shapes["transformer.layers.27.mlp.dense_h_to_4h.weight"] == (16384, 4096)
    assert shapes["transformer.layers.0.attention.query_key_value.weight"] == (3 * 4096, 4096)


def test_table_targets_and_shapes_agree():
    config = _config(FAMILY_FOLDERS["chatglm-6b"])
    assert sorted(CHATGLM_6B.targets(config.num_layers)) == sorted(CHATGLM_6B.expected_shapes(config))


def test_expected_shapes_match_the_model_parameters():
    from glm_ms.models.chatglm import TIED_WEIGHTS, ChatGLMCausalLM

    config = _config(FAMILY_FOLDERS["chatglm-6b"])
    model = ChatGLMCausalLM(config, dtype="float32")
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
    with pytest.raises(UnknownTensorError, match=rf"{name!r}.*not in the chatglm-6b name table"):
        CHATGLM_6B.map_name(name)


def test_layer_numbers_are_substituted():
    assert CHATGLM_6B.map_name("transformer.layers.17.mlp.dense_4h_to_h.bias") == \
        "transformer.layers.17.mlp.dense_4h_to_h.bias"
    assert CHATGLM_6B.map_name("transformer.layers.3.attention.rotary_emb.inv_freq") is None
    assert CHATGLM_6B.layer_of("transformer.layers.17.mlp.dense_4h_to_h.bias") == 17
    assert CHATGLM_6B.layer_of("lm_head.weight") is None and CHATGLM_6B.layer_of("nonsense") is None


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


def test_every_family_names_its_table():
    assert families.get("chatglm-6b").load("names") is CHATGLM_6B
    assert families.get("chatglm2").load("names") is families.get("chatglm3").load("names") is CHATGLM2


# ------------------------------------------------------------------------------------------------
# ChatGLM2 / ChatGLM3: one table for both generations


@pytest.mark.parametrize("family", SECOND_GENERATION)
def test_second_generation_real_index_every_key_maps_or_is_an_explicit_drop(family):
    index = _json(REAL_MANIFESTS[family] / "pytorch_model.bin.index.json")["weight_map"]
    detected = families.detect(REAL_MANIFESTS[family])
    table = detected.family.load("names")
    assert detected.family.name == family and table is CHATGLM2
    assert len(index) == 200 and detected.config.num_layers == 28
    mapped, dropped = {}, []
    for name in index:
        target = table.map_name(name)  # raises on a name the table does not know
        if target is None:
            dropped.append(name)
        else:
            assert target not in mapped
            mapped[target] = name
    assert dropped == ["transformer.rotary_pos_emb.inv_freq"]
    shapes = table.expected_shapes(detected.config)
    assert set(mapped) == set(shapes)  # nothing missing, nothing extra
    assert len(mapped) == 199 == 3 + 7 * 28
    assert shapes["transformer.embedding.word_embeddings.weight"] == (65024, 4096)
    assert shapes["transformer.encoder.layers.0.self_attention.query_key_value.weight"] == (4096 + 2 * 2 * 128, 4096)
    assert shapes["transformer.encoder.layers.27.mlp.dense_h_to_4h.weight"] == (2 * 13696, 4096)
    # fp16 bytes the shapes imply (plus the 32-value inv_freq buffer) are what the seven real shards hold.
    implied = sum(int(np.prod(s)) for s in shapes.values()) * 2 + 32 * 2
    files = _json(REAL_MANIFESTS[family] / "files.json")["files"]
    on_disk = sum(f["size"] for f in files if f["path"].endswith(".bin"))
    assert implied <= on_disk < implied + 4 * 2**20
    assert _json(REAL_MANIFESTS[family] / "pytorch_model.bin.index.json")["metadata"]["total_size"] == implied


def test_second_generation_shapes_are_the_model_parameters_for_other_shapes():
    from glm_ms.models.chatglm2 import ChatGLM2CausalLM
    data = dict(_json(FAMILY_FOLDERS["chatglm2"] / "config.json"), num_layers=3, num_attention_heads=8,
                kv_channels=8, multi_query_group_num=4, add_bias_linear=True, rmsnorm=False)
    config = ChatGLM2Config.from_dict(dict(data, family="chatglm2"))
    lm = ChatGLM2CausalLM(config, dtype="float32")
    params = {n: tuple(p.shape) for n, p in lm.weight_parameters().items()}
    assert params == CHATGLM2.expected_shapes(config)
    assert all(CHATGLM2.map_name(n) == n for n in params)  # the table is the identity on every parameter


def test_second_generation_unknown_tensor_names_are_errors():
    with pytest.raises(UnknownTensorError, match="chatglm2"):
        CHATGLM2.map_name("transformer.prefix_encoder.embedding.weight")
    with pytest.raises(UnknownTensorError):
        CHATGLM2.map_name("lm_head.weight")
    with pytest.raises(KeyError):  # still a KeyError, as before the error root
        CHATGLM2.map_name("lm_head.weight")

