"""Sampling, stopping and logits processors."""
import numpy as np
import pytest

from tests.test_parity import _batch_inputs
from glm_ms.generation import (InvalidScoreLogitsProcessor, RepetitionPenaltyLogitsProcessor, top_k_warp,
                               top_p_warp)


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
    out = model.generate(ids, max_length=n + 16, do_sample=False, eos_token_id=eos, **_batch_inputs(model, ids))
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
