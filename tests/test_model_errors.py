"""Bad checkpoints and inputs fail loudly, naming what is wrong, and never run pickle code."""
import shutil

import pytest

from glm_ms import ChatGLMForConditionalGeneration
from glm_ms.convert.errors import CheckpointError
from glm_ms.model import WeightError
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
