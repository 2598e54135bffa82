"""The engine alone: batched rows give each request its solo answer; joining and leaving never recompile."""
import threading
import time

import pytest

from glm_ms.generation import InvalidScoreLogitsProcessor
from glm_ms.serve.engine import Engine, EngineStopped, Finished, QueueFull, RequestTooLong, TokenEvent
from glm_ms.serve.sampling import Sampling
from tests.serve.servers import fresh_model
from tests.support import FAMILIES, tiny

QUESTIONS = ["你好", "hello world, how are you today?", "什么是机器学习？请详细地解释一下。", "a", "天气不错"]


def compiled_graphs():
    from mindspore.graph import api
    return len(api.ms_compile_cache)


def answer(handle):
    ids, finished = handle.tokens()
    return ids + ([finished.stop_token] if finished.stop_token is not None else [])


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request):
    e = Engine(fresh_model(request.param), slots=3, capacity=128)
    e.family = request.param
    yield e
    e.shutdown()


def test_batched_rows_answer_as_each_request_alone(engine):
    t = tiny(engine.family)
    prompts = [t.tokenizer.encode(q) for q in QUESTIONS]
    new = [12, 5, 16, 9, 3]
    greedy = [t.model.generate([p], max_new_tokens=n, do_sample=False)[0, len(p):].tolist()
              for p, n in zip(prompts, new)]
    sampled = t.model.generate([prompts[1]], max_new_tokens=10, do_sample=True, temperature=0.7, top_p=0.9,
                               top_k=40, seed=3, compiled=False,
                               logits_processor=[InvalidScoreLogitsProcessor()])[0, len(prompts[1]):].tolist()
    # five greedy and one sampled request on three rows: some wait, rows are reused as others leave
    handles = [engine.submit(p, n) for p, n in zip(prompts, new)]
    handles.append(engine.submit(prompts[1], 10, Sampling(temperature=0.7, top_p=0.9, top_k=40, seed=3)))
    assert [answer(h) for h in handles] == greedy + [sampled]
    assert engine.stats() == {"queued": 0, "active": 0, "slots": 3}


def test_joining_and_leaving_rows_never_recompiles(engine):
    tok = tiny(engine.family).tokenizer
    engine.warmup(tok.encode("hi"))
    before = compiled_graphs()
    handles = [engine.submit(tok.encode(q), 4 + i, Sampling(temperature=0.9 if i % 2 else 0, seed=i))
               for i, q in enumerate(QUESTIONS[:4] * 2)]
    assert all(len(h.tokens()[0]) >= 1 for h in handles)
    assert compiled_graphs() == before


def test_too_long_is_refused_up_front_naming_the_limit(engine):
    with pytest.raises(RequestTooLong, match=f"context length is {engine.capacity} tokens"):
        engine.submit([5] * 100, engine.capacity - 99)
    with pytest.raises(RequestTooLong):
        engine.submit([5] * (engine.capacity + 1))


def test_cancel_frees_the_row_and_ends_the_stream():
    e = Engine(fresh_model("chatglm2"), slots=1, max_queue=1, capacity=256,
               logits_processor=[lambda ids, scores: (time.sleep(0.01), scores)[1]])
    try:
        tok = tiny("chatglm2").tokenizer
        running = e.submit(tok.encode("你好"), 200)
        events = iter(running)
        assert isinstance(next(events), TokenEvent)
        waiting = e.submit(tok.encode("hi"), 3)
        with pytest.raises(QueueFull):
            e.submit(tok.encode("hi"), 3)
        running.cancel()
        rest = list(events)
        assert isinstance(rest[-1], Finished) and rest[-1].reason == "cancelled"
        assert rest[-1].completion_tokens < 200
        assert waiting.tokens()[1].reason in ("length", "stop")  # it got the freed row
        assert e.stats()["active"] == 0
        queued_then_cancelled = e.submit(tok.encode("hi"), 3)
        queued_then_cancelled.cancel()
        assert queued_then_cancelled.tokens()[1].reason in ("cancelled", "length", "stop")
    finally:
        e.shutdown()


def test_cancel_frees_the_row_before_the_next_step():
    e = Engine(fresh_model("chatglm2"), slots=1, capacity=256,
               logits_processor=[lambda ids, scores: (time.sleep(0.01), scores)[1]])
    try:
        running = e.submit(tiny("chatglm2").tokenizer.encode("你好"), 200)
        late_steps = []  # decode steps that began after cancel() and still decoded its row
        step = e.rows.step

        def recording(tokens, active, greedy):
            if running.cancelled and active[0]:
                late_steps.append(1)
            return step(tokens, active, greedy)

        e.rows.step = recording
        events = iter(running)
        next(events), next(events)
        running.cancel()
        assert list(events)[-1].reason == "cancelled"
        assert e.stats()["active"] == 0
        assert len(late_steps) <= 1  # at most the step that had already begun when cancel() came
    finally:
        e.shutdown()


def test_shutdown_ends_running_and_queued_requests():
    e = Engine(fresh_model("chatglm-6b"), slots=1, capacity=256,
               logits_processor=[lambda ids, scores: (time.sleep(0.01), scores)[1]])
    tok = tiny("chatglm-6b").tokenizer
    running, queued = e.submit(tok.encode("你好"), 200), e.submit(tok.encode("hi"), 5)
    next(iter(running))
    threading.Thread(target=e.shutdown).start()
    for handle in (running, queued):
        with pytest.raises(EngineStopped):
            handle.tokens()
    with pytest.raises(EngineStopped):
        e.submit(tok.encode("hi"), 2)
    assert not e.running
