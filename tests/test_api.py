"""The public entry points: dispatch through the family table, config.json read once, clear argument errors."""
import numpy as np
import pytest

from glm_ms import (AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, ChatGLM2ForConditionalGeneration,
                    ChatGLM3ForConditionalGeneration, ChatGLMForConditionalGeneration, config, families)
from glm_ms.errors import ConfigError
from tests.models import quantized_fixtures as q
from tests.support import FAMILIES, FAMILY_FOLDERS, tiny

CLASSES = {"chatglm-6b": ChatGLMForConditionalGeneration, "chatglm2": ChatGLM2ForConditionalGeneration,
           "chatglm3": ChatGLM3ForConditionalGeneration}


def test_the_public_classes_are_the_table_rows():
    for name, cls in CLASSES.items():
        assert families.get(name).load("model") is cls
    assert AutoModelForSeq2SeqLM is AutoModel


@pytest.mark.parametrize("name", FAMILIES)
def test_auto_entry_points_pick_the_folders_family(name):
    assert type(tiny(name).model) is CLASSES[name]
    assert type(tiny(name).tokenizer) is families.get(name).load("tokenizer")


@pytest.mark.parametrize("name", FAMILIES)
def test_config_json_is_read_once_per_from_pretrained(name, monkeypatch):
    reads = []
    real = config.read_config_json
    monkeypatch.setattr(config, "read_config_json", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(families, "read_config_json", config.read_config_json)
    AutoModel.from_pretrained(FAMILY_FOLDERS[name], dtype="float32")
    assert len(reads) == 1


def test_a_family_class_refuses_another_generations_folder():
    with pytest.raises(ConfigError, match="ChatGLM-6B config cannot be loaded as ChatGLM2-6B"):
        ChatGLM2ForConditionalGeneration.from_pretrained(FAMILY_FOLDERS["chatglm-6b"])
    with pytest.raises(ConfigError, match="unknown model family 'chatglm4'"):
        AutoTokenizer.from_pretrained(FAMILY_FOLDERS["chatglm2"], family="chatglm4")


# ----------------------------------------------------------------------------- quantize=


def quantized_bytes(model) -> dict:
    from glm_ms.models.quantized import quantized_cells
    return {path: (cell.weight.asnumpy().tobytes(), cell.weight_scale.asnumpy().tobytes())
            for path, cell in quantized_cells(model).items()}


@pytest.mark.parametrize("variant", q.VARIANTS)
def test_from_pretrained_quantize_equals_model_quantize(variant):
    bits, ids = q.bits_of(variant), q.golden(variant)["fwd0_input_ids"]
    loaded = AutoModel.from_pretrained(q.base_dir(variant), dtype="float32", quantize=bits)
    quantized = AutoModel.from_pretrained(q.base_dir(variant), dtype="float32").quantize(bits)
    assert loaded.quantization == quantized.quantization and quantized_bytes(loaded) == quantized_bytes(quantized)
    np.testing.assert_array_equal(loaded.generate(ids, max_length=ids.shape[1] + 16, do_sample=False),
                                  quantized.generate(ids, max_length=ids.shape[1] + 16, do_sample=False))


def test_from_pretrained_passes_quantize_embeddings_and_fast():
    model = AutoModel.from_pretrained(FAMILY_FOLDERS["chatglm2"], quantize=4, quantize_embeddings=True, fast=True)
    reference = AutoModel.from_pretrained(FAMILY_FOLDERS["chatglm2"]).quantize(4, embeddings=True, fast=True)
    assert quantized_bytes(model) == quantized_bytes(reference)
    assert len(quantized_bytes(model)) > len(q.golden_json("chatglm2-int4")["quantized_linears"])
    assert all(cell.fast for cell in model.cells() if hasattr(cell, "fast"))


@pytest.mark.server
def test_a_model_id_loads_quantized_through_the_mirror(tmp_path):
    from tests.fake_modelscope import serve
    variant = "chatglm-6b-int4"
    with serve({"ZhipuAI/ChatGLM-6B": q.base_dir(variant), "THUDM/chatglm-6b-int4": q.QUANTIZED[variant]}) as hub:
        hub_args = dict(mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url, dtype="float32")
        otf = AutoModel.from_pretrained("ZhipuAI/ChatGLM-6B", quantize=4, **hub_args)
        published = AutoModel.from_pretrained("THUDM/chatglm-6b-int4", **hub_args)
    # Quantizing the float16 repository as it loads gives the int4 repository's integers and scales.
    assert quantized_bytes(otf) == quantized_bytes(published) == quantized_bytes(q.model(variant))
    g = q.golden(variant)
    ids = g["fwd0_input_ids"]
    np.testing.assert_array_equal(published.generate(ids, max_length=ids.shape[1] + 24, do_sample=False),
                                  g["greedy0_output_ids"])
