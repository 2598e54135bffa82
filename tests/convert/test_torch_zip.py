"""The torch-zip reader: real fixture shards, round trips, hostile pickles, broken and crafted files."""
import json
import os
import pickle
import random
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from glm_ms.errors import CheckpointError
from tests.convert.upstream import FIXTURE as TINY
from tests.convert.upstream import read_torch_file as load_torch_file
from tests.torchfile import BFloat16, PickleBuilder, StridedView, save_torch_file, write_torch_zip


def _index():
    return json.loads((TINY / "pytorch_model.bin.index.json").read_text())["weight_map"]


def _load_tiny():
    state = {}
    for shard in sorted(set(_index().values())):
        state.update(load_torch_file(TINY / shard))
    return state


def test_fixture_names_dtypes_and_shapes():
    cfg = json.loads((TINY / "config.json").read_text())
    h, inner, vocab = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"]
    head_dim = h // cfg["num_attention_heads"]
    state = _load_tiny()
    assert sorted(state) == sorted(_index()) and len(state) == 30
    assert all(a.dtype == np.float16 for a in state.values())
    assert state["transformer.word_embeddings.weight"].shape == (vocab, h)
    assert state["lm_head.weight"].shape == (vocab, h)
    assert state["transformer.final_layernorm.weight"].shape == (h,)
    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."
        assert state[p + "attention.query_key_value.weight"].shape == (3 * h, h) == (192, 64)
        assert state[p + "attention.query_key_value.bias"].shape == (3 * h,)
        assert state[p + "attention.dense.weight"].shape == (h, h)
        assert state[p + "mlp.dense_h_to_4h.weight"].shape == (inner, h)
        assert state[p + "mlp.dense_4h_to_h.weight"].shape == (h, inner)
        # 2D positions: rotary over head_dim // 2 dims, so inv_freq has head_dim // 4 entries.
        assert state[p + "attention.rotary_emb.inv_freq"].shape == (head_dim // 4,)
    # This fixture's lm_head is NOT a copy of word_embeddings (random, untied), and the golden logits
    # were computed with lm_head: reproducing them checks every byte of both shards we read.
    assert not np.array_equal(state["lm_head.weight"], state["transformer.word_embeddings.weight"])
    golden = np.load(TINY / "golden.npz")
    hidden = golden["fwd0_hidden2"][:, 0].astype(np.float64)  # after final_layernorm, [seq, hidden]
    logits = hidden @ state["lm_head.weight"].astype(np.float64).T
    np.testing.assert_allclose(logits, golden["fwd0_logits"][0], atol=1e-4)
    assert np.isfinite(state["transformer.word_embeddings.weight"].astype(np.float32)).all()
    assert state["transformer.word_embeddings.weight"].astype(np.float32).std() > 0
    assert all(a.flags.c_contiguous and a.flags.writeable for a in state.values())


def _expected(v):
    return v.expected() if hasattr(v, "expected") else np.asarray(v)


def _assert_same(got, tensors):
    assert list(got) == list(tensors)
    for name, value in tensors.items():
        exp = _expected(value)
        assert got[name].dtype == exp.dtype, name
        assert got[name].shape == exp.shape, name
        np.testing.assert_array_equal(got[name], exp, err_msg=name)
        assert got[name].flags.c_contiguous


@pytest.mark.parametrize("protocol", [2, 4])
def test_round_trip_dtypes(tmp_path, protocol):
    rng = np.random.default_rng(0)
    tensors = {
        "f16": rng.standard_normal((3, 5)).astype(np.float16),
        "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "i64": np.arange(-5, 5, dtype=np.int64).reshape(2, 5) * (2 ** 40),
        "i32": np.arange(6, dtype=np.int32),
        "i16": np.arange(6, dtype=np.int16) - 3,
        "i8": np.arange(6, dtype=np.int8) - 3,
        "u8": np.arange(250, 256, dtype=np.uint8),
        "bool": np.array([[True, False, True], [False, False, True]]),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float16),
        "bf16": BFloat16(np.array([[1.0, -2.5], [3.140625, 1e-3]], dtype=np.float32)),
        "many_dims": rng.standard_normal((2, 1, 3, 2, 2)).astype(np.float32),
    }
    path = tmp_path / "model.bin"
    save_torch_file(path, tensors, pickle_protocol=protocol)
    got = load_torch_file(path)
    _assert_same(got, tensors)
    assert got["bf16"].dtype == np.float32
    assert got["bf16"][0, 1] == -2.5


def test_round_trip_shared_storage_offsets_and_strides(tmp_path):
    storage = np.arange(40, dtype=np.float32) * 0.5
    tensors = {
        "transposed": StridedView(storage, 0, (4, 5), (1, 4)),  # a .t() of a (5, 4) tensor
        "offset_view": StridedView(storage, 20, (2, 10), (10, 1)),  # second half of the same storage
        "every_third": StridedView(storage, 1, (13,), (3,)),
        "plain": np.arange(4, dtype=np.float32),
    }
    path = tmp_path / "views.bin"
    save_torch_file(path, tensors)
    with zipfile.ZipFile(path) as zf:  # the three views really share one storage entry
        assert sorted(n for n in zf.namelist() if "/data/" in n) == ["archive/data/0", "archive/data/1"]
    got = load_torch_file(path)
    _assert_same(got, tensors)
    np.testing.assert_array_equal(got["transposed"], storage[:20].reshape(5, 4).T)
    np.testing.assert_array_equal(got["offset_view"], storage[20:].reshape(2, 10))
    got["transposed"][0, 0] = 99  # results are independent copies, not views of each other
    assert got["every_third"][0] == 0.5 and got["offset_view"][0, 0] == 10.0


def test_archive_name_is_not_fixed(tmp_path):
    path = tmp_path / "x.bin"
    save_torch_file(path, {"w": np.ones(3, np.float16)}, archive_name="pytorch_model-00001-of-00002")
    np.testing.assert_array_equal(load_torch_file(path)["w"], np.ones(3, np.float16))


def test_rebuild_tensor_v3_untyped_storage(tmp_path):
    values = np.array([1.5, -2.0, 4.0, 8.0], dtype=np.float16)
    b = PickleBuilder(2).empty_dict().mark().str_("w")
    b.global_("torch._utils", "_rebuild_tensor_v3").mark()
    b.mark().str_("storage").global_("torch", "UntypedStorage").str_("0").str_("cpu").int_(8).tuple_().binpersid()
    b.int_(1).int_tuple((3,)).int_tuple((1,)).bool_(False).ordered_dict().global_("torch", "float16")
    b.tuple_().reduce().setitems()
    path = tmp_path / "v3.bin"
    write_torch_zip(path, b.stop(), {"0": values.tobytes()})
    got = load_torch_file(path)
    np.testing.assert_array_equal(got["w"], values[1:])
    assert got["w"].dtype == np.float16


# --- hostile pickles -------------------------------------------------------------------------


def _payload_pickle(kind: str, marker: Path) -> bytes:
    """A data.pkl that, unpickled normally, creates `marker`."""
    shell = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    b = PickleBuilder(2)
    if kind in ("os.system", "posix.system"):
        module = kind.split(".")[0]
        return b.global_(module, "system").str_(shell).raw(b"\x85").reduce().stop()  # TUPLE1
    if kind in ("builtins.exec", "builtins.eval"):
        expr = code if kind == "builtins.exec" else f"__import__('os').system({shell!r})"
        return b.global_("builtins", kind.split(".")[1]).str_(expr).raw(b"\x85").reduce().stop()
    if kind == "subprocess.call":
        return b.global_("subprocess", "call").str_(shell).raw(b"\x85").bool_(True).raw(b"\x85").reduce().stop()
    if kind == "builtins.getattr":
        # getattr(__import__('os'), 'system')('touch ...')
        b.global_("builtins", "getattr").global_("builtins", "__import__").str_("os").raw(b"\x85").reduce()
        return b.str_("system").raw(b"\x86").reduce().str_(shell).raw(b"\x85").reduce().stop()
    if kind == "inst_opcode":  # protocol 0 INST: class lookup and call in one opcode
        return b"(S'" + shell.encode() + b"'\nios\nsystem\n."
    if kind == "stack_global":  # protocol 4 spelling
        return PickleBuilder(4).global_("os", "system").str_(shell).raw(b"\x85").reduce().stop()
    if kind == "inside_state_dict":
        # A plausible checkpoint: one real tensor, then the payload as a tensor's backward hooks.
        b.ordered_dict().mark().str_("ok").rebuild_tensor_v2("FloatStorage", "0", 1, 0, (1,), (1,))
        b.str_("evil").global_("torch._utils", "_rebuild_tensor_v2").mark()
        b.mark().str_("storage").global_("torch", "FloatStorage").str_("0").str_("cpu").int_(1).tuple_().binpersid()
        b.int_(0).int_tuple((1,)).int_tuple((1,)).bool_(False)
        b.global_("os", "system").str_(shell).raw(b"\x85").reduce()
        return b.tuple_().reduce().setitems().stop()
    if kind == "in_persistent_id":
        b.empty_dict().str_("w").global_("torch._utils", "_rebuild_tensor_v2").mark()
        b.mark().str_("storage").global_("posix", "system").str_(shell).raw(b"\x85").reduce()
        b.str_("0").str_("cpu").int_(1).tuple_().binpersid()
        b.int_(0).int_tuple((1,)).int_tuple((1,)).bool_(False).ordered_dict().tuple_().reduce()
        return b.raw(b"s").stop()  # SETITEM
    raise ValueError(kind)


HOSTILE = {
    "os.system": "os.system", "posix.system": "posix.system", "builtins.exec": "builtins.exec",
    "builtins.eval": "builtins.eval", "subprocess.call": "subprocess.call",
    "builtins.getattr": "builtins.getattr", "inst_opcode": "os.system", "stack_global": "os.system",
    "inside_state_dict": "os.system", "in_persistent_id": "posix.system",
}


def test_payload_is_real(tmp_path):
    # Control: the standard unpickler does run the payload, so the tests below prove something.
    marker = tmp_path / "pwned"
    pickle.loads(_payload_pickle("os.system" if os.name == "posix" else "builtins.exec", marker))
    assert marker.exists()


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_globals_are_refused_before_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    write_torch_zip(path, _payload_pickle(kind, marker), {"0": np.zeros(1, np.float32).tobytes()})
    with pytest.raises(CheckpointError) as err:
        load_torch_file(path)
    assert str(path) in str(err.value)
    assert HOSTILE[kind] in str(err.value)
    assert not marker.exists()


def test_refused_global_does_not_import_its_module(tmp_path):
    path = tmp_path / "evil.bin"
    b = PickleBuilder(2).global_("glm_ms_never_imported_module", "boom").empty_tuple().reduce()
    write_torch_zip(path, b.stop(), {})
    with pytest.raises(CheckpointError, match="glm_ms_never_imported_module.boom"):
        load_torch_file(path)
    assert "glm_ms_never_imported_module" not in sys.modules


def test_build_on_placeholder_is_refused(tmp_path):
    b = PickleBuilder(2).empty_dict().str_("w").rebuild_tensor_v2("FloatStorage", "0", 1, 0, (1,), (1,))
    b.empty_dict().str_("size").int_tuple((10 ** 6,)).raw(b"s").raw(b"b")  # BUILD: overwrite the spec
    path = tmp_path / "build.bin"
    write_torch_zip(path, b.raw(b"s").stop(), {"0": np.zeros(1, np.float32).tobytes()})
    with pytest.raises(CheckpointError, match="build.bin.*set the state"):
        load_torch_file(path)


# --- broken files ----------------------------------------------------------------------------


def test_truncated_real_shard(tmp_path):
    src = TINY / "pytorch_model-00001-of-00003.bin"
    data = src.read_bytes()
    path = tmp_path / "pytorch_model-00001-of-00003.bin"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model-00001-of-00003.bin"):
        load_torch_file(path)


def test_corrupted_storage_bytes(tmp_path):
    src = TINY / "pytorch_model-00002-of-00003.bin"
    path = tmp_path / "shard.bin"
    shutil.copy(src, path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("pytorch_model-00002-of-00003/data/3")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 200] ^= 0xFF  # inside the data of entry data/3: the CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="shard.bin"):
        load_torch_file(path)


@pytest.mark.parametrize("content", [b"", b"hello, this is not a checkpoint\n" * 10, random.Random(0).randbytes(4096),
                                     b"PK\x03\x04" + b"\x00" * 100], ids=["empty", "text", "random", "zip-magic"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="garbage.bin"):
        load_torch_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.bin"):
        load_torch_file(tmp_path / "nope.bin")


def test_legacy_formats(tmp_path):
    legacy = tmp_path / "legacy.bin"
    # torch < 1.6 wrote a pickled magic number first, then protocol version and sys info.
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2))
    with pytest.raises(CheckpointError, match="legacy"):
        load_torch_file(legacy)
    tar_path = tmp_path / "tar.bin"
    (tmp_path / "pickle").write_bytes(b"x")
    with tarfile.open(tar_path, "w") as tf:
        tf.add(tmp_path / "pickle", arcname="pickle")
    with pytest.raises(CheckpointError, match="legacy tar"):
        load_torch_file(tar_path)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_torch_file(plain)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="data.pkl"):
        load_torch_file(path)


def test_duplicate_names(tmp_path):
    b = PickleBuilder(2).ordered_dict().mark()
    b.str_("w").rebuild_tensor_v2("FloatStorage", "0", 2, 0, (1,), (1,))
    b.str_("w").rebuild_tensor_v2("FloatStorage", "0", 2, 1, (1,), (1,))
    path = tmp_path / "dup.bin"
    write_torch_zip(path, b.setitems().stop(), {"0": np.arange(2, dtype=np.float32).tobytes()})
    with pytest.raises(CheckpointError, match=r"duplicate.*'w'"):
        load_torch_file(path)


def _one_tensor(tmp_path, numel, offset, shape, stride, nbytes=None, storage="FloatStorage", key="0"):
    b = PickleBuilder(2).ordered_dict().mark().str_("w")
    b.rebuild_tensor_v2(storage, key, numel, offset, shape, stride).setitems()
    path = tmp_path / "one.bin"
    write_torch_zip(path, b.stop(), {"0": b"\x00" * (4 * numel if nbytes is None else nbytes)})
    return path


@pytest.mark.parametrize("numel,offset,shape,stride,nbytes,match", [
    (6, 0, (2, 3), (4, 1), None, "reach element"),  # view runs past the storage
    (6, 5, (2,), (1,), None, "reach element"),  # offset pushes it past
    (6, 0, (2, 3), (3, 1), 20, "holds 20 bytes"),  # storage entry shorter than declared
    (4, 0, (1000, 1000), (0, 0), None, "more elements than its storage"),  # broadcast bomb
])
def test_bad_geometry(tmp_path, numel, offset, shape, stride, nbytes, match):
    path = _one_tensor(tmp_path, numel, offset, shape, stride, nbytes)
    with pytest.raises(CheckpointError, match=match):
        load_torch_file(path)


def test_missing_storage_entry_and_bad_key(tmp_path):
    path = _one_tensor(tmp_path, 1, 0, (1,), (1,), key="7")
    with pytest.raises(CheckpointError, match="data/7 is missing"):
        load_torch_file(path)
    path = _one_tensor(tmp_path, 1, 0, (1,), (1,), key="../../etc/passwd")
    with pytest.raises(CheckpointError, match="bad storage key"):
        load_torch_file(path)


def test_not_a_flat_state_dict(tmp_path):
    b = PickleBuilder(2).empty_dict().str_("model").empty_dict().raw(b"s")
    path = tmp_path / "nested.bin"
    write_torch_zip(path, b.stop(), {})
    with pytest.raises(CheckpointError, match="'model' is not a tensor"):
        load_torch_file(path)
    write_torch_zip(path, PickleBuilder(2).int_(5).stop(), {})
    with pytest.raises(CheckpointError, match="mapping of names to tensors"):
        load_torch_file(path)


# --- crafted files: a small file must never cost much more than its size -----------------------------------


def _view_of(tmp_path, numel, shape, *, data=None, deflate=(), claimed=None, stride=None):
    """One float32 tensor `w` of `shape` viewing storage 0 of `numel` elements."""
    b = PickleBuilder(2).ordered_dict().mark().str_("w")
    strides = stride or tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    b.rebuild_tensor_v2("FloatStorage", "0", numel, 0, shape, strides).setitems()
    path = tmp_path / "crafted.bin"
    write_torch_zip(path, b.stop(), {"0": data if data is not None else b"\0" * (4 * numel)}, deflate=deflate,
                    claimed_sizes=claimed)
    return path


def _peak_bytes(fn):
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("deflate", [True, False])
def test_small_view_of_a_huge_storage_is_refused_unread(tmp_path, deflate):
    numel = 16 << 20  # 64 MB of zeros: deflated, the file holds ~64 KB of it
    path = _view_of(tmp_path, numel, (64,), deflate=("0",) if deflate else ())
    assert path.stat().st_size < (1 << 20) if deflate else path.stat().st_size > 4 * numel
    match = "is compressed; torch never writes compressed members" if deflate else "far larger than its views"

    def read():
        with pytest.raises(CheckpointError, match=match):
            load_torch_file(path)
    assert _peak_bytes(read) < 4 << 20  # nothing of the storage was inflated or read


def test_compressed_member_is_refused_even_when_small(tmp_path):
    path = _view_of(tmp_path, 4, (4,), data=np.arange(4, dtype=np.float32).tobytes(), deflate=("0",))
    with pytest.raises(CheckpointError, match=r"crafted\.bin: archive/data/0 is compressed"):
        load_torch_file(path)


def test_storage_claiming_a_tebibyte_is_a_clean_error(tmp_path):
    numel = 1 << 38  # x 4 bytes = 1 TiB, claimed by the pickle and the zip directory, 16 bytes in the file
    path = _view_of(tmp_path, numel, (numel,), data=b"\0" * 16, claimed={"0": 4 * numel})
    with pytest.raises(CheckpointError, match=r"archive/data/0 claims 1099511627776 bytes, more than the file"):
        load_torch_file(path)


@pytest.mark.parametrize("shape, stride", [((1,), (2 ** 70,)), ((2, 1), (1, 2 ** 70)), ((2 ** 50,), (1,))])
def test_absurd_sizes_and_strides_are_checkpoint_errors(tmp_path, shape, stride):
    path = _view_of(tmp_path, 4, shape, data=b"\0" * 16, stride=stride)
    with pytest.raises(CheckpointError, match="bad tensor size"):
        load_torch_file(path)


def test_legitimate_slack_in_a_storage_is_accepted(tmp_path):
    # torch saves a sliced tensor's whole storage: a view using half of it reads fine.
    storage = np.arange(64, dtype=np.float32)
    path = tmp_path / "half.bin"
    save_torch_file(path, {"w": StridedView(storage, 0, (4, 8), (8, 1))})
    np.testing.assert_array_equal(load_torch_file(path)["w"], storage[:32].reshape(4, 8))
