"""The restricted unpickler of torch's `data.pkl`: it can describe tensors and nothing else.

A torch checkpoint's `data.pkl` describes every tensor by a call to a rebuild function on a storage named by a
persistent id. Unpickled with the standard unpickler it could call any importable function (`os.system`,
`builtins.exec`, ...), so `find_class` here hands out only inert placeholders: the rebuild functions return a
`TensorSpec` (storage key, dtype, offset, size, stride) and nothing is read or built until the whole pickle has
been parsed and checked. Sizes, strides and offsets are bounded, so no spec can make later arithmetic overflow.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ...errors import CheckpointError

# Far beyond any real tensor (2**48 elements), and small enough that offset + sum(size * stride) fits int64.
MAX_ELEMENTS = 1 << 48


@dataclass(frozen=True)
class TorchDtype:
    """A torch dtype: the numpy dtype its bytes are read as, and what they become."""

    name: str  # torch name, for messages
    raw: np.dtype  # how the storage bytes are laid out
    bf16: bool = False  # stored as the top 16 bits of a float32; widened after reading


_F16 = TorchDtype("float16", np.dtype("<f2"))
_F32 = TorchDtype("float32", np.dtype("<f4"))
_F64 = TorchDtype("float64", np.dtype("<f8"))
_BF16 = TorchDtype("bfloat16", np.dtype("<u2"), bf16=True)  # numpy has no bfloat16
_I64 = TorchDtype("int64", np.dtype("<i8"))
_I32 = TorchDtype("int32", np.dtype("<i4"))
_I16 = TorchDtype("int16", np.dtype("<i2"))
_I8 = TorchDtype("int8", np.dtype("i1"))
_U8 = TorchDtype("uint8", np.dtype("u1"))
_BOOL = TorchDtype("bool", np.dtype("?"))
_U16 = TorchDtype("uint16", np.dtype("<u2"))
_U32 = TorchDtype("uint32", np.dtype("<u4"))
_U64 = TorchDtype("uint64", np.dtype("<u8"))

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

    def __init__(self, qualname: str, dtype: TorchDtype):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, name, value):
        raise TypeError("data.pkl tried to modify a storage placeholder")


class TorchDtypePlaceholder(_StorageType):
    """Stands for a `torch.float16`-style dtype object."""

    __slots__ = ()


class StorageRef(_Inert):
    """A storage named by a persistent id: which zip entry, read as which dtype, how many elements."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: TorchDtype, numel: int):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "numel", numel)

    def __setattr__(self, name, value):
        raise TypeError("data.pkl tried to modify a storage placeholder")


class TensorSpec(_Inert):
    """What a rebuild call asked for; turned into an array only after the pickle is fully parsed."""

    __slots__ = ("storage", "dtype", "offset", "size", "stride")

    def __init__(self, storage: StorageRef, dtype: TorchDtype, offset: int, size: tuple, stride: tuple):
        object.__setattr__(self, "storage", storage)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "stride", stride)

    def __setattr__(self, name, value):
        raise TypeError("data.pkl tried to modify a tensor placeholder")


_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _is_count(x) -> bool:
    """A plain int in [0, MAX_ELEMENTS): what every size, stride, offset and element count must be."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < MAX_ELEMENTS


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for `data.pkl` that can only describe tensors; every other global is refused."""

    def __init__(self, data: bytes, path: str):
        super().__init__(io.BytesIO(data))
        self._path = path
        self._storages: dict[str, StorageRef] = {}
        self.specs: list[TensorSpec] = []  # every tensor the pickle built, to catch duplicate names

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
            return TorchDtypePlaceholder(f"torch.{name}", _TORCH_DTYPES[name])
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
        if not _is_count(numel):
            raise self._fail(f"bad element count in persistent id {pid!r:.200}")
        seen = self._storages.get(key)
        if seen is None:
            seen = self._storages[key] = StorageRef(key, storage_type.dtype, numel)
        elif seen.dtype != storage_type.dtype or seen.numel != numel:
            # torch itself refuses to save one storage viewed as two dtypes.
            raise self._fail(f"storage {key} is referenced with two different dtypes or sizes")
        return seen

    def _spec(self, storage, offset, size, stride, dtype: TorchDtype | None) -> TensorSpec:
        if type(storage) is not StorageRef:
            raise self._fail(f"tensor rebuilt from something that is not a storage: {storage!r:.200}")
        if dtype is None:
            dtype = storage.dtype
        if not _is_count(offset):
            raise self._fail(f"bad storage offset {offset!r:.200}")
        ok = isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
        if not ok or not all(_is_count(s) for s in size + stride) or _numel(size) >= MAX_ELEMENTS:
            raise self._fail(f"bad tensor size {size!r:.200} or stride {stride!r:.200}")
        spec = TensorSpec(storage, dtype, offset, size, stride)
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
        if type(dtype) is not TorchDtypePlaceholder:
            raise self._fail(f"_rebuild_tensor_v3 without a dtype: {dtype!r:.200}")
        if type(storage) is StorageRef and storage.dtype is not _U8:
            raise self._fail("_rebuild_tensor_v3 expects an untyped storage")
        return self._spec(storage, storage_offset, size, stride, dtype.dtype)


def _numel(size: tuple) -> int:
    count = 1
    for n in size:
        count *= n
    return count


def _duplicate_names(data: bytes, names) -> list[str]:
    """Names that appear more than once as strings in the pickle (parsing only, nothing executed)."""
    counts: dict[str, int] = {}
    for op, arg, _ in pickletools.genops(data):
        if isinstance(arg, str) and arg in names and "UNICODE" in op.name:
            counts[arg] = counts.get(arg, 0) + 1
    return sorted(n for n, c in counts.items() if c > 1)


def parse_data_pkl(data: bytes, path: str) -> dict[str, TensorSpec]:
    """{name: TensorSpec} of a `data.pkl`, in the checkpoint's order; anything but a flat state dict is refused."""
    unpickler = _RestrictedUnpickler(data, path)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # only our inert placeholders ran, so any failure means a malformed pickle
        raise CheckpointError(f"{path}: malformed data.pkl ({type(exc).__name__}: {exc})") from exc
    if type(obj) not in (dict, OrderedDict):
        raise CheckpointError(f"{path}: expected a mapping of names to tensors, got {type(obj).__name__}")
    specs: dict[str, TensorSpec] = {}
    for name, spec in dict.items(obj):  # dict.items: the pickle may have set attributes on the instance
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: tensor name {name!r:.100} is not a string")
        if type(spec) is not TensorSpec:
            raise CheckpointError(f"{path}: {name!r} is not a tensor ({type(spec).__name__})")
        specs[name] = spec
    # A dict silently keeps the last of two equal keys; the count of built tensors gives it away.
    if len(unpickler.specs) > len({id(s) for s in specs.values()}):
        dups = _duplicate_names(data, specs)
        raise CheckpointError(f"{path}: duplicate tensor names in data.pkl: {dups or 'unnamed tensors'}")
    return specs
