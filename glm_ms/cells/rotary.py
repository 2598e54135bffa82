"""ChatGLM-6B 2D rotary position embedding: one rotary over each half of a head."""
import numpy as np
from mindspore import Tensor, nn, ops


def rotary_tables(rotary_dim, num_positions, base=10000.0):
    """cos/sin tables [num_positions, rotary_dim] (float32) for one rotary of width `rotary_dim`."""
    inv_freq = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))
    # Upstream builds inv_freq in float32 then stores it as float16; the rounded values are what it trained with.
    inv_freq = inv_freq.astype(np.float16).astype(np.float32)
    freqs = np.arange(num_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb.astype(np.float64)).astype(np.float32), np.sin(emb.astype(np.float64)).astype(np.float32)


class RotaryEmbedding2D(nn.Cell):
    """Looks up cos/sin for (position, block position) pairs, concatenated over the two halves of a head."""

    def __init__(self, rotary_dim, num_positions):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.num_positions = 0
        self.ensure(num_positions)

    def ensure(self, num_positions):
        """Grow the tables to cover positions [0, num_positions) (upstream recomputes them on demand)."""
        if num_positions > self.num_positions:
            cos, sin = rotary_tables(self.rotary_dim, num_positions)
            self.cos, self.sin = Tensor(cos), Tensor(sin)
            self.num_positions = num_positions

    def construct(self, position_ids, dtype):
        """position_ids [b, 2, s] → cos, sin [b, s, 1, 2 * rotary_dim] in `dtype`."""
        pos, block = position_ids[:, 0], position_ids[:, 1]
        cos = ops.concat([ops.gather(self.cos, pos, 0), ops.gather(self.cos, block, 0)], -1)
        sin = ops.concat([ops.gather(self.sin, pos, 0), ops.gather(self.sin, block, 0)], -1)
        return cos.expand_dims(2).astype(dtype), sin.expand_dims(2).astype(dtype)


def apply_rotary(x, cos, sin):
    """Rotate both halves of each head of x [b, s, heads, head_dim] ("rotate_half" within each half)."""
    quarter = x.shape[-1] // 4
    a, b, c, d = ops.split(x, quarter, axis=-1)
    rotated = ops.concat([-b, a, -d, c], -1)
    return x * cos + rotated * sin
