"""Bad requests get OpenAI error objects with real status codes; shutting down ends open streams with an error."""
import json
import threading

import httpx
import openai
import pytest

from tests.serve.servers import HANG_S, serving
from tests.serve.test_concurrency import Sleepy

pytestmark = pytest.mark.server
FAMILY = "chatglm2"


def post(server, body, headers=None, path="/chat/completions"):
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=raw, timeout=HANG_S,
                      headers={"Content-Type": "application/json", **(headers or {})})


def error_of(response, status):
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def chat(**extra):
    return {"model": f"tiny-{FAMILY}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


def test_bad_json_and_invalid_fields_are_400(servers):
    server, _ = servers(FAMILY)
    assert error_of(post(server, b'{"model": "x", "messages": [')  , 400)["code"] == "invalid_json"
    assert error_of(post(server, b"[1, 2]"), 400)["type"] == "invalid_request_error"
    error = error_of(post(server, chat(temperature=-1)), 400)
    assert error["param"] == "temperature"
    assert error_of(post(server, chat(messages=[])), 400)["param"] == "messages"
    assert "presence_penalty" in error_of(post(server, chat(presence_penalty=1.0)), 400)["message"]
    assert error_of(post(server, chat(messages=[{"role": "assistant", "content": "x"}])), 400)["param"] == "messages"
    assert error_of(post(server, chat(n=100)), 400)["param"] == "n"


def test_a_huge_body_is_413(servers):
    server, _ = servers(FAMILY)
    from glm_ms.serve.app import MAX_BODY_BYTES
    body = json.dumps(chat(messages=[{"role": "user", "content": "x" * MAX_BODY_BYTES}]))
    assert error_of(post(server, body), 413)["code"] == "body_too_large"


def test_unknown_model_and_route_are_404(servers):
    server, _ = servers(FAMILY)
    error = error_of(post(server, chat(model="gpt-4")), 404)
    assert error["code"] == "model_not_found" and "gpt-4" in error["message"]
    assert error_of(httpx.get(server.url + "/nothing-here", timeout=HANG_S), 404)["type"] == "invalid_request_error"


def test_prompt_too_long_is_400_naming_the_limit(servers):
    server, service = servers(FAMILY)
    limit = service.engine.capacity
    error = error_of(post(server, chat(messages=[{"role": "user", "content": "长" * (2 * limit)}])), 400)
    assert error["code"] == "context_length_exceeded" and f"{limit} tokens" in error["message"]
    error = error_of(post(server, chat(max_tokens=limit)), 400)
    assert f"{limit} tokens" in error["message"]
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=server.url, api_key="x", max_retries=0).completions.create(
            model=f"tiny-{FAMILY}", prompt="hi", max_tokens=limit)


def test_api_key():
    with serving(FAMILY, api_keys=["secret"]) as (server, _):
        assert error_of(post(server, chat()), 401)["type"] == "authentication_error"
        assert error_of(post(server, chat(), {"Authorization": "Bearer wrong"}), 401)["code"] == "invalid_api_key"
        assert httpx.get(server.base + "/metrics", timeout=HANG_S).status_code == 401
        assert httpx.get(server.base + "/health", timeout=HANG_S).json() == {"status": "ok"}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=server.url, api_key="secret", max_retries=0, timeout=HANG_S)
        reply = good.chat.completions.create(model=f"tiny-{FAMILY}", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=3, temperature=0)
        assert reply.usage.completion_tokens >= 1


def test_shutdown_mid_stream_ends_it_with_an_error_chunk():
    with serving(FAMILY, logits_processor=[Sleepy(0.05)]) as (server, service):
        lines = []
        with httpx.stream("POST", server.url + "/chat/completions", timeout=HANG_S,
                          json=chat(max_tokens=200, stream=True)) as response:
            stream = response.iter_lines()
            for line in stream:
                if line:
                    lines.append(line)
                if len(lines) == 3:
                    threading.Thread(target=service.engine.shutdown).start()
            # iter_lines ended: the server closed the stream itself
        events = [line[len("data: "):] for line in lines]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "service_unavailable" and "shutting down" in error["message"]
        assert all("choices" in json.loads(e) for e in events[:-2])
        assert error_of(post(server, chat()), 503)["code"] == "shutting_down"
        assert httpx.get(server.base + "/health", timeout=HANG_S).status_code == 503
