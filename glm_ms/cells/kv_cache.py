"""Static key/value cache: preallocated buffers written by index, so shapes never change while decoding."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
import mindspore as ms


class KVCache(nn.Cell):
    """Key and value buffers [capacity, batch, heads, head_dim], slot-major, updated in place at given slots.

    Slot-major because ScatterUpdate replaces whole rows of the leading axis in place, at the cost of the rows
    written, whereas MindSpore's CPU ScatterNdUpdate copies its whole input on every call (measured: 11 ms for a
    64 MB buffer, paid by every layer on every decode step). Buffers are only ever changed in place: a compiled
    graph binds the storage of the Parameters it was compiled with, and `Parameter.set_data` would silently
    detach the Python-side buffer from it. Each buffer shape keeps its own Parameters (the last `POOL_SIZE`
    shapes), so a graph compiled for a shape finds the very same buffers when that shape comes back.
    """

    POOL_SIZE = 3

    def __init__(self, num_heads: int, head_dim: int, dtype: ms.Type = ms.float32):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.key = Parameter(Tensor(np.zeros((1, 1, num_heads, head_dim), np.float32)).astype(dtype),
                             requires_grad=False)
        self.value = Parameter(Tensor(np.zeros((1, 1, num_heads, head_dim), np.float32)).astype(dtype),
                               requires_grad=False)
        self._pool = OrderedDict()  # (shape, dtype) → (key, value), least recently used first
        self._write = ops.ScatterUpdate()

    def allocate(self, batch: int, capacity: int, dtype: ms.Type) -> None:
        """Zeroed buffers for `batch` sequences of up to `capacity` tokens (the same Parameters per shape)."""
        shape = (capacity, batch, self.num_heads, self.head_dim)
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

    @property
    def capacity(self) -> int:
        """Slots per row."""
        return self.key.shape[0]

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` of the batch (beam search)."""
        for buf in (self.key, self.value):
            ops.assign(buf, ops.gather(buf, index, 1))

    def held(self, count: int) -> tuple[Tensor, Tensor]:
        """Keys and values of slots 0..count-1 as [batch, heads, count, head_dim] (upstream's past_key_values)."""
        return heads_major(self.key, count), heads_major(self.value, count)

    def copy_row(self, key: Tensor, value: Tensor, row: int) -> None:
        """Overwrite batch row `row` with key/value [capacity, 1, heads, head_dim] (another cache's buffers)."""
        index = Tensor(np.stack([np.arange(self.capacity), np.full(self.capacity, row)], -1).astype(np.int32))
        for buf, src in ((self.key, key), (self.value, value)):
            ops.scatter_nd_update(buf, index, src[:, 0])

    def construct(self, key, value, slots):
        """Write key/value [b, s, heads, head_dim] at cache slots `slots` [s]; return the updated buffers
        [capacity, b, heads, head_dim] (`heads_major` reads a prefix of them)."""
        # The scatters' outputs (the updated buffers) are read, not the Parameters: a compiled graph orders the
        # reads after the writes only through that data dependency.
        return (self._write(self.key, slots, _slot_major(key.astype(self.key.dtype))),
                self._write(self.value, slots, _slot_major(value.astype(self.value.dtype))))


def _slot_major(x: Tensor) -> Tensor:
    """[b, s, heads, d] as [s, b, heads, d], contiguous (a scatter reads its updates as flat memory)."""
    b, s, h, d = x.shape
    if b == 1 or s == 1:  # a decode step or a one-row prompt: the same memory order, no transpose needed
        return x.reshape(s, b, h, d)
    return x.transpose(1, 0, 2, 3).contiguous()


def heads_major(buffer: Tensor, count: int) -> Tensor:
    """Slots 0..count-1 of a buffer [capacity, b, heads, d] as [b, heads, count, d]."""
    # narrow, not a slice: a slice of the whole buffer is dropped as a no-op, and a BatchMatMul reading the
    # Parameter itself runs about twenty times slower on the CPU (measured at 4096 slots).
    return ops.narrow(buffer, 0, 0, count).transpose(1, 2, 0, 3)
