"""Every prompt template of the three families, once, and the one rule that fits a prompt into max_length.

Text-level templates live here; ChatGLM3's role-token messages are built at the id level by its tokenizer
(`build_chat_input`), as upstream does. No MindSpore, no tokenizer imports: templates are plain strings.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

from .errors import GenerationError

Pair = tuple[str, str]
Message = dict[str, Any]

TRAINING_DATE = ("[[训练时间]]", "2023年")  # upstream replies carry this placeholder for the training date


def fill_training_date(text: str) -> str:
    """Replace the training-date placeholder the way every generation's `process_response` does."""
    return text.replace(*TRAINING_DATE)


def chatglm_prompt(query: str, history: Sequence[Pair]) -> str:
    """ChatGLM-6B: the bare query without history, else `[Round i]\\n问：…\\n答：…\\n` rounds counted from 0."""
    if not history:
        return query
    prompt = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
    return prompt + f"[Round {len(history)}]\n问：{query}\n答："


def chatglm2_round(number: int, query: str) -> str:
    """ChatGLM2's open round `number` (counted from 1): `[Round n]\\n\\n问：{query}\\n\\n答：`."""
    return f"[Round {number}]\n\n问：{query}\n\n答："


def chatglm2_prompt(query: str, history: Sequence[Pair]) -> str:
    """ChatGLM2: every past round `[Round n]\\n\\n问：{q}\\n\\n答：{r}\\n\\n` (from 1), then the open round."""
    past = "".join(f"{chatglm2_round(i, q)}{r}\n\n" for i, (q, r) in enumerate(history, 1))
    return past + chatglm2_round(len(history) + 1, query)


def chatglm2_continuation(query: str, history: Sequence[Pair]) -> str:
    """What ChatGLM2 feeds after a kept cache: the blank lines that close the last reply, then the open round."""
    return "\n\n" + chatglm2_round(len(history) + 1, query)


def as_pairs(history: Sequence[Sequence[str]] | None) -> list[Pair]:
    """A ChatGLM-6B/2 history as a new list of (query, response) pairs; anything else is a clear error."""
    pairs = []
    for turn in history or []:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise GenerationError(f"history items are (query, response) pairs, got {turn!r}")
        pairs.append((turn[0], turn[1]))
    return pairs


def as_messages(history: Sequence[Any] | None) -> list[Message]:
    """A copy of a ChatGLM3 history; (query, response) pairs, as ChatGLM-6B/2 callers keep them, become messages."""
    messages = []
    for item in history or []:
        if isinstance(item, dict):
            messages.append(copy.deepcopy(item))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            messages += [{"role": "user", "content": item[0]}, {"role": "assistant", "metadata": "", "content": item[1]}]
        else:
            raise GenerationError(f"ChatGLM3 history items are {{'role', 'content'}} dicts or (query, response) "
                                  f"pairs, got {item!r}")
    return messages


def fit_to_length(build: Callable[[list], list[int]], history: list, max_length: int, keep: int = 0) -> list[int]:
    """Ids of `build(history)` with the oldest entries after the first `keep` dropped until one new token fits.

    The returned history of a chat keeps every round; only the prompt leaves old ones out.
    """
    for start in range(keep, len(history) + 1):
        ids = build(history[:keep] + history[start:])
        if len(ids) < max_length:
            return ids
    raise GenerationError(f"query is {len(ids)} tokens with the prompt markers; max_length {max_length} leaves "
                          "no room for an answer (shorten the message or raise max_length)")
