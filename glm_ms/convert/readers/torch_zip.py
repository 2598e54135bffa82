"""Read torch `.bin` checkpoints (the torch >= 1.6 zip format) one tensor at a time, without torch or pickle code.

A torch checkpoint is a zip holding `<archive>/data.pkl`, parsed by the restricted unpickler of
`torch_pickle`, and `<archive>/data/<key>`, the raw bytes of each storage, which torch writes uncompressed.
Whatever a crafted file could use to make a small file cost a lot is refused before any tensor data is read:
compressed members (nothing is ever inflated), storages that do not lie inside the file or do not hold the
bytes their persistent id promises, storages far larger than the views of them need, views reaching outside
their storage. Each `load()` then reads one storage straight from the file into its array, CRC checked.
"""
from __future__ import annotations

import contextlib
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...errors import CheckpointError
from .layout import LazyTensor
from .torch_pickle import TensorSpec, parse_data_pkl

_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled 0x1950a86a20f9469cfc6c
# A storage may hold bytes no view uses (torch saves a sliced tensor's whole storage), but not many more: a
# 256-byte view of a 200 MB storage would make reading it cost 200 MB.
_SLACK_FACTOR, _SLACK_BYTES = 2, 1 << 20
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
                NotImplementedError, RuntimeError)


def _sniff(path: str) -> None:
    """Raise a clear error for files that are not torch zip checkpoints."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return
    if head.startswith(_LEGACY_MAGIC):
        raise CheckpointError(f"{path}: legacy (torch < 1.6, non-zip) torch checkpoint is not supported; "
                              "re-save it with a recent torch.save")
    if len(head) >= 262 and head[257:262] == b"ustar" and tarfile.is_tarfile(path):
        raise CheckpointError(f"{path}: legacy tar-format torch checkpoint is not supported")
    raise CheckpointError(f"{path}: not a torch checkpoint (expected a zip archive holding */data.pkl)")


def _check_members(zf: zipfile.ZipFile, path: str, file_size: int) -> None:
    """Every member stored as is (torch never compresses) and lying inside the file."""
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: {info.filename} is compressed; torch never writes compressed "
                                  "members, and inflating one could cost far more memory than the file holds")
        end = info.header_offset + 30 + len(info.orig_filename.encode("utf-8")) + info.file_size
        if info.file_size != info.compress_size or end > file_size:
            raise CheckpointError(f"{path}: {info.filename} claims {info.file_size} bytes, more than the file "
                                  f"({file_size} bytes) holds (truncated or crafted)")


def _find_prefix(zf: zipfile.ZipFile, path: str) -> str:
    # The archive folder is named after the file torch.save wrote ("archive", "pytorch_model-00001-...").
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        what = "no */data.pkl" if not pkls else f"several data.pkl: {pkls}"
        raise CheckpointError(f"{path}: not a torch zip checkpoint ({what})")
    return pkls[0][: -len("/data.pkl")]


def _byteorder(zf: zipfile.ZipFile, prefix: str, path: str) -> str:
    # Older torch versions wrote no byteorder record; they only ran on little-endian machines in practice.
    name = f"{prefix}/byteorder"
    if name not in zf.NameToInfo:
        return "<"
    order = zf.read(name).decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise CheckpointError(f"{path}: unknown byteorder record {order!r}")
    return "<" if order == "little" else ">"


def _numel(size: tuple) -> int:
    count = 1
    for n in size:
        count *= n
    return count


def _check_view(spec: TensorSpec, name: str, path: str) -> int:
    """The bytes of its storage that `spec` needs (from the start to its last element); refuses what overreaches."""
    itemsize = spec.dtype.raw.itemsize
    storage_bytes = spec.storage.numel * spec.storage.dtype.raw.itemsize
    if storage_bytes % itemsize:  # v3: an untyped byte storage viewed as `dtype`
        raise CheckpointError(f"{path}: {name}: storage of {storage_bytes} bytes is not a whole number of "
                              f"{spec.dtype.name}")
    elements = storage_bytes // itemsize
    numel = _numel(spec.size)
    if numel > elements:
        # Only a broadcast (stride 0) view can outgrow its storage; state dicts never hold one, and allowing it
        # would let a tiny file ask for an arbitrarily large allocation.
        raise CheckpointError(f"{path}: {name}: size {spec.size} has more elements than its storage ({elements})")
    if numel == 0:
        return 0
    last = spec.offset + sum((n - 1) * s for n, s in zip(spec.size, spec.stride))
    if last >= elements:
        raise CheckpointError(f"{path}: {name}: size {spec.size}, stride {spec.stride} and offset {spec.offset} "
                              f"reach element {last} of a storage of {elements}")
    return (last + 1) * itemsize


def _storages(zf: zipfile.ZipFile, prefix: str, specs: dict[str, TensorSpec], path: str) -> dict[str, zipfile.ZipInfo]:
    """Storage key → its zip member, each holding exactly its promised bytes and not far more than its views need."""
    members: dict[str, zipfile.ZipInfo] = {}
    needed: dict[str, int] = {}
    for name, spec in specs.items():
        ref = spec.storage
        if ref.key not in members:
            info = zf.NameToInfo.get(f"{prefix}/data/{ref.key}")
            if info is None:
                raise CheckpointError(f"{path}: storage {prefix}/data/{ref.key} is missing from the archive")
            nbytes = ref.numel * ref.dtype.raw.itemsize
            if info.file_size != nbytes:
                raise CheckpointError(f"{path}: storage {info.filename} holds {info.file_size} bytes, "
                                      f"expected {ref.numel} x {ref.dtype.name} = {nbytes}")
            members[ref.key] = info
        needed[ref.key] = max(needed.get(ref.key, 0), _check_view(spec, name, path))
    for key, info in members.items():
        if info.file_size > _SLACK_FACTOR * needed[key] + _SLACK_BYTES:
            raise CheckpointError(f"{path}: storage {info.filename} holds {info.file_size} bytes but its tensors "
                                  f"use only {needed[key]}; refusing a storage far larger than its views")
    return members


def _read_member(raw, info: zipfile.ZipInfo, path: str, buffer: np.ndarray) -> None:
    """Fill `buffer` with a stored zip member straight from the file, CRC checked."""
    view = memoryview(buffer.reshape(-1)).cast("B")
    raw.seek(info.header_offset)
    local = raw.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: bad local header for {info.filename}")
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    raw.seek(info.header_offset + 30 + name_len + extra_len)
    got = raw.readinto(view)
    if got != info.file_size:
        raise CheckpointError(f"{path}: {info.filename} is truncated ({got} of {info.file_size} bytes)")
    if zlib.crc32(view) != info.CRC:
        raise CheckpointError(f"{path}: {info.filename} fails its CRC check (corrupt file)")


def _c_strides(shape: tuple) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def _materialize(spec: TensorSpec, storage: np.ndarray, order: str) -> np.ndarray:
    """The tensor `spec` describes, as a fresh C-contiguous native-order array (bfloat16 widened to float32)."""
    target = spec.dtype.raw.newbyteorder(order)
    if storage.dtype != target:  # v3: an untyped byte storage viewed as `dtype` (checked to divide evenly)
        storage = storage.view(target)
    numel = _numel(spec.size)
    if spec.offset == 0 and numel == storage.size and tuple(spec.stride) == _c_strides(spec.size):
        out = storage.reshape(spec.size)  # the common case: the storage *is* the tensor, no copy
    elif numel == 0:
        out = np.empty(spec.size, dtype=storage.dtype)
    else:
        base = storage[spec.offset:]
        view = as_strided(base, shape=spec.size, strides=[s * base.itemsize for s in spec.stride], writeable=False)
        out = np.array(view, order="C")  # copy: detaches from the storage and from other views of it
    out = out.astype(out.dtype.newbyteorder("="), copy=False)
    if spec.dtype.bf16:
        out = (out.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is the top half of a float32: exact
    return out


def torch_tensors(path: Path, stack: contextlib.ExitStack) -> list[LazyTensor]:
    """The tensors of a torch zip checkpoint, all checked; each `load()` reads just that tensor's storage."""
    label = str(path)
    try:
        _sniff(label)
        raw = stack.enter_context(open(label, "rb"))
        zf = stack.enter_context(zipfile.ZipFile(raw))
        _check_members(zf, label, os.fstat(raw.fileno()).st_size)
        prefix = _find_prefix(zf, label)
        order = _byteorder(zf, prefix, label)
        specs = parse_data_pkl(zf.read(f"{prefix}/data.pkl"), label)
        members = _storages(zf, prefix, specs, label)
    except CheckpointError:
        raise
    except _READ_ERRORS as exc:
        raise CheckpointError(f"{label}: cannot read torch checkpoint ({type(exc).__name__}: {exc})") from exc

    def loader(spec: TensorSpec):
        def load() -> np.ndarray:
            ref = spec.storage
            storage = np.empty(ref.numel, dtype=ref.dtype.raw.newbyteorder(order))
            try:
                _read_member(raw, members[ref.key], label, storage)
            except _READ_ERRORS as exc:
                raise CheckpointError(f"{label}: cannot read {members[ref.key].filename} ({exc})") from exc
            return _materialize(spec, storage, order)
        return load

    return [LazyTensor(name, tuple(spec.size),
                       np.dtype(np.float32) if spec.dtype.bf16 else spec.dtype.raw.newbyteorder("="), loader(spec))
            for name, spec in specs.items()]
