"""ChatGLM2-6B-32K and ChatGLM3-6B-32K against the goldens of their own upstream code: each generation's
`rope_ratio` rule (position interpolation vs a larger rotary base), decided by the family, on a prompt long
enough to pass the base's 512 positions."""
import numpy as np
import pytest

from glm_ms import families
from tests.long_support import LONG_FOLDERS, long_model, long_tokenizer
from tests.long_support import long_golden as golden
from tests.long_support import long_golden_json as golden_json
from tests.support import REAL_MANIFESTS, SECOND_GENERATION, as_json, rel_err, tiny

PROMPTS = range(4)


@pytest.fixture(params=SECOND_GENERATION)
def family(request):
    """ChatGLM2-6B-32K and ChatGLM3-6B-32K in turn."""
    return request.param


def test_the_family_decides_the_rope_ratio_rule(family):
    config = families.detect(LONG_FOLDERS[family]).config
    assert config.family == family
    assert config.rope_ratio == golden_json(family)["rope_ratio"] != 1
    assert config.seq_length == golden_json(family)["seq_length"]
    if family == "chatglm2":  # ChatGLM2-6B-32K: seq_idx = arange(seq_len) / rope_ratio
        assert (config.rotary_base, config.rotary_position_scale) == (10000.0, config.rope_ratio)
    else:                     # ChatGLM3-6B-32K: base = 10000 * rope_ratio
        assert (config.rotary_base, config.rotary_position_scale) == (10000.0 * config.rope_ratio, 1.0)


@pytest.mark.parametrize("name", SECOND_GENERATION)
def test_real_models_without_rope_ratio_keep_the_plain_rotary(name):
    config = families.detect(REAL_MANIFESTS[name]).config
    assert config.family == name and config.rope_ratio == 1
    assert (config.rotary_base, config.rotary_position_scale) == (10000.0, 1.0)


def test_rotary_table_rows_at_the_recorded_positions(family):
    g = golden(family)
    positions = g["rope_cache_positions"]
    tables = long_model(family).position_tables()
    tables.ensure(int(positions.max()) + 1)
    rows = np.stack([tables.cos.asnumpy()[positions], tables.sin.asnumpy()[positions]], axis=-1)
    np.testing.assert_allclose(rows, g["rope_cache_rows"], rtol=0, atol=1e-6)


def test_long_prompt_logits_and_greedy_ids(family):
    g, lm = golden(family), long_model(family)
    ids = g["long_input_ids"]
    logits = lm(ids, position_ids=g["long_position_ids"]).logits.asnumpy()
    ref = g["long_logits_last16"]
    assert rel_err(logits[:, -ref.shape[1]:], ref) <= 1e-4
    assert rel_err(logits[:, -ref.shape[1]:], g["long_logits_last16_non32k"]) > 1e-2  # the rule matters here
    out = lm.generate(ids, max_length=g["long_greedy_output_ids"].shape[1], do_sample=False)
    np.testing.assert_array_equal(out, g["long_greedy_output_ids"])


@pytest.mark.parametrize("i", PROMPTS)
def test_short_prompts_logits_and_greedy_ids(family, i):
    g, lm = golden(family), long_model(family)
    ids = g[f"fwd{i}_input_ids"]
    assert rel_err(lm(ids).logits.asnumpy(), g[f"fwd{i}_logits"]) <= 1e-4
    out = lm.generate(ids, max_length=g[f"greedy{i}_output_ids"].shape[1], do_sample=False)
    np.testing.assert_array_equal(out, g[f"greedy{i}_output_ids"])


@pytest.mark.parametrize("kind", ["chat_greedy", "chat_long_greedy"])
def test_chat_turns(family, kind):
    lm, tok = long_model(family), long_tokenizer(family)
    history = []
    for turn in golden_json(family)[kind]:
        # chatglm3-6b-32k's own process_response raises on a reply without a newline (recorded as `error`);
        # the expected turn is then what the later, fixed chatglm3-6b process_response makes of it.
        fixed = "error" in turn
        response, history = lm.chat(tok, turn["query"], history=history, max_length=turn["max_length"],
                                    do_sample=False)
        assert response == turn["response_with_fixed_process_response" if fixed else "response"]
        assert as_json(history) == turn["history_with_fixed_process_response" if fixed else "history"]


def test_chat_defaults_to_the_long_models_own_length(family):
    lm = long_model(family)
    max_length, top_p, temperature = lm.chat_settings(None, None, None)
    assert max_length == lm.config.seq_length  # their own chat() defaults to 32768, their seq_length
    row = families.get(family).chat
    assert (top_p, temperature) == (row.top_p, row.temperature)
    assert lm.chat_settings(100, 0.5, 0.1) == (100, 0.5, 0.1)
    assert tiny(family).model.chat_settings(None, None, None)[0] == row.max_length  # base models: the row's
