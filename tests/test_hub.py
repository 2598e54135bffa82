"""from_pretrained / glm-ms-convert with a model id (fake ModelScope mirror), upstream folders, MindNLP folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glm_ms.convert import convert as cv
from glm_ms.convert import modelscope as msc
from glm_ms.convert.checkpoint import load_state_dict
from glm_ms.convert.cli import main as cli_main
from glm_ms.convert.convert import is_converted, iter_converted, read_manifest
from glm_ms.convert.errors import CheckpointError
from glm_ms.convert.hub import (converted_cache_path, folder_kind, resolve_model_folder,
                                resolve_tokenizer_folder)
from tests.fake_modelscope import serve
from tests.test_convert import FIXTURE, OTHER_FILES, SHARDS, CountingWriter, fixture_groups, golden_check

MODEL = "ZhipuAI/ChatGLM-6B"
TOKENIZER_FILES = {"ice_text.model", "tokenizer_config.json", "config.json"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.delenv("GLM_MS_CACHE", raising=False)
    monkeypatch.setattr(msc, "_sleep", lambda s: None)  # retries without waiting


@pytest.fixture
def hub():
    with serve({MODEL: FIXTURE}) as server:
        yield server


@pytest.fixture(scope="module")
def api():
    from glm_ms.api import ChatGLMForConditionalGeneration
    from glm_ms.tokenizers.chatglm import ChatGLMTokenizer
    return ChatGLMForConditionalGeneration, ChatGLMTokenizer


def downloaded(hub):
    return {r.file for r in hub.requests if r.kind == "download"}


# ------------------------------------------------------------------------------------------------
# model id through the mirror


def test_model_id_downloads_converts_and_then_makes_no_request(hub, tmp_path, api):
    Model, Tokenizer = api
    cache = tmp_path / "cache"
    model = Model.from_pretrained(MODEL, mirror="modelscope", cache_dir=cache, endpoint=hub.url, dtype="float32")
    assert hub.count(kind="list") == 1 and set(SHARDS) <= downloaded(hub)
    golden_check(model, greedy=(0,))

    out = converted_cache_path(MODEL, "master", cache)
    assert out == cache / "converted" / "modelscope" / "ZhipuAI" / "ChatGLM-6B" / "master"
    manifest = read_manifest(out)
    assert manifest["source"]["model_id"] == MODEL and manifest["source"]["revision"] == "master"
    assert manifest["source"]["endpoint"] == hub.url and manifest["dtype"] == "keep"

    hub.clear_requests()
    again = Model.from_pretrained(MODEL, mirror="modelscope", cache_dir=cache, endpoint=hub.url, dtype="float32")
    tokenizer = Tokenizer.from_pretrained(MODEL, mirror="modelscope", cache_dir=cache, endpoint=hub.url)
    assert hub.count() == 0, [(r.kind, r.file) for r in hub.requests]
    golden = np.load(FIXTURE / "golden.npz")
    np.testing.assert_allclose(again(golden["fwd1_input_ids"]).logits.asnumpy(),
                               model(golden["fwd1_input_ids"]).logits.asnumpy(), rtol=0, atol=0)
    cases = json.loads((FIXTURE / "golden.json").read_text())["tokenizer_cases"]
    for case in cases:
        assert tokenizer.encode(case["text"]) == case["input_ids"], case["text"]


def test_model_id_survives_a_cut_download(hub, tmp_path, api):
    Model, _ = api
    hub.faults.add(SHARDS[0], "cut")
    hub.faults.add("config.json", "status", code=503, retry_after=1)
    model = Model.from_pretrained(MODEL, mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url, dtype="float32")
    assert hub.count(kind="download", file="config.json") == 2
    golden = np.load(FIXTURE / "golden.npz")
    ref = golden["fwd0_logits"]
    assert np.abs(model(golden["fwd0_input_ids"]).logits.asnumpy() - ref).max() <= 1e-4 * np.abs(ref).max()


def test_tokenizer_alone_fetches_only_tokenizer_files(hub, tmp_path, api):
    _, Tokenizer = api
    tokenizer = Tokenizer.from_pretrained(MODEL, mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url)
    assert downloaded(hub) == TOKENIZER_FILES
    assert tokenizer.encode("你好")[-2:] == [5, 8]
    hub.clear_requests()
    Tokenizer.from_pretrained(MODEL, mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url)
    assert hub.count() == 0


def test_model_id_errors(hub, tmp_path, api):
    Model, _ = api
    with pytest.raises(msc.ModelNotFoundError):
        Model.from_pretrained("nobody/nothing", mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url)
    with pytest.raises(msc.RevisionNotFoundError):
        Model.from_pretrained(MODEL, mirror="modelscope", revision="v9", cache_dir=tmp_path, endpoint=hub.url)
    assert not (tmp_path / "converted").exists() or not any((tmp_path / "converted").rglob("*.safetensors"))
    with pytest.raises(FileNotFoundError, match="mirror='modelscope'"):
        Model.from_pretrained(MODEL, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unsupported mirror"):
        Model.from_pretrained(MODEL, mirror="huggingface", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="unexpected arguments: trust_remote_code"):
        Model.from_pretrained(MODEL, mirror="modelscope", trust_remote_code=True)
    assert hub.count(kind="download") == 0


def test_cache_dir_from_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("GLM_MS_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
    folder = resolve_model_folder(MODEL, mirror="modelscope", progress=False)
    assert folder == tmp_path / "envcache" / "converted" / "modelscope" / "ZhipuAI" / "ChatGLM-6B" / "master"
    assert is_converted(folder)


def test_cli_with_a_model_id(hub, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model-id", MODEL, "--mirror", "modelscope", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--endpoint", hub.url, "--revision", "master", "--no-progress"]
    assert cli_main(argv) == 0
    manifest = read_manifest(out)
    assert manifest["source"]["model_id"] == MODEL and manifest["dtype"] == "float16"
    src = load_state_dict(FIXTURE)
    for name, array in iter_converted(out):
        np.testing.assert_array_equal(array, src[name])
    hub.clear_requests()
    assert cli_main(argv) == 0  # snapshot cached, conversion already there
    assert hub.count() == 0
    capsys.readouterr()
    assert cli_main(["--model-id", "nobody/nothing", "--mirror", "modelscope", "--out", str(tmp_path / "o2"),
                     "--cache-dir", str(tmp_path / "c"), "--endpoint", hub.url, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glm-ms-convert: error: ")
    assert not (tmp_path / "o2").exists()


# ------------------------------------------------------------------------------------------------
# local folders


def copy_repo(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest)
    return dest


def test_upstream_folder_is_read_in_place(tmp_path, monkeypatch, api):
    Model, Tokenizer = api
    src = copy_repo(tmp_path / "chatglm")
    cache = tmp_path / "cache"
    writer = CountingWriter()
    monkeypatch.setattr(cv, "write_safetensors", writer)
    assert resolve_model_folder(src, cache_dir=cache) == src
    model = Model.from_pretrained(src, cache_dir=cache, dtype="float32")
    assert writer.calls == 0 and not cache.exists()  # no converted copy, nothing written anywhere
    golden = np.load(FIXTURE / "golden.npz")
    ref = golden["fwd2_logits"]
    assert np.abs(model(golden["fwd2_input_ids"]).logits.asnumpy() - ref).max() <= 1e-4 * np.abs(ref).max()
    assert Tokenizer.from_pretrained(src).name_or_path == str(src)


def test_upstream_reader_is_lazy_and_equals_the_whole_shard_reader():
    from glm_ms.convert.convert import iter_checkpoint

    got = list(iter_checkpoint(FIXTURE))
    ref = load_state_dict(FIXTURE)
    assert [n for n, _ in got] == list(ref)
    for name, array in got:
        assert array.dtype == ref[name].dtype
        np.testing.assert_array_equal(array, ref[name])


def test_upstream_folder_with_an_absent_shard_fails_before_reading(tmp_path):
    from glm_ms.convert.convert import iter_checkpoint

    src = copy_repo(tmp_path / "chatglm")
    (src / SHARDS[2]).unlink()
    with pytest.raises(CheckpointError, match=r"shard pytorch_model-00003-of-00003\.bin is listed in the index"):
        iter_checkpoint(src)


def test_converted_folder_loads_as_is(tmp_path, api):
    Model, Tokenizer = api
    out = cv.convert_checkpoint(FIXTURE, tmp_path / "conv", progress=False)
    assert resolve_model_folder(out, cache_dir=tmp_path / "cache") == out
    assert not (tmp_path / "cache").exists()
    assert folder_kind(out) == "converted"
    tok = Tokenizer.from_pretrained(out)
    assert tok.encode("你好") == Tokenizer.from_pretrained(FIXTURE).encode("你好")


def test_model_id_of_a_family_without_a_name_table_is_not_converted(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"model_type": "somethingelse", "hidden_size": 8}))
    (repo / "pytorch_model.bin").write_bytes(b"not read")
    with serve({"other/model": repo}) as server:
        folder = resolve_model_folder("other/model", mirror="modelscope", cache_dir=tmp_path / "c",
                                      endpoint=server.url, progress=False)
    assert folder == msc.snapshot_path("other/model", "master", tmp_path / "c")
    assert not (tmp_path / "c" / "converted").exists()


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
    tensors = load_state_dict(FIXTURE)
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
    assert resolve_model_folder(folder, cache_dir=tmp_path / "cache") == folder  # loaded in place
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


def test_tokenizer_folder_resolution(tmp_path):
    assert resolve_tokenizer_folder(FIXTURE) == FIXTURE
    with pytest.raises(FileNotFoundError, match="mirror='modelscope'"):
        resolve_tokenizer_folder("ZhipuAI/ChatGLM-6B", cache_dir=tmp_path)
