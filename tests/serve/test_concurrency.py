"""Many clients at once: batched answers equal solo answers; a client that leaves frees its row; a full queue."""
import threading
import time

import httpx
import openai
import pytest

from tests.serve.servers import HANG_S, serving

pytestmark = pytest.mark.server
FAMILY = "chatglm-6b"
QUESTIONS = ["你好", "hello there, who are you?", "讲一个很长的故事，关于山和海", "1+1=?", "天气", "why is the sky blue",
             "写一首诗", "ok"]


class Sleepy:
    """A logits processor that makes each decode step take a while, so a request stays in its row long enough."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, input_ids, scores):
        time.sleep(self.seconds)
        return scores


def streamed_ids(server, question, max_tokens, **sampling):
    """The token ids a streaming client receives, chunk by chunk."""
    c = openai.OpenAI(base_url=server.url, api_key="unused", timeout=HANG_S, max_retries=0)
    chunks = c.chat.completions.create(model=f"tiny-{FAMILY}", messages=[{"role": "user", "content": question}],
                                       max_tokens=max_tokens, stream=True, extra_body={"return_token_ids": True},
                                       **sampling)
    return sum((ch.choices[0].model_extra["token_ids"] for ch in chunks if ch.choices), [])


def metrics(server):
    text = httpx.get(server.base + "/metrics", timeout=HANG_S).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_eight_concurrent_streams_get_their_solo_token_ids(servers):
    server, service = servers(FAMILY, slots=4)
    jobs = [(q, 6 + 3 * i, {"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "seed": i})
            for i, q in enumerate(QUESTIONS)]
    solo = [streamed_ids(server, q, n, **s) for q, n, s in jobs]
    together = [None] * len(jobs)

    def run(i):
        q, n, s = jobs[i]
        together[i] = streamed_ids(server, q, n, **s)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S)
    assert together == solo
    assert all(len(ids) >= 1 for ids in solo)
    assert metrics(server)["glm_ms_active_slots"] == 0


@pytest.fixture(scope="module")
def slow_server():
    with serving(FAMILY, slots=2, max_queue=1, logits_processor=[Sleepy(0.02)]) as (server, service):
        yield server, service


def test_a_client_that_disconnects_frees_its_row(slow_server):
    server, _ = slow_server
    before = metrics(server).get('glm_ms_finished_requests_total{reason="cancelled"}', 0)
    body = {"model": f"tiny-{FAMILY}", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 200,
            "temperature": 0, "stream": True}
    other = {}
    finisher = threading.Thread(target=lambda: other.setdefault("ids", streamed_ids(server, "ok", 20,
                                                                                     temperature=0)))
    with httpx.Client(timeout=HANG_S) as http:
        with http.stream("POST", server.url + "/chat/completions", json=body) as response:
            finisher.start()
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk: the request holds a row now
            deadline = time.monotonic() + HANG_S
            while metrics(server)["glm_ms_active_slots"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        # leaving the block closed the connection mid-answer
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        now = metrics(server)
        if now.get('glm_ms_finished_requests_total{reason="cancelled"}', 0) == before + 1:
            break
        time.sleep(0.05)
    assert now.get('glm_ms_finished_requests_total{reason="cancelled"}', 0) == before + 1
    finisher.join(HANG_S)
    assert other["ids"] == streamed_ids(server, "ok", 20, temperature=0)
    assert metrics(server)["glm_ms_active_slots"] == 0


def test_a_full_queue_answers_429(slow_server):
    server, _ = slow_server
    body = {"model": f"tiny-{FAMILY}", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 100,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=HANG_S) as http, open_streams(http, server, body, 3):
        deadline = time.monotonic() + HANG_S
        while metrics(server)["glm_ms_queue_length"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = http.post(server.url + "/chat/completions", json=dict(body, stream=False))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and "max_queue 1" in error["message"]
        assert metrics(server)["glm_ms_rejected_requests_total"] >= 1


class open_streams:
    """Open `count` streaming requests (2 take the rows, 1 waits in the queue) and close them on exit."""

    def __init__(self, http, server, body, count):
        self.http, self.server, self.body, self.count = http, server, body, count

    def __enter__(self):
        self.responses = []
        for _ in range(self.count):
            request = self.http.build_request("POST", self.server.url + "/chat/completions", json=self.body)
            self.responses.append(self.http.send(request, stream=True))
        return self.responses

    def __exit__(self, *exc):
        for response in self.responses:
            response.close()
