"""Prompt template, response clean-up and history fitting."""
import pytest

from glm_ms.chat import build_prompt, fit_prompt, process_response


def test_prompt_template():
    assert build_prompt("你好", []) == "你好"
    assert build_prompt("c", [("a", "b")]) == "[Round 0]\n问：a\n答：b\n[Round 1]\n问：c\n答："


def test_process_response_cases(golden_json):
    for case in golden_json["process_response_cases"]:
        assert process_response(case["in"]) == case["out"]


def test_oldest_rounds_dropped_to_fit(tokenizer):
    history = [("很长的问题" * 20, "很长的回答" * 20), ("短", "答")]
    ids = fit_prompt(tokenizer, "问题", history, max_length=60)
    assert ids == tokenizer.encode(build_prompt("问题", history[1:]))
    assert len(fit_prompt(tokenizer, "问题", history, max_length=2048)) > 100


def test_query_alone_too_long_and_empty_query(tokenizer, model):
    with pytest.raises(ValueError, match="max_length 10"):
        fit_prompt(tokenizer, "你好" * 20, [], max_length=10)
    with pytest.raises(ValueError, match="empty"):
        model.chat(tokenizer, "   ", history=[])


def test_chat_keeps_full_history_when_rounds_are_dropped(model, tokenizer):
    history = [("很长的问题" * 20, "很长的回答" * 20)]
    response, new_history = model.chat(tokenizer, "你好", history=history, max_length=40, do_sample=False)
    assert new_history[:1] == history and new_history[1] == ("你好", response)
    # Same answer as asking with no history: the only round did not fit.
    assert response == model.chat(tokenizer, "你好", history=[], max_length=40, do_sample=False)[0]
