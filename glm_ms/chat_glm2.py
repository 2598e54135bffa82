"""ChatGLM2-6B / ChatGLM3-6B chat: model inputs per turn, response clean-up, `chat` / `stream_chat`.

The rules each generation's original code follows (and the golden fixtures record):

- ChatGLM2: text prompt `[Round n]\\n\\n问：…\\n\\n答：` (the tokenizer's `build_prompt`), history of (query, response)
  pairs, `process_response` strips and fills the training-date placeholder.
- ChatGLM3: role-token inputs (the tokenizer's `build_chat_input`), history of {role, content[, metadata, tools]}
  messages, generation stops on `</s>`, `<|user|>` or `<|observation|>` and the last generated token is dropped;
  `process_response` splits `<|assistant|>` segments and turns a reply with metadata into a tool call — parsed
  with `ast`/`json`, never evaluated (the original runs `eval()` on model output there).
- Both: `stream_chat` yields the step that ends generation too, and skips partial responses that are empty or
  end in '�' (an incomplete UTF-8 character).
- `return_past_key_values=True` hands back a `ChatPast` instead of upstream's key/value tensors: the ids the
  cache holds (everything but the last generated token, exactly what upstream keeps). The next turn, given it as
  `past_key_values`, feeds only its new ids as upstream does; glm_ms re-encodes the kept ids in the same
  prefill, at the same positions, instead of carrying a cache between calls.
"""
import ast
import copy
import json
from dataclasses import dataclass

from .generation import InvalidScoreLogitsProcessor


@dataclass(frozen=True)
class ChatPast:
    """What a streamed turn leaves in the model's cache, to continue from in the next turn."""
    input_ids: tuple  # ids whose keys/values the next turn attends to

    @property
    def past_length(self):
        """Upstream's `past_key_values[0][0].shape[0]`."""
        return len(self.input_ids)


def _past_ids(past_key_values):
    if past_key_values is None:
        return []
    if not isinstance(past_key_values, ChatPast):
        raise TypeError("past_key_values must be the ChatPast a previous stream_chat(..., return_past_key_values=True) "
                        f"yielded, got {type(past_key_values).__name__}")
    return list(past_key_values.input_ids)


def _processors(logits_processor):
    return list(logits_processor or []) + [InvalidScoreLogitsProcessor()]


def _fit(build, history, max_length, keep=0):
    """Ids from `build(history)` with the oldest entries after the first `keep` dropped until one new token fits."""
    for start in range(keep, len(history) + 1):
        ids = build(history[:keep] + history[start:])
        if len(ids) < max_length:
            return ids
    raise ValueError(f"the query is {len(ids)} tokens with the prompt markers; max_length {max_length} leaves no "
                     "room for an answer (shorten the message or raise max_length)")


# ----------------------------------------------------------------------------- ChatGLM2


def process_response_glm2(response):
    """ChatGLM2's clean-up: strip, and the training-date placeholder becomes 2023年."""
    return response.strip().replace("[[训练时间]]", "2023年")


class ChatGLM2ChatMixin:
    """`chat` / `stream_chat` of ChatGLM2-6B (history: [(query, response), ...])."""

    def build_inputs(self, tokenizer, query, history=None):
        """Model inputs for a turn without a kept cache: the whole prompt with `[gMASK] sop`."""
        return tokenizer([tokenizer.build_prompt(query, history=history)], return_tensors="np")

    def build_stream_inputs(self, tokenizer, query, history=None):
        """Inputs when continuing a kept cache: `\\n\\n[Round n]…` alone, no prefix, its first piece ("▁") dropped.

        Without history this is the usual whole prompt, as upstream.
        """
        if not history:
            return self.build_inputs(tokenizer, query, history)
        prompt = "\n\n[Round {}]\n\n问：{}\n\n答：".format(len(history) + 1, query)
        ids = tokenizer.encode(prompt, add_special_tokens=False)[1:]
        return tokenizer.pad([ids])

    def process_response(self, response):
        return process_response_glm2(response)

    def _prompt_ids(self, tokenizer, query, history, max_length):
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        return _fit(lambda h: self.build_inputs(tokenizer, query, h)["input_ids"][0].tolist(), history, max_length)

    def chat(self, tokenizer, query, history=None, max_length=8192, num_beams=1, do_sample=True, top_p=0.8,
             temperature=0.8, logits_processor=None, **kwargs):
        """Answer `query` given `history`; returns (response, history + [(query, response)])."""
        history = [tuple(turn) for turn in (history or [])]
        ids = self._prompt_ids(tokenizer, query, history, max_length)
        out = self.generate([ids], max_length=max_length, num_beams=num_beams, do_sample=do_sample, top_p=top_p,
                            temperature=temperature, logits_processor=_processors(logits_processor), **kwargs)
        response = self.process_response(tokenizer.decode(out[0, len(ids):].tolist()))
        return response, history + [(query, response)]

    def stream_chat(self, tokenizer, query, history=None, past_key_values=None, max_length=8192, do_sample=True,
                    top_p=0.8, temperature=0.8, logits_processor=None, return_past_key_values=False, include_last=True,
                    **kwargs):
        """Yield (response so far, history) — plus a `ChatPast` with `return_past_key_values` — as tokens arrive.

        With `past_key_values` from the previous turn only this turn's round is fed, and `max_length` counts
        this turn's ids and the new tokens, as upstream. Unlike ChatGLM-6B's, the step that ends generation is
        yielded too (upstream ChatGLM2/3 behaviour); `include_last=False` leaves it out.
        """
        history = [tuple(turn) for turn in (history or [])]
        past = _past_ids(past_key_values)
        if past_key_values is None:
            ids = self._prompt_ids(tokenizer, query, history, max_length)
        else:
            ids = self.build_stream_inputs(tokenizer, query, history)["input_ids"][0].tolist()
        fed = past + ids
        for out in self.stream_generate([fed], max_length=len(past) + max_length, do_sample=do_sample, top_p=top_p,
                                        temperature=temperature, logits_processor=_processors(logits_processor),
                                        include_last=include_last, **kwargs):
            response = tokenizer.decode(out[0, len(fed):].tolist())
            if not response or response[-1] == "\ufffd":
                continue
            response = self.process_response(response)
            new_history = history + [(query, response)]
            if return_past_key_values:
                yield response, new_history, ChatPast(tuple(out[0, :-1].tolist()))
            else:
                yield response, new_history


# ----------------------------------------------------------------------------- ChatGLM3


def parse_tool_call(code):
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


def process_response_glm3(output, history):
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
            content = content.replace("[[训练时间]]", "2023年")
            continue
        history.append({"role": "assistant", "metadata": metadata, "content": content})
        if history and history[0]["role"] == "system" and "tools" in history[0]:
            parameters = parse_tool_call("\n".join(content.split("\n")[1:-1]))  # inside the ``` fence
            if parameters is not None:
                content = {"name": metadata.strip(), "parameters": parameters}
                continue
        content = {"name": metadata.strip(), "content": content}
    return content, history


def as_messages(history):
    """A copy of a ChatGLM3 history; (query, response) pairs, as ChatGLM-6B/2 callers keep them, become messages."""
    messages = []
    for item in history or []:
        if isinstance(item, dict):
            messages.append(copy.deepcopy(item))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            messages += [{"role": "user", "content": item[0]}, {"role": "assistant", "metadata": "", "content": item[1]}]
        else:
            raise ValueError(f"ChatGLM3 history items are {{'role', 'content'}} dicts or (query, response) pairs, "
                             f"got {item!r}")
    return messages


class ChatGLM3ChatMixin:
    """`chat` / `stream_chat` of ChatGLM3-6B (history: [{"role", "content"[, "metadata", "tools"]}, ...])."""

    roles = ("system", "user", "assistant", "observation")

    @staticmethod
    def stop_ids(tokenizer):
        """`</s>`, `<|user|>`, `<|observation|>`: the model hands the turn back on any of them."""
        return [tokenizer.eos_token_id, tokenizer.get_command("<|user|>"), tokenizer.get_command("<|observation|>")]

    def process_response(self, output, history):
        return process_response_glm3(output, history)

    def _chat_ids(self, tokenizer, query, history, role, max_length):
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if role not in self.roles:
            raise ValueError(f"role must be one of {', '.join(self.roles)}, got {role!r}")
        for item in history:
            if item.get("role") not in self.roles or "content" not in item:
                raise ValueError(f"ChatGLM3 history messages need a role ({', '.join(self.roles)}) and content, "
                                 f"got {item!r}")
        keep = 1 if history and history[0]["role"] == "system" else 0  # the system message survives fitting
        return _fit(lambda h: tokenizer.build_chat_input(query, history=h, role=role)["input_ids"][0].tolist(),
                    history, max_length, keep=keep)

    def chat(self, tokenizer, query, history=None, role="user", max_length=8192, num_beams=1, do_sample=True,
             top_p=0.8, temperature=0.8, logits_processor=None, **kwargs):
        """Answer `query` (sent as `role`); returns (response, history with the query and the reply appended).

        The response is text, or a dict for a tool call. `history` itself is not modified.
        """
        history = as_messages(history)
        ids = self._chat_ids(tokenizer, query, history, role, max_length)
        out = self.generate([ids], max_length=max_length, num_beams=num_beams, do_sample=do_sample, top_p=top_p,
                            temperature=temperature, logits_processor=_processors(logits_processor),
                            eos_token_id=self.stop_ids(tokenizer), **kwargs)
        # Upstream drops the last generated token (the stop token, or the last one when max_length cut it).
        response = tokenizer.decode(out[0, len(ids):-1].tolist())
        return self.process_response(response, history + [{"role": role, "content": query}])

    def stream_chat(self, tokenizer, query, history=None, role="user", past_key_values=None, max_length=8192,
                    do_sample=True, top_p=0.8, temperature=0.8, logits_processor=None, return_past_key_values=False,
                    include_last=True, **kwargs):
        """Yield (response so far, history) — plus a `ChatPast` with `return_past_key_values` — as tokens arrive.

        With `past_key_values` from the previous turn only this turn's message is fed (`[gMASK] sop <|role|>…`),
        and `max_length` counts this turn's ids and the new tokens, as upstream. The step that ends generation
        is yielded too; `include_last=False` leaves it out.
        """
        history = as_messages(history)
        past = _past_ids(past_key_values)
        if past_key_values is None:
            ids = self._chat_ids(tokenizer, query, history, role, max_length)
        else:
            ids = self._chat_ids(tokenizer, query, [], role, max_length)
        history.append({"role": role, "content": query})
        fed = past + ids
        for out in self.stream_generate([fed], max_length=len(past) + max_length, do_sample=do_sample, top_p=top_p,
                                        temperature=temperature, logits_processor=_processors(logits_processor),
                                        eos_token_id=self.stop_ids(tokenizer), include_last=include_last, **kwargs):
            response = tokenizer.decode(out[0, len(fed):-1].tolist())
            if not response or response[-1] == "\ufffd":
                continue
            response, new_history = self.process_response(response, history)
            if return_past_key_values:
                yield response, new_history, ChatPast(tuple(out[0, :-1].tolist()))
            else:
                yield response, new_history


def chat_mixin(family):
    """The chat mixin of a ChatGLM2/3 family name."""
    return {"chatglm2": ChatGLM2ChatMixin, "chatglm3": ChatGLM3ChatMixin}[family]
