"""The static KV cache: written in place at given slots, reordered for beams, reallocated per shape."""
import mindspore as ms
import numpy as np
from mindspore import Tensor

from glm_ms.cells.kv_cache import KVCache, heads_major
from glm_ms.device import select_device

select_device("CPU")
rng = np.random.default_rng(0)


def test_kv_cache_written_in_place_at_positions():
    cache = KVCache(num_heads=2, head_dim=3)
    cache.allocate(batch=2, capacity=6, dtype=ms.float32)
    k = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)   # [batch, tokens, heads, head_dim]
    keys, values = (heads_major(buf, 5) for buf in cache(Tensor(k), Tensor(-k), Tensor(np.array([1, 4], np.int32))))
    expect = np.zeros((2, 2, 6, 3), np.float32)                # [batch, heads, slots, head_dim]
    expect[:, :, [1, 4]] = k.transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(keys.asnumpy(), expect[:, :, :5])
    np.testing.assert_array_equal(values.asnumpy(), -expect[:, :, :5])
    held_keys, held_values = cache.held(6)
    np.testing.assert_array_equal(held_keys.asnumpy(), expect)
    np.testing.assert_array_equal(held_values.asnumpy(), -expect)
    cache.reorder(Tensor(np.array([1, 1], np.int32)))
    np.testing.assert_array_equal(cache.held(6)[0].asnumpy()[0], expect[1])
    cache.allocate(batch=1, capacity=9, dtype=ms.float32)  # resize gives zeroed buffers of the new shape
    assert cache.capacity == 9 and cache.held(9)[0].shape == (1, 2, 9, 3) and not cache.key.asnumpy().any()


def test_the_whole_buffer_can_be_read_and_a_row_copied_in():
    cache = KVCache(num_heads=2, head_dim=3)
    cache.allocate(batch=3, capacity=4, dtype=ms.float16)
    k = rng.standard_normal((3, 4, 2, 3)).astype(np.float16)
    keys = heads_major(cache(Tensor(k), Tensor(k), Tensor(np.arange(4, dtype=np.int32)))[0], 4)  # every slot
    np.testing.assert_array_equal(keys.asnumpy(), k.transpose(0, 2, 1, 3))
    other = KVCache(num_heads=2, head_dim=3)
    other.allocate(batch=1, capacity=4, dtype=ms.float16)
    row = rng.standard_normal((1, 4, 2, 3)).astype(np.float16)
    other(Tensor(row), Tensor(-row), Tensor(np.arange(4, dtype=np.int32)))
    cache.copy_row(other.key, other.value, 1)
    held_keys, held_values = cache.held(4)
    np.testing.assert_array_equal(held_keys.asnumpy()[1], row[0].transpose(1, 0, 2))
    np.testing.assert_array_equal(held_values.asnumpy()[1], -row[0].transpose(1, 0, 2))
    np.testing.assert_array_equal(held_keys.asnumpy()[[0, 2]], k[[0, 2]].transpose(0, 2, 1, 3))
