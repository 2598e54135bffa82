"""The terminal chat and the page's loading work for every family: `--model` decides, the banner names it."""
import dataclasses
import io

from glm_ms import families
from glm_ms.cli_chat import answer, bot_label, chat_loop
from glm_ms.loading import chat_defaults, load_model, response_text
from tests.support import tiny


def test_terminal_answer_equals_chat_for_each_family(family):
    model, tokenizer = load_model(tiny(family).dir)
    row = families.get(family)
    assert chat_defaults(model) == dataclasses.asdict(row.chat)
    settings = dict(max_length=40, top_p=0.8, temperature=0.8, do_sample=True, seed=5)
    expected, expected_history = model.chat(tokenizer, "你好", history=[], **settings)
    out = io.StringIO()
    history = answer(model, tokenizer, "你好", [], settings, out=out)
    assert out.getvalue().startswith("\n" + bot_label(row.title))
    assert response_text(expected) in out.getvalue()
    assert history == expected_history


def test_terminal_banner_names_the_family(family):
    model, tokenizer = tiny(family).model, tiny(family).tokenizer
    title = families.get(family).title
    out = io.StringIO()
    assert chat_loop(model, tokenizer, {}, inp=io.StringIO("stop\n"), out=out) == 0
    assert out.getvalue().startswith(f"欢迎使用 {title} 模型，")
    assert bot_label(title) == f"{title}："


def test_tool_calls_are_shown_as_text():
    assert response_text("plain") == "plain"
    assert response_text({"name": "weather", "parameters": {"city": "北京"}}) == 'weather: {"city": "北京"}'
    assert response_text({"name": "x", "content": "raw"}) == "x: raw"
