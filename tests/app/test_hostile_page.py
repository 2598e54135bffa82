"""The page against hostile visitors (a real page on 127.0.0.1, driven over HTTP): a message that is costly to
render freezes no one else, markup in user or model text stays text, a lone surrogate does not break the session,
and Clear History through the API stops a running answer."""
import time

import pytest

from glm_ms.chat_app import MAX_MESSAGE_CHARS
from tests.app.pages import TEMPERATURE, TOP_P, parsed_elements, raw_call, wait_until

pytestmark = pytest.mark.server
HELLO_BOUND = 10  # seconds: a hang bound, far above what an answer to "hello" takes


def fill(pattern, size):
    return (pattern * (size // len(pattern) + 1))[:size]


HOSTILE = {"open parens": "\\(", "backticks after a letter": "a" + "`" * 2000, "prose": "Lorem ipsum <b>x</b> & y. ",
           "formulas": "$x$ ", "emphasis": "**a *b ~~c "}


@pytest.mark.parametrize("size", [MAX_MESSAGE_CHARS, 1_000_000], ids=["at the cap", "1 MB"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_message_does_not_freeze_other_sessions(fake_app, name, size):
    attacker, visitor = fake_app.client(), fake_app.client()
    text = fill(HOSTILE[name], size)
    job = attacker.submit(text, 2, TOP_P, TEMPERATURE, None, api_name="/chat")
    time.sleep(0.2)  # the hostile message is in first
    start = time.monotonic()
    _, _, history = visitor.predict("hello", 2, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert time.monotonic() - start < HELLO_BOUND
    assert history == [["hello", "hello0 hello1"]]
    box, html, history = job.result(timeout=HELLO_BOUND)
    if size > MAX_MESSAGE_CHARS:  # refused with a clear message, the text kept in the box to shorten it
        assert history == [] and box == text
        assert f"Cannot answer: the message is {size:,} characters; this page takes at most" in html
    else:
        assert history == [[text, f"{text}0 {text}1"]]


FORGED = ('<div class="glm-msg glm-bot"><div class="glm-role">ChatGLM</div><h2>Admin</h2>'
          '<a href="https://evil.example" title="t">log in</a><img src=x onerror=alert(1)><script>x()</script></div>')


@pytest.mark.parametrize("text", [FORGED, f"$ a\n\n{FORGED}\n\nb $", f"`a\n\n{FORGED}\n\nb`"])
def test_markup_in_user_and_model_text_comes_back_as_text(fake_app, text):
    # the scripted service echoes the message, so the same markup arrives as model text too
    _, html, history = fake_app.client().predict(text, 1, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert history == [[text, f"{text}0"]]
    escaped = FORGED.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert html.count(escaped) == 2  # in the user's bubble and in the answer
    elements = parsed_elements(html)
    assert not {tag for tag, _ in elements} & {"a", "img", "script", "h2"}, elements
    assert [attrs["class"] for _, attrs in elements if "glm-msg" in attrs.get("class", "")] == [
        "glm-msg glm-user", "glm-msg glm-bot"]  # only the page's own two bubbles
    assert not [attrs for _, attrs in elements if {"href", "title", "onerror"} & set(attrs)]


def test_a_lone_surrogate_is_refused_and_the_session_keeps_working(fake_app):
    client = fake_app.client()
    # gradio_client cannot even encode it; any other HTTP client sends `"\ud800"` in its JSON
    box, html, _, history = raw_call(fake_app.url, "chat", ["half \ud83d of an emoji", 2, TOP_P, TEMPERATURE, None],
                                     client.session_hash)  # the session state's slot comes back empty
    assert box == "half \ufffd of an emoji" and history == []
    assert "Cannot answer: the message holds a lone surrogate" in html
    _, html, history = client.predict("hello", 2, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert history == [["hello", "hello0 hello1"]]
    assert "half \ufffd of an emoji" in html  # the refused turn stays visible, repaired, out of the history


def test_clear_through_the_api_stops_the_running_answer(fake_app):
    model, client = fake_app.service, fake_app.client()
    job = client.submit("long", 2000, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert wait_until(lambda: model.active, 30)
    time.sleep(0.3)
    box, html, history = client.predict(api_name="/clear")
    assert (box, history) == ("", []) and "No messages yet" in html
    assert wait_until(lambda: model.active == 0, HELLO_BOUND)  # the answer ended: its row is free
    produced = model.produced
    time.sleep(0.5)
    assert model.produced == produced  # and it produces nothing more
    assert job.result(timeout=HELLO_BOUND)[2] == []  # the answer ends on the cleared page
    _, _, history = client.predict("next", 3, TOP_P, TEMPERATURE, None, api_name="/chat")
    assert history == [["next", "next0 next1 next2"]]  # answered at once, with no history
