"""The shared model base: bad checkpoints, configs and dtypes fail loudly, naming what is wrong, before anything
big is built, and never run pickle code."""
import json
import shutil
import time

import pytest

from glm_ms import ChatGLM2ForConditionalGeneration, ChatGLMConfig, ChatGLMForConditionalGeneration
from glm_ms.errors import CheckpointError
from glm_ms.errors import ConfigError, WeightError
from glm_ms.models.base import resolve_dtype
from glm_ms.models.chatglm2 import ChatGLM2CausalLM
from tests.random_checkpoint import make_checkpoint
from tests.torchfile import PickleBuilder, save_torch_checkpoint, write_torch_zip


@pytest.fixture
def tiny_copy(tmp_path, tiny_dir):
    dst = tmp_path / "model"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_missing_shard_is_named(tiny_copy):
    (tiny_copy / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00003.bin"):
        ChatGLMForConditionalGeneration.from_pretrained(tiny_copy)


def test_corrupt_shard_is_named(tiny_copy):
    shard = tiny_copy / "pytorch_model-00002-of-00003.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00003.bin"):
        ChatGLMForConditionalGeneration.from_pretrained(tiny_copy)


def test_unexpected_missing_and_misshaped_tensors(tmp_path):
    folder, _, sd = make_checkpoint(tmp_path / "a", num_layers=1, hidden_size=32, num_attention_heads=2,
                                    num_shards=1)
    extra = dict(sd, **{"transformer.layers.0.attention.rogue.weight": sd["transformer.final_layernorm.bias"]})
    save_torch_checkpoint(folder, extra)
    with pytest.raises(WeightError, match="rogue"):
        ChatGLMForConditionalGeneration.from_pretrained(folder)
    missing = {k: v for k, v in sd.items() if k != "transformer.layers.0.mlp.dense_4h_to_h.bias"}
    save_torch_checkpoint(folder, missing)
    with pytest.raises(WeightError, match="missing tensors: transformer.layers.0.mlp.dense_4h_to_h.bias"):
        ChatGLMForConditionalGeneration.from_pretrained(folder)
    bad = dict(sd, **{"transformer.final_layernorm.bias": sd["transformer.final_layernorm.bias"][:5]})
    save_torch_checkpoint(folder, bad)
    with pytest.raises(WeightError, match=r"transformer.final_layernorm.bias.*\[5\]"):
        ChatGLMForConditionalGeneration.from_pretrained(folder)


def test_pickle_payload_never_runs(tmp_path, tiny_dir):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "tokenizer_config.json", "ice_text.model"):
        shutil.copy(tiny_dir / name, folder / name)
    data_pkl = PickleBuilder(2).global_("os", "system").str_(f"touch {marker}").raw(b"\x85").reduce().stop()
    write_torch_zip(folder / "pytorch_model.bin", data_pkl, {})
    with pytest.raises(CheckpointError, match="os.system"):
        ChatGLMForConditionalGeneration.from_pretrained(folder)
    assert not marker.exists()


def test_huge_num_layers_fails_fast_before_any_block_is_built(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps(dict(config, num_layers=100_000_000)))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="num_layers"):
        ChatGLMForConditionalGeneration.from_pretrained(tiny_copy)
    assert time.monotonic() - start < 30  # a hang bound, not a timing assertion: building 1e8 blocks never ends


def test_a_family_class_refuses_another_familys_folder_and_config(tiny_dir):
    with pytest.raises(ConfigError, match="ChatGLM-6B config cannot be loaded as ChatGLM2-6B"):
        ChatGLM2ForConditionalGeneration.from_pretrained(tiny_dir)
    with pytest.raises(ConfigError, match="ChatGLM2CausalLM needs a ChatGLM2Config, got ChatGLMConfig"):
        ChatGLM2CausalLM(ChatGLMConfig.from_file(tiny_dir), dtype="float32")


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", 3])
def test_unknown_dtypes_are_config_errors(dtype):
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype(dtype)
