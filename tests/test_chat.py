"""ChatGLM-6B chat: response clean-up, history fitting, the family's defaults."""
import pytest

from glm_ms import families
from glm_ms.chat import fit_prompt, process_response
from glm_ms.errors import GenerationError
from glm_ms.prompts import chatglm_prompt
from tests.support import FAMILIES, tiny


def test_process_response_cases(golden_json):
    for case in golden_json["process_response_cases"]:
        assert process_response(case["in"]) == case["out"]


def test_oldest_rounds_dropped_to_fit(tokenizer):
    history = [("很长的问题" * 20, "很长的回答" * 20), ("短", "答")]
    ids = fit_prompt(tokenizer, "问题", history, max_length=60)
    assert ids == tokenizer.encode(chatglm_prompt("问题", history[1:]))
    assert len(fit_prompt(tokenizer, "问题", history, max_length=2048)) > 100


def test_query_alone_too_long_and_empty_query(tokenizer, model):
    with pytest.raises(GenerationError, match="max_length 10"):
        fit_prompt(tokenizer, "你好" * 20, [], max_length=10)
    with pytest.raises(ValueError, match="empty"):
        model.chat(tokenizer, "   ", history=[])


def test_chat_keeps_full_history_when_rounds_are_dropped(model, tokenizer):
    history = [("很长的问题" * 20, "很长的回答" * 20)]
    response, new_history = model.chat(tokenizer, "你好", history=history, max_length=40, do_sample=False)
    assert new_history[:1] == history and new_history[1] == ("你好", response)
    # Same answer as asking with no history: the only round did not fit.
    assert response == model.chat(tokenizer, "你好", history=[], max_length=40, do_sample=False)[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_chat_defaults_come_from_the_family_table(name, monkeypatch):
    lm = tiny(name).model
    row = families.get(name).chat
    assert lm.chat_settings(None, None, None) == (row.max_length, row.top_p, row.temperature)
    assert lm.chat_settings(64, 0.5, 0.1) == (64, 0.5, 0.1)
    seen = {}
    monkeypatch.setattr(type(lm), "generate", lambda self, ids, **kw: seen.update(kw) or __import__("numpy").array(ids))
    lm.chat(tiny(name).tokenizer, "你好", history=[])
    assert (seen["max_length"], seen["top_p"], seen["temperature"]) == (row.max_length, row.top_p, row.temperature)
