"""Compiling a chat's graphs ahead of its first turn (`model.warmup`), so a GE backend's minutes-long
compilations happen at start-up rather than while someone waits for an answer."""
from __future__ import annotations

from typing import Any

import numpy as np

from .decoding import Decoder, TokenChoice, bucket, graph_compilations, kv_bucket
from .generation import GenerationOptions, GenerationPlan, InvalidScoreLogitsProcessor


def warm_up(model: Any, max_length: int = 2048, batch: int = 1, longest_prompt: int | None = None,
            do_sample: bool = True) -> int:
    """Compile one prefill per prompt bucket up to `longest_prompt` and the decode step at each cache-prefix
    width, choosing tokens as chat does (sampling with upstream's NaN/Inf guard) or greedily; the graphs
    compiled."""
    before = graph_compilations(model)
    options = GenerationOptions(max_length=max_length, do_sample=do_sample, compiled=True,
                                logits_processor=[InvalidScoreLogitsProcessor()])
    token = min(20, model.config.vocab_size - 1)  # any id: only the shapes matter
    for i, length in enumerate(warmup_lengths(max_length, longest_prompt)):
        plan = GenerationPlan.build(model, np.full((batch, length), token), None, None, options)
        decoder = Decoder(model, plan.ids, plan.mask, plan.positions, plan.max_length, True)
        tokens = decoder.prefill(plan.choice)
        if i == 0:
            _warm_decode_widths(decoder, plan.choice, tokens)
    return graph_compilations(model) - before


def warmup_lengths(max_length: int, longest_prompt: int | None = None) -> list[int]:
    """One prompt length per prompt bucket up to `longest_prompt` (default max_length - 1)."""
    longest = min(longest_prompt or max_length - 1, max_length - 1)
    lengths, n = [], 1
    while n <= longest:
        lengths.append(n)
        n = bucket(n) + 1
    return lengths


def _warm_decode_widths(decoder: Decoder, choice: TokenChoice, tokens: np.ndarray) -> None:
    """One decode step at every cache-prefix width a run up to the decoder's limit reads (a graph each)."""
    state = decoder.state
    for width in sorted({kv_bucket(n, state.capacity) for n in range(state.length + 1, state.limit + 1)}):
        state.length = max(state.length, min(width, state.limit) - 1)  # skipped slots stay masked: shapes matter
        tokens = decoder.step(tokens, choice)
