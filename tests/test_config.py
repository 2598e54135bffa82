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


@pytest.mark.parametrize("name", ["chatglm-6b", "chatglm2"])
@pytest.mark.parametrize("field, value", [("num_layers", 100_000_000), ("hidden_size", 1e8), ("num_layers", True),
                                          ("num_attention_heads", -4)])
def test_sizes_beyond_any_chatglm_are_refused_before_anything_is_built(name, field, value):
    from glm_ms import families
    from tests.support import FAMILY_FOLDERS
    row = families.get(name)
    data = json.loads((FAMILY_FOLDERS[name] / "config.json").read_text())
    data[field] = value
    with pytest.raises(ConfigError, match=field):
        row.config_from_dict(data)


def test_a_huge_config_file_is_not_read(tmp_path):
    (tmp_path / "config.json").write_text(" " * (2 << 20) + "{}")
    with pytest.raises(ConfigError, match="too large"):
        ChatGLMConfig.from_file(tmp_path)


def test_errors_share_one_root_and_keep_their_builtin():
    from glm_ms import errors
    roots = {name: cls for name, cls in vars(errors).items()
             if isinstance(cls, type) and issubclass(cls, Exception) and not name.startswith("_")}
    assert all(issubclass(cls, errors.GlmMsError) for cls in roots.values())
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.UnknownTensorError, KeyError)
    assert issubclass(errors.ModelScopeError, RuntimeError) and issubclass(errors.NotFoundError, FileNotFoundError)
