"""The family table: detection from a folder (config.json read once), overrides, the tokenizer-folder rule."""
import json
import sys
import subprocess

import pytest

from glm_ms import families
from glm_ms.errors import ConfigError, GlmMsError
from tests.support import FAMILY_FOLDERS, REAL_MANIFESTS


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", list(REAL_MANIFESTS))
def test_real_and_tiny_folders_are_detected(name):
    assert families.detect(REAL_MANIFESTS[name]).family.name == name
    found = families.detect(FAMILY_FOLDERS[name])
    assert found.family.name == name and found.config.family == name


def test_second_generation_detection_and_override(tmp_path):
    folder = tmp_path / "anon"
    folder.mkdir()
    data = dict(_json(REAL_MANIFESTS["chatglm3"] / "config.json"), _name_or_path="my-finetune")
    (folder / "config.json").write_text(json.dumps(data))
    assert families.detect(folder).family.name == "chatglm2"  # nothing says third generation
    (folder / "tokenization_chatglm.py").write_text('role_special_tokens = ["<|system|>", "<|observation|>"]\n')
    assert families.detect(folder).family.name == "chatglm3"  # the shipped tokenizer code knows the observation role
    assert families.detect(folder, family="chatglm2").config.family == "chatglm2"
    with pytest.raises(ConfigError, match="chatglm4"):
        families.detect(folder, family="chatglm4")
    with pytest.raises(ConfigError, match="ChatGLM-6B"):
        families.detect(folder, family="chatglm-6b")  # another layout cannot be forced


def test_tokenizer_folders_without_config(tmp_path):
    for name, row in families.FAMILIES.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / row.tokenizer_file).write_bytes(b"")
        if name == "chatglm3":
            (folder / "tokenizer_config.json").write_text(json.dumps({"name_or_path": "THUDM/chatglm3-6b"}))
        assert families.tokenizer_family(folder).name == name
    with pytest.raises(ConfigError, match="no tokenizer file"):
        families.tokenizer_family(tmp_path)


def test_config_is_read_once_per_detection(monkeypatch):
    calls = []
    real = families.read_config_json
    monkeypatch.setattr(families, "read_config_json", lambda path: calls.append(path) or real(path))
    families.detect(FAMILY_FOLDERS["chatglm3"])
    assert len(calls) == 1


def test_unknown_family_and_layout_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="known: chatglm-6b, chatglm2, chatglm3"):
        families.get("llama")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(GlmMsError, match="no known ChatGLM generation"):
        families.detect(tmp_path)
    with pytest.raises(ValueError):  # the builtin it replaces still catches it
        families.detect(tmp_path)


def test_importing_the_table_and_detecting_loads_no_mindspore():
    code = ("import sys, glm_ms, glm_ms.families as f, glm_ms.convert; "
            f"f.detect({str(FAMILY_FOLDERS['chatglm2'])!r}); "
            "print('mindspore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_row_loads_its_classes():
    for row in families.FAMILIES.values():
        for what in ("config", "names", "tokenizer"):
            assert row.load(what) is not None
