"""Static key/value cache: preallocated buffers written by index, so shapes never change while decoding."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
import mindspore as ms


class KVCache(nn.Cell):
    """Key and value buffers [batch, heads, capacity, head_dim], updated in place at given positions.

    Buffers are only ever changed in place (`ops.assign`, scatter): a compiled graph binds the storage of the
    Parameters it was compiled with, and `Parameter.set_data` would silently detach the Python-side buffer
    from it. Each buffer shape keeps its own Parameters (the last `POOL_SIZE` shapes), so a graph compiled for
    a shape finds the very same buffers when that shape comes back.
    """

    POOL_SIZE = 3

    def __init__(self, num_heads: int, head_dim: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.key = Parameter(Tensor(np.zeros((1, num_heads, 1, head_dim), np.float32)).astype(dtype),
                             requires_grad=False)
        self.value = Parameter(Tensor(np.zeros((1, num_heads, 1, head_dim), np.float32)).astype(dtype),
                               requires_grad=False)
        self._pool = OrderedDict()  # (shape, dtype) → (key, value), least recently used first

    def allocate(self, batch: int, capacity: int, dtype: ms.Type) -> None:
        """Zeroed buffers for `batch` sequences of up to `capacity` tokens (the same Parameters per shape)."""
        shape = (batch, self.num_heads, capacity, self.head_dim)
        wanted = (shape, dtype)
        pair = self._pool.pop(wanted, None)
        if pair is None and (tuple(self.key.shape), self.key.dtype) == wanted:
            pair = (self.key, self.value)
        fresh = pair is None
        if fresh:
            pair = (Parameter(ops.zeros(shape, dtype), name=self.key.name, requires_grad=False),
                    Parameter(ops.zeros(shape, dtype), name=self.value.name, requires_grad=False))
        if pair[0] is not self.key:
            self.key, self.value = pair
        self._pool[wanted] = pair
        while len(self._pool) > self.POOL_SIZE:
            self._pool.popitem(last=False)
        if not fresh:
            zeros = ops.zeros(shape, dtype)
            ops.assign(self.key, zeros)
            ops.assign(self.value, zeros)

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` of the batch (beam search)."""
        for buf in (self.key, self.value):
            ops.assign(buf, ops.gather(buf, index, 0))

    def construct(self, key, value, positions):
        """Write key/value [b, heads, s, head_dim] at cache slots `positions` [s]; return the whole buffers."""
        b, h, s, _ = key.shape
        # tile (not broadcast_to): the scatter reads the index as flat memory, so it must be materialized.
        batch_idx = ops.tile(ops.arange(b, dtype=ms.int32).reshape(b, 1, 1, 1), (1, h, s, 1))
        head_idx = ops.tile(ops.arange(h, dtype=ms.int32).reshape(1, h, 1, 1), (b, 1, s, 1))
        slot_idx = ops.tile(positions.astype(ms.int32).reshape(1, 1, s, 1), (b, h, 1, 1))
        index = ops.concat([batch_idx, head_idx, slot_idx], -1)
        # Views from split/transpose must be materialized before a scatter reads them as flat memory.
        # The scatters' outputs (the updated buffers) are returned, not the Parameters: a compiled graph orders
        # a later slice of them after the write only through that data dependency.
        keys = ops.scatter_nd_update(self.key, index, key.astype(self.key.dtype).contiguous())
        values = ops.scatter_nd_update(self.value, index, value.astype(self.value.dtype).contiguous())
        return keys, values
