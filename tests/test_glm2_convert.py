"""ChatGLM2/3 name tables against the real 200-key indexes, family dispatch, and the model-id path through the
fake ModelScope mirror: downloaded, converted, loaded, and reproducing the golden outputs."""
import json
from pathlib import Path

import numpy as np
import pytest

from glm_ms.config import ChatGLM2Config
from glm_ms.convert import modelscope as msc
from glm_ms.convert.convert import convert_checkpoint, read_manifest
from glm_ms.convert.hub import converted_cache_path
from glm_ms.convert.names import CHATGLM2, CHATGLM3, UnknownTensorError, map_glm2_name, table_for_config
from tests.fake_modelscope import serve
from tests.support import FAMILY_FOLDERS as FOLDERS, FIXTURES, rel_err, tiny

REAL = {"chatglm2": FIXTURES / "chatglm2-6b-real-manifest", "chatglm3": FIXTURES / "chatglm3-6b-real-manifest"}
MODEL_IDS = {"chatglm2": "ZhipuAI/chatglm2-6b", "chatglm3": "ZhipuAI/chatglm3-6b"}


def _json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.delenv("GLM_MS_CACHE", raising=False)
    monkeypatch.setattr(msc, "_sleep", lambda s: None)


@pytest.mark.parametrize("family", ["chatglm2", "chatglm3"])
def test_real_index_every_key_maps_or_is_an_explicit_drop(family):
    index = _json(REAL[family] / "pytorch_model.bin.index.json")["weight_map"]
    config = _json(REAL[family] / "config.json")
    table = table_for_config(config)
    assert table is {"chatglm2": CHATGLM2, "chatglm3": CHATGLM3}[family]
    assert len(index) == 200 and config["num_layers"] == 28
    mapped, dropped = {}, []
    for name in index:
        target = table.map_name(name)  # raises on a name the table does not know
        if target is None:
            dropped.append(name)
        else:
            assert target not in mapped
            mapped[target] = name
    assert dropped == ["transformer.rotary_pos_emb.inv_freq"]
    assert set(mapped) == set(table.expected_shapes(config))  # nothing missing, nothing extra
    assert len(mapped) == 199 == 3 + 7 * 28
    shapes = table.expected_shapes(config)
    assert shapes["transformer.embedding.word_embeddings.weight"] == (65024, 4096)
    assert shapes["transformer.encoder.layers.0.self_attention.query_key_value.weight"] == (4096 + 2 * 2 * 128, 4096)
    assert shapes["transformer.encoder.layers.27.mlp.dense_h_to_4h.weight"] == (2 * 13696, 4096)
    # fp16 bytes the shapes imply (plus the 32-value inv_freq buffer) are what the seven real shards hold.
    implied = sum(int(np.prod(s)) for s in shapes.values()) * 2 + 32 * 2
    files = _json(REAL[family] / "files.json")["files"]
    on_disk = sum(f["size"] for f in files if f["path"].endswith(".bin"))
    assert implied <= on_disk < implied + 4 * 2**20
    assert _json(REAL[family] / "pytorch_model.bin.index.json")["metadata"]["total_size"] == implied


def test_expected_shapes_are_the_model_parameters_for_other_shapes():
    from glm_ms.models.chatglm2 import ChatGLM2CausalLM
    data = dict(_json(FOLDERS["chatglm2"] / "config.json"), num_layers=3, num_attention_heads=8, kv_channels=8,
                multi_query_group_num=4, add_bias_linear=True, rmsnorm=False)
    lm = ChatGLM2CausalLM(ChatGLM2Config.from_dict(dict(data, family="chatglm2")), dtype="float32")
    params = {n: tuple(p.shape) for n, p in lm.weight_parameters().items()}
    assert params == CHATGLM2.expected_shapes(data)
    assert all(map_glm2_name(n) == n for n in params)  # the table is the identity on every parameter


def test_unknown_tensor_names_are_errors():
    with pytest.raises(UnknownTensorError, match="ChatGLM2"):
        map_glm2_name("transformer.prefix_encoder.embedding.weight")
    with pytest.raises(UnknownTensorError):
        CHATGLM3.map_name("lm_head.weight")


@pytest.mark.parametrize("family", ["chatglm2", "chatglm3"])
def test_model_id_through_the_mirror_converts_loads_and_reproduces_golden(tmp_path, family):
    from glm_ms import AutoModelForSeq2SeqLM, AutoTokenizer, ChatGLM2Tokenizer, ChatGLM3Tokenizer
    model_id, cache = MODEL_IDS[family], tmp_path / "cache"
    with serve({model_id: FOLDERS[family]}) as hub:
        lm = AutoModelForSeq2SeqLM.from_pretrained(model_id, mirror="modelscope", cache_dir=cache,
                                                   endpoint=hub.url, dtype="float32")
        tok = AutoTokenizer.from_pretrained(model_id, mirror="modelscope", cache_dir=cache, endpoint=hub.url)
    out = converted_cache_path(model_id, "master", cache)
    assert read_manifest(out)["family"] == family
    assert type(lm).family == lm.config.family == family
    assert isinstance(tok, {"chatglm2": ChatGLM2Tokenizer, "chatglm3": ChatGLM3Tokenizer}[family])
    g = tiny(family).golden
    for i in range(4):
        assert rel_err(lm(g[f"fwd{i}_input_ids"]).logits.asnumpy(), g[f"fwd{i}_logits"]) <= 1e-4
    ids = g["fwd2_input_ids"]
    np.testing.assert_array_equal(lm.generate(ids, max_length=ids.shape[1] + 24, do_sample=False),
                                  g["greedy2_output_ids"])
    case = tiny(family).golden_json["tokenizer_cases"][3]
    assert tok.encode(case["text"]) == case["input_ids"]


def test_converted_float16_folder_loads_with_the_right_class(tmp_path):
    from glm_ms import ChatGLMForConditionalGeneration, ChatGLM3ForConditionalGeneration
    out = tmp_path / "converted"
    convert_checkpoint(FOLDERS["chatglm3"], out, dtype="float16", progress=False)
    assert read_manifest(out)["family"] == "chatglm3"
    lm = ChatGLMForConditionalGeneration.from_pretrained(out, dtype="float32")
    assert isinstance(lm, ChatGLM3ForConditionalGeneration)
    g = tiny("chatglm3").golden
    # The fixture's weights are float16 already: converting to float16 changes nothing.
    assert rel_err(lm(g["fwd1_input_ids"]).logits.asnumpy(), g["fwd1_logits"]) <= 1e-4
