"""The conversion driver: clear errors before anything is written, atomic output, resume, re-runs, memory,
and hostile sources (paths naming the source, symlinks leaving it, configs asking for more than they hold)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glm_ms.convert import driver
from glm_ms.convert.converted import MANIFEST, is_converted, iter_converted, read_manifest, verify_converted
from glm_ms.convert.driver import WORK_SUFFIX, convert_checkpoint
from glm_ms.errors import CheckpointError, ConfigError, ConversionError
from tests.convert.upstream import (FIXTURE, OTHER_FILES, SHARDS, CountingWriter, copy_fixture, fixture_groups,
                                    source_tensors, write_upstream)

ROOT = Path(__file__).resolve().parents[2]


def assert_no_output(out: Path):
    assert not out.exists(), "a failed conversion must not leave the output folder"
    work = out.with_name(out.name + WORK_SUFFIX)
    assert not is_converted(work)


def test_tied_copies_that_differ_are_kept_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="glm_ms.convert.driver"):
        convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    assert any("'lm_head.weight' differs from 'transformer.word_embeddings.weight'" in r.getMessage()
               for r in caplog.records)
    names = [n for n, _ in iter_converted(tmp_path / "out")]
    assert "lm_head.weight" in names and "transformer.word_embeddings.weight" in names


def test_equal_tied_copies_are_recorded_equal(tmp_path, caplog):
    tensors = source_tensors()
    tensors["lm_head.weight"] = tensors["transformer.word_embeddings.weight"].copy()
    src = write_upstream(tmp_path / "src", tensors, fixture_groups())
    with caplog.at_level(logging.WARNING, logger="glm_ms.convert.driver"):
        out = convert_checkpoint(src, tmp_path / "out", progress=False)
    assert read_manifest(out)["tied"]["lm_head.weight"]["equal"] is True
    assert not [r for r in caplog.records if "differs" in r.getMessage()]


@pytest.mark.parametrize("dtype, expected", [("float32", np.float32), ("keep", np.float16), (None, np.float16)])
def test_dtype_option(tmp_path, dtype, expected):
    out = convert_checkpoint(FIXTURE, tmp_path / "out", dtype=dtype, progress=False)
    assert read_manifest(out)["dtype"] == (dtype or "keep")
    src = source_tensors()
    for name, array in iter_converted(out):
        assert array.dtype == expected
        np.testing.assert_array_equal(array, src[name].astype(expected))


def test_unknown_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dtype"):
        convert_checkpoint(FIXTURE, tmp_path / "out", dtype="bfloat16")


def test_safetensors_source(tmp_path):
    from safetensors.numpy import save_file

    src = tmp_path / "src"
    src.mkdir()
    for name in OTHER_FILES:
        shutil.copy2(FIXTURE / name, src / name)
    tensors = source_tensors()
    weight_map = {}
    for k, group in enumerate(fixture_groups(), 1):
        shard = f"model-{k:05d}-of-00003.safetensors"
        save_file({n: tensors[n].astype(np.float32) for n in group}, str(src / shard))
        weight_map.update({n: shard for n in group})
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = convert_checkpoint(src, tmp_path / "out", progress=False)
    assert read_manifest(out)["source"]["format"] == "safetensors"
    got = dict(iter_converted(out))
    assert len(got) == 28
    for name, array in got.items():
        assert array.dtype == np.float16 and np.array_equal(array, tensors[name]), name


# ------------------------------------------------------------------------------------------------
# clear errors, and nothing that looks valid afterwards


def test_shard_listed_in_index_but_absent(tmp_path):
    src = copy_fixture(tmp_path / "src")
    (src / SHARDS[1]).unlink()
    with pytest.raises(ConversionError, match=r"shard pytorch_model-00002-of-00003\.bin is listed in the index but "
                                              r"missing"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")
    assert not (tmp_path / ("out" + WORK_SUFFIX)).exists()  # checked before anything was written


@pytest.mark.parametrize("shard", [0, 2])
def test_truncated_shard(tmp_path, shard):
    src = copy_fixture(tmp_path / "src")
    path = src / SHARDS[shard]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=SHARDS[shard].replace(".", r"\.")):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")
    work = tmp_path / ("out" + WORK_SUFFIX)
    if shard == 0:
        assert not work.exists()  # nothing finished: nothing kept
    else:
        assert not list(work.glob("*.incomplete")) and not (work / MANIFEST).exists()


def test_corrupt_storage_fails_the_zip_crc(tmp_path):
    src = copy_fixture(tmp_path / "src")
    data = bytearray((src / SHARDS[0]).read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the embedding storage, same length
    (src / SHARDS[0]).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")


def test_shape_mismatch(tmp_path):
    tensors = source_tensors()
    name = "transformer.layers.1.mlp.dense_h_to_4h.weight"
    tensors[name] = np.ascontiguousarray(tensors[name].T)  # [64, 256] instead of [256, 64]
    src = write_upstream(tmp_path / "src", tensors, fixture_groups())
    with pytest.raises(ConversionError, match=r"shape mismatch.*dense_h_to_4h\.weight: shape \[64, 256\], "
                                              r"config\.json implies \[256, 64\]"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")


def test_unknown_tensor_is_an_error_before_anything_is_written(tmp_path):
    tensors = source_tensors()
    tensors["transformer.prefix_encoder.embedding.weight"] = np.zeros((2, 64), np.float16)
    groups = fixture_groups()
    groups[1].append("transformer.prefix_encoder.embedding.weight")
    src = write_upstream(tmp_path / "src", tensors, groups)
    with pytest.raises(ConversionError, match=r"not in the chatglm-6b name table \(1\): "
                                              r"transformer\.prefix_encoder\.embedding\.weight"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert not (tmp_path / ("out" + WORK_SUFFIX)).exists() and not (tmp_path / "out").exists()


def test_unknown_tensor_in_a_single_file_checkpoint(tmp_path):
    tensors = source_tensors()
    tensors["transformer.layers.0.attention.mystery"] = np.zeros(3, np.float16)
    src = write_upstream(tmp_path / "src", tensors, groups=None)
    with pytest.raises(ConversionError, match="mystery"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")


def test_missing_tensors_are_listed(tmp_path):
    tensors = source_tensors()
    del tensors["transformer.final_layernorm.bias"], tensors["transformer.layers.0.attention.dense.weight"]
    groups = [[n for n in g if n in tensors] for g in fixture_groups()]
    src = write_upstream(tmp_path / "src", tensors, groups)
    with pytest.raises(ConversionError, match=r"missing tensors \(2\): transformer\.final_layernorm\.bias, "
                                              r"transformer\.layers\.0\.attention\.dense\.weight"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")
    # Without an index the same is found after reading the file.
    src1 = write_upstream(tmp_path / "src1", tensors, groups=None)
    with pytest.raises(ConversionError, match=r"missing tensors \(2\)"):
        convert_checkpoint(src1, tmp_path / "out1", progress=False)
    assert_no_output(tmp_path / "out1")


def test_layers_beyond_the_config_are_unexpected(tmp_path):
    config = json.loads((FIXTURE / "config.json").read_text())
    config["num_layers"] = 1
    src = write_upstream(tmp_path / "src", source_tensors(), fixture_groups(), config=config)
    with pytest.raises(ConversionError, match=r"unexpected tensors \(12\): transformer\.layers\.1\."):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")


def test_index_that_disagrees_with_the_shards(tmp_path):
    src = copy_fixture(tmp_path / "src")
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["transformer.final_layernorm.bias"] = SHARDS[0]  # really in shard 2
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="final_layernorm.bias"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        convert_checkpoint(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(ConversionError, match="not a directory"):
        convert_checkpoint(tmp_path / "nope", tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------------
# interrupted runs, re-runs, existing output


def test_interrupted_run_leaves_no_final_folder_and_resumes(tmp_path, monkeypatch, converted):
    out = tmp_path / "out"
    work = tmp_path / ("out" + WORK_SUFFIX)
    crash = CountingWriter(fail_on=2)
    monkeypatch.setattr(driver, "write_safetensors", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_checkpoint(FIXTURE, out, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == [".convert_state.json",
                                                      "mindspore_model-00001-of-00003.safetensors"]
    first = (work / "mindspore_model-00001-of-00003.safetensors").stat()

    again = CountingWriter()
    monkeypatch.setattr(driver, "write_safetensors", again)
    convert_checkpoint(FIXTURE, out, progress=False)
    assert again.calls == 2  # shards 2 and 3 only: shard 1 was verified and kept
    assert (out / "mindspore_model-00001-of-00003.safetensors").stat().st_ino == first.st_ino
    assert not work.exists()
    # Byte for byte what an uninterrupted run writes.
    assert read_manifest(out)["files"] == read_manifest(converted)["files"]


def test_resume_redoes_a_damaged_finished_shard(tmp_path, monkeypatch):
    out = tmp_path / "out"
    work = tmp_path / ("out" + WORK_SUFFIX)
    monkeypatch.setattr(driver, "write_safetensors", CountingWriter(fail_on=3))
    with pytest.raises(RuntimeError):
        convert_checkpoint(FIXTURE, out, progress=False)
    shard1 = work / "mindspore_model-00001-of-00003.safetensors"
    data = bytearray(shard1.read_bytes())
    data[-1] ^= 1
    shard1.write_bytes(bytes(data))
    again = CountingWriter()
    monkeypatch.setattr(driver, "write_safetensors", again)
    convert_checkpoint(FIXTURE, out, progress=False)
    assert again.calls == 2  # shard 1 (damaged) and shard 3 (never finished); shard 2 kept
    verify_converted(out)


def test_rerun_with_another_dtype_starts_over(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(driver, "write_safetensors", CountingWriter(fail_on=2))
    with pytest.raises(RuntimeError):
        convert_checkpoint(FIXTURE, out, progress=False)
    again = CountingWriter()
    monkeypatch.setattr(driver, "write_safetensors", again)
    convert_checkpoint(FIXTURE, out, dtype="float32", progress=False)
    assert again.calls == 3
    assert all(a.dtype == np.float32 for _, a in iter_converted(out))


def test_interrupt_before_any_shard_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "write_safetensors", CountingWriter(fail_on=1, exc=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.glm_ms-lock"]


def test_same_conversion_again_is_a_no_op(tmp_path, monkeypatch):
    out = convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    writer = CountingWriter()
    monkeypatch.setattr(driver, "write_safetensors", writer)
    assert convert_checkpoint(FIXTURE, out, progress=False) == out
    assert convert_checkpoint(FIXTURE, out, progress=False, overwrite=True) == out
    assert writer.calls == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_existing_output_is_only_replaced_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="neither empty nor a glm_ms conversion"):
        convert_checkpoint(FIXTURE, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    convert_checkpoint(FIXTURE, out, progress=False, overwrite=True)
    assert is_converted(out) and not (out / "notes.txt").exists()
    with pytest.raises(ConversionError, match="already holds another conversion"):
        convert_checkpoint(FIXTURE, out, dtype="float32", progress=False)
    assert read_manifest(out)["dtype"] == "float16"
    convert_checkpoint(FIXTURE, out, dtype="float32", progress=False, overwrite=True)
    assert read_manifest(out)["dtype"] == "float32"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.glm_ms-lock", "out"]


def test_empty_output_folder_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    assert is_converted(convert_checkpoint(FIXTURE, tmp_path / "out", progress=False))


def test_output_must_not_hold_the_source(tmp_path):
    src = copy_fixture(tmp_path / "a" / "src")
    with pytest.raises(ConversionError, match="must not be"):
        convert_checkpoint(src, src, progress=False)
    with pytest.raises(ConversionError, match="must not be"):
        convert_checkpoint(src, tmp_path / "a", overwrite=True, progress=False)
    assert (src / SHARDS[0]).is_file()


# ------------------------------------------------------------------------------------------------
# memory

# Fixed overhead of the converting process (scripts/bench_convert.py reports it as baseline_rss_mb): Python,
# numpy, safetensors, tqdm and glm_ms.convert imported, some 40 MB. `import mindspore` alone costs a process
# several hundred MB, which is why the converter never imports it. 80 MB leaves room for allocator noise.
FIXED_OVERHEAD_MB = 80


def test_peak_rss_is_below_one_shard_plus_fixed_overhead():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_convert.py"), "--shard-mb", "40",
                           "--shards", "3", "--no-mindspore"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["shards"] >= 3
    assert result["peak_rss_mb"] < result["largest_shard_mb"] + FIXED_OVERHEAD_MB, result
    # Stronger: what converting adds to the process is less than one source shard (one tensor, in fact).
    assert result["conversion_rss_mb"] < result["largest_shard_mb"], result


# ------------------------------------------------------------------------------------------------
# hostile sources and outputs


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("spelling", ["symlink", "dotdot", "work_folder", "old_folder"])
def test_output_naming_the_source_another_way_leaves_it_untouched(tmp_path, spelling):
    name = {"work_folder": "m" + WORK_SUFFIX, "old_folder": "m.old-glm_ms"}.get(spelling, "m")
    src = copy_fixture(tmp_path / name)
    before = _digests(src)
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
        out = tmp_path / "link" / "m"
    elif spelling == "dotdot":
        out = tmp_path / "m" / ".." / "m"
    else:
        out = tmp_path / "m"  # its work folder or its moved-aside copy would be the source
    for _ in range(2):  # a second --overwrite must not remove anything either
        with pytest.raises(ConversionError, match="must not be"):
            convert_checkpoint(src, out, overwrite=True, progress=False)
    assert _digests(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({name, "link"} if spelling == "symlink" else {name})


def test_a_config_asking_for_absurdly_many_layers_fails_fast(tmp_path):
    import time

    config = json.loads((FIXTURE / "config.json").read_text())
    src = write_upstream(tmp_path / "src", source_tensors(), fixture_groups(), config=dict(config, num_layers=10 ** 8))
    start = time.monotonic()
    with pytest.raises(ConfigError, match="num_layers"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert time.monotonic() - start < 20  # a generous hang bound: the old converter spent 30 s reaching MemoryError
    assert_no_output(tmp_path / "out")


def test_a_config_asking_for_more_layers_than_the_checkpoint_holds(tmp_path):
    config = json.loads((FIXTURE / "config.json").read_text())
    for groups in (fixture_groups(), None):  # from the index, and from a single file's own header
        src = write_upstream(tmp_path / f"src{groups is None}", source_tensors(), groups,
                             config=dict(config, num_layers=1000))
        with pytest.raises(ConversionError, match=r"config\.json has num_layers = 1000, but the checkpoint holds "
                                                  rf"{config['num_layers']} layer"):
            convert_checkpoint(src, tmp_path / "out", progress=False)
        assert_no_output(tmp_path / "out")


def test_changed_tokenizer_files_are_copied_again(tmp_path, monkeypatch):
    src = copy_fixture(tmp_path / "src")
    out = convert_checkpoint(src, tmp_path / "out", progress=False)
    shard = "mindspore_model-00001-of-00003.safetensors"
    inode = (out / shard).stat().st_ino
    settings = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps(dict(settings, do_lower_case=True)))
    (src / "ice_text.model").write_bytes((FIXTURE / "ice_text.model").read_bytes() + b"\0")  # replaced
    writer = CountingWriter()
    monkeypatch.setattr(driver, "write_safetensors", writer)
    assert convert_checkpoint(src, out, progress=False) == out  # the same conversion: no overwrite needed
    assert writer.calls == 0  # only the side files were copied again
    for name in ("tokenizer_config.json", "ice_text.model"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert (out / shard).stat().st_ino == inode  # the converted weights were kept, not rewritten
    verify_converted(out)
    manifest = read_manifest(out)
    assert manifest["source"]["files"]["ice_text.model"][0] == (src / "ice_text.model").stat().st_size
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert convert_checkpoint(src, out, progress=False) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # now up to date: a no-op
    # A changed shard is another conversion, as before: refused without overwrite.
    os.utime(src / SHARDS[0], ns=(1, 1))
    with pytest.raises(ConversionError, match="already holds another conversion"):
        convert_checkpoint(src, out, progress=False)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "config.json",
                                  "pytorch_model.bin.index.json", SHARDS[1]])
def test_symlinks_leaving_the_source_are_refused(tmp_path, name):
    src = copy_fixture(tmp_path / "src")
    outside = tmp_path / "secret.txt"
    if (src / name).exists():
        (src / name).rename(outside)  # a real file of the checkpoint, just kept elsewhere
    else:
        outside.write_text('{"secret": "do not copy me"}')
    (src / name).symlink_to(os.path.relpath(outside, src))
    with pytest.raises(CheckpointError, match=rf"{name}: is a symlink to .*secret\.txt, outside"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")
    assert not (tmp_path / ("out" + WORK_SUFFIX)).exists()  # refused before anything was written


def test_a_storage_claiming_a_tebibyte_is_a_clean_error(tmp_path):
    from tests.torchfile import PickleBuilder, write_torch_zip

    src = write_upstream(tmp_path / "src", {"w": np.zeros(1, np.float16)})
    numel = 1 << 39  # float16: 1 TiB
    b = PickleBuilder(2).ordered_dict().mark().str_("transformer.word_embeddings.weight")
    b.rebuild_tensor_v2("HalfStorage", "0", numel, 0, (1 << 20, 1 << 19), (1 << 19, 1)).setitems()
    write_torch_zip(src / "pytorch_model.bin", b.stop(), {"0": b"\0" * 64}, archive_name="pytorch_model",
                    claimed_sizes={"0": 2 * numel})
    with pytest.raises(CheckpointError, match="claims 1099511627776 bytes, more than the file"):
        convert_checkpoint(src, tmp_path / "out", progress=False)
    assert_no_output(tmp_path / "out")


def test_loading_skips_the_tied_copy_recorded_equal(tmp_path, monkeypatch):
    from glm_ms.api import ChatGLMForConditionalGeneration
    from glm_ms.convert.readers import safetensors as reader

    tensors = source_tensors()
    tensors["lm_head.weight"] = tensors["transformer.word_embeddings.weight"].copy()
    out = convert_checkpoint(write_upstream(tmp_path / "src", tensors, fixture_groups()), tmp_path / "out",
                             progress=False)
    (tied, rec), = read_manifest(out)["tied"].items()
    assert rec["equal"] is True
    assert [n for n, _ in iter_converted(out)].count(tied) == 1  # every tensor unless asked
    assert tied not in [n for n, _ in iter_converted(out, skip_equal_tied=True)]
    read, original = [], reader.read_tensor
    monkeypatch.setattr(reader, "read_tensor",
                        lambda path, header, name: read.append(name) or original(path, header, name))
    model = ChatGLMForConditionalGeneration.from_pretrained(out, dtype="float32")
    assert tied not in read and rec["to"] in read and len(read) == len(set(read))
    params = model.weight_parameters()
    assert np.array_equal(params[rec["to"]].asnumpy(), tensors[rec["to"]].astype(np.float32))
    c = model.config
    ids = np.array([[1, 2, c.gmask_token_id, c.bos_token_id]], np.int32)
    whole = ChatGLMForConditionalGeneration.from_pretrained(tmp_path / "src", dtype="float32")
    np.testing.assert_array_equal(model(ids).logits.asnumpy(), whole(ids).logits.asnumpy())
