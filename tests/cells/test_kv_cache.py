"""The static KV cache: written in place at given slots, reordered for beams, reallocated per shape."""
import mindspore as ms
import numpy as np
from mindspore import Tensor

from glm_ms.cells.kv_cache import KVCache
from glm_ms.device import select_device

select_device("CPU")
rng = np.random.default_rng(0)


def test_kv_cache_written_in_place_at_positions():
    cache = KVCache(num_heads=2, head_dim=3)
    cache.allocate(batch=2, capacity=6, dtype=ms.float32)
    k = rng.standard_normal((2, 2, 2, 3)).astype(np.float32)
    keys, values = cache(Tensor(k), Tensor(-k), Tensor(np.array([1, 4], np.int32)))
    expect = np.zeros((2, 2, 6, 3), np.float32)
    expect[:, :, [1, 4]] = k
    np.testing.assert_array_equal(cache.key.asnumpy(), expect)
    np.testing.assert_array_equal(values.asnumpy(), -expect)
    cache.reorder(Tensor(np.array([1, 1], np.int32)))
    np.testing.assert_array_equal(cache.key.asnumpy()[0], expect[1])
    cache.allocate(batch=1, capacity=9, dtype=ms.float32)  # resize gives zeroed buffers of the new shape
    assert cache.key.shape == (1, 2, 9, 3) and not cache.key.asnumpy().any()
