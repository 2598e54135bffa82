"""LangChain's ChatOpenAI pointed at the server: invoke and stream."""
import pytest

from tests.serve.servers import HANG_S
from tests.serve.test_openai import chat_reference

pytestmark = pytest.mark.server
FAMILY = "chatglm3"


def test_chat_openai_invoke_and_stream(servers):
    from langchain_openai import ChatOpenAI
    server, _ = servers(FAMILY)
    llm = ChatOpenAI(base_url=server.url, api_key="unused", model=f"tiny-{FAMILY}", temperature=0, max_tokens=10,
                     timeout=HANG_S, max_retries=0)
    expected = chat_reference(FAMILY, "你好", 10)
    message = llm.invoke("你好")
    assert message.content == expected
    assert message.usage_metadata["output_tokens"] >= 1
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert "".join(chunk.content for chunk in llm.stream("你好")) == expected
