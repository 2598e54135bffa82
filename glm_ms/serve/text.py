"""Generated ids → reply text, streamed as deltas that are never taken back.

Every step re-decodes the answer and applies the family's reply clean-up (strip, training date, ChatGLM-6B's
full-width punctuation next to CJK characters), then emits only the part that can no longer change: text ending
in an incomplete UTF-8 character, a tail that could still become a stop string or the training-date placeholder,
trailing whitespace and a trailing half-width punctuation mark wait for the next token. A stop string cuts the
text right before it (it is never emitted, not even in part); the caller then cancels the request.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from ..prompts import TRAINING_DATE

# What a clean-up may still rewrite at the end of the text: ChatGLM-6B turns these into full-width forms when a
# CJK character follows, and every family strips trailing whitespace.
_VOLATILE_TAIL = set(",!:;?") | {" ", "\t", "\n", "\r"}


def held_suffix(text: str, watched: Sequence[str]) -> int:
    """How many characters at the end of `text` could still start one of `watched` (0 if none)."""
    longest = 0
    for word in watched:
        for n in range(min(len(word) - 1, len(text)), longest, -1):
            if text.endswith(word[:n]):
                longest = n
                break
    return longest


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(`text` up to the earliest stop string, True) when one occurs, else (`text`, False)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class ReplyText:
    """Feed it generated ids (`push`); it returns each new piece of reply text, and the rest at `finish()`.

    `clean(raw, done) -> str | None`: the family's clean-up of the whole raw text; None (only while not `done`)
    holds everything back for now (ChatGLM3 while its first line may still name a tool).
    """

    def __init__(self, decode: Callable[[list[int]], str], clean: Callable[[str, bool], str | None],
                 stops: Sequence[str] = ()):
        self.decode = decode
        self.clean = clean
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False
        self.diverged = False  # the final text does not extend what was sent (a clean-up rewrote it)

    def _current(self) -> tuple[str | None, bool]:
        raw = self.decode(self.ids)
        if raw.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return None, False
        text = self.clean(raw, False)
        if text is None:  # held back; a stop string in what it would read as if it ended here still ends it
            cut, stopped = cut_at_stop(self.clean(raw, True), self.stops)
            return (cut, True) if stopped else (None, False)
        return cut_at_stop(text, self.stops)

    def push(self, token: int) -> str:
        """Add one generated id; the text that became final with it ('' if none)."""
        if self.stopped:
            return ""
        self.ids.append(int(token))
        text, self.stopped = self._current()
        if text is None:
            return ""
        if not self.stopped:
            text = text[:len(text) - held_suffix(text, self.stops + [TRAINING_DATE[0]])]
            while text and text[-1] in _VOLATILE_TAIL:
                text = text[:-1]
        return self._advance(text)

    def final(self) -> str:
        """The whole reply text as `clean` makes it of everything generated (cut at a stop string)."""
        return cut_at_stop(self.clean(self.decode(self.ids), True), self.stops)[0]

    def finish(self) -> str:
        """The text not emitted yet, once generation has ended."""
        text, cut = cut_at_stop(self.clean(self.decode(self.ids), True), self.stops)
        self.stopped = self.stopped or cut
        self.diverged = self.diverged or not text.startswith(self.emitted)
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):
            return ""
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta
