"""glm-ms-convert and weight-only quantized checkpoints: int8 stays int8, `--quantize 8|4` writes the published
checkpoints' bytes, and both load back to the int fixtures' goldens."""
import json

import numpy as np
import pytest

from glm_ms import AutoModel, families
from glm_ms.convert.cli import main as cli_main
from glm_ms.convert.converted import iter_converted, read_manifest, verify_converted
from glm_ms.convert.driver import convert_checkpoint
from glm_ms.convert.readers import open_weights
from glm_ms.errors import ConversionError, GlmMsError
from tests.models import quantized_fixtures as q
from tests.support import rel_err


def stored(folder) -> dict:
    """The tensors of an upstream folder that a conversion keeps (the name table's drops left out)."""
    map_name = families.detect(folder).family.load("names").map_name
    return {name: array for name, array in open_weights(folder).tensors() if map_name(name) is not None}


def assert_loads_to_goldens(folder, variant):
    model = AutoModel.from_pretrained(folder, dtype="float32")
    assert model.quantization.bits == q.bits_of(variant)
    g = q.golden(variant)
    for i in q.prompts(variant):
        assert rel_err(model(g[f"fwd{i}_input_ids"]).logits.asnumpy(), g[f"fwd{i}_logits"]) <= 1e-4
    ids = g["fwd2_input_ids"]
    np.testing.assert_array_equal(model.generate(ids, max_length=ids.shape[1] + 24, do_sample=False),
                                  g["greedy2_output_ids"])


def assert_quantized_like_the_checkpoint(out, variant):
    written, published = dict(iter_converted(out)), stored(q.QUANTIZED[variant])
    assert set(written) == set(published)
    for name, array in written.items():
        if name.endswith(".weight_scale") or array.dtype == np.int8:
            assert array.dtype == published[name].dtype and array.tobytes() == published[name].tobytes(), name
    assert {n for n, a in written.items() if a.dtype == np.int8} == \
        {f"{m}.weight" for m in q.golden_json(variant)["quantized_linears"]}
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_bit"] == q.bits_of(variant)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("variant", q.VARIANTS)
def test_an_int_checkpoint_stays_int8_with_float16_scales(tmp_path, variant, dtype):
    out = convert_checkpoint(q.QUANTIZED[variant], tmp_path / "out", dtype=dtype, progress=False)
    verify_converted(out)
    written, source = dict(iter_converted(out)), stored(q.QUANTIZED[variant])
    assert set(written) == set(source)
    for name, array in written.items():
        if source[name].dtype == np.int8 or name.endswith(".weight_scale"):
            assert array.dtype == source[name].dtype and array.tobytes() == source[name].tobytes(), name
        else:
            assert array.dtype == np.dtype(dtype) and np.array_equal(array, source[name]), name
    assert read_manifest(out)["quantization"]["quantization_bit"] == q.bits_of(variant)
    assert (out / "config.json").read_bytes() == (q.QUANTIZED[variant] / "config.json").read_bytes()
    if dtype == "float16":
        assert_loads_to_goldens(out, variant)


@pytest.mark.parametrize("variant", q.VARIANTS)
def test_quantize_writes_the_published_checkpoints_bytes(tmp_path, variant):
    out = convert_checkpoint(q.base_dir(variant), tmp_path / "out", quantize=q.bits_of(variant), progress=False)
    verify_converted(out)
    assert_quantized_like_the_checkpoint(out, variant)
    assert read_manifest(out)["quantization"] == {"quantization_bit": q.bits_of(variant),
                                                  "quantization_embeddings": False}
    assert_loads_to_goldens(out, variant)


def test_quantize_is_part_of_what_a_rerun_compares(tmp_path):
    variant = "chatglm2-int4"
    out = convert_checkpoint(q.base_dir(variant), tmp_path / "out", quantize=4, progress=False)
    before = (out / "mindspore_model.safetensors.index.json").stat().st_mtime_ns
    assert convert_checkpoint(q.base_dir(variant), out, quantize=4, progress=False) == out
    assert (out / "mindspore_model.safetensors.index.json").stat().st_mtime_ns == before  # no-op
    with pytest.raises(ConversionError, match="already holds another conversion"):
        convert_checkpoint(q.base_dir(variant), out, quantize=8, progress=False)
    with pytest.raises(ConversionError, match="already holds another conversion"):
        convert_checkpoint(q.base_dir(variant), out, progress=False)
    convert_checkpoint(q.base_dir(variant), out, quantize=8, overwrite=True, progress=False)
    assert read_manifest(out)["quantization"]["quantization_bit"] == 8
    assert json.loads((out / "config.json").read_text())["quantization_bit"] == 8


def test_quantize_embeddings_too(tmp_path):
    variant = "chatglm-6b-int4"
    out = convert_checkpoint(q.base_dir(variant), tmp_path / "out", quantize=4, quantize_embeddings=True,
                             progress=False)
    written = dict(iter_converted(out))
    for module in ("transformer.word_embeddings", "lm_head"):
        assert written[f"{module}.weight"].dtype == np.int8 and written[f"{module}.weight_scale"].dtype == np.float16
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_embeddings"] is True
    expected = type(q.model(variant)).from_folder(q.base_dir(variant), dtype="float32").quantize(4, embeddings=True)
    model = AutoModel.from_pretrained(out, dtype="float32")
    ids = q.golden(variant)["fwd1_input_ids"]
    assert rel_err(model(ids).logits.asnumpy(), expected(ids).logits.asnumpy()) <= 1e-6


def test_requantizing_an_int_checkpoint_is_refused(tmp_path, capsys):
    with pytest.raises(GlmMsError, match="already quantized to int8"):
        convert_checkpoint(q.QUANTIZED["chatglm-6b-int8"], tmp_path / "out", quantize=4, progress=False)
    assert not (tmp_path / "out").exists()
    argv = ["--src", str(q.QUANTIZED["chatglm-6b-int8"]), "--out", str(tmp_path / "out"), "--quantize", "4"]
    assert cli_main(argv + ["--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already quantized to int8" in err[0]


def test_cli_quantize(tmp_path, capsys):
    variant = "chatglm2-int4"
    argv = ["--src", str(q.base_dir(variant)), "--out", str(tmp_path / "out"), "--quantize", "4", "--no-progress"]
    assert cli_main(argv) == 0
    assert "int4 weights" in capsys.readouterr().out
    assert_quantized_like_the_checkpoint(tmp_path / "out", variant)
    for bad in (["--quantize", "3"], ["--quantize-embeddings"]):
        with pytest.raises(SystemExit) as exc:
            cli_main(["--src", "a", "--out", "x", *bad])
        assert exc.value.code == 2
    assert "--quantize-embeddings needs --quantize 8 or 4" in capsys.readouterr().err
