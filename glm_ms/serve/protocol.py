"""The OpenAI wire format: request models (checked with pydantic), response and chunk bodies, SSE frames, errors.

Semantics follow OpenAI and vLLM's OpenAI server: `max_tokens` (alias `max_completion_tokens`) counts new tokens,
temperature 0 is greedy, `stop` strings are never emitted in part, `stream_options.include_usage` adds a final
usage chunk, and a stream ends with `data: [DONE]`. Fields OpenAI defines that this server cannot honour
(logprobs, penalties other than 0, `echo`, `suffix`, `best_of`) are refused with a 400, never ignored.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_N = 8          # choices per request: each takes a cache row
MAX_STOP = 16      # stop strings per request
MAX_STOP_CHARS = 256


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI's clients (and LangChain) send fields a server may not know.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=100)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)                      # vLLM's extension: -1 or 0 = off
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)  # vLLM's extension
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Any = None
    user: str | None = None
    return_token_ids: bool = False  # vLLM's extension: each choice (each chunk, in a stream) lists its token ids

    @model_validator(mode="after")
    def _supported(self) -> _Request:
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (use repetition_penalty)")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if len(self.stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in self.stops):
            raise ValueError(f"stop holds at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters")
        return self

    @property
    def stops(self) -> list[str]:
        """`stop` as a list (empty strings dropped)."""
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stop if s]

    @property
    def new_tokens(self) -> int | None:
        """`max_completion_tokens`, else `max_tokens` (None: fill the row)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream and (self.stream_options or {}).get("include_usage"))


class ChatMessage(BaseModel):
    """One message of a chat request."""
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message as a plain dict ("developer" read as "system", as OpenAI does for older models)."""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.content, "tool_calls": self.tool_calls}


class ChatRequest(_Request):
    """`POST /v1/chat/completions`."""
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_supported(self) -> ChatRequest:
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format other than text is not supported")
        if self.tool_choice not in (None, "auto", "none"):
            raise ValueError("tool_choice must be 'auto' or 'none' (forcing a function is not supported)")
        for tool in self.tools or []:
            if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), dict) \
                    or not tool["function"].get("name"):
                raise ValueError("tools must be {'type': 'function', 'function': {'name', ...}} objects")
        return self

    @property
    def functions(self) -> list[dict[str, Any]] | None:
        """The tools' function definitions, as ChatGLM3 lists them (None when tools are off)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool["function"] for tool in self.tools]


class CompletionRequest(_Request):
    """`POST /v1/completions`."""
    prompt: str | list[str] | list[int] = Field(min_length=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_supported(self) -> CompletionRequest:
        if self.echo or self.suffix or (self.best_of not in (None, 1)):
            raise ValueError("echo, suffix and best_of are not supported")
        return self


# ----------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    """A response id such as `chatcmpl-…`."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The `usage` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, response_id: str, model: str, choices: list[dict], **extra: Any) -> dict:
    """A response or chunk body around `choices`."""
    return {"id": response_id, "object": kind, "created": int(time.time()), "model": model, "choices": choices,
            **extra}


def sse(data: dict | str) -> str:
    """One server-sent event frame."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


DONE = sse("[DONE]")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "service_unavailable"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code if code is not None else str(status)}}
