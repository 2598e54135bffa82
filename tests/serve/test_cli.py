"""`glm-ms-serve` as users start it: --help, serving, and SIGTERM mid-stream (an error chunk, then exit 0)."""
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


@pytest.mark.server
@pytest.mark.slow
def test_sigterm_mid_stream_sends_an_error_chunk_and_exits_0():
    port = free_port()
    command = [sys.executable, "-m", "glm_ms.serve.cli", "--model", str(tiny("chatglm-6b").dir), "--port", str(port),
               "--slots", "2", "--max-model-len", "2048", "--served-model-name", "tiny", "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode()
                time.sleep(0.3)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 2000,
                "temperature": 0, "stream": True}
        events = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                          timeout=HANG_S) as response:
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
