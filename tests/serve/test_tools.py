"""ChatGLM3 tool calls over the OpenAI API: a reply in ChatGLM3's tool-call form → `tool_calls`, and back."""
import json

import numpy as np
import openai
import pytest

from tests.serve.servers import HANG_S, serving
from tests.support import tiny

pytestmark = pytest.mark.server
FAMILY = "chatglm3"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


class ForcedReply:
    """The test seam: a logits processor that makes the model say `ids` after its prompt's last `<|assistant|>`.

    The tiny random model cannot produce a tool call on its own; this forces one through the engine's public
    `logits_processor`, so everything after the scores (stop tokens, text, parsing, the HTTP reply) is real.
    """

    def __init__(self, ids, assistant_id):
        self.ids, self.assistant_id, self.enabled = list(ids), assistant_id, True

    def __call__(self, input_ids, scores):
        row = input_ids[0].tolist()
        done = len(row) - 1 - row[::-1].index(self.assistant_id)
        step = len(row) - 1 - done
        if not self.enabled or step >= len(self.ids):
            return scores
        forced = np.full_like(scores, -1e9)
        forced[:, self.ids[step]] = 0.0
        return forced


@pytest.fixture(scope="module")
def tool_server():
    tok = tiny(FAMILY).tokenizer
    reply = "get_weather\n```python\ntool_call(city='Beijing')\n```"
    forced = ForcedReply(tok.encode(reply, add_special_tokens=False) + [tok.get_command("<|observation|>")],
                         tok.get_command("<|assistant|>"))
    assert tok.decode(forced.ids[:-1]) == reply
    with serving(FAMILY, logits_processor=[forced]) as (server, service):
        yield server, forced


def test_tool_call_comes_back_as_tool_calls_and_a_tool_reply_is_accepted(tool_server):
    server, forced = tool_server
    c = openai.OpenAI(base_url=server.url, api_key="unused", timeout=HANG_S, max_retries=0)
    messages = [{"role": "user", "content": "北京天气怎么样"}]
    reply = c.chat.completions.create(model=f"tiny-{FAMILY}", messages=messages, tools=TOOLS, max_tokens=64,
                                      temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Beijing"}
    assert reply.usage.completion_tokens == len(forced.ids)

    chunks = list(c.chat.completions.create(model=f"tiny-{FAMILY}", messages=messages, tools=TOOLS, max_tokens=64,
                                            temperature=0, stream=True))
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [("get_weather",
                                                                                       {"city": "Beijing"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ""

    forced.enabled = False
    follow = messages + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                         {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22}'}]
    answer = c.chat.completions.create(model=f"tiny-{FAMILY}", messages=follow, tools=TOOLS, max_tokens=8,
                                       temperature=0)
    t = tiny(FAMILY)
    history = [{"role": "system", "content": "Answer the following questions as best as you can. You have access "
                                             "to the following tools:", "tools": [TOOLS[0]["function"]]},
               {"role": "user", "content": "北京天气怎么样"},
               {"role": "assistant", "metadata": "get_weather",
                "content": "```python\ntool_call(city='Beijing')\n```"}]
    expected = t.model.chat(t.tokenizer, '{"temperature": 22}', history=history, role="observation",
                            do_sample=False, max_length=answer.usage.prompt_tokens + 8 + 1)[0]
    assert answer.choices[0].message.content == expected


def test_tools_are_refused_by_a_model_without_roles(servers):
    server, _ = servers("chatglm2")
    c = openai.OpenAI(base_url=server.url, api_key="unused", timeout=HANG_S, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="tiny-chatglm2", messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    assert "tool" in err.value.body["message"]
