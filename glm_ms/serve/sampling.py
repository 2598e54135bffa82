"""How the engine picks each row's next token on the host, with the same rules and order as `model.generate`.

Every request has its own settings and its own random generator, so a row's tokens do not depend on which other
rows share its decode steps: a seeded request gives the same answer alone or in a full batch.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import GenerationError
from ..generation import InvalidScoreLogitsProcessor, RepetitionPenaltyLogitsProcessor, sampling_probs

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids [1, s], scores [1, vocab]) → scores


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Sampling:
    """A request's token choice: temperature 0 is greedy; otherwise top-k (0: off) → top-p sampling."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (_finite_number(self.temperature) and self.temperature >= 0):
            raise GenerationError(f"temperature must be a number >= 0 (0: greedy), got {self.temperature!r}")
        if not (_finite_number(self.top_p) and 0 < self.top_p <= 1):
            raise GenerationError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
            raise GenerationError(f"top_k must be an integer >= 0 (0: no top-k), got {self.top_k!r}")
        if not (_finite_number(self.repetition_penalty) and self.repetition_penalty > 0):
            raise GenerationError(f"repetition_penalty must be a number > 0, got {self.repetition_penalty!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and not isinstance(self.seed, bool)
                                          and self.seed >= 0):
            raise GenerationError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """True when the choice is the argmax (temperature 0)."""
        return self.temperature == 0


class RowSampler:
    """The token choice of one request: its settings, its random generator, and the ids it has seen."""

    def __init__(self, sampling: Sampling, prompt_ids: Sequence[int], processors: Sequence[LogitsProcessor] = ()):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.ids = list(prompt_ids)
        # generate's order: repetition penalty, the caller's processors, then chat's NaN/Inf guard.
        chain = [RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)] \
            if sampling.repetition_penalty != 1.0 else []
        self.processors = chain + list(processors) + [InvalidScoreLogitsProcessor()]

    @property
    def host_only(self) -> bool:
        """True when the choice needs the logits on the host (anything but plain greedy)."""
        return not self.sampling.greedy or len(self.processors) > 1

    def choose(self, logits: np.ndarray) -> int:
        """The next token from float32 logits [vocab] of this row."""
        scores = logits[None]
        ids = np.asarray(self.ids, dtype=np.int64)[None]
        for processor in self.processors:
            scores = processor(ids, scores)
        s = self.sampling
        if s.greedy:
            return int(np.argmax(scores[0]))
        probs = sampling_probs(scores, s.temperature, s.top_k, s.top_p)[0]
        return int(self.rng.choice(probs.shape[-1], p=probs / probs.sum()))

    def accept(self, token: int) -> None:
        """Record `token` as generated (the repetition penalty sees it from the next step on)."""
        self.ids.append(int(token))
