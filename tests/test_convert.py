"""Converter: MindSpore safetensors output, golden parity, clear errors, atomic output, resume, CLI, memory."""
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

from glm_ms.convert import convert as cv
from glm_ms.convert.checkpoint import load_state_dict
from glm_ms.convert.cli import main as cli_main
from glm_ms.convert.convert import (INDEX, MANIFEST, WORK_SUFFIX, ConversionError, convert_checkpoint, is_converted,
                                    iter_converted, read_manifest, verify_converted)
from glm_ms.convert.errors import CheckpointError
from glm_ms.convert.torch_reader import load_torch_file
from tests.torchfile import BFloat16, StridedView, save_torch_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-chatglm-6b"
SHARDS = [f"pytorch_model-0000{k}-of-00003.bin" for k in (1, 2, 3)]
OTHER_FILES = ["config.json", "tokenizer_config.json", "ice_text.model", "generation_config.json"]


# ------------------------------------------------------------------------------------------------
# helpers


def golden_check(model, greedy=(0, 1, 2, 3)):
    """Forward logits of every golden prompt within 1e-4 x max|logit|; greedy ids exactly equal."""
    golden = np.load(FIXTURE / "golden.npz")
    for i in range(4):
        ref = golden[f"fwd{i}_logits"]
        out = model(golden[f"fwd{i}_input_ids"]).logits.asnumpy()
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max(), f"fwd{i}"
    for i in greedy:
        ids = golden[f"fwd{i}_input_ids"]
        out = np.asarray(model.generate(ids, max_length=ids.shape[1] + 24, do_sample=False))
        np.testing.assert_array_equal(out, golden[f"greedy{i}_output_ids"], err_msg=f"greedy{i}")


def source_tensors():
    return load_state_dict(FIXTURE)


def copy_fixture(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in SHARDS + OTHER_FILES + ["pytorch_model.bin.index.json"]:
        shutil.copy2(FIXTURE / name, dest / name)
    return dest


def write_upstream(dest: Path, tensors: dict, groups=None, config=None) -> Path:
    """An upstream torch folder holding `tensors`, sharded by `groups` (lists of names; None: one file)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in OTHER_FILES:
        shutil.copy2(FIXTURE / name, dest / name)
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config))
    if groups is None:
        save_torch_file(dest / "pytorch_model.bin", tensors, archive_name="pytorch_model")
        return dest
    weight_map = {}
    for k, group in enumerate(groups, 1):
        shard = f"pytorch_model-{k:05d}-of-{len(groups):05d}.bin"
        save_torch_file(dest / shard, {n: tensors[n] for n in group}, archive_name=shard[:-4])
        weight_map.update({n: shard for n in group})
    (dest / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


def fixture_groups():
    index = json.loads((FIXTURE / "pytorch_model.bin.index.json").read_text())["weight_map"]
    return [[n for n, s in index.items() if s == shard] for shard in SHARDS]


def assert_no_output(out: Path):
    assert not out.exists(), "a failed conversion must not leave the output folder"
    work = out.with_name(out.name + WORK_SUFFIX)
    assert not is_converted(work)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "tiny-ms"
    return convert_checkpoint(FIXTURE, out, progress=False)


class CountingWriter:
    """Wraps write_safetensors: counts calls and can fail on the n-th one."""

    def __init__(self, fail_on=None, exc=RuntimeError("simulated crash while writing")):
        self.calls, self.fail_on, self.exc, self.real = 0, fail_on, exc, cv.write_safetensors

    def __call__(self, path, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            Path(path).write_bytes(b"partial")  # as a crash half-way through the file would leave it
            raise self.exc
        return self.real(path, *args, **kwargs)


# ------------------------------------------------------------------------------------------------
# the converted folder


def test_converted_layout_and_manifest(converted):
    names = sorted(os.listdir(converted))
    assert names == sorted(["config.json", "generation_config.json", "ice_text.model", "tokenizer_config.json",
                            INDEX, MANIFEST] + [f"mindspore_model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)])
    assert not converted.with_name(converted.name + WORK_SUFFIX).exists()
    manifest = read_manifest(converted)
    assert manifest["dtype"] == "float16" and manifest["family"] == "chatglm-6b"
    assert manifest["glm_ms_version"] == __import__("glm_ms").__version__
    assert manifest["source"]["folder"] == str(FIXTURE) and manifest["source"]["format"] == "torch"
    assert set(manifest["source"]["files"]) >= set(SHARDS)
    for name, rec in manifest["files"].items():
        data = (converted / name).read_bytes()
        assert len(data) == rec["size"] and hashlib.sha256(data).hexdigest() == rec["sha256"], name
    assert set(manifest["files"]) == set(names) - {MANIFEST}
    for name in ("config.json", "ice_text.model", "tokenizer_config.json"):
        assert (converted / name).read_bytes() == (FIXTURE / name).read_bytes()
    assert manifest["dropped"] == [f"transformer.layers.{i}.attention.rotary_emb.inv_freq" for i in (0, 1)]
    assert manifest["tied"] == {"lm_head.weight": {"to": "transformer.word_embeddings.weight", "equal": False}}
    verify_converted(converted)


def test_weights_equal_the_source_in_source_order(converted):
    src = source_tensors()
    got = list(iter_converted(converted))
    # Source order (shard by shard, as the files list them): a loader fills tied parameters like upstream.
    order = [n for shard in SHARDS for n in load_torch_file(FIXTURE / shard) if "inv_freq" not in n]
    assert [n for n, _ in got] == order
    for name, array in got:
        assert array.dtype == np.float16 and np.array_equal(array, src[name]), name
    weight_map = json.loads((converted / INDEX).read_text())["weight_map"]
    assert list(weight_map) == order
    assert weight_map["lm_head.weight"] == "mindspore_model-00003-of-00003.safetensors"


def test_mindspore_loads_every_shard_with_crc_check(converted):
    import mindspore as ms

    src = source_tensors()
    seen = set()
    for shard in sorted(converted.glob("mindspore_model-*.safetensors")):
        params = ms.load_checkpoint(str(shard), format="safetensors", crc_check=True)
        for name, param in params.items():
            assert param.dtype == ms.float16
            np.testing.assert_array_equal(param.asnumpy(), src[name])
            seen.add(name)
    assert len(seen) == 28
    # The crc MindSpore checks is real: one flipped byte is caught.
    bad = converted.parent / "bad.safetensors"
    data = bytearray((converted / "mindspore_model-00002-of-00003.safetensors").read_bytes())
    data[-3] ^= 0x10
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="crc"):
        ms.load_checkpoint(str(bad), format="safetensors", crc_check=True)


def test_converted_fixture_reproduces_golden(converted):
    from glm_ms.api import ChatGLMForConditionalGeneration

    model = ChatGLMForConditionalGeneration.from_pretrained(converted, dtype="float32")
    golden_check(model)


def test_tied_copies_that_differ_are_kept_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="glm_ms.convert.convert"):
        convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    assert any("'lm_head.weight' differs from 'transformer.word_embeddings.weight'" in r.getMessage()
               for r in caplog.records)
    names = [n for n, _ in iter_converted(tmp_path / "out")]
    assert "lm_head.weight" in names and "transformer.word_embeddings.weight" in names


def test_equal_tied_copies_are_recorded_equal(tmp_path, caplog):
    tensors = source_tensors()
    tensors["lm_head.weight"] = tensors["transformer.word_embeddings.weight"].copy()
    src = write_upstream(tmp_path / "src", tensors, fixture_groups())
    with caplog.at_level(logging.WARNING, logger="glm_ms.convert.convert"):
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


def test_lazy_reader_matches_the_torch_reader(tmp_path):
    for shard in SHARDS:
        ckpt = cv.find_checkpoint(FIXTURE)
        ref = load_torch_file(FIXTURE / shard)
        with cv._open_shard(ckpt, shard) as lazy:
            assert [t.name for t in lazy] == list(ref)
            for t in lazy:
                array = t.load()
                assert array.dtype == ref[t.name].dtype and array.shape == t.shape
                np.testing.assert_array_equal(array, ref[t.name])
    # Views, shared storages, bfloat16 and big-endian-free odd layouts read exactly as the full reader does.
    base = np.arange(60, dtype=np.float16)
    odd = {
        "plain": np.arange(12, dtype=np.float32).reshape(3, 4),
        "view_a": StridedView(base, 0, (3, 4), (4, 1)),
        "view_b": StridedView(base, 12, (4, 3), (1, 4)),  # transposed view into the same storage
        "bf16": BFloat16(np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)),
        "ints": np.arange(5, dtype=np.int64),
    }
    path = tmp_path / "pytorch_model.bin"
    save_torch_file(path, odd, archive_name="pytorch_model")
    ref = load_torch_file(path)
    with cv._open_shard(cv.find_checkpoint(tmp_path), "pytorch_model.bin") as lazy:
        for t in lazy:
            array = t.load()
            assert array.dtype == ref[t.name].dtype == t.dtype
            np.testing.assert_array_equal(array, ref[t.name])


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
    monkeypatch.setattr(cv, "write_safetensors", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_checkpoint(FIXTURE, out, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == [".convert_state.json",
                                                      "mindspore_model-00001-of-00003.safetensors"]
    first = (work / "mindspore_model-00001-of-00003.safetensors").stat()

    again = CountingWriter()
    monkeypatch.setattr(cv, "write_safetensors", again)
    convert_checkpoint(FIXTURE, out, progress=False)
    assert again.calls == 2  # shards 2 and 3 only: shard 1 was verified and kept
    assert (out / "mindspore_model-00001-of-00003.safetensors").stat().st_ino == first.st_ino
    assert not work.exists()
    # Byte for byte what an uninterrupted run writes.
    assert read_manifest(out)["files"] == read_manifest(converted)["files"]


def test_resume_redoes_a_damaged_finished_shard(tmp_path, monkeypatch):
    out = tmp_path / "out"
    work = tmp_path / ("out" + WORK_SUFFIX)
    monkeypatch.setattr(cv, "write_safetensors", CountingWriter(fail_on=3))
    with pytest.raises(RuntimeError):
        convert_checkpoint(FIXTURE, out, progress=False)
    shard1 = work / "mindspore_model-00001-of-00003.safetensors"
    data = bytearray(shard1.read_bytes())
    data[-1] ^= 1
    shard1.write_bytes(bytes(data))
    again = CountingWriter()
    monkeypatch.setattr(cv, "write_safetensors", again)
    convert_checkpoint(FIXTURE, out, progress=False)
    assert again.calls == 2  # shard 1 (damaged) and shard 3 (never finished); shard 2 kept
    verify_converted(out)


def test_rerun_with_another_dtype_starts_over(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(cv, "write_safetensors", CountingWriter(fail_on=2))
    with pytest.raises(RuntimeError):
        convert_checkpoint(FIXTURE, out, progress=False)
    again = CountingWriter()
    monkeypatch.setattr(cv, "write_safetensors", again)
    convert_checkpoint(FIXTURE, out, dtype="float32", progress=False)
    assert again.calls == 3
    assert all(a.dtype == np.float32 for _, a in iter_converted(out))


def test_interrupt_before_any_shard_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cv, "write_safetensors", CountingWriter(fail_on=1, exc=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.glm_ms-lock"]


def test_same_conversion_again_is_a_no_op(tmp_path, monkeypatch):
    out = convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    writer = CountingWriter()
    monkeypatch.setattr(cv, "write_safetensors", writer)
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


def test_reading_a_truncated_converted_folder_fails_clearly(tmp_path):
    out = convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    shard = out / "mindspore_model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="truncated or replaced"):
        list(iter_converted(out))
    with pytest.raises(ConversionError, match="differ from the manifest"):
        verify_converted(out)


# ------------------------------------------------------------------------------------------------
# command line


def test_cli_converts(tmp_path, capsys):
    assert cli_main(["--src", str(FIXTURE), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert is_converted(tmp_path / "out")
    assert "3 shard(s), float16" in capsys.readouterr().out
    assert cli_main(["--src", str(FIXTURE), "--out", str(tmp_path / "o32"), "--dtype", "float32", "-q"]) == 0
    assert read_manifest(tmp_path / "o32")["dtype"] == "float32"


def test_cli_expected_errors_are_one_line(tmp_path, capsys):
    src = copy_fixture(tmp_path / "src")
    (src / SHARDS[2]).unlink()
    assert cli_main(["--src", str(src), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glm-ms-convert: error: ") and "00003-of-00003.bin" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_usage_errors(tmp_path, capsys):
    for argv in (["--out", "x"], ["--model-id", "ZhipuAI/ChatGLM-6B", "--out", "x"],
                 ["--src", "a", "--model-id", "b/c", "--out", "x"], ["--src", "a", "--out", "x", "--dtype", "int8"],
                 ["--src", "a", "--out", "x", "--revision", "v1"]):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--model-id needs --mirror modelscope" in err and "--revision apply to --model-id, not --src" in err


def test_script_help_and_errors(tmp_path):
    script = ROOT / "scripts" / "convert_weights.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0
    for flag in ("--src", "--model-id", "--mirror", "--revision", "--cache-dir", "--endpoint", "--dtype", "--out"):
        assert flag in proc.stdout
    proc = subprocess.run([sys.executable, str(script), "--src", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("glm-ms-convert: error: ")


# ------------------------------------------------------------------------------------------------
# memory

# Fixed overhead of the converting process, measured (scripts/bench_convert.py, baseline_rss_mb): Python,
# numpy, safetensors, tqdm and glm_ms.convert imported = 42 MB on this machine. `import mindspore` alone
# costs a process ~400 MB, which is why the converter never imports it. 80 MB leaves room for allocator noise.
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
