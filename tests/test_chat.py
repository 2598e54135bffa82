"""ChatGLM-6B chat: response clean-up, history fitting, the family's defaults; every family's turn API."""
import pytest

from glm_ms import families
from glm_ms.chat import fit_prompt, process_response
from glm_ms.errors import GenerationError
from glm_ms.generation import InvalidScoreLogitsProcessor
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


def test_the_turn_api_is_what_chat_does(family):
    t = tiny(family)
    model, tok = t.model, t.tokenizer
    history, query = [("你好", "你好👋！有什么可以帮你的？")], "再见"
    ids = model.prompt_ids(tok, query, history, max_length=48)
    out = model.generate([ids], max_length=48, do_sample=False, eos_token_id=model.stop_ids(tok),
                         logits_processor=[InvalidScoreLogitsProcessor()])
    new = out[0, len(ids):].tolist()
    assert model.reply(model.answer_text(tok, new), query, history) == \
        model.chat(tok, query, history=history, max_length=48, do_sample=False)
    # max_length leaves out the oldest turns as chat does; None keeps them all
    alone = model.prompt_ids(tok, query, [])
    assert model.prompt_ids(tok, query, history, max_length=len(alone) + 1) == alone
    assert len(model.prompt_ids(tok, query, history)) > len(alone)
    with pytest.raises(GenerationError, match="max_length"):
        model.prompt_ids(tok, query, history, max_length=len(alone))


def test_roles_and_stop_ids_of_each_family(family):
    t = tiny(family)
    model, tok = t.model, t.tokenizer
    if family == "chatglm3":
        assert model.roles == ("system", "user", "assistant", "observation")
        assert model.stop_ids(tok) == [tok.eos_token_id, tok.get_command("<|user|>"), tok.get_command("<|observation|>")]
        assert model.prompt_ids(tok, "22C", [], role="observation") == \
            tok.build_chat_input("22C", history=[], role="observation")["input_ids"][0].tolist()
        response, history = model.reply("\n 好的", "问", [], role="user")
        assert (response, history[-2:]) == ("好的", [{"role": "user", "content": "问"},
                                                    {"role": "assistant", "metadata": "", "content": "好的"}])
    else:
        assert model.roles == ()
        assert model.stop_ids(tok) == [model.config.eos_token_id]
        with pytest.raises(GenerationError, match="user queries only"):
            model.prompt_ids(tok, "问", [], role="observation")
        assert model.reply(" 好的 ", "问", [("a", "b")]) == ("好的", [("a", "b"), ("问", "好的")])
