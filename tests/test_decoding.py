"""The decoder: compiled graphs give the same tokens as the eager Cells on every golden case, with few graph
compilations; both paths share the cache bookkeeping."""
import numpy as np
import pytest

from glm_ms.decoding import Decoder, bucket, graph_compilations, runner_for
from glm_ms.errors import GenerationError

PROMPTS = range(4)


def both(fn):
    """fn(compiled) for the compiled and the eager path."""
    return fn(True), fn(False)


@pytest.mark.parametrize("i", PROMPTS)
def test_greedy_compiled_equals_eager_and_golden(model, golden, i):
    ids = golden[f"fwd{i}_input_ids"]
    fast, eager = both(lambda c: model.generate(ids, max_length=ids.shape[1] + 24, do_sample=False, compiled=c))
    np.testing.assert_array_equal(fast, eager)
    np.testing.assert_array_equal(fast, golden[f"greedy{i}_output_ids"])


def test_left_padded_batch_compiled_equals_eager(model, tokenizer, golden, golden_json):
    enc = tokenizer(golden_json["prompts"][:2], padding=True)
    fast, eager = both(lambda c: model.generate(**enc, max_length=enc["input_ids"].shape[1] + 16, do_sample=False,
                                                compiled=c))
    np.testing.assert_array_equal(fast, eager)
    np.testing.assert_array_equal(fast, golden["batch_output_ids"])


def test_beam_search_compiled_equals_eager(model, golden):
    ids = golden["fwd1_input_ids"]
    fast, eager = both(lambda c: model.generate(ids, max_length=ids.shape[1] + 16, num_beams=4, compiled=c))
    np.testing.assert_array_equal(fast, eager)
    np.testing.assert_array_equal(fast, golden["beam4_output_ids"])


@pytest.mark.slow
def test_chat_transcript_compiled_equals_eager(model, tokenizer, golden_json):
    for compiled in (True, False):
        history = []
        for turn in golden_json["chat_greedy"]:
            response, history = model.chat(tokenizer, turn["query"], history=history, max_length=turn["max_length"],
                                           do_sample=False, compiled=compiled)
            assert response == turn["response"], f"compiled={compiled}"


@pytest.mark.slow
def test_stream_chat_transcript_compiled_equals_eager(model, tokenizer, golden_json):
    for compiled in (True, False):
        history = []
        for turn in golden_json["stream_chat_greedy"]:
            partials = []
            for response, history in model.stream_chat(tokenizer, turn["query"], history=history,
                                                       max_length=turn["max_length"], do_sample=False,
                                                       compiled=compiled):
                partials.append(response)
            assert partials == turn["partials"], f"compiled={compiled}"


def test_step_scores_from_compiled_logits(model, golden):
    ids = golden["fwd0_input_ids"]
    out, scores = model.generate(ids, max_length=golden["steps_output_ids"].shape[1], output_scores=True,
                                 compiled=True)
    np.testing.assert_array_equal(out, golden["steps_output_ids"])
    for got, ref in zip(scores, golden["steps_scores"]):
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.slow
def test_sampling_in_graph_matches_eager_sampling(model, golden):
    ids = golden["fwd1_input_ids"]
    for settings in (dict(top_p=0.7, temperature=0.95), dict(top_k=5, top_p=1.0), dict(top_k=1)):
        fast, eager = both(lambda c: model.generate(ids, max_length=40, do_sample=True, seed=7, compiled=c,
                                                    **settings))
        np.testing.assert_array_equal(fast, eager, err_msg=str(settings))
    greedy = model.generate(ids, max_length=40, do_sample=False)
    np.testing.assert_array_equal(model.generate(ids, max_length=40, do_sample=True, top_k=1, seed=1), greedy)


def test_host_processors_run_on_compiled_logits(model, golden):
    ids = golden["fwd2_input_ids"]
    fast, eager = both(lambda c: model.generate(ids, max_length=ids.shape[1] + 12, repetition_penalty=1.3,
                                                compiled=c))
    np.testing.assert_array_equal(fast, eager)


def test_invalid_scores_guard_inside_the_graph(tiny_dir, golden):
    from mindspore import Tensor
    from glm_ms import ChatGLMForConditionalGeneration
    from glm_ms.generation import InvalidScoreLogitsProcessor
    broken = ChatGLMForConditionalGeneration.from_pretrained(tiny_dir, dtype="float32")
    bias = broken.transformer.final_layernorm.bias
    bias.set_data(Tensor(bias.asnumpy() * np.nan))  # every logit NaN
    ids = golden["fwd0_input_ids"]
    for sample in (False, True):
        fast, eager = both(lambda c: broken.generate(ids, max_new_tokens=3, do_sample=sample, seed=0, compiled=c,
                                                     logits_processor=[InvalidScoreLogitsProcessor()]))
        np.testing.assert_array_equal(fast, eager)
        assert (fast[0, ids.shape[1]:] == InvalidScoreLogitsProcessor.token).all()
    odd = InvalidScoreLogitsProcessor()
    odd.token, odd.score = 0, -1.0  # the greedy pick is then id 1, the first of the zeros
    fast, eager = both(lambda c: broken.generate(ids, max_new_tokens=2, compiled=c, logits_processor=[odd]))
    np.testing.assert_array_equal(fast, eager)
    assert (fast[0, ids.shape[1]:] == 1).all()
    for compiled in (True, False):  # without the guard there is nothing to sample from: the same clear error
        with pytest.raises(GenerationError, match="cannot sample"):
            broken.generate(ids, max_new_tokens=3, do_sample=True, seed=0, compiled=compiled)


@pytest.mark.parametrize("token", [0, 3])
@pytest.mark.parametrize("score", [5e4, 1e-3, 0.0, -2.0, float("nan")])
def test_the_greedy_guard_pick_is_the_argmax_of_the_guard_scores(token, score):
    from glm_ms.decoding import guard_argmax
    row = np.zeros(8, np.float32)
    row[token] = score
    assert guard_argmax(token, score) == int(np.argmax(row))


def test_buckets():
    assert [bucket(n) for n in (1, 16, 17, 100, 256, 257, 600)] == [16, 16, 32, 128, 256, 512, 768]
    assert bucket(20, smallest=64) == 64


def test_prompts_of_three_lengths_compile_one_graph_per_bucket_plus_decode(tiny_dir, golden):
    from glm_ms import ChatGLMForConditionalGeneration
    fresh = ChatGLMForConditionalGeneration.from_pretrained(tiny_dir, dtype="float32")
    prompts = [golden[f"fwd{i}_input_ids"] for i in (0, 1, 2)]  # 4, 11 and 30 tokens
    buckets = {bucket(p.shape[1]) for p in prompts}
    outs = [fresh.generate(p, max_length=60) for p in prompts]  # one cache capacity bucket (64)
    compiles = graph_compilations(fresh)
    assert 0 < compiles <= len(buckets) + 1
    assert compiles == len(runner_for(fresh).shape_keys)  # MindSpore's count agrees with the shape keys
    # Nothing new to compile the second time, streaming included; results unchanged.
    for p, out in zip(prompts, outs):
        np.testing.assert_array_equal(fresh.generate(p, max_length=60), out)
        *_, last = fresh.stream_generate(p, max_length=60, include_last=True)
        np.testing.assert_array_equal(last, out)
    assert graph_compilations(fresh) == compiles
    # Another capacity and a beam batch swap the cache buffers; coming back reuses the first graphs and buffers.
    ids = golden["fwd1_input_ids"]
    np.testing.assert_array_equal(fresh.generate(ids, max_length=ids.shape[1] + 16, num_beams=4),
                                  golden["beam4_output_ids"])
    fresh.generate(prompts[0], max_length=200)
    before = graph_compilations(fresh)
    np.testing.assert_array_equal(fresh.generate(prompts[1], max_length=60), outs[1])
    assert graph_compilations(fresh) == before


def test_padded_prompt_keeps_eager_slots_and_masks(model, golden):
    ids = golden["fwd1_input_ids"]
    rule, positions = model.prompt_inputs(model.check_ids(ids))
    mask = rule.rows(0, ids.shape[1])
    dec = Decoder(model, ids, rule, positions, max_length=40, compiled=True)
    assert len(dec.pieces) == 1 and dec.pieces[0].compiled
    prompt = dec.pieces[0].inputs()
    seq, width, cap = ids.shape[1], prompt.ids.shape[1], dec.state.capacity
    assert (width, cap) == (16, 64)
    pad = width - seq
    np.testing.assert_array_equal(prompt.slots[pad:], np.arange(seq))           # real tokens: eager slots
    assert set(prompt.slots[:pad]) == set(range(cap - pad, cap))                # pads: the last slots
    assert prompt.mask[:, :, pad:, seq:].all()                                  # real rows never see a pad
    np.testing.assert_array_equal(prompt.mask[:, :, pad:, :seq], mask)
    np.testing.assert_array_equal(prompt.positions[..., pad:], positions)


@pytest.mark.parametrize("compiled", [True, False])
def test_both_paths_share_the_cache_bookkeeping_and_refuse_a_full_cache(model, golden, compiled):
    ids = golden["fwd0_input_ids"]
    mask, positions = model.prompt_inputs(model.check_ids(ids))
    seq = ids.shape[1]
    dec = Decoder(model, ids, mask, positions, max_length=seq + 2, compiled=compiled)
    logits = dec.prefill()
    np.testing.assert_allclose(logits, golden["steps_scores"][0], rtol=0, atol=1e-4 * np.abs(logits).max())
    token = np.argmax(logits, axis=-1)
    dec.step(token)
    dec.step(token)
    assert dec.state.length == seq + 2 and not dec.state.key_mask[:, :seq + 2].any()
    advanced = positions[..., -1] + np.array([0, 2])  # the block position moved on by two
    np.testing.assert_array_equal(dec.state.last_position[..., 0], advanced)
    with pytest.raises(GenerationError, match=f"KV cache full \\({seq + 2} tokens\\)"):
        dec.step(token)
