"""Prefix-LM attention masks and 2D position ids of ChatGLM-6B (numpy only, shared by tokenizer and generation)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def context_length(ids: Sequence[int], bos_id: int) -> int:
    """Index of `<sop>` in `ids`: everything before it is the bidirectional context (whole length if absent)."""
    ids = list(ids)
    return ids.index(bos_id) if bos_id in ids else len(ids)


def prefix_lm_mask(ids: Sequence[int], bos_id: int) -> np.ndarray:
    """Bool mask [1, seq, seq], True = masked: causal, plus full attention over the context."""
    seq = len(ids)
    ctx = context_length(ids, bos_id)
    allowed = np.tril(np.ones((seq, seq), dtype=bool))
    allowed[:, :ctx] = True
    return ~allowed[None]


def position_ids_2d(ids: Sequence[int], bos_id: int, mask_id: int, gmask_id: int,
                    prefer_gmask: bool = False) -> np.ndarray:
    """Int64 [2, seq]: positions (frozen at the mask token from `<sop>` on) and block positions (0 then 1, 2, ...)."""
    ids = list(ids)
    seq = len(ids)
    ctx = context_length(ids, bos_id)
    positions = np.arange(seq, dtype=np.int64)
    # Upstream's tokenizer looks for [MASK] first, its model for [gMASK] first; they differ only when both occur.
    first, second = (gmask_id, mask_id) if prefer_gmask else (mask_id, gmask_id)
    mask_token = first if first in ids else second
    if mask_token in ids:
        # Generated tokens all sit "at" the mask they fill in; block positions count inside the span.
        positions[ctx:] = ids.index(mask_token)
    block = np.concatenate([np.zeros(ctx, dtype=np.int64), np.arange(1, seq - ctx + 1, dtype=np.int64)])
    return np.stack([positions, block], axis=0)
