"""The chat mixins of the three families: `chat` and `stream_chat` with each generation's upstream rules.

- ChatGLM-6B: text prompt (glm_ms.prompts), history of (query, response) pairs, `process_response` fills the
  training date and makes `, ! : ; ?` next to CJK characters full-width; `stream_chat` never yields the step that
  ends generation (upstream), unless `include_last=True`.
- ChatGLM2: `[Round n]` text prompt, pairs; `process_response` strips and fills the training date.
- ChatGLM3: role-token inputs (the tokenizer's `build_chat_input`), history of {role, content[, metadata,
  tools]} messages; generation stops on `</s>`, `<|user|>` or `<|observation|>` and the last generated token is
  dropped; a reply with metadata is a tool call, parsed with `ast`/`json` — never evaluated (the original runs
  `eval()` on model output there).
- ChatGLM2/3 `stream_chat` yields the step that ends generation too and skips partial responses that are empty or
  end in '�' (an incomplete UTF-8 character). `return_past_key_values=True` hands back a `ChatPast` (the ids the
  cache holds); given as `past_key_values`, the next turn feeds only its new ids as upstream does, and glm_ms
  re-encodes the kept ids in the same prefill instead of carrying a cache between calls.
- Chat defaults (max_length, top_p, temperature) are each family's row in glm_ms.families.
- Every family has the same turn API for callers that run generation themselves (the serving engine):
  `roles`, `prompt_ids(tokenizer, query, history, role, max_length)`, `stop_ids(tokenizer)`,
  `answer_text(tokenizer, new_ids)` and `reply(text, query, history, role) -> (response, history)`; `chat`
  is exactly these around `generate`.
"""
from __future__ import annotations

import ast
import copy
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator

from . import families
from .errors import GenerationError
from .generation import InvalidScoreLogitsProcessor
from .prompts import (Message, Pair, as_messages, as_pairs, chatglm2_continuation, chatglm_prompt,
                      fill_training_date, fit_to_length)


def _guarded(logits_processor) -> list:
    return list(logits_processor or []) + [InvalidScoreLogitsProcessor()]


def _checked_query(query: Any) -> str:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    return query


_NO_LIMIT = 1 << 62  # `prompt_ids(max_length=None)`: every round fits


def _limit(max_length: int | None) -> int:
    return _NO_LIMIT if max_length is None else max_length


class _Defaults:
    """Fills max_length / top_p / temperature left as None from the family's row of the table; the turn API.

    The turn API is what `chat` does around `generate`, for callers that generate elsewhere (the serving
    engine): `prompt_ids` → generate until one of `stop_ids` → `answer_text` of the new ids → `reply`.
    """

    roles: tuple[str, ...] = ()  # the message roles a query may be sent as (ChatGLM3); none: user turns only

    def chat_settings(self, max_length: int | None, top_p: float | None, temperature: float | None) -> tuple:
        """(max_length, top_p, temperature) with the family's chat defaults for those not given."""
        row = families.get(self.config.family).chat
        default_length = row.max_length
        if getattr(self.config, "rope_ratio", 1.0) != 1.0:
            # The long-context variants (chatglm2-6b-32k, chatglm3-6b-32k) chat up to their seq_length by
            # default, as their own chat() does (32768).
            default_length = self.config.seq_length
        return (default_length if max_length is None else max_length, row.top_p if top_p is None else top_p,
                row.temperature if temperature is None else temperature)

    def _role(self, role: str | None) -> str | None:
        """The role a query is sent as: None for models without roles (user turns only), else `role` or "user"."""
        if not self.roles:
            if role not in (None, "user"):
                raise GenerationError(f"this model takes user queries only (it has no roles), got role {role!r}")
            return None
        return "user" if role is None else role

    def stop_ids(self, tokenizer) -> list[int]:
        """The ids that end an answer: the model's eos."""
        return [int(self.config.eos_token_id)]


# ----------------------------------------------------------------------------- ChatGLM-6B

_PUNCT = [(",", "，"), ("!", "！"), (":", "："), (";", "；"), (r"\?", "？")]


def process_response(response: str) -> str:
    """ChatGLM-6B's clean-up: strip, fill the training date, make , ! : ; ? next to CJK characters full-width."""
    response = fill_training_date(response.strip())
    for half, full in _PUNCT:
        response = re.sub(r"([\u4e00-\u9fff])%s" % half, r"\1%s" % full, response)
        response = re.sub(r"%s([\u4e00-\u9fff])" % half, r"%s\1" % full, response)
    return response


def fit_prompt(tokenizer, query: str, history: list[Pair], max_length: int) -> list[int]:
    """ChatGLM-6B prompt ids for `query` with as many recent rounds as leave room for one new token."""
    if not isinstance(query, str) or not query.strip():
        raise GenerationError("query is empty")
    return fit_to_length(lambda h: tokenizer.encode(chatglm_prompt(query, h)), history, max_length)


class ChatGLMChat(_Defaults):
    """`chat` and `stream_chat` of ChatGLM-6B (history: [(query, response), ...])."""

    def prompt_ids(self, tokenizer, query: str, history: list | None = None, role: str | None = None,
                   max_length: int | None = None) -> list[int]:
        """The ids `chat` feeds for `query` after `history`; with `max_length` the oldest rounds are left out
        until an answer fits, as `chat` does (None: every round)."""
        self._role(role)
        return fit_prompt(tokenizer, query, as_pairs(history), _limit(max_length))

    def answer_text(self, tokenizer, ids: list[int]) -> str:
        """The text `chat` reads from the generated ids."""
        return tokenizer.decode(list(ids))

    def reply(self, text: str, query: str, history: list | None = None, role: str | None = None) -> tuple[str, list]:
        """(response, history + [(query, response)]) as `chat` returns them for the answer's `text`."""
        self._role(role)
        response = process_response(text)
        return response, as_pairs(history) + [(query, response)]

    def chat(self, tokenizer, query: str, history: list | None = None, max_length: int | None = None,
             num_beams: int = 1, do_sample: bool = True, top_p: float | None = None,
             temperature: float | None = None, logits_processor: list | None = None, **kwargs) -> tuple[str, list]:
        """Answer `query` given `history`; returns (response, history + [(query, response)])."""
        max_length, top_p, temperature = self.chat_settings(max_length, top_p, temperature)
        history = as_pairs(history)
        ids = self.prompt_ids(tokenizer, query, history, max_length=max_length)
        out = self.generate([ids], max_length=max_length, num_beams=num_beams, do_sample=do_sample, top_p=top_p,
                            temperature=temperature, logits_processor=_guarded(logits_processor), **kwargs)
        return self.reply(self.answer_text(tokenizer, out[0, len(ids):].tolist()), query, history)

    def stream_chat(self, tokenizer, query: str, history: list | None = None, max_length: int | None = None,
                    do_sample: bool = True, top_p: float | None = None, temperature: float | None = None,
                    logits_processor: list | None = None, include_last: bool = False,
                    **kwargs) -> Iterator[tuple[str, list]]:
        """Yield (partial response, history) as tokens arrive; the whole answer is re-decoded each time.

        Upstream never yields the step that ends generation; `include_last=True` adds it, so the final yield
        equals what `chat` returns with the same settings.
        """
        max_length, top_p, temperature = self.chat_settings(max_length, top_p, temperature)
        history = as_pairs(history)
        ids = self.prompt_ids(tokenizer, query, history, max_length=max_length)
        for out in self.stream_generate([ids], max_length=max_length, do_sample=do_sample, top_p=top_p,
                                        temperature=temperature, logits_processor=_guarded(logits_processor),
                                        include_last=include_last, **kwargs):
            yield self.reply(self.answer_text(tokenizer, out[0, len(ids):].tolist()), query, history)


# ----------------------------------------------------------------------------- ChatGLM2 (and the shared loop)


@dataclass(frozen=True)
class ChatPast:
    """What a streamed turn leaves in the model's cache, to continue from in the next turn."""
    input_ids: tuple  # ids whose keys/values the next turn attends to

    @property
    def past_length(self) -> int:
        """Upstream's `past_key_values[0][0].shape[0]`."""
        return len(self.input_ids)


def _past_ids(past_key_values: ChatPast | None) -> list[int]:
    if past_key_values is None:
        return []
    if not isinstance(past_key_values, ChatPast):
        raise TypeError("past_key_values must be the ChatPast a previous stream_chat(..., return_past_key_values=True) "
                        f"yielded, got {type(past_key_values).__name__}")
    return list(past_key_values.input_ids)


def process_response_glm2(response: str) -> str:
    """ChatGLM2's clean-up: strip, and fill the training date."""
    return fill_training_date(response.strip())


class ChatGLM2Chat(_Defaults):
    """`chat` / `stream_chat` of ChatGLM2-6B (history: [(query, response), ...]).

    ChatGLM3 shares the loop and overrides the hooks: `_history`, `_turn_ids`, `_stop_ids`, `_opened`, `_reply`.
    """

    drops_last_token = False  # ChatGLM3 drops the stop token (or the last one when max_length cut it)

    def build_inputs(self, tokenizer, query: str, history: list | None = None) -> dict:
        """Model inputs for a turn without a kept cache: the whole prompt with `[gMASK] sop`."""
        return tokenizer([tokenizer.build_prompt(query, history=history)], return_tensors="np")

    def build_stream_inputs(self, tokenizer, query: str, history: list | None = None) -> dict:
        """Inputs when continuing a kept cache: `\\n\\n[Round n]…` alone, no prefix, its first piece ("▁") dropped.

        Without history this is the usual whole prompt, as upstream.
        """
        if not history:
            return self.build_inputs(tokenizer, query, history)
        ids = tokenizer.encode(chatglm2_continuation(query, as_pairs(history)), add_special_tokens=False)[1:]
        return tokenizer.pad([ids])

    def process_response(self, response: str) -> str:
        """ChatGLM2's clean-up of a reply."""
        return process_response_glm2(response)

    # -- the turn API (see _Defaults)
    def prompt_ids(self, tokenizer, query: str, history: list | None = None, role: str | None = None,
                   max_length: int | None = None) -> list[int]:
        """The ids `chat` feeds for `query` (sent as `role`) after `history`; with `max_length` the oldest turns
        are left out until an answer fits, as `chat` does (None: every turn)."""
        return self._turn_ids(tokenizer, query, self._history(history), _limit(max_length), False, self._role(role))

    def answer_text(self, tokenizer, ids: list[int]) -> str:
        """The text `chat` reads from the generated ids (ChatGLM3 leaves out the last one)."""
        ids = list(ids)
        return tokenizer.decode(ids[:-1] if self.drops_last_token else ids)

    def reply(self, text: str, query: str, history: list | None = None, role: str | None = None) -> tuple[Any, list]:
        """(response, history with the turn) as `chat` returns them for the answer's `text`."""
        role = self._role(role)
        return self._reply(text, self._opened(self._history(history), query, role), query)

    # -- hooks
    def _history(self, history: list | None) -> list:
        return as_pairs(history)

    def _turn_ids(self, tokenizer, query: str, history: list, max_length: int, kept: bool, role: None) -> list[int]:
        _checked_query(query)
        if kept:
            return self.build_stream_inputs(tokenizer, query, history)["input_ids"][0].tolist()
        return fit_to_length(lambda h: self.build_inputs(tokenizer, query, h)["input_ids"][0].tolist(), history,
                             max_length)

    def _stop_ids(self, tokenizer) -> dict:
        return {}

    def _opened(self, history: list, query: str, role: None) -> list:
        return history  # ChatGLM2 adds the query with the reply

    def _reply(self, text: str, history: list, query: str) -> tuple[Any, list]:
        response = self.process_response(text)
        return response, history + [(query, response)]

    # -- the loop
    def chat(self, tokenizer, query: str, history: list | None = None, max_length: int | None = None,
             num_beams: int = 1, do_sample: bool = True, top_p: float | None = None, temperature: float | None = None,
             logits_processor: list | None = None, **kwargs) -> tuple[Any, list]:
        """Answer `query` given `history`; returns (response, history with the new turn). `history` is not modified."""
        role = kwargs.pop("role", "user") if self.roles else None
        max_length, top_p, temperature = self.chat_settings(max_length, top_p, temperature)
        history = self._history(history)
        ids = self._turn_ids(tokenizer, query, history, max_length, False, role)
        out = self.generate([ids], max_length=max_length, num_beams=num_beams, do_sample=do_sample, top_p=top_p,
                            temperature=temperature, logits_processor=_guarded(logits_processor),
                            **self._stop_ids(tokenizer), **kwargs)
        return self._reply(self.answer_text(tokenizer, out[0, len(ids):].tolist()), self._opened(history, query, role),
                           query)

    def stream_chat(self, tokenizer, query: str, history: list | None = None, past_key_values: ChatPast | None = None,
                    max_length: int | None = None, do_sample: bool = True, top_p: float | None = None,
                    temperature: float | None = None, logits_processor: list | None = None,
                    return_past_key_values: bool = False, include_last: bool = True, **kwargs) -> Iterator[tuple]:
        """Yield (response so far, history) — plus a `ChatPast` with `return_past_key_values` — as tokens arrive.

        With `past_key_values` from the previous turn only this turn's input is fed, and `max_length` counts this
        turn's ids and the new tokens, as upstream. Unlike ChatGLM-6B's, the step that ends generation is yielded
        too (upstream ChatGLM2/3 behaviour); `include_last=False` leaves it out.
        """
        role = kwargs.pop("role", "user") if self.roles else None
        max_length, top_p, temperature = self.chat_settings(max_length, top_p, temperature)
        history = self._history(history)
        past = _past_ids(past_key_values)
        ids = self._turn_ids(tokenizer, query, history, max_length, past_key_values is not None, role)
        opened = self._opened(history, query, role)
        fed = past + ids
        for out in self.stream_generate([fed], max_length=len(past) + max_length, do_sample=do_sample, top_p=top_p,
                                        temperature=temperature, logits_processor=_guarded(logits_processor),
                                        include_last=include_last, **self._stop_ids(tokenizer), **kwargs):
            text = self.answer_text(tokenizer, out[0, len(fed):].tolist())
            if not text or text[-1] == "\ufffd":
                continue
            response, new_history = self._reply(text, opened, query)
            if return_past_key_values:
                yield response, new_history, ChatPast(tuple(out[0, :-1].tolist()))
            else:
                yield response, new_history


# ----------------------------------------------------------------------------- ChatGLM3


def parse_tool_call(code: str) -> dict | None:
    """Arguments of a ChatGLM3 tool call `tool_call(name=value, ...)` (or a JSON object) as a dict, else None.

    Only literals are accepted (`ast.literal_eval` per argument): model output is never executed.
    """
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        tree = None
    if tree is not None and isinstance(tree.body, ast.Call) and isinstance(tree.body.func, ast.Name) \
            and tree.body.func.id == "tool_call" and not tree.body.args \
            and all(kw.arg is not None for kw in tree.body.keywords):
        try:
            return {kw.arg: ast.literal_eval(kw.value) for kw in tree.body.keywords}
        except (ValueError, SyntaxError, TypeError):
            return None
    try:
        value = json.loads(code)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def process_response_glm3(output: str, history: list[Message]) -> tuple[Any, list[Message]]:
    """Split the reply into `<|assistant|>` segments, append each to a copy of `history`; return (content, history).

    A segment whose first line (metadata) is blank is text (stripped; training date filled in the returned
    text only). Otherwise it is a tool call: {name, parameters} when the conversation's system message lists
    tools (the code block's `tool_call(...)` parsed safely; {name, content} if it does not parse), else
    {name, content}.
    """
    content = ""
    history = copy.deepcopy(list(history))
    for segment in output.split("<|assistant|>"):
        metadata, content = segment.split("\n", maxsplit=1) if "\n" in segment else ("", segment)
        if not metadata.strip():
            content = content.strip()
            history.append({"role": "assistant", "metadata": metadata, "content": content})
            content = fill_training_date(content)
            continue
        history.append({"role": "assistant", "metadata": metadata, "content": content})
        if history and history[0]["role"] == "system" and "tools" in history[0]:
            parameters = parse_tool_call("\n".join(content.split("\n")[1:-1]))  # inside the ``` fence
            if parameters is not None:
                content = {"name": metadata.strip(), "parameters": parameters}
                continue
        content = {"name": metadata.strip(), "content": content}
    return content, history


class ChatGLM3Chat(ChatGLM2Chat):
    """`chat` / `stream_chat` of ChatGLM3-6B (history: [{"role", "content"[, "metadata", "tools"]}, ...]; `role=`
    sends the query as another role). The response is text, or a dict for a tool call."""

    roles = ("system", "user", "assistant", "observation")
    drops_last_token = True

    def chat(self, tokenizer, query: str, history: list | None = None, role: str = "user",
             max_length: int | None = None, num_beams: int = 1, do_sample: bool = True, top_p: float | None = None,
             temperature: float | None = None, logits_processor: list | None = None, **kwargs) -> tuple[Any, list]:
        """Answer `query` sent as `role`; returns (response, history with the query and the reply appended)."""
        return super().chat(tokenizer, query, history, max_length, num_beams, do_sample, top_p, temperature,
                            logits_processor, role=role, **kwargs)

    def stream_chat(self, tokenizer, query: str, history: list | None = None, role: str = "user",
                    past_key_values: ChatPast | None = None, max_length: int | None = None, do_sample: bool = True,
                    top_p: float | None = None, temperature: float | None = None,
                    logits_processor: list | None = None, return_past_key_values: bool = False,
                    include_last: bool = True, **kwargs) -> Iterator[tuple]:
        """As ChatGLM2's `stream_chat`, the query sent as `role`; after a kept cache only this message is fed."""
        return super().stream_chat(tokenizer, query, history, past_key_values, max_length, do_sample, top_p,
                                   temperature, logits_processor, return_past_key_values, include_last, role=role,
                                   **kwargs)

    @staticmethod
    def stop_ids(tokenizer) -> list[int]:
        """`</s>`, `<|user|>`, `<|observation|>`: the model hands the turn back on any of them."""
        return [tokenizer.eos_token_id, tokenizer.get_command("<|user|>"), tokenizer.get_command("<|observation|>")]

    def process_response(self, output: str, history: list[Message]) -> tuple[Any, list[Message]]:
        """ChatGLM3's clean-up of a reply: text or a tool call, and the history with it."""
        return process_response_glm3(output, history)

    def _history(self, history: list | None) -> list:
        return as_messages(history)

    def _turn_ids(self, tokenizer, query: str, history: list, max_length: int, kept: bool, role: str) -> list[int]:
        _checked_query(query)
        if role not in self.roles:
            raise GenerationError(f"role must be one of {', '.join(self.roles)}, got {role!r}")
        if kept:
            history = []  # only this turn's message follows the kept cache
        for item in history:
            if item.get("role") not in self.roles or "content" not in item:
                raise GenerationError(f"ChatGLM3 history messages need a role ({', '.join(self.roles)}) and content, "
                                      f"got {item!r}")
        keep = 1 if history and history[0]["role"] == "system" else 0  # the system message survives fitting
        return fit_to_length(lambda h: tokenizer.build_chat_input(query, history=h, role=role)["input_ids"][0].tolist(),
                             history, max_length, keep=keep)

    def _stop_ids(self, tokenizer) -> dict:
        return {"eos_token_id": self.stop_ids(tokenizer)}

    def _opened(self, history: list, query: str, role: str) -> list:
        return history + [{"role": role, "content": query}]

    def _reply(self, text: str, history: list, query: str) -> tuple[Any, list]:
        return self.process_response(text, history)
