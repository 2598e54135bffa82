"""Generated ids → reply text, streamed as deltas that are never taken back.

Ids are decoded incrementally (vLLM's way: a short window of recent ids is decoded twice, with and without the
newest, and the difference is the new text), so a long answer costs the same per step as a short one. Every
step then applies the family's reply clean-up (strip, training date, ChatGLM-6B's
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
        self.raw = ""          # the decoded text of ids[:self._read]
        self._prefix = 0       # the window decoded each step starts here (its first piece's leading space is
        self._read = 0         # dropped by the decoder both times, so the difference is exact)
        self.emitted = ""
        self.stopped = False
        self.diverged = False  # the final text does not extend what was sent (a clean-up rewrote it)

    def _decoded(self, final: bool = False) -> str | None:
        """The raw text of every id; None while the newest ids end inside a UTF-8 character (unless `final`)."""
        before = self.decode(self.ids[self._prefix:self._read])
        after = self.decode(self.ids[self._prefix:])
        if not after.startswith(before):  # the newest id changed text already read: decode everything once
            self.raw, self._prefix, self._read = self.decode(self.ids), max(len(self.ids) - 1, 0), len(self.ids)
            return None if self.raw.endswith("\ufffd") and not final else self.raw
        if after.endswith("\ufffd") and not final:  # an incomplete UTF-8 character: wait for its other bytes
            return None
        if final:
            return self.raw + after[len(before):]
        if len(after) > len(before):
            self.raw += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self.raw

    def _current(self) -> tuple[str | None, bool]:
        raw = self._decoded()
        if raw is None:
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
        return cut_at_stop(self.clean(self.raw_text(), True), self.stops)[0]

    def raw_text(self) -> str:
        """The decoded text of every id pushed so far."""
        return self._decoded(final=True)

    def finish(self) -> str:
        """The text not emitted yet, once generation has ended."""
        text, cut = cut_at_stop(self.clean(self.raw_text(), True), self.stops)
        self.stopped = self.stopped or cut
        self.diverged = self.diverged or not text.startswith(self.emitted)
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):
            return ""
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta
