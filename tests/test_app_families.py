"""The terminal chat and the page's loading work for every family: `--model` decides."""
import io

import pytest

from glm_ms.cli_chat import answer
from glm_ms.loading import chat_defaults, load_model, response_text

FIXTURES = "tests/fixtures"


@pytest.mark.parametrize("folder, family_defaults", [
    ("tiny-chatglm-6b", {"max_length": 2048, "top_p": 0.7, "temperature": 0.95}),
    ("tiny-chatglm2-6b", {"max_length": 8192, "top_p": 0.8, "temperature": 0.8}),
    ("tiny-chatglm3-6b", {"max_length": 8192, "top_p": 0.8, "temperature": 0.8}),
])
def test_terminal_answer_equals_chat_for_each_family(folder, family_defaults):
    model, tokenizer = load_model(f"{FIXTURES}/{folder}")
    assert chat_defaults(model) == family_defaults
    settings = dict(max_length=40, top_p=0.8, temperature=0.8, do_sample=True, seed=5)
    expected, expected_history = model.chat(tokenizer, "你好", history=[], **settings)
    out = io.StringIO()
    history = answer(model, tokenizer, "你好", [], settings, out=out)
    assert response_text(expected) in out.getvalue()
    assert history == expected_history


def test_tool_calls_are_shown_as_text():
    assert response_text("plain") == "plain"
    assert response_text({"name": "weather", "parameters": {"city": "北京"}}) == 'weather: {"city": "北京"}'
    assert response_text({"name": "x", "content": "raw"}) == "x: raw"
