"""open_weights: converted, MindNLP and upstream folders give the same weights; their layouts are checked first."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glm_ms.convert.readers import WeightSource, folder_kind, open_weights
from glm_ms.errors import CheckpointError
from tests.convert.upstream import (FIXTURE, OTHER_FILES, SHARDS, fixture_groups, golden_check, read_torch_file,
                                    source_tensors)


@pytest.fixture(scope="module")
def api():
    from glm_ms.api import ChatGLMForConditionalGeneration
    from glm_ms.tokenizers.chatglm import ChatGLMTokenizer
    return ChatGLMForConditionalGeneration, ChatGLMTokenizer


def test_upstream_folder_is_read_lazily_in_source_order():
    weights = open_weights(FIXTURE)
    assert weights == WeightSource(FIXTURE, "upstream", None) and not weights.names_are_parameters
    got = list(weights.tensors())
    ref = {n: a for shard in SHARDS for n, a in read_torch_file(FIXTURE / shard).items()}
    assert [n for n, _ in got] == list(ref)  # shard by shard, each in its file's order
    for name, array in got:
        assert array.dtype == ref[name].dtype
        np.testing.assert_array_equal(array, ref[name])


def test_upstream_folder_with_an_absent_shard_fails_before_reading(tmp_path):
    src = shutil.copytree(FIXTURE, tmp_path / "chatglm")
    (src / SHARDS[2]).unlink()
    with pytest.raises(CheckpointError, match=rf"shard {SHARDS[2]} is listed in the index"):
        open_weights(src).tensors()


def test_converted_folder_reads_parameter_names(converted):
    weights = open_weights(converted)
    assert weights.kind == "converted" and weights.names_are_parameters and weights.manifest["family"] == "chatglm-6b"
    src = source_tensors()
    got = dict(weights.tensors())
    assert set(got) == {n for n in src if "inv_freq" not in n}
    for name, array in got.items():
        np.testing.assert_array_equal(array, src[name])


def test_a_storage_claiming_a_tebibyte_fails_cleanly_in_from_pretrained(tmp_path, api):
    from tests.torchfile import PickleBuilder, write_torch_zip

    Model, _ = api
    folder = tmp_path / "crafted"
    folder.mkdir()
    for name in OTHER_FILES:
        shutil.copy2(FIXTURE / name, folder / name)
    numel = 1 << 39  # float16: 1 TiB
    b = PickleBuilder(2).ordered_dict().mark().str_("transformer.word_embeddings.weight")
    b.rebuild_tensor_v2("HalfStorage", "0", numel, 0, (1 << 20, 1 << 19), (1 << 19, 1)).setitems()
    write_torch_zip(folder / "pytorch_model.bin", b.stop(), {"0": b"\0" * 64}, claimed_sizes={"0": 2 * numel})
    with pytest.raises(CheckpointError, match="claims 1099511627776 bytes, more than the file"):
        list(open_weights(folder).tensors())
    with pytest.raises(CheckpointError, match="claims 1099511627776 bytes, more than the file"):
        Model.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------
# MindNLP folders of MindSpore checkpoints


def to_mindspore_name(name: str) -> str:
    if name.endswith("word_embeddings.weight"):
        return name[: -len("weight")] + "embedding_table"
    if "layernorm" in name:
        return name.replace(".weight", ".gamma").replace(".bias", ".beta")
    return name


def write_mindnlp(dest: Path, rename, single=False) -> Path:
    import mindspore as ms

    dest.mkdir(parents=True)
    for name in OTHER_FILES:
        shutil.copy2(FIXTURE / name, dest / name)
    tensors = source_tensors()
    if single:
        ms.save_checkpoint({rename(n): a for n, a in tensors.items()}, str(dest / "mindspore.ckpt"))
        return dest
    groups = [fixture_groups()[0] + fixture_groups()[1], fixture_groups()[2]]  # embeddings first, lm_head last
    weight_map = {}
    for k, group in enumerate(groups, 1):
        shard = f"mindspore-{k:05d}-of-{len(groups):05d}.ckpt"
        ms.save_checkpoint({rename(n): tensors[n] for n in group}, str(dest / shard))
        weight_map.update({rename(n): shard for n in group})
    (dest / "mindspore.ckpt.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


@pytest.mark.parametrize("names", ["hf", "mindspore"])
def test_mindnlp_folder_reproduces_golden(tmp_path, api, names):
    Model, Tokenizer = api
    rename = to_mindspore_name if names == "mindspore" else (lambda n: n)
    folder = write_mindnlp(tmp_path / "mindnlp", rename)
    if names == "mindspore":
        index = json.loads((folder / "mindspore.ckpt.index.json").read_text())["weight_map"]
        assert "transformer.word_embeddings.embedding_table" in index
        assert "transformer.layers.0.input_layernorm.gamma" in index
    assert folder_kind(folder) == "mindnlp"
    assert open_weights(folder) == WeightSource(folder, "mindnlp", None)  # read in place
    model = Model.from_pretrained(folder, dtype="float32")
    golden_check(model, greedy=(0,) if names == "mindspore" else ())
    assert Tokenizer.from_pretrained(folder).encode("你好")[-2:] == [5, 8]


def test_mindnlp_single_file(tmp_path, api):
    Model, _ = api
    folder = write_mindnlp(tmp_path / "single", to_mindspore_name, single=True)
    model = Model.from_pretrained(folder, dtype="float32")
    golden_check(model, greedy=())


def test_mindnlp_missing_shard_is_an_error(tmp_path, api):
    Model, _ = api
    folder = write_mindnlp(tmp_path / "mindnlp", lambda n: n)
    (folder / "mindspore-00002-of-00002.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"mindspore-00002-of-00002\.ckpt is listed .* but missing"):
        Model.from_pretrained(folder)
