"""A prompt's attention mask kept as the rule that makes it, so a long prompt never holds [seq, seq] booleans:
a prefill piece takes only its own rows, over the cache slots it reads."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PromptMask:
    """Which keys each prompt token is masked from (True = masked), made row by row on demand.

    Either causal over left padding (`keep` [b, s], True for real tokens), as upstream ChatGLM2's `get_masks`:
    pad keys are masked and, an upstream quirk, pad *rows* are masked nowhere (their outputs are never used);
    or `dense` [b, 1, s, s] as given (ChatGLM-6B's bidirectional context, a caller's own mask). Only the causal
    form can be prefilled in pieces: a dense mask may let a token see later ones.
    """
    keep: np.ndarray | None = None
    dense: np.ndarray | None = None

    @classmethod
    def causal(cls, keep: np.ndarray) -> PromptMask:
        """The causal mask of a 0/1 (or bool) padding mask [b, s]."""
        return cls(keep=np.asarray(keep).astype(bool))

    @classmethod
    def given(cls, dense: np.ndarray) -> PromptMask:
        """A bool mask [b, 1, s, s] used as it is."""
        return cls(dense=np.asarray(dense, dtype=bool))

    @property
    def shape(self) -> tuple[int, int]:
        """(batch, prompt length)."""
        return self.keep.shape if self.dense is None else (self.dense.shape[0], self.dense.shape[-1])

    @property
    def chunkable(self) -> bool:
        """Whether no token sees a later one, so the prompt may be prefilled piece by piece."""
        return self.dense is None

    def rows(self, start: int, stop: int, width: int | None = None) -> np.ndarray:
        """bool [b, 1, stop - start, width] for tokens start..stop-1 over keys 0..width-1 (default `stop`).

        Keys past the prompt are masked (they are not prompt tokens); a pad row sees keys 0..stop-1.
        """
        batch, seq = self.shape
        width = stop if width is None else width
        if self.dense is not None:
            out = np.ones((batch, 1, stop - start, width), dtype=bool)
            out[..., :min(width, seq)] = self.dense[:, :, start:stop, :width]
            return out
        keys = np.arange(width)
        keep = np.zeros((batch, width), dtype=bool)
        keep[:, :min(width, seq)] = self.keep[:, :width]
        allowed = (keys[None, :] <= np.arange(start, stop)[:, None])[None] & keep[:, None, :]
        allowed |= ~self.keep[:, start:stop, None] & (keys < stop)[None, None, :]
        return ~allowed[:, None]

    def last_row(self) -> np.ndarray:
        """bool [b, s]: what the last prompt token is masked from (decoding starts from it)."""
        seq = self.shape[1]
        return self.rows(seq - 1, seq)[:, 0, 0]

    def repeat(self, times: int) -> PromptMask:
        """Each batch row `times` times in a row (beam search)."""
        if self.dense is not None:
            return PromptMask.given(np.repeat(self.dense, times, axis=0))
        return PromptMask.causal(np.repeat(self.keep, times, axis=0))
