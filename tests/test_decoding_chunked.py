"""Long prompts: chunked prefill equals the one-piece prefill (eager and compiled, chunks that divide the prompt
and chunks that do not), no piece holds a prompt × capacity mask, decode steps read only the slots in use, and
max_length past the model's positions is refused."""
import numpy as np
import pytest

from glm_ms import decoding
from glm_ms.cells import attention
from glm_ms.decoding import DecodeState, Decoder, kv_bucket, prompt_spans
from glm_ms.errors import GenerationError
from tests.long_support import long_golden, long_model
from tests.support import SECOND_GENERATION, rel_err, tiny

NEW_TOKENS = 8


@pytest.fixture(params=SECOND_GENERATION)
def family(request):
    """ChatGLM2-6B-32K and ChatGLM3-6B-32K in turn."""
    return request.param


def _prompt(family):
    """The long golden prompt cut to a multiple of 4 tokens, a chunk that divides it and one that does not."""
    ids = long_golden(family)["long_input_ids"]
    ids = ids[:, :ids.shape[1] // 4 * 4]
    seq = ids.shape[1]
    dividing = seq // 4
    other = next(c for c in range(seq // 3, 1, -1) if seq % c)
    return ids, dividing, other


def _prefill(lm, ids, chunk, compiled, max_length):
    mask, positions = lm.prompt_inputs(lm.check_ids(ids))
    decoder = Decoder(lm, ids, mask, positions, max_length, compiled, chunk)
    return decoder, decoder.prefill()


def test_prompt_spans():
    assert prompt_spans(10, 4) == [(0, 2), (2, 6), (6, 10)]
    assert prompt_spans(8, 4) == [(0, 4), (4, 8)]
    assert prompt_spans(3, 4) == [(0, 3)]
    with pytest.raises(GenerationError, match="prefill_chunk"):
        prompt_spans(3, 0)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_chunked_prefill_equals_one_piece(family, compiled, monkeypatch):
    lm = long_model(family)
    ids, dividing, other = _prompt(family)
    seq = ids.shape[1]
    _, whole = _prefill(lm, ids, seq, compiled, seq + NEW_TOKENS)
    reference = lm.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, compiled=False)
    for chunk in (dividing, other):
        decoder, logits = _prefill(lm, ids, chunk, compiled, seq + NEW_TOKENS)
        assert len(decoder.pieces) == len(prompt_spans(seq - 1, chunk)) + 1 if compiled else -(-seq // chunk)
        assert rel_err(logits, whole) <= 1e-5, f"chunk {chunk}"
        monkeypatch.setattr(lm, "prefill_chunk", chunk)
        out = lm.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, compiled=compiled)
        np.testing.assert_array_equal(out, reference, err_msg=f"chunk {chunk}")


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_key_blocks_inside_the_model_equal_one_softmax(family, compiled, monkeypatch):
    lm = long_model(family)
    ids, dividing, _ = _prompt(family)
    seq = ids.shape[1]
    _, whole = _prefill(lm, ids, seq, compiled, seq + 1)
    # The MindSpore-ops path (what Ascend runs; the CPU kernel takes it elsewhere) with at most 128 keys per
    # block: every piece past the first runs the running softmax. The chunk is one no other test uses, so
    # compiled graphs are traced afresh under the small blocks.
    for layer in lm.attention_layers():
        monkeypatch.setattr(layer, "fused_attention", False)
    monkeypatch.setattr(attention, "BLOCK_BYTES", 4 * 128)
    split, key_block = [], attention.key_block

    def recorded(rows, keys):
        block = key_block(rows, keys)
        split.append(block < keys)
        return block

    monkeypatch.setattr(attention, "key_block", recorded)
    _, blocked = _prefill(lm, ids, dividing // 2 + 1, compiled, seq + 1)
    assert compiled or any(split)  # a graph traces key_block inside MindSpore: the Python spy sees no call there
    assert rel_err(blocked, whole) <= 1e-5


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_pieces_and_steps_read_only_what_is_in_use(family, compiled):
    lm = long_model(family)
    ids, dividing, _ = _prompt(family)
    seq, limit = ids.shape[1], lm.config.seq_length
    mask, positions = lm.prompt_inputs(lm.check_ids(ids))
    decoder = Decoder(lm, ids, mask, positions, limit, compiled, dividing)  # a cache for the model's every position
    capacity = decoder.state.capacity
    assert capacity >= limit
    # Eager pieces read exactly the slots written so far; compiled, the last prompt token runs as a graph of a
    # decode step's shape, reading a bucketed prefix.
    spans = prompt_spans(seq - 1 if compiled else seq, dividing)
    assert [p.compiled for p in decoder.pieces] == [False] * len(spans) + [True] * compiled
    for (start, stop), piece in zip(spans, decoder.pieces):
        assert piece.inputs().mask.shape[2:] == (stop - start, stop) and stop < capacity  # never prompt × capacity
    if compiled:
        assert decoder.pieces[-1].inputs().mask.shape[2:] == (1, kv_bucket(seq, capacity))
    state = DecodeState(lm, mask, positions, capacity, limit, bucketed=compiled)
    widths = [state.advance(np.zeros(1, np.int64)).mask.shape[-1] for _ in range(2)]
    assert widths == ([kv_bucket(seq + 1, capacity), kv_bucket(seq + 2, capacity)] if compiled else [seq + 1, seq + 2])
    # Steps on that cache give what they give on a cache just large enough for them.
    logits = decoder.prefill()
    token = np.argmax(logits, -1)
    following = decoder.step(token)
    small, small_logits = _prefill(lm, ids, dividing, compiled, seq + 2)
    small_following = small.step(token)
    np.testing.assert_allclose(logits, small_logits, rtol=0, atol=1e-5 * np.abs(small_logits).max())
    np.testing.assert_allclose(following, small_following, rtol=0, atol=1e-5 * np.abs(small_following).max())


def test_a_piece_is_built_when_it_runs(family, monkeypatch):
    lm = long_model(family)
    ids, dividing, _ = _prompt(family)
    mask, positions = lm.prompt_inputs(lm.check_ids(ids))
    built = []  # (start, stop) of each piece, when it is built
    real = decoding.exact_piece

    def spy(*args):
        built.append(args[-2:])
        return real(*args)

    monkeypatch.setattr(decoding, "exact_piece", spy)
    decoder = Decoder(lm, ids, mask, positions, ids.shape[1] + 1, False, dividing)
    assert built == []  # a long prompt's piece masks would otherwise all be held at once
    decoder.prefill()
    assert built == prompt_spans(ids.shape[1], dividing)


def test_a_dense_mask_is_prefilled_in_one_piece():
    lm = tiny("chatglm-6b").model  # ChatGLM-6B's context attends both ways: no piece may stop inside it
    ids = tiny("chatglm-6b").golden["fwd2_input_ids"]
    mask, positions = lm.prompt_inputs(lm.check_ids(ids))
    decoder = Decoder(lm, ids, mask, positions, ids.shape[1] + 1, False, chunk=4)
    assert len(decoder.pieces) == 1


def test_max_length_beyond_seq_length_is_a_clear_error(family):
    lm = long_model(family)
    ids = long_golden(family)["fwd0_input_ids"]
    limit = lm.config.seq_length
    for kwargs in (dict(max_length=limit + 1), dict(max_new_tokens=limit)):
        for compiled in (False, True):
            with pytest.raises(GenerationError, match=f"beyond this model's seq_length {limit}"):
                lm.generate(ids, do_sample=False, compiled=compiled, **kwargs)
