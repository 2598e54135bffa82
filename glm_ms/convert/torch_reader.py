"""Read torch `.bin` checkpoints (the torch >= 1.6 zip format) without torch and without pickle code.

A torch checkpoint is a zip holding `<archive>/data.pkl` (a pickle describing the tensors) and
`<archive>/data/<key>` (the raw bytes of each storage). Unpickling it with the standard unpickler
would let the file call any importable function (`os.system`, `builtins.exec`, ...), so we use a
restricted unpickler whose `find_class` hands out only inert placeholders: the rebuild functions
return a description of the tensor (storage key, dtype, offset, size, stride) and nothing is read or
built until the whole pickle has been parsed and checked.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import CheckpointError

__all__ = ["load_torch_file"]


@dataclass(frozen=True)
class _Dtype:
    """A torch dtype: the numpy dtype its bytes are read as, and what they become."""

    name: str  # torch name, for messages
    raw: np.dtype  # how the storage bytes are laid out
    bf16: bool = False  # stored as the top 16 bits of a float32; widened after reading


_F16 = _Dtype("float16", np.dtype("<f2"))
_F32 = _Dtype("float32", np.dtype("<f4"))
_F64 = _Dtype("float64", np.dtype("<f8"))
_BF16 = _Dtype("bfloat16", np.dtype("<u2"), bf16=True)  # numpy has no bfloat16
_I64 = _Dtype("int64", np.dtype("<i8"))
_I32 = _Dtype("int32", np.dtype("<i4"))
_I16 = _Dtype("int16", np.dtype("<i2"))
_I8 = _Dtype("int8", np.dtype("i1"))
_U8 = _Dtype("uint8", np.dtype("u1"))
_BOOL = _Dtype("bool", np.dtype("?"))
_U16 = _Dtype("uint16", np.dtype("<u2"))
_U32 = _Dtype("uint32", np.dtype("<u4"))
_U64 = _Dtype("uint64", np.dtype("<u8"))

# Legacy typed-storage class names, as written in the persistent ids of `_rebuild_tensor_v2`.
_STORAGE_DTYPES = {
    "HalfStorage": _F16, "FloatStorage": _F32, "DoubleStorage": _F64, "BFloat16Storage": _BF16,
    "LongStorage": _I64, "IntStorage": _I32, "ShortStorage": _I16, "CharStorage": _I8,
    "ByteStorage": _U8, "BoolStorage": _BOOL,
}
# Untyped storages (newer torch, with `_rebuild_tensor_v3` carrying the dtype) are plain bytes.
_UNTYPED_STORAGES = {("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage"),
                     ("torch", "_UntypedStorage"), ("torch.storage", "_UntypedStorage")}
# `torch.float16`-style dtype objects, pickled by name as globals of module `torch`.
_TORCH_DTYPES = {
    "float16": _F16, "half": _F16, "float32": _F32, "float": _F32, "float64": _F64, "double": _F64,
    "bfloat16": _BF16, "int64": _I64, "long": _I64, "int32": _I32, "int": _I32, "int16": _I16,
    "short": _I16, "int8": _I8, "uint8": _U8, "bool": _BOOL, "uint16": _U16, "uint32": _U32,
    "uint64": _U64,
}


class _Inert:
    """Base of the placeholders handed to the pickle: refuses to be built or filled by it."""

    __slots__ = ()

    def __setstate__(self, state):  # the BUILD opcode must not be able to rewrite a placeholder
        raise TypeError("data.pkl tried to set the state of a tensor placeholder")

    def __reduce__(self):
        raise TypeError("placeholder is not picklable")


class _StorageType(_Inert):
    """Stands for `torch.HalfStorage` & co. (an instance, not a class, so the pickle cannot call it)."""

    __slots__ = ("qualname", "dtype")

    def __init__(self, qualname: str, dtype: _Dtype):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, name, value):
        raise TypeError("data.pkl tried to modify a storage placeholder")


class _DtypePlaceholder(_StorageType):
    """Stands for a `torch.float16`-style dtype object."""

    __slots__ = ()


class _StorageRef(_Inert):
    """A storage named by a persistent id: which zip entry, read as which dtype, how many elements."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: _Dtype, numel: int):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "numel", numel)

    def __setattr__(self, name, value):
        raise TypeError("data.pkl tried to modify a storage placeholder")


class _TensorSpec(_Inert):
    """What a rebuild call asked for; turned into an array only after the pickle is fully parsed."""

    __slots__ = ("storage", "dtype", "offset", "size", "stride")

    def __init__(self, storage: _StorageRef, dtype: _Dtype, offset: int, size: tuple, stride: tuple):
        object.__setattr__(self, "storage", storage)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "stride", stride)

    def __setattr__(self, name, value):
        raise TypeError("data.pkl tried to modify a tensor placeholder")


_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for `data.pkl` that can only describe tensors; every other global is refused."""

    def __init__(self, data: bytes, path: str):
        super().__init__(io.BytesIO(data))
        self._path = path
        self._storages: dict[str, _StorageRef] = {}
        self.specs: list[_TensorSpec] = []  # every tensor the pickle built, to catch duplicate names

    def _fail(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self._path}: {msg}")

    def find_class(self, module: str, name: str):
        # Nothing here is imported: known names map to our own functions and placeholders.
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_tensor_v3":
            return self._rebuild_tensor_v3
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(f"torch.{name}", _STORAGE_DTYPES[name])
        if (module, name) in _UNTYPED_STORAGES:
            return _StorageType(f"{module}.{name}", _U8)
        if module == "torch" and name in _TORCH_DTYPES:
            return _DtypePlaceholder(f"torch.{name}", _TORCH_DTYPES[name])
        raise self._fail(f"refusing to load global {module}.{name!s} from data.pkl "
                         "(only tensor rebuild functions, storage types and OrderedDict are allowed)")

    def persistent_load(self, pid):
        # torch writes ('storage', storage_type, key, location, numel) for every storage reference.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise self._fail(f"unsupported persistent id {pid!r:.200}")
        _, storage_type, key, location, numel = pid
        if type(storage_type) is not _StorageType:
            raise self._fail(f"persistent id names no storage type: {storage_type!r:.200}")
        if not (isinstance(key, str) and _KEY_RE.match(key)) or not isinstance(location, str):
            raise self._fail(f"bad storage key or location in persistent id {pid!r:.200}")
        if not _is_int(numel) or numel < 0:
            raise self._fail(f"bad element count in persistent id {pid!r:.200}")
        seen = self._storages.get(key)
        if seen is None:
            seen = self._storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif seen.dtype != storage_type.dtype or seen.numel != numel:
            # torch itself refuses to save one storage viewed as two dtypes.
            raise self._fail(f"storage {key} is referenced with two different dtypes or sizes")
        return seen

    def _spec(self, storage, offset, size, stride, dtype: _Dtype | None) -> _TensorSpec:
        if type(storage) is not _StorageRef:
            raise self._fail(f"tensor rebuilt from something that is not a storage: {storage!r:.200}")
        if dtype is None:
            dtype = storage.dtype
        if not _is_int(offset) or offset < 0:
            raise self._fail(f"bad storage offset {offset!r:.200}")
        ok = isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
        if not ok or not all(_is_int(s) and s >= 0 for s in size + stride):
            raise self._fail(f"bad tensor size {size!r:.200} or stride {stride!r:.200}")
        spec = _TensorSpec(storage, dtype, offset, size, stride)
        self.specs.append(spec)
        return spec

    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        return self._spec(storage, storage_offset, size, stride, None)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        return self._spec(storage, storage_offset, size, stride, None)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           dtype, metadata=None):
        # v3 pairs an untyped (byte) storage with an explicit dtype.
        if type(dtype) is not _DtypePlaceholder:
            raise self._fail(f"_rebuild_tensor_v3 without a dtype: {dtype!r:.200}")
        if type(storage) is _StorageRef and storage.dtype is not _U8:
            raise self._fail("_rebuild_tensor_v3 expects an untyped storage")
        return self._spec(storage, storage_offset, size, stride, dtype.dtype)


_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled 0x1950a86a20f9469cfc6c


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


def _duplicate_names(data: bytes, names) -> list[str]:
    """Names that appear more than once as strings in the pickle (parsing only, nothing executed)."""
    counts: dict[str, int] = {}
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, str) and arg in names and "UNICODE" in op.name:
            counts[arg] = counts.get(arg, 0) + 1
    return sorted(n for n, c in counts.items() if c > 1)


def _parse(zf: zipfile.ZipFile, prefix: str, path: str) -> dict[str, _TensorSpec]:
    data = zf.read(f"{prefix}/data.pkl")
    unpickler = _RestrictedUnpickler(data, path)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # only our inert placeholders ran, so any failure means a malformed pickle
        raise CheckpointError(f"{path}: malformed data.pkl ({type(exc).__name__}: {exc})") from exc
    if type(obj) not in (dict, OrderedDict):
        raise CheckpointError(f"{path}: expected a mapping of names to tensors, got {type(obj).__name__}")
    specs: dict[str, _TensorSpec] = {}
    for name, spec in dict.items(obj):  # dict.items: the pickle may have set attributes on the instance
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: tensor name {name!r:.100} is not a string")
        if type(spec) is not _TensorSpec:
            raise CheckpointError(f"{path}: {name!r} is not a tensor ({type(spec).__name__})")
        specs[name] = spec
    # A dict silently keeps the last of two equal keys; the count of built tensors gives it away.
    if len(unpickler.specs) > len({id(s) for s in specs.values()}):
        dups = _duplicate_names(data, specs)
        raise CheckpointError(f"{path}: duplicate tensor names in data.pkl: {dups or 'unnamed tensors'}")
    return specs


def _read_storage(zf: zipfile.ZipFile, prefix: str, ref: _StorageRef, order: str, path: str) -> np.ndarray:
    name = f"{prefix}/data/{ref.key}"
    info = zf.NameToInfo.get(name)
    if info is None:
        raise CheckpointError(f"{path}: storage {name} is missing from the archive")
    nbytes = ref.numel * ref.dtype.raw.itemsize
    if info.file_size != nbytes:
        raise CheckpointError(f"{path}: storage {name} holds {info.file_size} bytes, "
                              f"expected {ref.numel} x {ref.dtype.name} = {nbytes}")
    return np.frombuffer(zf.read(name), dtype=ref.dtype.raw.newbyteorder(order))


def _materialize(spec: _TensorSpec, storage: np.ndarray, order: str, name: str, path: str) -> np.ndarray:
    """Apply offset, size and stride to the storage and return a fresh contiguous array."""
    dtype = spec.dtype
    target = dtype.raw.newbyteorder(order)
    if storage.dtype != target:  # v3: an untyped byte storage viewed as `dtype`
        if storage.nbytes % target.itemsize:
            raise CheckpointError(f"{path}: {name}: storage of {storage.nbytes} bytes is not a whole "
                                  f"number of {dtype.name}")
        storage = storage.view(target)
    numel = int(np.prod(spec.size, dtype=object)) if spec.size else 1
    if numel > storage.size:
        # Only a broadcast (stride 0) view can outgrow its storage; state dicts never hold one, and
        # allowing it would let a tiny file ask for an arbitrarily large allocation.
        raise CheckpointError(f"{path}: {name}: size {spec.size} has more elements than its storage "
                              f"({storage.size})")
    if numel == 0:
        out = np.empty(spec.size, dtype=storage.dtype)
    else:
        last = spec.offset + sum((n - 1) * s for n, s in zip(spec.size, spec.stride))
        if last >= storage.size:
            raise CheckpointError(f"{path}: {name}: size {spec.size}, stride {spec.stride} and offset "
                                  f"{spec.offset} reach element {last} of a storage of {storage.size}")
        base = storage[spec.offset:]
        view = as_strided(base, shape=spec.size, strides=[s * base.itemsize for s in spec.stride],
                          writeable=False)
        out = np.array(view, order="C")  # copy: detaches from the storage and from other views of it
    out = out.astype(out.dtype.newbyteorder("="), copy=False)
    if dtype.bf16:
        # bfloat16 is the top half of a float32, so widening is exact.
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a torch zip checkpoint into {name: numpy array} without torch and without running pickle code."""
    path = os.fspath(path)
    try:
        _sniff(path)
        with zipfile.ZipFile(path) as zf:
            prefix = _find_prefix(zf, path)
            order = _byteorder(zf, prefix, path)
            specs = _parse(zf, prefix, path)
            by_storage: dict[str, list[str]] = {}
            for name, spec in specs.items():
                by_storage.setdefault(spec.storage.key, []).append(name)
            out: dict[str, np.ndarray] = {}
            # One storage in memory at a time (besides the results), read in key order.
            for key in sorted(by_storage, key=lambda k: (len(k), k)):
                names = by_storage[key]
                storage = _read_storage(zf, prefix, specs[names[0]].storage, order, path)
                for name in names:
                    out[name] = _materialize(specs[name], storage, order, name, path)
                del storage
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot read torch checkpoint ({type(exc).__name__}: {exc})") from exc
    return {name: out[name] for name in specs}  # keep the order the checkpoint lists them in
