"""OpenAI messages → each model's prompt, and replies → text or tool calls (no server)."""
import json

import pytest

from glm_ms.chat import parse_tool_call
from glm_ms.serve.conversation import TOOLS_PROMPT, ChatTemplate, ConversationError, tool_call_code
from tests.support import tiny

TOOL = {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}


def template(family):
    t = tiny(family)
    return ChatTemplate(t.model, t.tokenizer)


def test_tool_call_code_parses_back_to_its_arguments():
    args = {"city": "北京", "days": 3, "units": ["c", "f"], "exact": True, "note": None}
    code = tool_call_code(json.dumps(args))
    assert code.startswith("```python\ntool_call(") and code.endswith(")\n```")
    assert parse_tool_call("\n".join(code.split("\n")[1:-1])) == args
    with pytest.raises(ConversationError):
        tool_call_code("[1, 2]")


def test_chatglm3_messages_become_its_role_history():
    tmpl = template("chatglm3")
    tok = tiny("chatglm3").tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "天气"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather",
                                                                   "arguments": '{"city": "Beijing"}'}}]},
                {"role": "tool", "content": "22C"}]
    conversation = tmpl.prompt(messages, tools=[TOOL])
    history = [{"role": "system", "content": "Be brief.", "tools": [TOOL]}, {"role": "user", "content": "天气"},
               {"role": "assistant", "metadata": "get_weather",
                "content": "```python\ntool_call(city='Beijing')\n```"}]
    assert conversation.history == history
    assert conversation.ids == tok.build_chat_input("22C", history=history, role="observation")["input_ids"][0].tolist()
    assert tmpl.prompt([{"role": "user", "content": "hi"}], tools=[TOOL]).history[0]["content"] == TOOLS_PROMPT
    reply = conversation.reply("get_weather\n```python\ntool_call(city='Paris')\n```", "")
    assert [(c.name, json.loads(c.arguments)) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert conversation.reply("\n  plain answer ", "plain answer").tool_calls == ()


@pytest.mark.parametrize("family", ["chatglm-6b", "chatglm2"])
def test_models_without_roles_take_pairs(family):
    tmpl = template(family)
    ok = tmpl.prompt([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": [{"type": "text", "text": "c"}]}])
    assert ok.history == [("a", "b")]
    for bad in ([{"role": "assistant", "content": "b"}],
                [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]):
        with pytest.raises(ConversationError):
            tmpl.prompt(bad)
    with pytest.raises(ConversationError, match="tool"):
        tmpl.prompt([{"role": "user", "content": "a"}], tools=[TOOL])
