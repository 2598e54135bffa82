"""A streaming writer of MindSpore's safetensors checkpoints, one tensor in memory at a time.

The files carry `{"format": "ms"}` metadata and the `crc_num` MindSpore checks, so
`mindspore.load_checkpoint(path, format="safetensors", crc_check=True)` reads them. They are written here
instead of by `mindspore.save_checkpoint`, which serializes a whole shard in memory on top of the arrays it was
given, after importing MindSpore; this writer needs neither.
"""
from __future__ import annotations

import binascii
import json
import os
from typing import Callable, Iterable

import numpy as np

from ..errors import ConversionError
from ..files import sha256_file

# (name, shape, dtype written, produce): `produce()` returns the array just before it is written.
PendingTensor = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]

DTYPES = {
    np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8", np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32", np.dtype(np.uint64): "U64",
    np.dtype(np.bool_): "BOOL",
}
_CAST_CHUNK = 16 << 20  # bytes cast and written at a time


def _layout(entries: list[PendingTensor]) -> dict[str, object]:
    """The header entries: dtype, shape and byte range of every tensor, in the order they are written."""
    names = [e[0] for e in entries]
    if names != sorted(names) or len(set(names)) != len(names):
        raise ConversionError("write_safetensors needs unique names in sorted order (MindSpore's crc order)")
    header: dict[str, object] = {}
    offset = 0
    for name, shape, dtype, _ in entries:
        dtype = np.dtype(dtype)
        if dtype not in DTYPES:
            raise ConversionError(f"{name}: dtype {dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": DTYPES[dtype], "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    return header


def _write_data(f, entries: list[PendingTensor], on_data: Callable[[str, memoryview], None] | None) -> int:
    """Write every tensor's bytes, cast a chunk at a time; returns MindSpore's crc over names and bytes."""
    crc = 0
    for name, shape, dtype, produce in entries:
        array = produce()
        if tuple(array.shape) != tuple(shape):
            raise ConversionError(f"{name}: produced shape {list(array.shape)}, announced {list(shape)}")
        target = np.dtype(dtype).newbyteorder("<")
        flat = np.ascontiguousarray(array).reshape(-1)
        del array
        crc = binascii.crc32(name.encode("utf-8"), crc)
        step = max(_CAST_CHUNK // max(target.itemsize, flat.dtype.itemsize), 1)
        for start in range(0, flat.size, step):
            piece = flat[start:start + step]
            if piece.dtype != target:
                piece = piece.astype(target)  # cast a chunk at a time: never a second full tensor
            data = memoryview(piece).cast("B")
            crc = binascii.crc32(data, crc)
            if on_data is not None:
                on_data(name, data)
            f.write(data)
            del piece, data
        del flat
    return crc


def write_safetensors(path: os.PathLike | str, tensors: Iterable[PendingTensor],
                      metadata: dict[str, str] | None = None,
                      on_data: Callable[[str, memoryview], None] | None = None) -> tuple[int, str]:
    """Write a safetensors file MindSpore reads, streaming one tensor at a time; returns (size, sha256).

    `tensors` gives (name, shape, dtype, produce), sorted by name (MindSpore's `crc_num` is a CRC-32 over each
    name and its bytes in name order); `produce()` returns the array just before it is written and it is cast
    to `dtype` in chunks, so at most one source tensor plus one chunk are alive. `on_data(name, bytes)` sees
    every written chunk (to digest tied tensors).
    """
    entries = list(tensors)
    header = _layout(entries)
    # The crc belongs in the header, before the data it covers: reserve its widest form, fill it in last.
    meta = {"format": "ms", **(metadata or {}), "crc_num": "0" * 10}

    def encode_header() -> bytes:
        return json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode("utf-8")

    head = encode_header()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        meta["crc_num"] = str(_write_data(f, entries, on_data))
        final = encode_header()
        f.seek(8)
        f.write(final + b" " * (len(head) - len(final)))  # shorter or equal: the crc took at most its room
        f.flush()
        os.fsync(f.fileno())
    # The header was finished last, so the file is hashed once complete (from the page cache, mostly).
    return os.path.getsize(path), sha256_file(path)
