"""Helpers of the page tests: free ports, the real `glm-ms-web` process, and a scripted model for in-process pages."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LENGTH, TOP_P, TEMPERATURE = 32, 0.7, 0.95


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout, proc=None, log=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{log.read_text()[-4000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-4000:] if log else ''}")


@contextlib.contextmanager
def running_app(tmp_dir, *args, max_length=MAX_LENGTH):
    """`python -m glm_ms.chat_app --model demo` on a free port; yields (url, process)."""
    port = free_port()
    log = Path(tmp_dir) / f"app-{port}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GRADIO_ANALYTICS_ENABLED="False")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "glm_ms.chat_app", "--model", "demo", "--port", str(port),
                                 "--max-length", str(max_length), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_dir)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, 300, proc, log)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parsed_elements(markup):
    """[(tag, attrs)] of every element the browser would build from `markup`."""
    found = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collect().feed(markup)
    return found


class FakeEngine:
    """What the page reads of an engine: the row length (the max_length slider's top) and the slots."""
    capacity = 4096
    slots = 4


class FakeStream:
    """A scripted `TextStream`: the words `{query}0 {query}1 ...`, one per step, slowly, until `max_length` words
    or `cancel()` (which, like the engine, frees its row at once)."""

    def __init__(self, service, query, history, max_length):
        self.service, self.query, self.history, self.max_length = service, query, list(history), max_length
        self.text, self.cancelled = "", False

    def steps(self):
        for i in range(self.max_length):
            time.sleep(0.02)
            if self.cancelled:
                return
            word = f"{self.query}{i}"
            self.text = f"{self.text} {word}".strip()
            self.service.produced += 1
            yield (" " if i else "") + word
        self.cancel()

    def cancel(self):
        with self.service.guard:
            if not self.cancelled:
                self.cancelled = True
                self.service.active -= 1

    def chat_result(self):
        return self.text, self.history + [(self.query, self.text)]


class FakeService:
    """`submit_turn` of a ChatService around a scripted answer; counts busy rows and produced words; "boom" fails."""

    def __init__(self):
        self.engine = FakeEngine()
        self.active = self.most_active = self.produced = 0
        self.guard = threading.Lock()

    def submit_turn(self, query, history, max_length, sampling):
        if query == "boom":
            raise RuntimeError("kaboom")
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        return FakeStream(self, query, history, max_length)


def wait_until(predicate, timeout):
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.05)
    return predicate()


def raw_call(base_url, api_name, data, session_hash):
    """Call `api_name` as any HTTP client can, JSON escaped as ASCII (so a lone surrogate travels as `\\ud800`,
    which gradio_client refuses to encode); returns the final outputs."""
    import json
    body = json.dumps({"data": data, "session_hash": session_hash}).encode("ascii")
    request = urllib.request.Request(f"{base_url}gradio_api/call/{api_name}", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        event_id = json.load(resp)["event_id"]
    with urllib.request.urlopen(f"{base_url}gradio_api/call/{api_name}/{event_id}", timeout=60) as resp:
        events = resp.read().decode("utf-8").split("\n\n")
    final = [event for event in events if event.startswith("event: complete")]
    assert final, events[-3:]
    return json.loads(final[-1].split("data: ", 1)[1])
