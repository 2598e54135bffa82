"""Convert an upstream checkpoint folder into a MindSpore safetensors folder, one tensor at a time.

Output layout (``out``)::

    mindspore_model-00001-of-0000N.safetensors   one per source shard, parameter names of glm_ms
    mindspore_model.safetensors.index.json        {"metadata": {...}, "weight_map": {name: shard}}
    config.json, tokenizer files                  copied unchanged
    glm_ms_manifest.json                          source, dtype, sha256 of every file; written last

The shards are MindSpore's own safetensors checkpoints (``{"format": "ms"}`` metadata and the
``crc_num`` MindSpore checks): ``mindspore.load_checkpoint(path, format="safetensors",
crc_check=True)`` reads them. They are written by a small streaming writer instead of
``mindspore.save_checkpoint``, which serializes a whole shard in memory (the ``safetensors``
package's ``save_file``) on top of the arrays it was given, after a MindSpore import (~400 MB).
Measured on ~100 MB shards: whole-shard reading + ``save_checkpoint`` peaks 360 MB above that
import; this writer with the per-tensor reader, 56 MB above a 42 MB interpreter.

Guarantees:

* less than one source shard in memory: tensors are read one at a time straight from the torch zip
  (or safetensors file) into their array and cast to the output dtype in 16 MB chunks, so the peak
  is about the largest tensor (measured in scripts/bench_convert.py and tests/test_convert.py);
* nothing half-written looks valid: the folder is built in ``<out>.tmp-glm_ms``, each shard is
  written as ``*.incomplete`` and renamed when complete, the manifest is written last, and the
  folder is renamed to ``out`` only at the very end;
* an interrupted run resumes: shards recorded in the work folder's state file whose sha256 still
  matches are kept, the rest are redone; a different source or dtype starts over cleanly;
* completeness without building the model: every source tensor is mapped by the family's name
  table (unknown names are errors), used once, and the parameter set and shapes implied by
  ``config.json`` are filled exactly -- otherwise "missing / unexpected tensors" listing them.

The weight map keeps the source order, so loading the converted folder fills tied parameters
(ChatGLM-6B's lm_head and word embeddings) exactly as loading the upstream shards would.
"""
from __future__ import annotations

import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .checkpoint import CheckpointFolder, find_checkpoint
from .errors import CheckpointError
from .locks import file_lock
from .names import NameTable, UnknownTensorError, table_for_config

__all__ = [
    "ConversionError", "MANIFEST", "INDEX", "WORK_SUFFIX", "DTYPES", "convert_checkpoint",
    "is_converted", "read_manifest", "iter_converted", "verify_converted", "source_fingerprint", "iter_checkpoint",
    "write_safetensors",
]

logger = logging.getLogger(__name__)

MANIFEST = "glm_ms_manifest.json"
INDEX = "mindspore_model.safetensors.index.json"
SHARD_NAME = "mindspore_model-{k:05d}-of-{n:05d}.safetensors"
WORK_SUFFIX = ".tmp-glm_ms"
INCOMPLETE = ".incomplete"
STATE = ".convert_state.json"
FORMAT = "glm_ms-mindspore-safetensors"
FORMAT_VERSION = 1
# Copied from the source folder when present: config first, then the tokenizers of every family.
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("ice_text.model", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json", "added_tokens.json")
# Output dtype: None keeps each tensor's source dtype (bfloat16 arrives widened to float32).
DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32), "keep": None, None: None}

_ST_DTYPES = {
    np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16", np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8", np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32", np.dtype(np.uint64): "U64",
    np.dtype(np.bool_): "BOOL",
}


class ConversionError(CheckpointError):
    """The source cannot be converted faithfully (unknown, missing, unexpected or mis-shaped tensors, ...)."""


# ------------------------------------------------------------------------------------------------
# Streaming safetensors writer


_CAST_CHUNK = 16 << 20  # bytes cast and written at a time


def write_safetensors(path, tensors: Iterable[Tuple[str, Tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
                      metadata: Optional[Dict[str, str]] = None,
                      on_data: Optional[Callable[[str, memoryview], None]] = None) -> Tuple[int, str]:
    """Write a safetensors file MindSpore reads, streaming one tensor at a time; returns (size, sha256).

    `tensors` gives (name, shape, dtype, produce), sorted by name (MindSpore's ``crc_num`` is a CRC-32
    over each name and its bytes in name order); `produce()` returns the array just before it is
    written and it is cast to `dtype` in chunks, so at most one source tensor plus one chunk are
    alive. `on_data(name, bytes)` sees every written chunk (to digest tied tensors).
    """
    entries = list(tensors)
    names = [e[0] for e in entries]
    if names != sorted(names) or len(set(names)) != len(names):
        raise ValueError("write_safetensors needs unique names in sorted order (MindSpore's crc order)")
    header: Dict[str, object] = {}
    offset = 0
    for name, shape, dtype, _ in entries:
        dtype = np.dtype(dtype)
        if dtype not in _ST_DTYPES:
            raise ConversionError(f"{name}: dtype {dtype} cannot be stored in safetensors")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    crc = 0
    meta = {"format": "ms", **(metadata or {})}
    # The crc belongs in the header, before the data it covers: reserve its widest form, fill it in last.
    meta["crc_num"] = "0" * 10

    def encode_header() -> bytes:
        raw = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode("utf-8")
        return raw + b" " * (-len(raw) % 8)  # data starts 8-byte aligned

    head = encode_header()
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
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
        meta["crc_num"] = str(crc)
        final = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode("utf-8")
        final += b" " * (len(head) - len(final))  # shorter or equal: the crc took at most its reserved room
        f.seek(8)
        f.write(final)
        f.flush()
        os.fsync(f.fileno())
    # The header was finished last, so the file is hashed once complete (from the page cache, mostly).
    return os.path.getsize(path), _sha256_file(path)


def _sha256_file(path, chunk: int = 1 << 22) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            sha.update(block)
    return sha.hexdigest()


# ------------------------------------------------------------------------------------------------
# Source shards, read one tensor at a time


@dataclasses.dataclass
class _Lazy:
    """One source tensor: what the header needs now, the data only when `load()` is called."""

    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype  # dtype `load()` returns (bfloat16 is widened to float32)
    load: Callable[[], np.ndarray]


def _zip_member_reader(raw, info: zipfile.ZipInfo, path: str) -> Callable[[np.ndarray], None]:
    """Fill a buffer with a stored (uncompressed) zip member straight from the file, CRC checked."""
    def read_into(buffer: np.ndarray) -> None:
        view = memoryview(buffer.reshape(-1)).cast("B")
        if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; be correct anyway
            with zipfile.ZipFile(path) as zf:
                view[:] = zf.read(info)  # zipfile checks the CRC itself
            return
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
    return read_into


def _torch_tensors(path: str, stack: contextlib.ExitStack) -> List[_Lazy]:
    """Describe the tensors of a torch zip checkpoint; each `load()` reads just that tensor's storage."""
    from . import torch_reader as tr

    try:
        tr._sniff(path)
        zf = stack.enter_context(zipfile.ZipFile(path))
        raw = stack.enter_context(open(path, "rb"))
        prefix = tr._find_prefix(zf, path)
        order = tr._byteorder(zf, prefix, path)
        specs = tr._parse(zf, prefix, path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read torch checkpoint ({type(exc).__name__}: {exc})") from exc

    def loader(name, spec):
        def load() -> np.ndarray:
            ref = spec.storage
            member = zf.NameToInfo.get(f"{prefix}/data/{ref.key}")
            if member is None:
                raise CheckpointError(f"{path}: storage {prefix}/data/{ref.key} is missing from the archive")
            itemsize = ref.dtype.raw.itemsize
            if member.file_size != ref.numel * itemsize:
                raise CheckpointError(f"{path}: storage {member.filename} holds {member.file_size} bytes, "
                                      f"expected {ref.numel} x {ref.dtype.name} = {ref.numel * itemsize}")
            storage = np.empty(ref.numel, dtype=ref.dtype.raw.newbyteorder(order))
            try:
                _zip_member_reader(raw, member, path)(storage)
            except (OSError, zipfile.BadZipFile, zlib.error) as exc:
                raise CheckpointError(f"{path}: cannot read {member.filename} ({exc})") from exc
            numel = int(np.prod(spec.size, dtype=np.int64)) if spec.size else 1
            contiguous = tuple(spec.stride) == _c_strides(spec.size)
            if spec.dtype is ref.dtype and spec.offset == 0 and numel == ref.numel and contiguous:
                out = storage.reshape(spec.size)  # the common case: the storage *is* the tensor, no copy
                out = out.astype(out.dtype.newbyteorder("="), copy=False)
                if spec.dtype.bf16:
                    out = (out.astype(np.uint32) << 16).view(np.float32)  # exact widening
                return out
            return tr._materialize(spec, storage, order, name, path)  # views, v3 byte storages: copies
        return load

    out = []
    for name, spec in specs.items():
        dtype = np.dtype(np.float32) if spec.dtype.bf16 else spec.dtype.raw.newbyteorder("=")
        out.append(_Lazy(name, tuple(int(s) for s in spec.size), dtype, loader(name, spec)))
    return out


def _c_strides(shape) -> Tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


_ST_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.float32, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16,
             "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


def _safetensors_tensors(path: str, stack: contextlib.ExitStack) -> List[_Lazy]:
    """Describe the tensors of a safetensors file; each `load()` reads one tensor."""
    from safetensors import safe_open

    from .checkpoint import _read_bf16, _safetensors_header

    try:
        f = stack.enter_context(safe_open(path, framework="np"))
        header = None
        out = []
        for name in f.keys():
            sl = f.get_slice(name)
            kind = sl.get_dtype()
            if kind not in _ST_NUMPY:
                raise CheckpointError(f"{path}: {name}: unsupported dtype {kind}")
            if kind == "BF16" and header is None:
                header = _safetensors_header(path)

            def load(name=name, kind=kind):
                try:
                    return _read_bf16(path, header, name) if kind == "BF16" else f.get_tensor(name)
                except CheckpointError:
                    raise
                except Exception as exc:
                    raise CheckpointError(f"{path}: cannot read {name} ({type(exc).__name__}: {exc})") from exc
            out.append(_Lazy(name, tuple(int(s) for s in sl.get_shape()), np.dtype(_ST_NUMPY[kind]), load))
        return out
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors only parses: any failure means a bad or unsupported file
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def _open_shard(ckpt: CheckpointFolder, shard: str) -> Iterator[List[_Lazy]]:
    """The tensors of one source shard, checked against the index, lazily loadable while open."""
    from .checkpoint import _check_against_index

    path = os.path.join(ckpt.folder, shard)
    with contextlib.ExitStack() as stack:
        if ckpt.format == "torch":
            tensors = _torch_tensors(path, stack)
        elif ckpt.format == "safetensors":
            tensors = _safetensors_tensors(path, stack)
        else:
            raise CheckpointError(f"{ckpt.folder}: unknown checkpoint format {ckpt.format!r}")
        if ckpt.weight_map is not None:
            _check_against_index(ckpt, shard, {t.name: None for t in tensors})
        yield tensors


def iter_checkpoint(folder) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (upstream name, array) from an upstream checkpoint folder, one tensor in memory at a time.

    Every shard's presence is checked before the first tensor is read; each shard is checked
    against the index. Faster than whole-shard reading (one copy per tensor instead of two).
    """
    ckpt = find_checkpoint(folder)
    absent = [s for s in ckpt.shards if not os.path.isfile(os.path.join(ckpt.folder, s))]
    if absent:
        raise CheckpointError(f"{ckpt.folder}: shard {absent[0]} is listed in the index but missing "
                              f"({len(absent)} of {len(ckpt.shards)} missing: {_listing(absent)})")

    def tensors():
        for shard in ckpt.shards:
            with _open_shard(ckpt, shard) as lazy:
                for t in lazy:
                    yield t.name, t.load()
    return tensors()


# ------------------------------------------------------------------------------------------------
# The driver


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: cannot read {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: {what} is not a JSON object")
    return data


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + INCOMPLETE)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _listing(names: List[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _missing_unexpected(source: str, missing: List[str], unexpected: List[str]) -> ConversionError:
    parts = []
    if missing:
        parts.append(f"missing tensors ({len(missing)}): {_listing(sorted(missing))}")
    if unexpected:
        parts.append(f"unexpected tensors ({len(unexpected)}): {_listing(unexpected)}")
    return ConversionError(f"{source}: " + "; ".join(parts))


def source_fingerprint(ckpt: CheckpointFolder) -> Dict[str, List[int]]:
    """{file: [size, mtime_ns]} of the checkpoint files, the index and config.json: what a resume trusts."""
    names = list(ckpt.shards) + [n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json",
                                             "config.json") if os.path.isfile(os.path.join(ckpt.folder, n))]
    out = {}
    for name in names:
        st = os.stat(os.path.join(ckpt.folder, name))
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


@dataclasses.dataclass
class _Plan:
    ckpt: CheckpointFolder
    config: dict
    table: NameTable
    expected: Dict[str, Tuple[int, ...]]


def _plan(src: Path, table: Optional[NameTable]) -> _Plan:
    """Everything checkable before a byte is written: config, family, files present, index names."""
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (is this a model folder?)")
    config = _read_json(src / "config.json", "config.json")
    try:
        table = table or table_for_config(config, str(src / "config.json"))
        expected = {k: tuple(v) for k, v in table.expected_shapes(config).items()}
    except (UnknownTensorError, ValueError) as exc:
        raise ConversionError(f"{src}: {exc}") from None
    ckpt = find_checkpoint(src)
    absent = [s for s in ckpt.shards if not os.path.isfile(os.path.join(ckpt.folder, s))]
    if absent:
        raise ConversionError(f"{src}: shard {absent[0]} is listed in the index but missing "
                              f"({len(absent)} of {len(ckpt.shards)} missing: {_listing(absent)})")
    if ckpt.weight_map is not None:  # the index names every tensor: check them all before converting any
        targets, unknown, unexpected = {}, [], []
        for name in ckpt.weight_map:
            try:
                target = table.map_name(name)
            except UnknownTensorError:
                unknown.append(name)
                continue
            if target is None:
                continue
            if target not in expected or target in targets:
                unexpected.append(name)
            targets[target] = name
        if unknown:
            raise ConversionError(f"{src}: tensors not in the {table.family} name table ({len(unknown)}): "
                                  f"{_listing(unknown)}")
        missing = sorted(set(expected) - set(targets))
        if missing or unexpected:
            raise _missing_unexpected(str(src), missing, unexpected)
    return _Plan(ckpt, config, table, expected)


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.glm_ms-lock"


def _file_ok(path: Path, size: int, sha256: str) -> bool:
    try:
        return path.stat().st_size == size and _sha256_file(path) == sha256
    except OSError:
        return False


def _convert_shard(lazy: List[_Lazy], src_label: str, plan: _Plan, out_dtype: Optional[np.dtype],
                   filled: Dict[str, str], dest: Path, on_tensor: Callable[[int], object] = lambda n: None) -> dict:
    """Check every tensor of one shard, then stream it into `dest`; returns the shard's record."""
    table, expected = plan.table, plan.expected
    unknown, unexpected, shapes, kept, dropped = [], [], [], [], []
    seen_here: Dict[str, str] = {}
    for t in lazy:
        try:
            target = table.map_name(t.name)
        except UnknownTensorError:
            unknown.append(t.name)
            continue
        if target is None:
            dropped.append(t.name)
            continue
        if target not in expected:
            unexpected.append(f"{t.name} (→ {target}, not a parameter of this config)")
        elif target in filled or target in seen_here:
            first = filled.get(target) or seen_here[target]
            unexpected.append(f"{t.name} (→ {target}, already given by {first})")
        elif t.shape != expected[target]:
            shapes.append(f"{t.name}: shape {list(t.shape)}, config.json implies {list(expected[target])}")
        else:
            seen_here[target] = f"{src_label}:{t.name}"
            kept.append((target, t))
    if unknown:
        raise ConversionError(f"{src_label}: tensors not in the {table.family} name table ({len(unknown)}): "
                              f"{_listing(unknown)}")
    if unexpected:
        raise _missing_unexpected(src_label, [], unexpected)
    if shapes:
        raise ConversionError(f"{src_label}: shape mismatch ({len(shapes)}): {_listing(shapes, 5)}")

    tied = set(table.tied) | set(table.tied.values())
    hashers = {target: hashlib.sha256() for target, _ in kept if target in tied}
    entries = []
    for target, t in sorted(kept, key=lambda kt: kt[0]):
        dtype = out_dtype if (out_dtype is not None and t.dtype.kind == "f") else t.dtype

        def produce(t=t):
            array = t.load()
            if tuple(array.shape) != t.shape:
                raise ConversionError(f"{src_label}: {t.name}: read shape {list(array.shape)}, "
                                      f"expected {list(t.shape)}")
            on_tensor(array.nbytes)
            return array
        entries.append((target, t.shape, dtype, produce))

    def digest(name, data):  # tied copies are compared by digest: never two of them in memory
        if name in hashers:
            hashers[name].update(data)
    size, sha = write_safetensors(dest, entries, metadata={"glm_ms": FORMAT}, on_data=digest)
    digests = {name: h.hexdigest() for name, h in hashers.items()}
    order = {t.name: target for target, t in kept}
    return {
        "size": size,
        "sha256": sha,
        # Source order: the order a loader follows to fill tied parameters exactly as upstream does.
        "tensors": [[t.name, order[t.name]] for t in lazy if t.name in order],
        "dtypes": {target: np.dtype(dtype).name for target, _, dtype, _ in entries},
        "dropped": dropped,
        "digests": digests,
    }


def _dtype_name(dtype) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use 'float16', 'float32' or 'keep'")
    return "keep" if DTYPES[dtype] is None else dtype


def _resume_state(work: Path, request: dict) -> dict:
    """The work folder's state if it belongs to the same request; otherwise a clean, empty work folder."""
    state = None
    if work.is_dir():
        try:
            state = _read_json(work / STATE, "conversion state")
        except ConversionError:
            state = None
        if not state or state.get("version") != FORMAT_VERSION or state.get("request") != request:
            logger.info("%s: left by a conversion of another source or dtype; starting over", work)
            shutil.rmtree(work)
            state = None
        else:
            for leftover in work.glob("*" + INCOMPLETE):
                leftover.unlink()
    elif work.exists() or work.is_symlink():
        work.unlink()
    if state is None:
        work.mkdir(parents=True)
        state = {"version": FORMAT_VERSION, "request": request, "shards": {}}
        _write_json(work / STATE, state)
    return state


def _existing(out: Path) -> str:
    if out.is_dir() and not out.is_symlink():
        if (out / MANIFEST).is_file():
            return "converted"
        return "other" if any(out.iterdir()) else "empty"
    return "other"


def _describe_source(manifest: dict) -> str:
    source = manifest.get("source") or {}
    what = source.get("model_id") or source.get("folder") or "?"
    if source.get("revision"):
        what += f"@{source['revision']}"
    return f"{what}, {manifest.get('dtype')}"


def convert_checkpoint(src, out, *, dtype: Optional[str] = "float16", table: Optional[NameTable] = None,
                       source: Optional[dict] = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Convert the upstream checkpoint folder `src` into a MindSpore safetensors folder `out`; returns `out`.

    `dtype` is "float16" (as published), "float32" or "keep"/None (each tensor's source dtype);
    only floating tensors are cast. `table` is the family's `NameTable` (default: recognised from
    config.json). `source` adds provenance to the manifest (e.g. model_id, revision, endpoint).
    An `out` that already holds this very conversion (same source files, dtype and family) is returned
    as is; anything else in the way is an error unless `overwrite`.
    """
    dtype_name = _dtype_name(dtype)
    out_dtype = DTYPES[dtype]
    src = Path(src).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    if not src.is_dir():
        raise ConversionError(f"{src}: source is not a directory")
    if out == src or out in src.parents:
        raise ConversionError(f"{out}: the output folder must not be (or contain) the source folder {src}")
    plan = _plan(src, table)
    fingerprint = source_fingerprint(plan.ckpt)
    request = {"family": plan.table.family, "dtype": dtype_name, "source_files": fingerprint}

    def done_already() -> bool:
        kind = _existing(out) if (out.exists() or out.is_symlink()) else None
        if kind == "converted":
            manifest = read_manifest(out)
            same = (manifest.get("family"), manifest.get("dtype"), (manifest.get("source") or {}).get("files")) \
                == (request["family"], dtype_name, json.loads(json.dumps(fingerprint)))
            if same:
                logger.info("%s already holds this conversion", out)
                return True
            if not overwrite:
                raise ConversionError(f"{out}: already holds another conversion ({_describe_source(manifest)}); "
                                      "pass overwrite=True (--overwrite) to replace it")
        elif kind == "other" and not overwrite:
            raise ConversionError(f"{out}: exists and is neither empty nor a glm_ms conversion; choose another "
                                  "output folder or pass overwrite=True (--overwrite)")
        return False

    if done_already():
        return out
    work = out.with_name(out.name + WORK_SUFFIX)
    with file_lock(_lock_path(out)):  # one converter per output folder at a time
        if done_already():  # another process finished it while we waited for the lock
            return out
        state = _resume_state(work, request)
        _run(plan, src, out, work, state, fingerprint, out_dtype, dtype_name, source, progress)
    return out


def _run(plan: _Plan, src: Path, out: Path, work: Path, state: dict, fingerprint: dict,
         out_dtype: Optional[np.dtype], dtype_name: str, source: Optional[dict], progress: bool) -> None:
    from tqdm.auto import tqdm

    shards = plan.ckpt.shards
    n = len(shards)
    filled: Dict[str, str] = {}
    records: List[dict] = []
    dest = None
    bar = tqdm(total=sum(fingerprint[s][0] for s in shards), unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"converting {src.name}", disable=not progress, leave=True)
    try:
        for k, shard in enumerate(shards, 1):
            name = SHARD_NAME.format(k=k, n=n)
            bar.set_postfix_str(f"shard {k}/{n}", refresh=True)
            rec = state["shards"].get(shard)
            if rec and rec.get("file") == name and _file_ok(work / name, rec["size"], rec["sha256"]):
                logger.info("%s: kept from the interrupted run (sha256 verified)", name)
            else:
                dest = work / (name + INCOMPLETE)
                with _open_shard(plan.ckpt, shard) as lazy:
                    rec = _convert_shard(lazy, f"{src / shard}", plan, out_dtype, filled, dest,
                                         on_tensor=bar.update)
                rec["file"] = name
                os.replace(dest, work / name)  # complete: only now does it get its final name
                dest = None
                state["shards"][shard] = rec
                _write_json(work / STATE, state)
            for src_name, target in rec["tensors"]:
                if target in filled:
                    raise _missing_unexpected(str(src), [], [f"{shard}:{src_name} (→ {target}, already given "
                                                             f"by {filled[target]})"])
                filled[target] = f"{shard}:{src_name}"
            bar.n = sum(fingerprint[s][0] for s in shards[:k])  # the rest of the file: zip/header overhead
            bar.refresh()
            records.append(rec)
        _finish(plan, src, out, work, records, filled, fingerprint, dtype_name, source)
    except BaseException:
        if dest is not None and dest.exists():
            dest.unlink()
        if work.is_dir() and not state["shards"]:
            shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming
        elif work.is_dir():
            logger.warning("conversion stopped; %d finished shard(s) kept in %s, re-run to resume",
                           len(state["shards"]), work)
        raise
    finally:
        bar.close()


def _finish(plan: _Plan, src: Path, out: Path, work: Path, records: List[dict], filled: Dict[str, str],
            fingerprint: dict, dtype_name: str, source: Optional[dict]) -> None:
    """Completeness checks, index, copied files, manifest (last), then the rename that publishes it all."""
    from .. import __version__

    missing = sorted(set(plan.expected) - set(filled))
    if missing:
        raise _missing_unexpected(str(src), missing, [])
    digests = {k: v for rec in records for k, v in rec["digests"].items()}
    tied = {}
    for param, base in plan.table.tied.items():
        equal = digests.get(param) == digests.get(base)
        tied[param] = {"to": base, "equal": equal}
        if not equal:
            msg = (f"{src}: {param!r} differs from {base!r} although the model ties them; both are kept, and "
                   f"loading fills both from the later one in checkpoint order, as upstream does")
            logger.warning(msg)
    files = {rec["file"]: {"size": rec["size"], "sha256": rec["sha256"]} for rec in records}
    for name in CONFIG_FILES + TOKENIZER_FILES:
        if (src / name).is_file():
            tmp = work / (name + INCOMPLETE)
            shutil.copyfile(src / name, tmp)
            os.replace(tmp, work / name)
            files[name] = {"size": (work / name).stat().st_size, "sha256": _sha256_file(work / name)}
    weight_map = {target: rec["file"] for rec in records for _, target in rec["tensors"]}
    dtypes = sorted({d for rec in records for d in rec["dtypes"].values()})
    total = sum(int(np.prod(plan.expected[t], dtype=np.int64)) * np.dtype(rec["dtypes"][t]).itemsize
                for rec in records for _, t in rec["tensors"])
    _write_json(work / INDEX, {"metadata": {"format": FORMAT, "total_size": total, "dtypes": dtypes},
                               "weight_map": weight_map})
    files[INDEX] = {"size": (work / INDEX).stat().st_size, "sha256": _sha256_file(work / INDEX)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "glm_ms_version": __version__,
        "family": plan.table.family,
        "dtype": dtype_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {**(source or {}), "folder": str(src), "format": plan.ckpt.format, "files": fingerprint},
        "index": INDEX,
        "tied": tied,
        "dropped": sorted(n for rec in records for n in rec["dropped"]),
        "files": files,
    }
    (work / STATE).unlink()
    _write_json(work / MANIFEST, manifest)  # last file: its presence marks a complete folder
    _fsync_dir(work)
    if out.exists() or out.is_symlink():
        old = out.with_name(out.name + ".old-glm_ms")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old) if out.is_dir() and not out.is_symlink() else out.unlink()
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)
    _fsync_dir(out.parent)
    logger.info("converted %s → %s (%d shards, %s)", src, out, len(records), dtype_name)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# Reading a converted folder


def is_converted(folder) -> bool:
    """True for a folder this converter completed (its manifest is written last)."""
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder) -> dict:
    """The manifest of a converted folder (checked to be ours and of a version we read)."""
    path = Path(folder) / MANIFEST
    manifest = _read_json(path, "conversion manifest")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ConversionError(f"{path}: not a glm_ms conversion manifest of format version {FORMAT_VERSION}")
    return manifest


def _weight_map(folder: Path, manifest: dict) -> Dict[str, str]:
    index = _read_json(folder / manifest.get("index", INDEX), "weight index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{folder / INDEX}: no 'weight_map'")
    files = manifest.get("files") or {}
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard not in files:
            raise ConversionError(f"{folder}: index names shard {shard!r}, which the manifest does not list")
        path = folder / shard
        if not path.is_file():
            raise ConversionError(f"{folder}: shard {shard} is missing")
        if path.stat().st_size != files[shard]["size"]:
            raise ConversionError(f"{folder}: shard {shard} holds {path.stat().st_size} bytes, the manifest says "
                                  f"{files[shard]['size']} (truncated or replaced)")
    return weight_map


def iter_converted(folder) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (parameter name, array) of a converted folder in the recorded (source) order."""
    from safetensors import safe_open

    folder = Path(folder)
    weight_map = _weight_map(folder, read_manifest(folder))
    with contextlib.ExitStack() as stack:
        handle, current = None, None
        for name, shard in weight_map.items():
            if shard != current:
                stack.close()
                try:
                    handle = stack.enter_context(safe_open(str(folder / shard), framework="np"))
                except Exception as exc:
                    raise ConversionError(f"{folder / shard}: cannot read ({type(exc).__name__}: {exc})") from exc
                current = shard
            try:
                array = handle.get_tensor(name)
            except Exception as exc:
                raise ConversionError(f"{folder / shard}: cannot read tensor {name!r} "
                                      f"({type(exc).__name__}: {exc})") from exc
            yield name, array


def verify_converted(folder) -> None:
    """Re-hash every file the manifest lists; raise ConversionError naming those that changed."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    bad = [name for name, rec in (manifest.get("files") or {}).items()
           if os.path.basename(name) != name or not _file_ok(folder / name, rec["size"], rec["sha256"])]
    if bad:
        raise ConversionError(f"{folder}: files differ from the manifest: {_listing(bad)}")
