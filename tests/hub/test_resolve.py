"""from_pretrained / glm-ms-convert with a model id through the fake ModelScope mirror, and local folders."""
from __future__ import annotations

import builtins
import io
import json
import shutil
import numpy as np
import pytest

from glm_ms.convert import driver
from glm_ms.convert.cli import main as cli_main
from glm_ms.convert.converted import MANIFEST, is_converted, iter_converted, read_manifest
from glm_ms.convert.driver import convert_checkpoint
from glm_ms.errors import ConfigError
from glm_ms.hub import http
from glm_ms.hub import modelscope as msc
from glm_ms.hub.resolve import converted_cache_path, resolve_model, resolve_tokenizer_folder
from tests.convert.upstream import FIXTURE, SHARDS, CountingWriter, golden_check, source_tensors
from tests.fake_modelscope import serve
from tests.support import FAMILY_FOLDERS, SECOND_GENERATION, rel_err, tiny

MODEL = "ZhipuAI/ChatGLM-6B"
MODEL_IDS = {"chatglm2": "ZhipuAI/chatglm2-6b", "chatglm3": "ZhipuAI/chatglm3-6b"}
TOKENIZER_FILES = {"ice_text.model", "tokenizer_config.json", "config.json"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.delenv("GLM_MS_CACHE", raising=False)
    monkeypatch.setattr(http, "sleep", lambda s: None)  # retries without waiting


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


@pytest.mark.server
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
    golden = tiny("chatglm-6b").golden
    np.testing.assert_allclose(again(golden["fwd1_input_ids"]).logits.asnumpy(),
                               model(golden["fwd1_input_ids"]).logits.asnumpy(), rtol=0, atol=0)
    for case in tiny("chatglm-6b").golden_json["tokenizer_cases"]:
        assert tokenizer.encode(case["text"]) == case["input_ids"], case["text"]


@pytest.mark.server
def test_a_cached_model_id_reads_its_manifest_once(hub, tmp_path, api, monkeypatch):
    Model, _ = api
    cache = tmp_path / "cache"
    Model.from_pretrained(MODEL, mirror="modelscope", cache_dir=cache, endpoint=hub.url, dtype="float32")
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith(MANIFEST):
            opened.append(file)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # pathlib opens through io.open
    hub.clear_requests()
    model = Model.from_pretrained(MODEL, mirror="modelscope", cache_dir=cache, endpoint=hub.url, dtype="float32")
    assert len(opened) == 1, opened
    assert hub.count() == 0
    golden_check(model, greedy=())


@pytest.mark.server
def test_model_id_survives_a_cut_download(hub, tmp_path, api):
    Model, _ = api
    hub.faults.add(SHARDS[0], "cut")
    hub.faults.add("config.json", "status", code=503, retry_after=1)
    model = Model.from_pretrained(MODEL, mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url, dtype="float32")
    assert hub.count(kind="download", file="config.json") == 2
    golden = tiny("chatglm-6b").golden
    assert rel_err(model(golden["fwd0_input_ids"]).logits.asnumpy(), golden["fwd0_logits"]) <= 1e-4


@pytest.mark.server
def test_tokenizer_alone_fetches_only_tokenizer_files(hub, tmp_path, api):
    _, Tokenizer = api
    tokenizer = Tokenizer.from_pretrained(MODEL, mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url)
    assert downloaded(hub) == TOKENIZER_FILES
    assert tokenizer.encode("你好")[-2:] == [5, 8]
    hub.clear_requests()
    Tokenizer.from_pretrained(MODEL, mirror="modelscope", cache_dir=tmp_path, endpoint=hub.url)
    assert hub.count() == 0


@pytest.mark.server
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


@pytest.mark.server
def test_cache_dir_from_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("GLM_MS_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
    weights = resolve_model(MODEL, mirror="modelscope", progress=False)
    assert weights.path == tmp_path / "envcache" / "converted" / "modelscope" / "ZhipuAI" / "ChatGLM-6B" / "master"
    assert weights.kind == "converted" and is_converted(weights.path)


@pytest.mark.server
def test_cli_with_a_model_id(hub, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model-id", MODEL, "--mirror", "modelscope", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--endpoint", hub.url, "--revision", "master", "--no-progress"]
    assert cli_main(argv) == 0
    manifest = read_manifest(out)
    assert manifest["source"]["model_id"] == MODEL and manifest["dtype"] == "float16"
    src = source_tensors()
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


@pytest.mark.server
def test_model_id_of_an_unknown_family_is_a_config_error(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"model_type": "somethingelse", "hidden_size": 8}))
    (repo / "pytorch_model.bin").write_bytes(b"not read")
    with serve({"other/model": repo}) as server:
        with pytest.raises(ConfigError, match="config.json: describes no known ChatGLM generation"):
            resolve_model("other/model", mirror="modelscope", cache_dir=tmp_path / "c", endpoint=server.url,
                          progress=False)
    assert not (tmp_path / "c" / "converted").exists()


@pytest.mark.server
@pytest.mark.parametrize("family", SECOND_GENERATION)
def test_second_generation_model_id_converts_loads_and_reproduces_golden(tmp_path, family):
    from glm_ms import AutoModelForSeq2SeqLM, AutoTokenizer, ChatGLM2Tokenizer, ChatGLM3Tokenizer
    model_id, cache = MODEL_IDS[family], tmp_path / "cache"
    with serve({model_id: FAMILY_FOLDERS[family]}) as hub:
        lm = AutoModelForSeq2SeqLM.from_pretrained(model_id, mirror="modelscope", cache_dir=cache,
                                                   endpoint=hub.url, dtype="float32")
        tok = AutoTokenizer.from_pretrained(model_id, mirror="modelscope", cache_dir=cache, endpoint=hub.url)
    out = converted_cache_path(model_id, "master", cache)
    assert read_manifest(out)["family"] == family
    assert type(lm).family == lm.config.family == family
    assert isinstance(tok, {"chatglm2": ChatGLM2Tokenizer, "chatglm3": ChatGLM3Tokenizer}[family])
    g = tiny(family).golden
    for i in range(4):
        assert rel_err(lm(g[f"fwd{i}_input_ids"]).logits.asnumpy(), g[f"fwd{i}_logits"]) <= 1e-4
    ids = g["fwd2_input_ids"]
    np.testing.assert_array_equal(lm.generate(ids, max_length=ids.shape[1] + 24, do_sample=False),
                                  g["greedy2_output_ids"])
    case = tiny(family).golden_json["tokenizer_cases"][3]
    assert tok.encode(case["text"]) == case["input_ids"]


# ------------------------------------------------------------------------------------------------
# local folders


def test_upstream_folder_is_read_in_place(tmp_path, monkeypatch, api):
    Model, Tokenizer = api
    src = shutil.copytree(FIXTURE, tmp_path / "chatglm")
    cache = tmp_path / "cache"
    writer = CountingWriter()
    monkeypatch.setattr(driver, "write_safetensors", writer)
    weights = resolve_model(src, cache_dir=cache)
    assert (weights.path, weights.kind) == (src, "upstream")
    model = Model.from_pretrained(src, cache_dir=cache, dtype="float32")
    assert writer.calls == 0 and not cache.exists()  # no converted copy, nothing written anywhere
    golden = tiny("chatglm-6b").golden
    assert rel_err(model(golden["fwd2_input_ids"]).logits.asnumpy(), golden["fwd2_logits"]) <= 1e-4
    assert Tokenizer.from_pretrained(src).name_or_path == str(src)


def test_converted_folder_loads_as_is(tmp_path, api):
    _, Tokenizer = api
    out = convert_checkpoint(FIXTURE, tmp_path / "conv", progress=False)
    weights = resolve_model(out, cache_dir=tmp_path / "cache")
    assert (weights.path, weights.kind) == (out, "converted")
    assert not (tmp_path / "cache").exists()
    tok = Tokenizer.from_pretrained(out)
    assert tok.encode("你好") == Tokenizer.from_pretrained(FIXTURE).encode("你好")


def test_converted_second_generation_float16_folder_loads_with_the_right_class(tmp_path):
    from glm_ms import ChatGLM3ForConditionalGeneration, ChatGLMForConditionalGeneration
    out = tmp_path / "converted"
    convert_checkpoint(FAMILY_FOLDERS["chatglm3"], out, dtype="float16", progress=False)
    assert read_manifest(out)["family"] == "chatglm3"
    lm = ChatGLMForConditionalGeneration.from_pretrained(out, dtype="float32")
    assert isinstance(lm, ChatGLM3ForConditionalGeneration)
    g = tiny("chatglm3").golden
    # The fixture's weights are float16 already: converting to float16 changes nothing.
    assert rel_err(lm(g["fwd1_input_ids"]).logits.asnumpy(), g["fwd1_logits"]) <= 1e-4


def test_tokenizer_folder_resolution(tmp_path):
    assert resolve_tokenizer_folder(FIXTURE) == FIXTURE
    with pytest.raises(FileNotFoundError, match="mirror='modelscope'"):
        resolve_tokenizer_folder("ZhipuAI/ChatGLM-6B", cache_dir=tmp_path)
