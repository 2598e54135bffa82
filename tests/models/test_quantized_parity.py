"""Upstream's int8/int4 checkpoints (tiny twins of THUDM chatglm-6b-int8/-int4 and chatglm2-6b-int4) against the
outputs the original implementation gives for them on a CPU (`.float()`: float32(int) * float32(scale))."""
import numpy as np
import pytest
import mindspore as ms

from glm_ms.cells.quantized import QuantizedLinear
from glm_ms.convert.names import Quantization
from glm_ms.models.quantized import quantized_cells
from tests.models import quantized_fixtures as q
from tests.support import rel_err

CASES = [(variant, i) for variant in q.VARIANTS for i in q.prompts(variant)]


def test_each_checkpoint_loads_quantized_as_its_config_says():
    for variant in q.VARIANTS:
        model = q.model(variant)
        assert model.quantization == Quantization(q.bits_of(variant), False)
        cells = quantized_cells(model)
        assert sorted(cells) == sorted(q.golden_json(variant)["quantized_linears"])
        assert all(isinstance(c, QuantizedLinear) and c.weight.dtype == ms.int8 for c in cells.values())


@pytest.mark.parametrize("variant, i", CASES)
def test_logits(variant, i):
    g = q.golden(variant)
    logits = q.model(variant)(g[f"fwd{i}_input_ids"]).logits.asnumpy()
    assert rel_err(logits, g[f"fwd{i}_logits"]) <= 1e-4


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("variant, i", CASES)
def test_greedy_ids(variant, i, compiled):
    g = q.golden(variant)
    ids = g[f"fwd{i}_input_ids"]
    out = q.model(variant).generate(ids, max_length=ids.shape[1] + 24, do_sample=False, compiled=compiled)
    np.testing.assert_array_equal(out, g[f"greedy{i}_output_ids"])


@pytest.mark.parametrize("variant", q.VARIANTS)
def test_chat_transcript(variant):
    model, tokenizer, history = q.model(variant), q.tokenizer(variant), []
    for turn in q.golden_json(variant)["chat_greedy"]:
        response, history = model.chat(tokenizer, turn["query"], history=history, max_length=turn["max_length"],
                                       do_sample=False)
        assert response == turn["response"]
    assert [list(h) for h in history] == [list(h) for h in q.golden_json(variant)["chat_greedy"][-1]["history"]]
