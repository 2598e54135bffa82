"""Sampling, stopping, logits processors, and the generation arguments checked once for both decode paths."""
import numpy as np
import pytest

from glm_ms.errors import GenerationError
from glm_ms.generation import (GenerationOptions, InvalidScoreLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                               top_k_warp, top_p_warp)
from tests.reference_numpy import left_padded_inputs


def test_invalid_scores_become_index_5():
    scores = np.array([[1.0, np.nan, 2.0, 0.0, 1.0, 0.0, 3.0]], np.float32)
    out = InvalidScoreLogitsProcessor()(None, scores)
    assert out[0, 5] == 5e4 and out.sum() == 5e4
    finite = np.array([[1.0, 2.0]], np.float32)
    assert InvalidScoreLogitsProcessor()(None, finite) is finite


def test_repetition_penalty_divides_positive_multiplies_negative():
    scores = np.array([[2.0, -2.0, 2.0, -2.0]], np.float32)
    out = RepetitionPenaltyLogitsProcessor(2.0)(np.array([[0, 1, 1]]), scores)
    np.testing.assert_array_equal(out, [[1.0, -4.0, 2.0, -2.0]])


def test_top_k_and_top_p_filters():
    scores = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    assert np.isinf(top_k_warp(scores, 2)).tolist() == [[False, False, True, True]]
    # Keep the smallest set whose probability exceeds top_p: 0.5 + 0.3 covers 0.7.
    assert np.isinf(top_p_warp(scores, 0.7)).tolist() == [[False, False, True, True]]
    assert np.isinf(top_p_warp(scores, 0.1)).tolist() == [[False, True, True, True]]


def test_sampling_is_seedable_and_top_k_1_is_greedy(model, golden):
    ids = golden["fwd1_input_ids"]
    a = model.generate(ids, max_new_tokens=6, do_sample=True, temperature=0.9, top_p=0.8, seed=7)
    b = model.generate(ids, max_new_tokens=6, do_sample=True, temperature=0.9, top_p=0.8, seed=7)
    np.testing.assert_array_equal(a, b)
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False)
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=6, do_sample=True, top_k=1, seed=3), greedy)
    np.testing.assert_array_equal(greedy, golden["greedy1_output_ids"][:, :ids.shape[1] + 6])


def test_eos_stops_and_finished_rows_get_pad(model, golden):
    ids = golden["batch_input_ids"]
    ref = golden["batch_output_ids"]
    n = ids.shape[1]
    eos = int(ref[0, n + 2])  # pretend row 0's third generated token is end-of-sequence
    out = model.generate(ids, max_length=n + 16, do_sample=False, eos_token_id=eos,
                         **left_padded_inputs(model.config, ids))
    np.testing.assert_array_equal(out[0, :n + 3], ref[0, :n + 3])
    assert (out[0, n + 3:] == model.config.pad_token_id).all()
    if eos not in ref[1, n:]:
        np.testing.assert_array_equal(out[1], ref[1])


def test_stream_generate_yields_every_step_but_the_last(model, golden):
    ids = golden["fwd0_input_ids"]
    steps = list(model.stream_generate(ids, max_new_tokens=5, do_sample=False))
    assert [s.shape[1] for s in steps] == [ids.shape[1] + k for k in range(1, 5)]
    full = list(model.stream_generate(ids, max_new_tokens=5, do_sample=False, include_last=True))
    np.testing.assert_array_equal(full[-1], golden["greedy0_output_ids"][:, :ids.shape[1] + 5])


def test_bad_ids_and_arguments_are_clear_errors(model):
    with pytest.raises(ValueError, match="token id 3000"):
        model.generate([[5, 8, 3000]], max_new_tokens=2)
    with pytest.raises(ValueError, match="token id -1"):
        model([[5, -1, 8]])
    with pytest.raises(ValueError, match="non-empty"):
        model.generate([[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        model.generate([[5, 8]], max_new_tokens=2, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate([[5, 8]], attention_mask=np.zeros((1, 2), np.int64), max_new_tokens=2)


def outcome(model, ids, compiled, **settings):
    """The ids a generate call returns (4 new tokens unless told), or the GenerationError it raises, as text."""
    if "max_length" not in settings:
        settings.setdefault("max_new_tokens", 4)
    settings.setdefault("seed", 3)
    try:
        return model.generate(ids, compiled=compiled, **settings)
    except GenerationError as err:
        return f"GenerationError: {err}"


def same_on_both_paths(model, ids, **settings):
    fast, eager = outcome(model, ids, True, **settings), outcome(model, ids, False, **settings)
    if isinstance(fast, str) or isinstance(eager, str):
        assert fast == eager, settings
    else:
        np.testing.assert_array_equal(fast, eager, err_msg=str(settings))
    return fast


@pytest.mark.parametrize("settings, named", [
    (dict(do_sample=True, temperature=0), "temperature"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
    (dict(do_sample=True, temperature=float("nan")), "temperature"),
    (dict(do_sample=True, temperature=float("inf")), "temperature"),
    (dict(do_sample=True, temperature="hot"), "temperature"),
    (dict(do_sample=True, top_k=-1), "top_k"),
    (dict(do_sample=True, top_k=0.5), "top_k"),
    (dict(do_sample=True, top_k=True), "top_k"),
    (dict(do_sample=True, top_p=0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_p=float("nan")), "top_p"),
    (dict(max_length=0), "max_length"),
    (dict(max_length=2.5), "max_length"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=1.5), "num_beams"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty"),
    (dict(eos_token_id="eop"), "eos_token_id"),
    (dict(seed="seven"), "seed"),
])
def test_bad_generation_arguments_are_the_same_clear_error_on_both_paths(model, golden, settings, named):
    message = same_on_both_paths(model, golden["fwd1_input_ids"], **settings)
    assert isinstance(message, str) and message.startswith("GenerationError") and named in message


def test_sampling_options_are_checked_only_when_sampling():
    GenerationOptions(do_sample=False, temperature=0, top_k=-1, top_p=0)  # unused knobs, as in transformers
    with pytest.raises(GenerationError, match="beam sampling"):
        GenerationOptions(do_sample=True, num_beams=2)


@pytest.mark.parametrize("guarded", [False, True])
def test_a_temperature_that_overflows_float32_is_the_same_error_on_both_paths(model, golden, guarded):
    ids = golden["fwd1_input_ids"]
    processors = [InvalidScoreLogitsProcessor()] if guarded else None
    message = same_on_both_paths(model, ids, do_sample=True, temperature=1e-38, logits_processor=processors)
    assert isinstance(message, str) and "cannot sample" in message and "1e-38" in message


@pytest.mark.parametrize("settings", [
    dict(do_sample=True, top_k=0),                     # 0: no top-k filter
    dict(do_sample=True, top_k=10 ** 6),               # more than the vocabulary: all of it
    dict(do_sample=True, top_k=np.int64(3), top_p=1),  # numpy integers and an int top_p are fine
    dict(do_sample=True, temperature=1e-3),            # small, but the scores stay finite
    dict(do_sample=True, temperature=2),
])
def test_valid_edge_values_give_the_same_tokens_on_both_paths(model, golden, settings):
    ids = golden["fwd1_input_ids"]
    out = same_on_both_paths(model, ids, **settings)
    assert not isinstance(out, str) and out.shape == (1, ids.shape[1] + 4)


def test_tiny_temperature_samples_the_greedy_token(model, golden):
    ids = golden["fwd1_input_ids"]
    greedy = model.generate(ids, max_new_tokens=4, do_sample=False)
    np.testing.assert_array_equal(same_on_both_paths(model, ids, do_sample=True, temperature=1e-3), greedy)
