"""The page on the serving engine (in process, on the bundled demo model): visitors are decoded together, each
gets the answer `model.chat` gives alone, and Stop frees the visitor's row in the engine."""
import time

import pytest

from glm_ms.loading import load_model
from tests.app.pages import MAX_LENGTH, TEMPERATURE, TOP_P, free_port, wait_until

pytestmark = pytest.mark.server
HANG_S = 120  # a hang bound, far above what these answers take


class StepRecorder:
    """Wraps the engine's decode step: records how many rows each step decoded; the first step waits (up to a hang
    bound) until `together` requests are in the engine, so that they are sure to overlap."""

    def __init__(self, engine, together=1):
        self.engine, self.together, self.active = engine, together, []
        self.step = engine.rows.step
        engine.rows.step = self

    def __call__(self, tokens, active, greedy):
        if not self.active:
            wait_until(lambda: sum(self.engine.stats()[k] for k in ("queued", "active")) >= self.together, HANG_S)
        self.active.append(int(active.sum()))
        return self.step(tokens, active, greedy)

    def remove(self):
        self.engine.rows.step = self.step


@pytest.fixture(scope="module")
def reference():
    """The demo model for reference answers (the engine has a model object of its own)."""
    return load_model("demo")


@pytest.fixture(scope="module")
def engine_page():
    """(page url, ChatService) of `build_demo` on an engine of 2 slots; every answer waits 20 ms per token, so a
    long one is still running when the test stops it."""
    pytest.importorskip("gradio")
    from glm_ms import chat_app
    from glm_ms.serve.engine import Engine
    from glm_ms.serve.service import ChatService
    model, tokenizer = load_model("demo")
    engine = Engine(model, slots=2, capacity=512, logits_processor=[lambda ids, scores: (time.sleep(0.02), scores)[1]])
    service = ChatService(engine, tokenizer, "demo")
    demo = chat_app.build_demo(service, max_length=MAX_LENGTH).queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", service
    finally:
        demo.close()
        engine.shutdown()


def solo(reference, query, seed, max_length=MAX_LENGTH):
    model, tokenizer = reference
    return model.chat(tokenizer, query, history=[], max_length=max_length, top_p=TOP_P, temperature=TEMPERATURE,
                      do_sample=True, seed=seed)[0]


def test_two_visitors_are_decoded_together_each_as_alone(engine_page, reference):
    from gradio_client import Client
    url, service = engine_page
    recorder = StepRecorder(service.engine, together=2)
    try:
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        job_a = a.submit("你好", MAX_LENGTH, TOP_P, TEMPERATURE, 1, api_name="/chat")
        job_b = b.submit("写一首诗", MAX_LENGTH, TOP_P, TEMPERATURE, 2, api_name="/chat")
        history_a, history_b = job_a.result(timeout=HANG_S)[2], job_b.result(timeout=HANG_S)[2]
    finally:
        recorder.remove()
    assert max(recorder.active) == 2  # one decode step served both visitors
    assert history_a == [["你好", solo(reference, "你好", 1)]]
    assert history_b == [["写一首诗", solo(reference, "写一首诗", 2)]]


def test_stop_frees_the_row(engine_page):
    from gradio_client import Client
    url, service = engine_page
    engine = service.engine
    cancelled = engine.metrics.finished.get("cancelled", 0)
    client = Client(url, verbose=False)
    job = client.submit("讲一个很长的故事", 400, TOP_P, TEMPERATURE, 7, api_name="/chat")
    assert wait_until(lambda: engine.stats()["active"] == 1 and len(job.outputs()) > 2, HANG_S)
    assert job.cancel()  # what the Stop button does (cancels=)
    assert wait_until(lambda: engine.stats()["active"] == 0, HANG_S)
    assert engine.metrics.finished.get("cancelled", 0) == cancelled + 1  # ended by Stop, not by its length
    html, history = client.predict(api_name="/redraw")
    assert history[0][0] == "讲一个很长的故事" and history[0][1] and "glm-pending" not in html


def test_clear_through_the_api_frees_the_row(engine_page):
    from gradio_client import Client
    url, service = engine_page
    engine = service.engine
    client = Client(url, verbose=False)
    job = client.submit("讲一个很长的故事", 400, TOP_P, TEMPERATURE, 8, api_name="/chat")
    assert wait_until(lambda: engine.stats()["active"] == 1, HANG_S)
    box, html, history = client.predict(api_name="/clear")
    assert (box, history) == ("", []) and "No messages yet" in html
    assert wait_until(lambda: engine.stats()["active"] == 0, HANG_S)
    assert job.result(timeout=HANG_S)[2] == []  # the answer ends on the cleared page


def test_a_waiting_visitor_gets_a_row_when_one_leaves(engine_page, reference):
    from gradio_client import Client
    url, service = engine_page
    clients = [Client(url, verbose=False) for _ in range(3)]  # one more than the engine's slots
    jobs = [c.submit("你好", 24, TOP_P, TEMPERATURE, 20 + i, api_name="/chat") for i, c in enumerate(clients)]
    results = [job.result(timeout=HANG_S)[2] for job in jobs]
    assert results == [[["你好", solo(reference, "你好", 20 + i, 24)]] for i in range(3)]
