"""`glm-ms-serve` as users start it: --help, serving, SIGTERM mid-stream (an error chunk, then exit 0), Ctrl-C."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from glm_ms.serve.cli import parse_args
from tests.serve.servers import HANG_S
from tests.support import tiny


def test_help_names_every_flag_group(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--slots", "--max-queue", "--max-model-len", "--api-key", "--host", "--ray",
                 "--replicas", "--served-model-name"):
        assert flag in text
    assert "127.0.0.1" in text


def test_flags_are_checked():
    for bad in (["--slots", "0"], ["--max-queue", "-1"], ["--replicas", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert parse_args([]).host == "127.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*flags):
    """`python -m glm_ms.serve.cli` on the tiny ChatGLM-6B and a free port, once /health answers: (process, base)."""
    port = free_port()
    command = [sys.executable, "-m", "glm_ms.serve.cli", "--model", str(tiny("chatglm-6b").dir), "--port", str(port),
               "--served-model-name", "tiny", "--log-level", "warning", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.3)
    return process, f"http://127.0.0.1:{port}"


@pytest.mark.server
@pytest.mark.slow
def test_sigterm_mid_stream_sends_an_error_chunk_and_exits_0():
    process, base = start_server("--slots", "2", "--max-model-len", "2048")
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2000,
                "temperature": 0, "stream": True}
        events = []
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=HANG_S) as response:
            for line in response.iter_lines():
                if line:
                    events.append(line[len("data: "):])
                if len(events) == 3:
                    process.send_signal(signal.SIGTERM)
        assert events[-1] == "[DONE]"
        assert "shutting down" in json.loads(events[-2])["error"]["message"]
        assert process.wait(HANG_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.server
@pytest.mark.slow
def test_ctrl_c_after_an_answer_exits_0():
    # MindSpore re-installs its own SIGINT handler once it has run the model: Ctrl-C must still end cleanly
    process, base = start_server()
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4}
        answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=HANG_S).json()
        assert answer["usage"]["completion_tokens"] >= 1
        process.send_signal(signal.SIGINT)
        assert process.wait(HANG_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
