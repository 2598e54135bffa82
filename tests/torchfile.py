"""Test helper: write torch-format (torch >= 1.6 zip) checkpoints without torch.

The layout is what `torch.save` writes: a zip whose entries are stored uncompressed and 64-byte
aligned, holding `<archive>/data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`,
`data/0..N`, `version` and `.data/serialization_id`. `data.pkl` is a protocol-2 pickle of an
OrderedDict mapping names to `torch._utils._rebuild_tensor_v2(persistent_load(('storage',
torch.HalfStorage, key, 'cpu', numel)), offset, size, stride, False, OrderedDict())`. The pickle is
built opcode by opcode (`PickleBuilder`), since without torch there are no classes to pickle; tests
also use the builder to craft hostile pickles.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["PickleBuilder", "StridedView", "BFloat16", "aligned_info", "save_torch_file", "write_torch_zip",
           "save_torch_checkpoint"]

_STORAGE_NAMES = {
    np.dtype(np.float16): "HalfStorage", np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}


@dataclass
class StridedView:
    """A tensor viewing a 1-D `storage` array; tensors given the same array object share one storage."""

    storage: np.ndarray  # 1-D, the whole storage
    offset: int  # in elements
    shape: tuple
    stride: tuple  # in elements

    def expected(self) -> np.ndarray:
        """The array a reader should produce for this view."""
        base = self.storage[self.offset:]
        return np.lib.stride_tricks.as_strided(
            base, self.shape, [s * base.itemsize for s in self.stride]).copy()


@dataclass
class BFloat16:
    """float32 values to be written as a bfloat16 tensor (rounded to nearest even, as torch does)."""

    values: np.ndarray

    def bits(self) -> np.ndarray:
        """The bfloat16 bit patterns, as uint16."""
        u = np.ascontiguousarray(self.values, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return rounded.astype(np.uint16)

    def expected(self) -> np.ndarray:
        """The float32 values a reader should produce (the bfloat16 values, widened)."""
        return (self.bits().astype(np.uint32) << 16).view(np.float32)


class PickleBuilder:
    """Emit pickle opcodes by hand (protocol 0-5 subset enough for torch checkpoints)."""

    def __init__(self, protocol: int = 2):
        if not 0 <= protocol <= 5:
            raise ValueError(f"pickle protocol {protocol} not supported")
        self.protocol = protocol
        self.out = bytearray()
        if protocol >= 2:
            self.out += b"\x80" + bytes([protocol])  # PROTO

    def global_(self, module: str, name: str) -> "PickleBuilder":
        """Push the global `module.name` (GLOBAL, or STACK_GLOBAL from protocol 4)."""
        if self.protocol >= 4:
            self.str_(module).str_(name)
            self.out += b"\x93"  # STACK_GLOBAL
        else:
            self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        return self

    def str_(self, s: str) -> "PickleBuilder":
        """Push a str."""
        data = s.encode("utf-8")
        if self.protocol == 0:
            self.out += b"V" + s.encode("raw_unicode_escape") + b"\n"  # UNICODE
        elif self.protocol >= 4 and len(data) < 256:
            self.out += b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE
        else:
            self.out += b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE
        return self

    def int_(self, n: int) -> "PickleBuilder":
        """Push an int."""
        if self.protocol == 0:
            self.out += b"I" + str(n).encode() + b"\n"
        elif 0 <= n < 256:
            self.out += b"K" + bytes([n])  # BININT1
        elif 0 <= n < 65536:
            self.out += b"M" + struct.pack("<H", n)  # BININT2
        elif -(2 ** 31) <= n < 2 ** 31:
            self.out += b"J" + struct.pack("<i", n)  # BININT
        else:
            data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data  # LONG1
        return self

    def bool_(self, b: bool) -> "PickleBuilder":
        """Push True or False."""
        if self.protocol >= 2:
            self.out += b"\x88" if b else b"\x89"  # NEWTRUE / NEWFALSE
        else:
            self.out += b"I01\n" if b else b"I00\n"
        return self

    def mark(self) -> "PickleBuilder":
        """Push a MARK."""
        self.out += b"("
        return self

    def tuple_(self) -> "PickleBuilder":
        """Pop everything down to the last MARK into a tuple."""
        self.out += b"t"
        return self

    def empty_tuple(self) -> "PickleBuilder":
        """Push ()."""
        self.out += b")"
        return self

    def int_tuple(self, values) -> "PickleBuilder":
        """Push a tuple of ints, the way the pickler does it (TUPLE1-3 from protocol 2)."""
        values = [int(v) for v in values]
        if not values:
            return self.empty_tuple()
        if self.protocol >= 2 and len(values) <= 3:
            for v in values:
                self.int_(v)
            self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(values)]
            return self
        self.mark()
        for v in values:
            self.int_(v)
        return self.tuple_()

    def reduce(self) -> "PickleBuilder":
        """Call the callable below the argument tuple on top of the stack."""
        self.out += b"R"
        return self

    def binpersid(self) -> "PickleBuilder":
        """Replace the top of the stack by persistent_load(top)."""
        self.out += b"Q"  # BINPERSID: the unpickler accepts it whatever the declared protocol
        return self

    def setitems(self) -> "PickleBuilder":
        """Add the key/value pairs above the last MARK to the dict below it."""
        self.out += b"u"
        return self

    def empty_dict(self) -> "PickleBuilder":
        """Push {}."""
        self.out += b"}"
        return self

    def ordered_dict(self) -> "PickleBuilder":
        """Push collections.OrderedDict(), the way torch.save pickles a state dict."""
        return self.global_("collections", "OrderedDict").empty_tuple().reduce()

    def raw(self, data: bytes) -> "PickleBuilder":
        """Append raw opcode bytes."""
        self.out += data
        return self

    def stop(self) -> bytes:
        """Finish with STOP and return the pickle bytes."""
        return bytes(self.out + b".")

    def rebuild_tensor_v2(self, storage_name: str, key: str, numel: int, offset: int, shape, stride,
                          location: str = "cpu") -> "PickleBuilder":
        """Push one tensor as torch.save writes it."""
        self.global_("torch._utils", "_rebuild_tensor_v2").mark()
        self.mark().str_("storage").global_("torch", storage_name).str_(key).str_(location).int_(numel)
        self.tuple_().binpersid()
        self.int_(offset).int_tuple(shape).int_tuple(stride).bool_(False).ordered_dict()
        return self.tuple_().reduce()


def aligned_info(zf: zipfile.ZipFile, name: str, alignment: int = 64) -> zipfile.ZipInfo:
    """A stored member whose data starts on a 64-byte boundary, as torch writes them (so it can mmap storages)."""
    # torch pads each local header with an extra field ("FB" + zeros).
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = zf.fp.tell() + 30 + len(name.encode("utf-8")) + 4
    pad = (-start) % alignment
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info


def write_torch_zip(path, data_pkl: bytes, storages: dict[str, bytes], archive_name: str = "archive", *,
                    deflate: tuple[str, ...] = (), claimed_sizes: dict[str, int] | None = None) -> None:
    """Write a torch zip checkpoint from a ready `data.pkl` and raw storage bytes keyed like 'data/<key>'.

    For crafted files: storages named in `deflate` are stored compressed (torch never does), and
    `claimed_sizes` makes the central directory claim other sizes for some storages than they hold.
    """
    entries = [("data.pkl", data_pkl), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", b"little")]
    entries += [(f"data/{key}", data) for key, data in storages.items()]
    entries += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in entries:
            info = aligned_info(zf, f"{archive_name}/{name}")
            if name.startswith("data/") and name[5:] in deflate:
                info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        for key, size in (claimed_sizes or {}).items():
            info = zf.getinfo(f"{archive_name}/data/{key}")
            info.file_size = info.compress_size = size  # written into the central directory at close


def _storage_name(dtype: np.dtype) -> str:
    try:
        return _STORAGE_NAMES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"no torch storage type for numpy dtype {dtype}") from None


def _c_strides(shape) -> tuple:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def save_torch_file(path, tensors: dict, pickle_protocol: int = 2, archive_name: str = "archive") -> None:
    """Write {name: ndarray | StridedView | BFloat16} as torch.save would write that state dict."""
    b = PickleBuilder(pickle_protocol)
    storages: dict[str, bytes] = {}
    keys_by_id: dict[int, str] = {}
    keep_alive = []  # ids are only unique while the objects live
    b.ordered_dict().mark()
    for i, (name, value) in enumerate(tensors.items()):
        if isinstance(value, StridedView):
            base = value.storage
            if base.ndim != 1:
                raise ValueError(f"{name}: StridedView storage must be 1-D")
            storage_name, offset, shape, stride = _storage_name(base.dtype), value.offset, value.shape, value.stride
        elif isinstance(value, BFloat16):
            base = value.bits().reshape(-1)
            storage_name, offset = "BFloat16Storage", 0
            shape = np.shape(value.values)
            stride = _c_strides(shape)
        else:
            value = np.asarray(value)
            base = np.ascontiguousarray(value).reshape(-1)
            storage_name, offset, shape, stride = _storage_name(value.dtype), 0, value.shape, _c_strides(value.shape)
        keep_alive.append(base)
        key = keys_by_id.get(id(base))
        if key is None:
            key = keys_by_id[id(base)] = str(len(storages))
            storages[key] = base.astype(base.dtype.newbyteorder("<"), copy=False).tobytes()
        b.str_(name).rebuild_tensor_v2(storage_name, key, base.size, offset, shape, stride)
        if i % 1000 == 999:  # the pickler batches SETITEMS by 1000
            b.setitems().mark()
    b.setitems()
    write_torch_zip(path, b.stop(), storages, archive_name)


def _nbytes(value) -> int:
    if isinstance(value, StridedView):
        return value.expected().nbytes
    if isinstance(value, BFloat16):
        return value.bits().nbytes
    return np.asarray(value).nbytes


def save_torch_checkpoint(folder, tensors: dict, num_shards: int = 1) -> list[str]:
    """Write a HF-style torch checkpoint folder (`pytorch_model.bin` or shards + index); return shard names."""
    os.makedirs(folder, exist_ok=True)
    names = list(tensors)
    if num_shards == 1:
        save_torch_file(os.path.join(folder, "pytorch_model.bin"), tensors, archive_name="pytorch_model")
        return ["pytorch_model.bin"]
    groups = [names[i::num_shards] for i in range(num_shards)]
    shards, weight_map, total = [], {}, 0
    for k, group in enumerate(groups, 1):
        shard = f"pytorch_model-{k:05d}-of-{num_shards:05d}.bin"
        part = {n: tensors[n] for n in group}
        save_torch_file(os.path.join(folder, shard), part, archive_name=shard[:-4])
        shards.append(shard)
        for n in group:
            weight_map[n] = shard
            total += _nbytes(tensors[n])
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return shards
