"""Checkpoint folder detection and reading (torch and safetensors, sharded and single), checked against the index."""
import contextlib
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from glm_ms.convert.readers import torch_zip
from glm_ms.convert.readers.layout import CheckpointFolder, find_checkpoint, iter_checkpoint, open_shard
from glm_ms.convert.readers.safetensors import safetensors_tensors
from glm_ms.errors import CheckpointError
from tests.convert.upstream import FIXTURE as TINY
from tests.convert.upstream import SHARDS, WEIGHT_MAP, source_tensors
from tests.torchfile import BFloat16, StridedView, save_torch_checkpoint


def _index(folder=TINY):
    return json.loads((Path(folder) / "pytorch_model.bin.index.json").read_text())


def _copy_tiny(tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(TINY, dst)
    return dst


def _write_index(folder: Path, index: dict, name="pytorch_model.bin.index.json"):
    (folder / name).write_text(json.dumps(index))


def _shards(folder):
    """(shard, sorted names) of every shard, read through open_shard."""
    ckpt = find_checkpoint(folder)
    out = []
    for shard in ckpt.shards:
        with open_shard(ckpt, shard) as lazy:
            out.append((shard, {t.name: t.load() for t in lazy}))
    return out


def test_find_tiny_fixture():
    ckpt = find_checkpoint(TINY)
    assert ckpt == CheckpointFolder(TINY, "torch", SHARDS, _index()["weight_map"], "pytorch_model.bin.index.json")


def test_shards_of_the_tiny_fixture():
    seen = [(shard, sorted(tensors)) for shard, tensors in _shards(TINY)]
    assert [s for s, _ in seen] == SHARDS
    for shard, names in seen:
        assert names == sorted(n for n, s in WEIGHT_MAP.items() if s == shard)
    assert seen[0][1] == ["transformer.word_embeddings.weight"]
    assert seen[-1][1] == ["lm_head.weight"]
    assert all(a.dtype == np.float16 for _, tensors in _shards(TINY) for a in tensors.values())


def test_all_tensors_of_the_tiny_fixture():
    state = source_tensors(TINY)
    assert sorted(state) == sorted(_index()["weight_map"])
    assert state["transformer.layers.1.attention.query_key_value.weight"].shape == (192, 64)


def test_missing_shard_fails_before_reading(tmp_path, monkeypatch):
    folder = _copy_tiny(tmp_path)
    (folder / SHARDS[1]).unlink()
    reads = []
    monkeypatch.setattr(torch_zip, "torch_tensors", lambda p, stack: reads.append(p) or [])
    with pytest.raises(CheckpointError, match=SHARDS[1]):
        iter_checkpoint(folder)
    assert reads == []  # shard 1 exists but was not read: the check comes first


def test_index_lists_tensor_absent_from_shard(tmp_path):
    folder = _copy_tiny(tmp_path)
    index = _index(folder)
    index["weight_map"]["transformer.layers.2.attention.dense.weight"] = SHARDS[1]
    _write_index(folder, index)
    with pytest.raises(CheckpointError, match=rf"'transformer.layers.2.attention.dense.weight'.*{SHARDS[1]}"):
        source_tensors(folder)


def test_tensor_in_shard_mapped_elsewhere(tmp_path):
    folder = _copy_tiny(tmp_path)
    index = _index(folder)
    index["weight_map"]["transformer.final_layernorm.bias"] = SHARDS[2]  # really in shard 2
    _write_index(folder, index)
    with pytest.raises(CheckpointError,
                       match=rf"'transformer.final_layernorm.bias' is in shard {SHARDS[1]} but the index maps "
                             rf"it to {SHARDS[2]}"):
        source_tensors(folder)


def test_tensor_in_shard_not_in_index(tmp_path):
    folder = _copy_tiny(tmp_path)
    index = _index(folder)
    del index["weight_map"]["lm_head.weight"]
    index["weight_map"]["extra.weight"] = SHARDS[2]
    _write_index(folder, index)
    with pytest.raises(CheckpointError, match=rf"'extra.weight'.*{SHARDS[2]}"):
        source_tensors(folder)


def test_index_with_unsafe_shard_name(tmp_path):
    folder = _copy_tiny(tmp_path)
    index = _index(folder)
    index["weight_map"]["lm_head.weight"] = "../../outside.bin"
    _write_index(folder, index)
    with pytest.raises(CheckpointError, match="invalid shard file name"):
        find_checkpoint(folder)


def test_bad_index_json(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "pytorch_model.bin.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.index.json"):
        find_checkpoint(folder)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map"):
        find_checkpoint(folder)


def test_nothing_found(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as err:
        find_checkpoint(tmp_path)
    for name in ("pytorch_model.bin.index.json", "pytorch_model.bin", "model.safetensors.index.json",
                 "model.safetensors"):
        assert name in str(err.value)
    with pytest.raises(CheckpointError, match="not a directory"):
        find_checkpoint(tmp_path / "absent")


def test_truncated_shard_in_folder(tmp_path):
    folder = _copy_tiny(tmp_path)
    data = (folder / SHARDS[2]).read_bytes()
    (folder / SHARDS[2]).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=SHARDS[2]):
        source_tensors(folder)


def test_shard_symlinked_outside_the_folder_is_refused(tmp_path):
    folder = _copy_tiny(tmp_path)
    outside = tmp_path / "elsewhere.bin"
    (folder / SHARDS[0]).rename(outside)
    (folder / SHARDS[0]).symlink_to(outside)
    with pytest.raises(CheckpointError, match=rf"{SHARDS[0]}: is a symlink to .*elsewhere\.bin, outside"):
        iter_checkpoint(folder)
    (folder / SHARDS[0]).unlink()
    (folder / SHARDS[0]).symlink_to(folder / SHARDS[1])  # inside the folder: fine
    assert find_checkpoint(folder).shards == SHARDS


def _tensors():
    rng = np.random.default_rng(1)
    return {
        "a.weight": rng.standard_normal((4, 3)).astype(np.float16),
        "a.bias": rng.standard_normal(4).astype(np.float32),
        "ids": np.arange(5, dtype=np.int64),
        "mask": np.array([True, False]),
    }


@pytest.mark.parametrize("num_shards", [1, 2])
def test_torch_folder_round_trip(tmp_path, num_shards):
    tensors = _tensors()
    tensors["view"] = StridedView(np.arange(12, dtype=np.float32), 1, (3, 2), (1, 4))
    tensors["bf"] = BFloat16(np.array([0.5, -1.25], dtype=np.float32))
    shards = save_torch_checkpoint(tmp_path, tensors, num_shards=num_shards)
    ckpt = find_checkpoint(tmp_path)
    assert ckpt.format == "torch" and ckpt.shards == shards
    assert (ckpt.weight_map is None) == (num_shards == 1)
    state = source_tensors(tmp_path)
    assert sorted(state) == sorted(tensors)
    for name, value in tensors.items():
        exp = value.expected() if hasattr(value, "expected") else value
        assert state[name].dtype == exp.dtype
        np.testing.assert_array_equal(state[name], exp)


def _bf16_safetensors(path: Path, values: np.ndarray):
    # safetensors.numpy cannot write bfloat16 (numpy has none), so write the format by hand.
    bits = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"bf": {"dtype": "BF16", "shape": list(values.shape),
                                "data_offsets": [0, bits.nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())


def test_safetensors_single(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ckpt = find_checkpoint(tmp_path)
    assert ckpt == CheckpointFolder(tmp_path, "safetensors", ["model.safetensors"], None, None)
    state = source_tensors(tmp_path)
    assert sorted(state) == sorted(tensors)
    for name, value in tensors.items():
        assert state[name].dtype == value.dtype
        np.testing.assert_array_equal(state[name], value)


def test_safetensors_sharded_with_bf16(tmp_path):
    tensors = _tensors()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    bf_values = np.array([[1.0, -2.5, 0.15625], [3.0, 1024.0, -0.0078125]], dtype=np.float32)  # exact in bf16
    _bf16_safetensors(tmp_path / "model-00002-of-00002.safetensors", bf_values)
    weight_map = {n: "model-00001-of-00002.safetensors" for n in names[:2]}
    weight_map["bf"] = "model-00002-of-00002.safetensors"
    _write_index(tmp_path, {"metadata": {}, "weight_map": weight_map}, "model.safetensors.index.json")
    ckpt = find_checkpoint(tmp_path)
    assert ckpt.format == "safetensors"
    assert ckpt.shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert [s for s, _ in _shards(tmp_path)] == ckpt.shards
    state = source_tensors(tmp_path)
    assert sorted(state) == sorted(names[:2] + ["bf"])
    for n in names[:2]:
        np.testing.assert_array_equal(state[n], tensors[n])
    assert state["bf"].dtype == np.float32
    np.testing.assert_array_equal(state["bf"], bf_values)


def _resident_kib(path: Path) -> int:
    """kiB of this process's memory mappings of `path` that are resident (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_safetensors_tensors_are_copied_out_without_touching_a_memory_map(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {"big": rng.standard_normal((1024, 1536)).astype(np.float16), "i8": rng.integers(-128, 128, (37, 5), np.int8),
              "flags": rng.random(11) > 0.5, "empty": np.zeros((0, 3), np.float32), "f64": rng.standard_normal(7)}
    path = tmp_path / "model.safetensors"
    save_file(arrays, str(path))
    with contextlib.ExitStack() as stack:
        lazy = {t.name: t for t in safetensors_tensors(path, stack)}
        got = {name: lazy[name].load() for name in arrays}
        assert _resident_kib(path) <= 64  # the header's pages at most, not the 3 MiB tensor
    for name, want in arrays.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_safetensors_preferred_when_both_present(tmp_path):
    save_torch_checkpoint(tmp_path, {"w": np.zeros(2, np.float32)})
    save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "model.safetensors"))
    assert find_checkpoint(tmp_path).format == "safetensors"
    np.testing.assert_array_equal(source_tensors(tmp_path)["w"], np.ones(2, np.float32))


def test_safetensors_garbage(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="model.safetensors"), contextlib.ExitStack() as stack:
        safetensors_tensors(path, stack)
    save_file(_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        source_tensors(tmp_path)
