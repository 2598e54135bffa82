"""ChatGLM2-6B chat against the golden transcripts: prompt ids, chat, stream_chat, kept-cache turns, clean-up."""
import numpy as np
import pytest

from glm_ms.chat import ChatPast, process_response_glm2
from tests.support import as_json, tiny

FAMILY = "chatglm2"


@pytest.mark.parametrize("case", tiny(FAMILY).golden_json["process_response_cases"])
def test_process_response(case):
    assert process_response_glm2(case["in"]) == case["out"]


@pytest.mark.parametrize("case", tiny(FAMILY).golden_json["build_stream_inputs_cases"])
def test_stream_inputs_when_the_cache_is_kept(case):
    enc = tiny(FAMILY).model.build_stream_inputs(tiny(FAMILY).tokenizer, case["query"], case["history"])
    assert enc["input_ids"].tolist() == [case["input_ids"]]
    assert enc["position_ids"].tolist() == [case["position_ids"]]
    assert enc["attention_mask"].tolist() == [case["attention_mask"]]


def test_chat_greedy_transcript():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    history = []
    for turn in tiny(FAMILY).golden_json["chat_greedy"]:
        response, history = lm.chat(tok, turn["query"], history=history, max_length=turn["max_length"],
                                    do_sample=False)
        assert response == turn["response"]
        assert as_json(history) == turn["history"]


def test_stream_chat_greedy_transcript():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    history = []
    for turn in tiny(FAMILY).golden_json["stream_chat_greedy"]:
        partials = []
        for response, history in lm.stream_chat(tok, turn["query"], history=history, max_length=turn["max_length"],
                                                do_sample=False):
            partials.append(response)
        assert partials == turn["partials"]  # empty and '�'-ending partials skipped, the last step included
        assert as_json(history) == turn["history"]


def test_stream_chat_with_kept_cache_transcript():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    history, past = [], None
    for turn in tiny(FAMILY).golden_json["stream_chat_past_key_values_greedy"]:
        assert (past.past_length if past else 0) == turn["past_length"]
        fed = (lm.build_stream_inputs(tok, turn["query"], history) if past else
               lm.build_inputs(tok, turn["query"], history))["input_ids"][0].tolist()
        assert fed == turn["input_ids"]
        partials = []
        for response, history, past in lm.stream_chat(tok, turn["query"], history=history, past_key_values=past,
                                                      max_length=turn["max_length"], do_sample=False,
                                                      return_past_key_values=True):
            partials.append(response)
        assert isinstance(past, ChatPast) and past.past_length == turn["past_length_after"]
        assert partials == turn["partials"]
        assert as_json(history) == turn["history"]


def test_chat_drops_oldest_rounds_to_fit_and_rejects_what_cannot(monkeypatch):
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    history = [("你好" * 20, "好" * 20)] * 3
    fed = []
    monkeypatch.setattr(type(lm), "generate", lambda self, ids, **kw: fed.append(ids[0]) or np.array(ids))
    _, new_history = lm.chat(tok, "再见", history, max_length=40)
    assert fed == [lm.build_inputs(tok, "再见", [])["input_ids"][0].tolist()]  # every old round dropped
    assert new_history[:3] == history  # the returned history keeps them
    monkeypatch.undo()
    with pytest.raises(ValueError, match="max_length"):
        lm.chat(tok, "你好" * 50, max_length=10)
    with pytest.raises(TypeError):
        list(lm.stream_chat(tok, "hi", past_key_values=((1, 2),), return_past_key_values=True))


def test_sampled_chat_is_reproducible_with_a_seed():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    a, _ = lm.chat(tok, "你好", max_length=30, seed=7)
    b, _ = lm.chat(tok, "你好", max_length=30, seed=7)
    assert a == b and isinstance(a, str)


def test_the_app_call_shape_yields_what_chat_returns():
    """glm-ms-web / glm-ms-chat call stream_chat(tokenizer, query, history, include_last=True, ...)."""
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    turn = tiny(FAMILY).golden_json["chat_greedy"][0]
    streamed = list(lm.stream_chat(tok, turn["query"], [], include_last=True, max_length=turn["max_length"],
                                   do_sample=False))
    assert as_json(streamed[-1]) == [turn["response"], turn["history"]]
