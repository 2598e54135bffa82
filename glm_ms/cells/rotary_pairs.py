"""ChatGLM2/3 rotary embedding: plain 1-D positions, applied to the first half of each head as adjacent pairs."""
import numpy as np
from mindspore import Tensor, nn, ops


def pair_rotary_tables(rotary_dim, num_positions, base=10000.0):
    """cos/sin [num_positions, rotary_dim // 2] (float32): angle of pair i at position p is p * base^(-2i/rotary_dim).

    Computed the way upstream does it in float32 (theta and position × theta rounded to float32); the
    `rotary_pos_emb.inv_freq` buffer of checkpoints is not used, as upstream recomputes it too.
    """
    theta = (1.0 / (np.float32(base) ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim))))
    theta = theta.astype(np.float32)
    angles = np.outer(np.arange(num_positions, dtype=np.float32), theta).astype(np.float32)
    return (np.cos(angles.astype(np.float64)).astype(np.float32),
            np.sin(angles.astype(np.float64)).astype(np.float32))


class PairRotaryEmbedding(nn.Cell):
    """Looks up cos/sin for position ids; the tables grow on demand (upstream sizes them by seq_length)."""

    def __init__(self, rotary_dim, num_positions, base=10000.0):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.base = base
        self.num_positions = 0
        self.ensure(num_positions)

    def ensure(self, num_positions):
        """Grow the tables to cover positions [0, num_positions)."""
        if num_positions > self.num_positions:
            cos, sin = pair_rotary_tables(self.rotary_dim, num_positions, self.base)
            self.cos, self.sin = Tensor(cos), Tensor(sin)
            self.num_positions = num_positions

    def construct(self, position_ids, dtype):
        """position_ids [b, s] → cos, sin [b, s, 1, rotary_dim // 2, 1] in `dtype` (upstream casts the cache too)."""
        b, s = position_ids.shape
        n = self.rotary_dim // 2
        cos = ops.gather(self.cos, position_ids, 0).reshape(b, s, 1, n, 1)
        sin = ops.gather(self.sin, position_ids, 0).reshape(b, s, 1, n, 1)
        return cos.astype(dtype), sin.astype(dtype)


def apply_pair_rotary(x, cos, sin):
    """Rotate pairs (x[2i], x[2i+1]) of the first 2n dims of x [b, s, heads, head_dim]; the rest passes through."""
    b, s, h, d = x.shape
    n = cos.shape[-2]
    rot, rest = ops.split(x, [2 * n, d - 2 * n], axis=-1)
    even, odd = ops.split(rot.reshape(b, s, h, n, 2), 1, axis=-1)
    # The same products and sums as upstream (x0·cos − x1·sin, x1·cos + x0·sin), so float32 results agree bitwise.
    turned = ops.concat([even * cos - odd * sin, odd * cos + even * sin], -1).reshape(b, s, h, 2 * n)
    return ops.concat([turned, rest], -1)
