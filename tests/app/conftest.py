"""Fixtures of the page tests: one in-process page around a scripted service, shared by a module's tests."""
from dataclasses import dataclass

import pytest

from tests.app.pages import FakeService, free_port


@dataclass
class FakePage:
    """A running page around `service` at `url`; every `client()` is a session of its own."""
    service: FakeService
    url: str

    def client(self):
        from gradio_client import Client
        return Client(self.url, verbose=False)


@pytest.fixture(scope="module")
def fake_app():
    """The page of `glm_ms.chat_app.build_demo` around a FakeService, on a free 127.0.0.1 port."""
    pytest.importorskip("gradio")
    from glm_ms import chat_app
    service = FakeService()
    demo = chat_app.build_demo(service, demo_note="demo note").queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield FakePage(service, f"http://127.0.0.1:{port}/")
    finally:
        demo.close()
