"""`glm-ms-convert --adapter`: the converted folder loads fine-tuned without `adapter=` and reproduces the goldens;
locally and through the fake mirror; merged first, quantized after; bad combinations are one-line errors."""
import numpy as np
import pytest

from glm_ms import AutoModel
from glm_ms.convert.cli import main
from glm_ms.convert.converted import read_manifest
from glm_ms.hub import http
from tests.fake_modelscope import serve
from tests.support import ADAPTERS, FIXTURES, adapted, rel_err


def _convert(case, out, *extra):
    return main(["--src", str(case.base.dir), "--out", str(out), "--adapter", str(case.dir), "--no-progress", "-q",
                 *extra])


def _check_golden(lm, case):
    golden = case.golden
    i = 0
    while f"fwd{i}_logits" in golden:
        assert rel_err(lm(golden[f"fwd{i}_input_ids"]).logits.asnumpy(), golden[f"fwd{i}_logits"]) <= 1e-4
        i += 1
    ids = golden["fwd0_input_ids"]
    np.testing.assert_array_equal(lm.generate(ids, max_length=ids.shape[1] + 24, do_sample=False),
                                  golden["greedy0_output_ids"])


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_converted_folder_with_the_adapter_loads_fine_tuned(tmp_path, name):
    case = adapted(name)
    out = tmp_path / "out"
    assert _convert(case, out, "--dtype", "float32") == 0
    lm = AutoModel.from_pretrained(out, dtype="float32")
    assert lm.prefix_length == case.golden_json.get("pre_seq_len", 0)
    _check_golden(lm, case)
    stamp = read_manifest(out)["created"]
    assert _convert(case, out, "--dtype", "float32") == 0 and read_manifest(out)["created"] == stamp  # no-op re-run


def test_another_adapter_is_another_conversion(tmp_path, capsys):
    out = tmp_path / "out"
    assert _convert(adapted("tiny-chatglm-6b-lora"), out) == 0
    capsys.readouterr()
    assert _convert(adapted("tiny-chatglm-6b-ptuning"), out) == 1
    assert "already holds another conversion" in capsys.readouterr().err
    assert _convert(adapted("tiny-chatglm-6b-ptuning"), out, "--overwrite") == 0
    assert AutoModel.from_pretrained(out).prefix_length == adapted("tiny-chatglm-6b-ptuning").golden_json["pre_seq_len"]


def test_lora_is_merged_before_quantizing(tmp_path):
    case = adapted("tiny-chatglm-6b-lora")
    assert _convert(case, tmp_path / "int8", "--quantize", "8") == 0
    converted = AutoModel.from_pretrained(tmp_path / "int8", dtype="float32")
    loaded = AutoModel.from_pretrained(case.base.dir, dtype="float32", adapter=case.dir).quantize(8)
    ids = case.golden["fwd0_input_ids"]
    np.testing.assert_allclose(converted(ids).logits.asnumpy(), loaded(ids).logits.asnumpy(), rtol=1e-5, atol=1e-5)


def test_lora_on_a_quantized_source_is_a_one_line_error(tmp_path, capsys):
    case = adapted("tiny-chatglm-6b-lora")
    code = main(["--src", str(FIXTURES / "tiny-chatglm-6b-int8"), "--out", str(tmp_path / "out"), "--adapter",
                 str(case.dir), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "is quantized (int8); a LoRA adapter cannot be merged" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.server
@pytest.mark.parametrize("name", ["tiny-chatglm3-6b-lora", "tiny-chatglm-6b-ptuning-proj"])
def test_convert_a_model_id_with_an_adapter_id_through_the_mirror(tmp_path, monkeypatch, name):
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.setattr(http, "sleep", lambda s: None)
    case = adapted(name)
    with serve({"ZhipuAI/base": case.base.dir, f"someone/{name}": case.dir}) as hub:
        code = main(["--model-id", "ZhipuAI/base", "--mirror", "modelscope", "--endpoint", hub.url, "--cache-dir",
                     str(tmp_path / "cache"), "--adapter", f"someone/{name}", "--out", str(tmp_path / "out"),
                     "--dtype", "float32", "--no-progress", "-q"])
    assert code == 0
    _check_golden(AutoModel.from_pretrained(tmp_path / "out", dtype="float32"), case)
