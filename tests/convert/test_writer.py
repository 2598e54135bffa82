"""The streaming writer: MindSpore reads its shards with the crc check on, and the crc is real."""
import numpy as np
import pytest

from glm_ms.convert.writer import write_safetensors
from glm_ms.errors import ConversionError
from tests.convert.upstream import source_tensors


def test_mindspore_loads_every_shard_with_crc_check(converted):
    import mindspore as ms

    src = source_tensors()
    seen = set()
    for shard in sorted(converted.glob("mindspore_model-*.safetensors")):
        params = ms.load_checkpoint(str(shard), format="safetensors", crc_check=True)
        for name, param in params.items():
            assert param.dtype == ms.float16
            np.testing.assert_array_equal(param.asnumpy(), src[name])
            seen.add(name)
    assert seen == {n for n in src if "inv_freq" not in n}
    # The crc MindSpore checks is real: one flipped byte is caught.
    bad = converted.parent / "bad.safetensors"
    data = bytearray((converted / "mindspore_model-00002-of-00003.safetensors").read_bytes())
    data[-3] ^= 0x10
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="crc"):
        ms.load_checkpoint(str(bad), format="safetensors", crc_check=True)


def test_cast_in_chunks_and_unsorted_names_refused(tmp_path):
    from safetensors.numpy import load_file

    values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    size, sha = write_safetensors(tmp_path / "a.safetensors",
                                  [("a", (3, 4), np.dtype(np.float16), lambda: values),
                                   ("b", (2,), np.dtype(np.int64), lambda: np.array([7, -1]))])
    got = load_file(str(tmp_path / "a.safetensors"))
    np.testing.assert_array_equal(got["a"], values.astype(np.float16))
    np.testing.assert_array_equal(got["b"], [7, -1])
    assert size == (tmp_path / "a.safetensors").stat().st_size and len(sha) == 64
    with pytest.raises(ConversionError, match="sorted order"):
        write_safetensors(tmp_path / "b.safetensors", [("b", (1,), np.dtype(np.float32), lambda: np.zeros(1)),
                                                       ("a", (1,), np.dtype(np.float32), lambda: np.zeros(1))])
