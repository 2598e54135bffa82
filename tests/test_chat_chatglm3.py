"""ChatGLM3-6B chat against the golden transcripts: role-based history, system prompt, stop tokens, the dropped
last token, kept-cache turns, and tool-call parsing without eval."""
import pytest

from glm_ms.chat import ChatPast, parse_tool_call, process_response_glm3
from tests.support import as_json, tiny

FAMILY = "chatglm3"


@pytest.mark.parametrize("case", tiny(FAMILY).golden_json["process_response_cases"])
def test_process_response(case):
    history_in = as_json(case["history_in"])
    response, history = process_response_glm3(case["output"], history_in)
    assert response == case["response"]
    assert history == case["history"]
    assert history_in == case["history_in"]  # the caller's history is not modified


def test_tool_calls_are_parsed_never_evaluated():
    assert parse_tool_call('tool_call(symbol="10111", n=3, opts={"a": [1, 2]})') == {
        "symbol": "10111", "n": 3, "opts": {"a": [1, 2]}}
    assert parse_tool_call('{"city": "北京"}') == {"city": "北京"}
    for hostile in ('tool_call(x=__import__("os").system("true"))', '__import__("os")', "tool_call(1)",
                    "exec('1')", "tool_call(x=open('f'))", "tool_call(**{'a': 1})", "tool_call(x="):
        assert parse_tool_call(hostile) is None
    tools = [{"role": "system", "content": "s", "tools": []}]
    reply = "track\n ```python\ntool_call(symbol=__import__('os').getcwd())\n```"
    response, history = process_response_glm3(reply, tools)
    assert response == {"name": "track", "content": " ```python\ntool_call(symbol=__import__('os').getcwd())\n```"}
    assert history[-1]["metadata"] == "track"


def test_chat_greedy_transcript():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    history = []
    for turn in tiny(FAMILY).golden_json["chat_greedy"]:
        before = as_json(history)
        response, history = lm.chat(tok, turn["query"], history=history, max_length=turn["max_length"],
                                    do_sample=False)
        assert response == turn["response"]
        assert history == turn["history"]
        assert history[:len(before)] == before


def test_chat_with_system_message():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    for turn in tiny(FAMILY).golden_json["chat_system_greedy"]:
        history_in = as_json(turn["history_in"])
        response, history = lm.chat(tok, turn["query"], history=history_in, max_length=turn["max_length"],
                                    do_sample=False)
        assert response == turn["response"]
        assert history == turn["history"]
        assert history_in == turn["history_in"]


def test_stream_chat_greedy_transcript():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    history = []
    for turn in tiny(FAMILY).golden_json["stream_chat_greedy"]:
        partials = []
        for response, history in lm.stream_chat(tok, turn["query"], history=history, max_length=turn["max_length"],
                                                do_sample=False):
            partials.append(response)
        assert partials == turn["partials"]
        assert history == turn["history"]


def test_stream_chat_with_kept_cache_transcript():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    history, past = [], None
    for turn in tiny(FAMILY).golden_json["stream_chat_past_key_values_greedy"]:
        assert (past.past_length if past else 0) == turn["past_length"]
        # With a kept cache only the new message is fed, [gMASK] sop included, as upstream.
        fed = tok.build_chat_input(turn["query"], history=[] if past else history)["input_ids"][0].tolist()
        assert fed == turn["input_ids"]
        partials = []
        for response, history, past in lm.stream_chat(tok, turn["query"], history=history, past_key_values=past,
                                                      max_length=turn["max_length"], do_sample=False,
                                                      return_past_key_values=True):
            partials.append(response)
        assert isinstance(past, ChatPast) and past.past_length == turn["past_length_after"]
        assert partials == turn["partials"]
        assert history == turn["history"]


def test_observation_turn_round_trips_through_history():
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    case = tiny(FAMILY).golden_json["build_chat_input_cases"][-1]
    assert case["role"] == "observation"
    response, history = lm.chat(tok, case["query"], history=as_json(case["history"]), role="observation",
                                max_length=len(case["input_ids"]) + 8, do_sample=False)
    assert history[:len(case["history"])] == case["history"]
    assert history[len(case["history"])] == {"role": "observation", "content": case["query"]}
    assert history[-1]["role"] == "assistant"
    with pytest.raises(ValueError, match="role"):
        lm.chat(tok, "hi", history=[{"role": "bot", "content": "x"}])


def test_pair_history_and_the_app_call_shape():
    """(query, response) pairs, as the web page and terminal chat keep them, are read as user/assistant messages."""
    lm, tok = tiny(FAMILY).model, tiny(FAMILY).tokenizer
    turn = tiny(FAMILY).golden_json["chat_greedy"][1]
    pairs = [(m["content"], n["content"]) for m, n in zip(turn["history"][:-2:2], turn["history"][1:-2:2])]
    response, history = lm.chat(tok, turn["query"], pairs, max_length=turn["max_length"], do_sample=False)
    assert (response, history) == (turn["response"], turn["history"])
    streamed = list(lm.stream_chat(tok, turn["query"], pairs, include_last=True, max_length=turn["max_length"],
                                   do_sample=False))
    assert streamed[-1] == (turn["response"], turn["history"])
    without_last = list(lm.stream_chat(tok, turn["query"], pairs, include_last=False, max_length=turn["max_length"],
                                       do_sample=False))
    assert len(without_last) in (len(streamed), len(streamed) - 1)
    with pytest.raises(ValueError, match="pairs"):
        lm.chat(tok, "hi", history=["just a string"])
