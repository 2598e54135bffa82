"""OpenAI chat messages → a model's prompt ids, and its raw reply → text or OpenAI tool calls.

The model's own chat code decides the prompt, so an answer over HTTP equals `model.chat` with the same turn:

- models without roles (ChatGLM-6B, ChatGLM2): the last message is the query, earlier user/assistant messages the
  (query, response) history; system messages are prepended to the query, as upstream's OpenAI demo does.
- models with roles (ChatGLM3): messages become its role history: `tools` a system message listing them,
  an assistant's `tool_calls` its tool-call form (`name` line, then a `tool_call(...)` code block),
  `role: "tool"` an observation. A reply whose first line names a tool and whose code block parses (with `ast`,
  never evaluated) becomes `tool_calls`.

Which of these a model follows, its prompt ids and its reply clean-up are read from the turn API of its chat
mixin (`roles`, `prompt_ids`, `stop_ids`, `answer_text`, `reply`; see glm_ms.chat), never from a family name.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import GenerationError

# ChatGLM3's upstream demos introduce the tools with this system message.
TOOLS_PROMPT = "Answer the following questions as best as you can. You have access to the following tools:"


class ConversationError(GenerationError):
    """Messages this model cannot take (roles out of order, tools for a model without them, empty content)."""


@dataclass(frozen=True)
class ToolCall:
    """One OpenAI tool call: the function's name and its arguments as a JSON string."""
    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_openai(self, index: int | None = None) -> dict:
        """The `tool_calls` item (with `index` in stream deltas)."""
        item = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return item if index is None else {"index": index, **item}


@dataclass(frozen=True)
class Reply:
    """A finished reply: text, or the tool calls it makes."""
    text: str
    tool_calls: tuple[ToolCall, ...] = ()


def message_text(message: dict) -> str:
    """A message's content as text: a string, or the text parts of a content list."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ConversationError("message content must be a string or a list of text parts (no images or audio)")


def tool_call_code(arguments: str) -> str:
    """ChatGLM3's form of a call's JSON arguments: a fenced `tool_call(name=value, ...)` block."""
    try:
        values = json.loads(arguments or "{}")
    except ValueError as err:
        raise ConversationError(f"tool call arguments must be a JSON object: {err}") from None
    if not isinstance(values, dict):
        raise ConversationError("tool call arguments must be a JSON object")
    return "```python\ntool_call(" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")\n```"


class ChatTemplate:
    """One model's way from messages to prompt ids and from generated text to a `Reply`."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.roles = tuple(model.roles)
        self.stop_ids = tuple(int(s) for s in model.stop_ids(tokenizer))

    # ----- messages → prompt
    def prompt(self, messages: list[dict], tools: list[dict] | None = None) -> Conversation:
        """The conversation these messages make; ConversationError when the model cannot take them."""
        if not messages:
            raise ConversationError("messages must hold at least one message")
        if self.roles:
            return self._role_prompt(messages, tools)
        if tools:
            raise ConversationError("this model has no tool calling (tools need a model with roles, e.g. ChatGLM3)")
        return self._pair_prompt(messages)

    def _pair_prompt(self, messages: list[dict]) -> Conversation:
        system = [message_text(m) for m in messages if m.get("role") == "system"]
        turns = [m for m in messages if m.get("role") != "system"]
        if not turns or turns[-1].get("role") != "user":
            raise ConversationError("the last message must come from the user")
        history = []
        for i in range(0, len(turns) - 1, 2):
            user, assistant = turns[i], turns[i + 1]
            if user.get("role") != "user" or assistant.get("role") != "assistant":
                raise ConversationError("before the last message, this model takes user/assistant pairs in turn "
                                        f"(got {user.get('role')!r} then {assistant.get('role')!r})")
            history.append((message_text(user), message_text(assistant)))
        if len(turns) % 2 == 0:
            raise ConversationError("before the last message, this model takes user/assistant pairs in turn")
        query = "".join(system) + message_text(turns[-1])
        if not query.strip():
            raise ConversationError("the query is empty")
        # No max_length: a prompt is never shortened here; one that does not fit a row is refused instead.
        return Conversation(self, self.model.prompt_ids(self.tokenizer, query, history), history, query)

    def turn(self, query: str, history: list, max_length: int) -> Conversation:
        """A turn as `model.chat` takes it: `query` after the model's own `history`, the oldest turns left out
        until an answer fits in `max_length` tokens (prompt + answer)."""
        ids = self.model.prompt_ids(self.tokenizer, query, history, max_length=max_length)
        return Conversation(self, ids, history, query)

    def _role_prompt(self, messages: list[dict], tools: list[dict] | None) -> Conversation:
        history: list[dict] = []
        if tools:
            history.append({"role": "system", "content": TOOLS_PROMPT, "tools": tools})
        for message in messages:
            history.extend(self._role_messages(message, history))
        last = history.pop()
        if last["role"] not in ("user", "observation"):
            raise ConversationError("the last message must come from the user or a tool")
        ids = self.model.prompt_ids(self.tokenizer, last["content"], history, role=last["role"])
        return Conversation(self, ids, history, last["content"], last["role"])

    def _role_messages(self, message: dict, history: list[dict]) -> list[dict]:
        role = message.get("role")
        if role == "system":
            if history and history[0]["role"] == "system" and "tools" in history[0]:
                history[0]["content"] = message_text(message)  # the caller's system prompt introduces the tools
                return []
            return [{"role": "system", "content": message_text(message)}]
        if role == "user":
            return [{"role": "user", "content": message_text(message)}]
        if role == "tool":
            return [{"role": "observation", "content": message_text(message)}]
        if role == "assistant":
            calls = message.get("tool_calls") or []
            out = [{"role": "assistant", "metadata": "", "content": message_text(message)}] \
                if message_text(message) or not calls else []
            for call in calls:
                function = call.get("function") or {}
                out.append({"role": "assistant", "metadata": str(function.get("name", "")),
                            "content": tool_call_code(function.get("arguments", "{}"))})
            return out
        raise ConversationError(f"unknown message role {role!r} (system, user, assistant or tool)")



@dataclass
class Conversation:
    """One chat request: its prompt ids, and the query (sent as `role`) and history its reply is read against."""
    template: ChatTemplate
    ids: list[int]
    history: list[Any]
    query: str
    role: str | None = None

    def response(self, raw: str) -> Any:
        """The model's response to generated text `raw`: text, or (ChatGLM3) a tool-call dict."""
        return self.template.model.reply(raw, self.query, self.history, self.role)[0]

    def clean(self, raw: str, done: bool) -> str | None:
        """The reply text of `raw` so far; None while a ChatGLM3 first line may still name a tool (not `done`)."""
        if self.template.roles and not done:
            metadata, newline, _ = raw.partition("\n")
            if not newline or metadata.strip():
                return None
        content = self.response(raw)
        if isinstance(content, str):
            return content
        return "" if "parameters" in content else str(content.get("content", ""))

    def reply(self, raw: str, text: str) -> Reply:
        """The finished reply: `text` (already cleaned and cut at stops), or the tool call `raw` makes."""
        content = self.response(raw)
        if isinstance(content, dict) and "parameters" in content:
            return Reply("", (ToolCall(content["name"], json.dumps(content["parameters"], ensure_ascii=False)),))
        return Reply(text)

    def chat_result(self, new_ids: list[int]) -> tuple[Any, list]:
        """(response, history) as `model.chat` returns them when it has generated `new_ids` (stop token included)."""
        model = self.template.model
        return model.reply(model.answer_text(self.template.tokenizer, new_ids), self.query, self.history, self.role)
