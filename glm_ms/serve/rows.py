"""The batched KV cache of the serving engine: `rows` sequences of up to `capacity` tokens, decoded together.

Attention reads a row's keys through its mask, and rotary positions travel with each token, so *where* a row's
tokens sit in the cache does not matter, only that its mask opens exactly its own slots. That makes one shared
write slot per step possible: every decode step writes each row's new key at the ring slot `pointer`, which then
advances. A request joining row r is prefilled alone (batch 1) into a scratch cache at the slots just *behind*
the pointer, and that cache row is copied into row r; the other rows are not touched. The ring reaches those
slots again only after `capacity - prompt` steps, so a request whose prompt + new tokens fit in `capacity` never
overwrites its own keys.

Token ids, positions, masks and the write slot are tensors, so joining and leaving rows never recompiles: a run
compiles one decode graph per token-choice mode (greedy ids or logits) and one prefill graph per prompt bucket.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ..cells.kv_cache import KVCache
from ..decoding import bucket
from ..device import jit_config
from ..generation import InvalidScoreLogitsProcessor


@dataclass
class CacheBuffers:
    """The key/value Parameters one cache shape uses, per KVCache Cell of the model."""
    caches: list[KVCache]
    keys: list[Parameter]
    values: list[Parameter]

    @classmethod
    def allocate(cls, model: nn.Cell, batch: int, capacity: int) -> CacheBuffers:
        """Fresh zeroed buffers [capacity, batch, heads, head_dim] in every KVCache of `model`."""
        model.allocate_cache(batch, capacity)
        caches = [attention.kv_cache for attention in model.attention_layers()]
        return cls(caches, [c.key for c in caches], [c.value for c in caches])

    def bind(self) -> None:
        """Make these the buffers the model's attention reads and writes (no copy; graphs stay valid)."""
        for cache, key, value in zip(self.caches, self.keys, self.values):
            if cache.key is not key:
                cache.key, cache.value = key, value


class _Step(nn.Cell):
    """`model.forward_step` on the last position, then logits or greedy ids (upstream's NaN/Inf guard per row)."""

    def __init__(self, model: nn.Cell, greedy: bool):
        # auto_prefix=False: holding the model must not rename its parameters (they equal checkpoint names).
        super().__init__(auto_prefix=False)
        self.model = model
        self.greedy = greedy
        self.guard_token = InvalidScoreLogitsProcessor.token

    def construct(self, ids, positions, mask, slots):
        logits = self.model.forward_step(ids, positions, mask, slots, True)[:, -1]   # [b, vocab] float32
        if not self.greedy:
            return logits
        tokens = ops.Argmax(axis=-1, output_type=ms.int32)(logits)  # int32 throughout: no int64 Argmax in the graph
        valid = ops.isfinite(logits).all(-1)
        return ops.where(valid, tokens, ops.full_like(tokens, self.guard_token))


@dataclass
class Prompt:
    """One request's prompt as the model wants it: ids [s], bool mask [s, s] (True = masked), positions [p, s]."""
    ids: np.ndarray
    mask: np.ndarray
    positions: np.ndarray


class BatchRows:
    """`rows` cache rows of `capacity` slots; `prefill` places a prompt in a free row, `step` decodes all rows."""

    def __init__(self, model: nn.Cell, rows: int, capacity: int, compiled: bool):
        self.model = model
        self.rows = rows
        self.capacity = capacity
        self.compiled = compiled
        self.scratch = CacheBuffers.allocate(model, 1, capacity)
        self.batch = CacheBuffers.allocate(model, rows, capacity)
        self.pointer = 0                                         # the slot the next decode step writes
        self.key_mask = np.ones((rows, capacity), dtype=bool)    # True = masked; free rows see nothing
        self.position_rows = None                                # [rows, 1 | 2, 1], known after the first prompt
        self._graphs = {}

    def _graph(self, kind: str):
        if kind not in self._graphs:
            cell = _Step(self.model, greedy=(kind == "greedy"))
            self._graphs[kind] = ms.jit(cell, **jit_config()) if self.compiled else cell
        return self._graphs[kind]

    def prefill(self, row: int, prompt: Prompt) -> np.ndarray:
        """Write `prompt`'s keys into `row` (only) behind the ring pointer; float32 logits [vocab] of its last token."""
        seq = len(prompt.ids)
        width = bucket(seq) if self.compiled else seq
        pad = width - seq
        ring = (self.pointer - width + np.arange(width)) % self.capacity   # pads first, then the prompt
        slots = ring[pad:]
        ids = np.zeros(width, np.int32)
        ids[pad:] = prompt.ids
        positions = np.zeros((prompt.positions.shape[0], width), np.int32)
        positions[:, pad:] = prompt.positions
        mask = np.ones((width, self.capacity), dtype=bool)
        mask[np.ix_(np.arange(pad, width), slots)] = prompt.mask     # real rows see what the model's mask allows
        mask[np.ix_(np.arange(pad), ring[:pad])] = False              # pad rows see pads only; their output is unused
        self.scratch.bind()
        logits = self._graph("logits")(Tensor(ids[None]), Tensor(positions[None]), Tensor(mask[None, None]),
                                       Tensor(ring.astype(np.int32)))
        self.batch.bind()
        for cache, key, value in zip(self.batch.caches, self.scratch.keys, self.scratch.values):
            cache.copy_row(key, value, row)
        self.key_mask[row] = True
        self.key_mask[row, slots] = prompt.mask[-1]   # decode tokens see what the last prompt token saw
        if self.position_rows is None:
            self.position_rows = np.zeros((self.rows, prompt.positions.shape[0], 1), np.int64)
        self.position_rows[row] = prompt.positions[:, -1:]
        return logits.asnumpy()[0]

    def release(self, row: int) -> None:
        """Free `row`: it sees nothing and sits at position 0 until a prompt is placed in it again."""
        self.key_mask[row] = True
        if self.position_rows is not None:
            self.position_rows[row] = 0

    def step(self, tokens: np.ndarray, active: np.ndarray, greedy: bool) -> np.ndarray:
        """Feed token [r] to every active row r; greedy ids [rows], or float32 logits [rows, vocab]."""
        slot = self.pointer
        self.key_mask[active, slot] = False
        self.position_rows[active] = self.model.next_position_ids(self.position_rows[active])
        self.batch.bind()
        out = self._graph("greedy" if greedy else "logits")(
            Tensor(np.where(active, tokens, 0).astype(np.int32)[:, None]), Tensor(self.position_rows.astype(np.int32)),
            Tensor(self.key_mask[:, None, None, :]), Tensor(np.array([slot], np.int32)))
        self.pointer = (slot + 1) % self.capacity
        return out.asnumpy()
