"""The terminal chat and the page work for every family: `--model` decides, the banner names it, the page's
answers (on the serving engine) are `model.chat`'s."""
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


def test_page_answers_equal_chat_for_each_family(family):
    from glm_ms.chat_app import ChatHandlers
    from glm_ms.serve.engine import Engine
    from glm_ms.serve.service import ChatService
    from tests.serve.servers import fresh_model
    t = tiny(family)
    engine = Engine(fresh_model(family), slots=2, capacity=128)
    try:
        chat = ChatHandlers(ChatService(engine, t.tokenizer, family))
        turns, history = [], []
        for query, seed in (("你好", 5), ("再见", 6)):  # the second turn's history does not all fit in 40 tokens
            updates = list(chat.respond(query, turns, 40, 0.8, 0.8, seed, "session"))
            expected, _ = t.model.chat(t.tokenizer, query, history=history, max_length=40, top_p=0.8,
                                       temperature=0.8, do_sample=True, seed=seed)
            _, _, turns, shown = updates[-1]
            history = history + [(query, response_text(expected))]
            assert shown == history
            assert len(updates) > 2  # the answer arrived in steps
    finally:
        engine.shutdown()


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
