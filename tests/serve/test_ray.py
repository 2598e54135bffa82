"""Ray Serve scale-out: two CPU replicas of the demo model behind one endpoint; losing one leaves the other serving."""
import json
import socket
import threading
import time

import httpx
import pytest

from tests.serve.servers import HANG_S

pytestmark = [pytest.mark.server, pytest.mark.slow]
ROUNDS = 3          # requests per client
CLIENTS = 4
LONG = 200          # new tokens per request: long enough to be in flight when a replica goes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server():
    ray = pytest.importorskip("ray")
    from ray import serve
    from glm_ms.serve.ray_app import build_app
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(["--model", "demo", "--replicas", "2", "--replica-cpus", "0.5", "--slots", "2",
                             "--max-model-len", "256"]), name="glm_ms", route_prefix="/")
        yield f"http://127.0.0.1:{port}", ray
    finally:
        serve.shutdown()
        ray.shutdown()


def ask(base, question, max_tokens):
    """('ok', token ids) for a streamed answer, or ('error', what went wrong): never waits past HANG_S."""
    body = {"model": "glm-ms-demo", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "return_token_ids": True}
    ids = []
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=HANG_S) as response:
            if response.status_code != 200:
                return "error", f"HTTP {response.status_code}"
            for line in response.iter_lines():
                if not line:
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return "ok", ids
                event = json.loads(data)
                if "error" in event:
                    return "error", event["error"]["message"]
                ids += event["choices"][0].get("token_ids", []) if event["choices"] else []
    except httpx.HTTPError as err:
        return "error", type(err).__name__
    return "error", "stream ended without [DONE]"


def replicas(ray):
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::")]


def test_two_replicas_serve_four_clients_and_survive_losing_one(ray_server):
    base, ray = ray_server
    assert len(replicas(ray)) == 2
    questions = [f"问题{i}" for i in range(CLIENTS)]
    solo = {q: ask(base, q, LONG) for q in questions}
    assert all(kind == "ok" and ids for kind, ids in solo.values())
    results = {q: [] for q in questions}
    first_round = threading.Barrier(CLIENTS + 1)

    def client(q):
        for round_ in range(ROUNDS):
            start = time.monotonic()
            results[q].append((start, ask(base, q, LONG)))
            if round_ == 0:
                first_round.wait(HANG_S)

    threads = [threading.Thread(target=client, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    first_round.wait(HANG_S)
    time.sleep(0.2)  # the second round is in flight on both replicas
    victim = replicas(ray)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed = time.monotonic()
    for t in threads:
        t.join(HANG_S)
    assert not any(t.is_alive() for t in threads), "a client hung"
    outcomes = [(at, kind, value, q) for q in questions for at, (kind, value) in results[q]]
    assert len(outcomes) == CLIENTS * ROUNDS
    for _, kind, value, q in outcomes:
        assert kind in ("ok", "error")
        if kind == "ok":
            assert value == solo[q][1]  # whichever replica answered, the answer is the model's
        else:
            assert isinstance(value, str) and value
    assert any(kind == "ok" and at > killed for at, kind, _, _ in outcomes), "nothing was served after the kill"
    assert ask(base, questions[0], LONG) == solo[questions[0]]
