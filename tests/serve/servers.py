"""Real servers for the serve tests: an engine on a fresh copy of a tiny model, its app on a free 127.0.0.1 port."""
from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

from glm_ms import AutoModel
from glm_ms.serve.app import create_app
from glm_ms.serve.engine import Engine
from glm_ms.serve.service import ChatService
from tests.support import tiny

HANG_S = 120  # generous bound on any one request in these tests: reaching it means a hang, not slowness


def fresh_model(family: str):
    """A model of its own for an engine (the shared tiny model stays free for reference answers)."""
    return AutoModel.from_pretrained(tiny(family).dir, dtype="float32")


class Server:
    """A uvicorn server in a thread; `url` is its /v1 base."""

    def __init__(self, app, family: str = ""):
        self.family = family
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def start(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextlib.contextmanager
def serving(family: str, api_keys=(), model_id: str | None = None, **engine_options):
    """(Server, ChatService) for `family` with an engine of `engine_options` (small capacity by default)."""
    engine_options.setdefault("capacity", 256)
    engine = Engine(fresh_model(family), **engine_options)
    service = ChatService(engine, tiny(family).tokenizer, model_id or f"tiny-{family}")
    server = Server(create_app(service, api_keys=api_keys), family).start()
    try:
        yield server, service
    finally:
        engine.shutdown()
        server.stop()
