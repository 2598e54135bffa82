"""The shared model flags of glm-ms-web, glm-ms-chat and glm-ms-serve: --quantize, --quantize-embeddings, --fast
reach the model (the same weights as `model.quantize`), and misuse is a one-line error."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glm_ms import chat_app, cli_chat, loading
from glm_ms.cells.quantized import QuantizedEmbedding
from glm_ms.cli_chat import USER, bot_label
from glm_ms.kernels import QuantizationError
from glm_ms.models.quantized import quantized_cells
from glm_ms.serve import cli as serve_cli
from tests.models import quantized_fixtures as q

ROOT = Path(__file__).resolve().parents[1]
PARSERS = {"glm-ms-web": chat_app.parse_args, "glm-ms-chat": cli_chat.parse_args, "glm-ms-serve": serve_cli.parse_args}
VARIANT = "chatglm-6b-int8"


def quantized_state(model) -> dict:
    return {path: (cell.weight.asnumpy().tobytes(), cell.weight_scale.asnumpy().tobytes(), type(cell), cell.fast
                   if hasattr(cell, "fast") else None) for path, cell in quantized_cells(model).items()}


@pytest.mark.parametrize("program", PARSERS)
def test_every_program_takes_the_quantization_flags(program, capsys):
    parse = PARSERS[program]
    args = parse(["--quantize", "4", "--quantize-embeddings", "--fast"])
    assert (args.quantize, args.quantize_embeddings, args.fast) == (4, True, True)
    plain = parse([])
    assert (plain.quantize, plain.quantize_embeddings, plain.fast) == (None, False, False)
    for bad in (["--quantize", "3"], ["--quantize", "int8"]):
        with pytest.raises(SystemExit):
            parse(bad)
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        parse(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--quantize {8,4}", "--quantize-embeddings", "--fast", "int8 or int4", "word embeddings",
                  "int checkpoint", "-int8/-int4 checkpoints load quantized"):
        assert words in text, words


@pytest.mark.parametrize("variant", q.VARIANTS)
def test_the_flags_load_what_model_quantize_gives(variant):
    bits = q.bits_of(variant)
    args = cli_chat.parse_args(["--model", str(q.base_dir(variant)), "--quantize", str(bits), "--dtype", "float32"])
    model, tokenizer = loading.load_from_args(args)
    expected = type(model).from_folder(q.base_dir(variant), dtype="float32").quantize(bits)
    assert quantized_state(model) == quantized_state(expected)
    assert type(tokenizer) is type(q.tokenizer(variant))
    ids = q.golden(variant)["fwd0_input_ids"]
    np.testing.assert_array_equal(model.generate(ids, max_length=ids.shape[1] + 8, do_sample=False),
                                  expected.generate(ids, max_length=ids.shape[1] + 8, do_sample=False))


def test_embeddings_and_fast_reach_the_cells():
    args = serve_cli.parse_args(["--model", str(q.QUANTIZED[VARIANT]), "--quantize-embeddings", "--fast"])
    model, _ = loading.load_from_args(args)
    cells = quantized_cells(model)
    assert any(isinstance(c, QuantizedEmbedding) for c in cells.values())
    assert all(c.fast for c in cells.values() if hasattr(c, "fast"))
    assert model.quantization.bits == 8 and model.quantization.embeddings


def test_load_model_passes_the_quantization_keywords_only_when_given(monkeypatch):
    from glm_ms import api
    calls = []
    loaded = type("Loaded", (), {"set_train": lambda self, mode: None})()
    monkeypatch.setattr(api.AutoModel, "from_pretrained",
                        classmethod(lambda cls, path, dtype=None, **kw: calls.append(kw) or loaded))
    monkeypatch.setattr(api.AutoTokenizer, "from_pretrained", staticmethod(lambda path, **kw: None))
    loading.load_model("demo")
    loading.load_model("demo", quantize=4, quantize_embeddings=True, fast=True)
    assert calls == [{}, {"quantize": 4, "quantize_embeddings": True, "fast": True}]


def run_chat(*flags, text="你好\nstop\n"):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "glm_ms.cli_chat", *flags], input=text, capture_output=True,
                          text=True, env=env, timeout=600)


def test_glm_ms_chat_answers_with_the_quantized_model():
    base, seed = q.base_dir(VARIANT), 5
    model, tokenizer = loading.load_model(base, dtype="float32", quantize=8)
    settings = dict(loading.chat_defaults(model), max_length=24, do_sample=True, seed=seed)
    answer, _ = model.chat(tokenizer, "你好", history=[], **settings)
    proc = run_chat("--model", str(base), "--quantize", "8", "--max-length", "24", "--seed", str(seed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bot = bot_label(cli_chat.family_title(model))
    assert proc.stdout.split(bot)[1].split("\n" + USER)[0].strip("\n") == answer


@pytest.mark.parametrize("model, options, message", [
    ("base", {"fast": True}, "fast mode needs quantize=8 or 4"),
    ("base", {"quantize_embeddings": True}, "quantize_embeddings needs quantize=8 or 4"),
    ("int8", {"quantize": 4}, "already quantized to int8"),
])
def test_misuse_is_a_clear_error(model, options, message):
    folder = q.base_dir(VARIANT) if model == "base" else q.QUANTIZED[VARIANT]
    with pytest.raises(QuantizationError, match=message):
        loading.load_model(folder, **options)


def test_misuse_on_the_command_line_is_a_one_line_error():
    proc = run_chat("--model", str(q.base_dir(VARIANT)), "--fast")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("glm-ms-chat: error: fast mode needs quantize=8 or 4 (or an "
                                                    "int8/int4 checkpoint): it is a way of computing with quantized "
                                                    "weights")
    assert "Traceback" not in proc.stderr
