"""The public entry points: dispatch through the family table, config.json read once, clear argument errors."""
import pytest

from glm_ms import (AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, ChatGLM2ForConditionalGeneration,
                    ChatGLM3ForConditionalGeneration, ChatGLMForConditionalGeneration, config, families)
from glm_ms.errors import ConfigError
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
