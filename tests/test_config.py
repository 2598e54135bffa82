import json

import pytest

from glm_ms.config import ChatGLMConfig, ConfigError


def test_reads_fixture_and_real_config(tiny_dir):
    tiny = ChatGLMConfig.from_file(tiny_dir)
    assert (tiny.vocab_size, tiny.hidden_size, tiny.num_layers, tiny.num_attention_heads) == (3000, 64, 2, 4)
    assert (tiny.head_dim, tiny.rotary_dim, tiny.inner_hidden_size) == (16, 8, 256)
    real = ChatGLMConfig.from_file(tiny_dir.parent / "chatglm-6b-real-manifest")
    assert (real.vocab_size, real.num_layers, real.head_dim, real.gmask_token_id) == (130528, 28, 128, 130001)


def test_unknown_keys_ignored_and_inner_default(tiny_dir):
    data = json.loads((tiny_dir / "config.json").read_text())
    data.pop("inner_hidden_size")
    data["some_future_field"] = 1
    assert ChatGLMConfig.from_dict(data).inner_hidden_size == 4 * 64


def test_missing_field_is_named(tiny_dir):
    data = json.loads((tiny_dir / "config.json").read_text())
    del data["num_attention_heads"]
    with pytest.raises(ConfigError, match="num_attention_heads"):
        ChatGLMConfig.from_dict(data)


@pytest.mark.parametrize("change, field", [
    ({"num_attention_heads": 5}, "hidden_size"),
    ({"gmask_token_id": 5000}, "gmask_token_id"),
    ({"num_layers": 0}, "num_layers"),
    ({"position_encoding_2d": False}, "position_encoding_2d"),
])
def test_contradictions_are_named(tiny_dir, change, field):
    data = json.loads((tiny_dir / "config.json").read_text())
    data.update(change)
    with pytest.raises(ConfigError, match=field):
        ChatGLMConfig.from_dict(data)


def test_bad_json_names_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        ChatGLMConfig.from_file(tmp_path)
