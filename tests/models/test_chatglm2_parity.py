"""ChatGLM2-6B and ChatGLM3-6B against the golden outputs of the original implementation (tiny random-weight
models, float32), and against an independent numpy forward for shapes no golden file has."""
import numpy as np
import pytest

from glm_ms import ChatGLM2ForConditionalGeneration, ChatGLM3ForConditionalGeneration
from tests import glm2_reference
from tests.support import FAMILY_FOLDERS, SECOND_GENERATION, rel_err, tiny

PROMPTS = range(4)


@pytest.fixture(params=SECOND_GENERATION)
def family(request):
    """ChatGLM2 and ChatGLM3 in turn (this file's models; conftest's `family` includes ChatGLM-6B)."""
    return request.param


def test_config_and_family_detection(family):
    lm = tiny(family).model
    classes = {"chatglm2": ChatGLM2ForConditionalGeneration, "chatglm3": ChatGLM3ForConditionalGeneration}
    assert type(lm) is classes[family]
    c = lm.config
    sizes = tiny(family).golden_json["sizes"]
    assert c.family == family == tiny(family).golden_json["family"]
    assert (c.padded_vocab_size, c.hidden_size, c.num_attention_heads, c.kv_channels, c.multi_query_group_num,
            c.ffn_hidden_size, c.num_layers) == (sizes["padded_vocab_size"], sizes["hidden"], sizes["heads"],
                                                 sizes["kv"], sizes["groups"], sizes["ffn"], sizes["layers"])


@pytest.mark.parametrize("i", PROMPTS)
def test_causal_mask_and_positions(family, i):
    g = tiny(family).golden
    mask, positions = tiny(family).model.prefix_inputs(g[f"fwd{i}_input_ids"])
    np.testing.assert_array_equal(mask, g[f"fwd{i}_attention_mask"])
    np.testing.assert_array_equal(positions[:, 0], g[f"fwd{i}_position_ids"])


@pytest.mark.parametrize("i", PROMPTS)
def test_logits_and_hidden_states(family, i):
    g, lm = tiny(family).golden, tiny(family).model
    out = lm(g[f"fwd{i}_input_ids"], position_ids=g[f"fwd{i}_position_ids"], output_hidden_states=True)
    assert rel_err(out.logits.asnumpy(), g[f"fwd{i}_logits"]) <= 1e-4
    layers = lm.config.num_layers
    assert len(out.hidden_states) == layers + 1
    for layer, state in enumerate(out.hidden_states):  # block inputs, then the last block's output (pre-norm)
        assert rel_err(state.asnumpy()[0], g[f"fwd{i}_hidden{layer}"][:, 0]) <= 1e-4, f"hidden state {layer}"
    assert rel_err(out.last_hidden_state.asnumpy()[0], g[f"fwd{i}_last_hidden"][:, 0]) <= 1e-4


def test_key_value_cache_of_prompt_0(family):
    g, lm = tiny(family).golden, tiny(family).model
    out = lm(g["fwd0_input_ids"])
    assert len(out.past_key_values) == lm.config.num_layers
    for layer, (key, value) in enumerate(out.past_key_values):
        # ours [batch, groups, seq, kv_channels]; upstream [seq, batch, groups, kv_channels]
        assert rel_err(key.asnumpy().transpose(2, 0, 1, 3), g[f"fwd0_past{layer}_key"]) <= 1e-4
        assert rel_err(value.asnumpy().transpose(2, 0, 1, 3), g[f"fwd0_past{layer}_value"]) <= 1e-4


def test_padded_batch_mask_positions_and_logits_pads_included(family):
    g, lm = tiny(family).golden, tiny(family).model
    ids, pad_mask, positions = g["batch_input_ids"], g["batch_attention_mask"], g["batch_position_ids"]
    mask, pos = lm.prefix_inputs(ids, pad_mask, positions)
    np.testing.assert_array_equal(mask, g["batch_full_attention_mask"])  # pad rows attend everywhere, as upstream
    np.testing.assert_array_equal(pos[:, 0], positions)
    logits = lm(ids, position_ids=positions, attention_mask=pad_mask).logits.asnumpy()
    assert rel_err(logits, g["batch_logits"]) <= 1e-4


@pytest.mark.parametrize("i", PROMPTS)
def test_greedy_ids(family, i):
    g = tiny(family).golden
    ids = g[f"fwd{i}_input_ids"]
    out = tiny(family).model.generate(ids, max_length=ids.shape[1] + 24, do_sample=False)
    np.testing.assert_array_equal(out, g[f"greedy{i}_output_ids"])


def test_greedy_stops_on_any_eos(family):
    g, case = tiny(family).golden, tiny(family).golden_json["eos_cases"]["greedy_eos"]
    ids = g[f"fwd{case['prompt']}_input_ids"]
    out = tiny(family).model.generate(ids, max_length=ids.shape[1] + case["max_new"], do_sample=False,
                                 eos_token_id=case["eos_token_id"])
    np.testing.assert_array_equal(out, g["greedy_eos_output_ids"])


def test_step_scores_with_cache_equal_golden_and_no_cache(family):
    g, lm = tiny(family).golden, tiny(family).model
    ids = g["fwd0_input_ids"]
    out, scores = lm.generate(ids, max_length=g["steps_output_ids"].shape[1], do_sample=False, output_scores=True)
    np.testing.assert_array_equal(out, g["steps_output_ids"])
    assert len(scores) == len(g["steps_scores"])
    for step, (got, ref) in enumerate(zip(scores, g["steps_scores"])):
        assert rel_err(got, ref) <= 1e-4, f"step {step}"
        full = lm(out[:, :ids.shape[1] + step]).logits.asnumpy()[:, -1]  # recomputed without the cache
        assert rel_err(got, full) <= 1e-5, f"cache vs no cache at step {step}"


def test_left_padded_batch_greedy(family):
    g = tiny(family).golden
    ids = g["batch_input_ids"]
    out = tiny(family).model.generate(ids, attention_mask=g["batch_attention_mask"],
                                      position_ids=g["batch_position_ids"],
                                      max_length=ids.shape[1] + 16, do_sample=False)
    np.testing.assert_array_equal(out, g["batch_output_ids"])


def test_left_padded_batch_eos_pads_finished_rows(family):
    g, case = tiny(family).golden, tiny(family).golden_json["eos_cases"]["batch_eos"]
    ids = g["batch_input_ids"]
    out = tiny(family).model.generate(ids, attention_mask=g["batch_attention_mask"],
                                      position_ids=g["batch_position_ids"],
                                      max_length=ids.shape[1] + case["max_new"], do_sample=False,
                                      eos_token_id=case["eos_token_id"], pad_token_id=case["pad_token_id"])
    np.testing.assert_array_equal(out, g["batch_eos_output_ids"])


def test_beam_search_ids(family):
    g = tiny(family).golden
    ids = g["fwd1_input_ids"]
    out = tiny(family).model.generate(ids, max_length=ids.shape[1] + 16, do_sample=False, num_beams=4)
    np.testing.assert_array_equal(out, g["beam4_output_ids"])


def test_float16_model_stays_close(family):
    g = tiny(family).golden
    half = type(tiny(family).model).from_pretrained(FAMILY_FOLDERS[family], dtype="float32").half()
    checked = agree = 0
    for i in PROMPTS:
        logits = half(g[f"fwd{i}_input_ids"]).logits.asnumpy()[0]
        ref = g[f"fwd{i}_logits"][0]
        assert np.isfinite(logits).all()
        assert np.abs(logits - ref).max() <= 0.1 * np.abs(ref).max()
        top2 = np.sort(ref, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 0.01 * np.abs(ref).max()
        checked += int(clear.sum())
        agree += int((logits.argmax(-1) == ref.argmax(-1))[clear].sum())
    assert checked and agree / checked >= 0.95
    ids = g["fwd0_input_ids"]
    out = half.generate(ids, max_length=ids.shape[1] + 8, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 8)


@pytest.mark.parametrize("shape", [
    dict(num_layers=3, num_attention_heads=6, kv_channels=24, multi_query_group_num=3),  # kv_channels ≠ hidden/heads
    dict(num_layers=1, num_attention_heads=8, kv_channels=12, multi_query_group_num=1, hidden_size=64),
    dict(num_layers=2, num_attention_heads=4, kv_channels=16, multi_query_group_num=4, hidden_size=64),
    dict(num_layers=2, num_attention_heads=4, kv_channels=16, multi_query_attention=False, hidden_size=64),
])
def test_other_shapes_match_numpy_reference(tmp_path, shape):
    folder, config, sd = glm2_reference.make_checkpoint(tmp_path, **shape)
    lm = ChatGLM2ForConditionalGeneration.from_pretrained(folder, dtype="float32")
    ids = np.random.default_rng(3).integers(5, 2900, size=(1, 11))
    ref = glm2_reference.forward(sd, config, ids[0], np.arange(11))
    assert rel_err(lm(ids).logits.asnumpy()[0], ref) <= 1e-4
    # Cached greedy decoding agrees with recomputing each prefix from scratch.
    out, scores = lm.generate(ids, max_length=15, do_sample=False, output_scores=True)
    for step, got in enumerate(scores):
        full = glm2_reference.forward(sd, config, out[0, :11 + step], np.arange(11 + step))[-1]
        assert rel_err(got[0], full) <= 1e-4


@pytest.mark.parametrize("compiled", [True, False])
def test_compiled_and_eager_decoding_agree_on_a_padded_batch(family, compiled):
    g, case = tiny(family).golden, tiny(family).golden_json["eos_cases"]["batch_eos"]
    ids = g["batch_input_ids"]
    out = tiny(family).model.generate(ids, attention_mask=g["batch_attention_mask"],
                                      position_ids=g["batch_position_ids"],
                                      max_length=ids.shape[1] + case["max_new"], do_sample=False, compiled=compiled,
                                      eos_token_id=case["eos_token_id"], pad_token_id=case["pad_token_id"])
    np.testing.assert_array_equal(out, g["batch_eos_output_ids"])
