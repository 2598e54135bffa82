"""Convert an upstream checkpoint folder into a MindSpore safetensors folder (layout: `convert.converted`).

Guarantees:

* less than one source shard in memory: tensors are read one at a time straight from the torch zip (or
  safetensors file) into their array and cast to the output dtype in chunks, so the peak is about the
  largest tensor;
* nothing is read outside the source folder (a symlink whose target lies outside is refused), and the output
  can never name the source (or a folder holding it) under another spelling: real paths and inodes are
  compared before anything is created, moved or removed;
* everything checkable is checked before a byte is written: the family and config (sizes bounded), every
  shard present, every tensor name of the index known to the family's name table, the config's number of
  layers held by the checkpoint, then every parameter the config implies given exactly once -- otherwise
  "missing / unexpected tensors" listing them; shapes are checked as each shard is opened;
* nothing half-written looks valid: the folder is built in `<out>.tmp-glm_ms`, each shard is written as
  `*.incomplete` and renamed when complete, the manifest is written last, and the folder is renamed to
  `out` only at the very end;
* an interrupted run resumes: shards recorded in the work folder's state file whose sha256 still matches are
  kept, the rest are redone; a different source or dtype starts over cleanly;
* a re-run is a no-op only while every source file it read (shards, index, config, tokenizer files) is
  unchanged; changed tokenizer or generation files alone are re-copied without converting again.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import families
from ..errors import CheckpointError, ConversionError, UnknownTensorError
from ..files import INCOMPLETE, atomic_copy, atomic_write_json, file_lock, file_matches, fsync_dir, same_file, \
    sha256_file
from .converted import (COPIED_FILES, FORMAT, FORMAT_VERSION, INDEX, MANIFEST, SHARD_NAME, is_converted, listing,
                        read_manifest)
from .names import NameTable, Shapes
from .readers.layout import CheckpointFolder, LazyTensor, find_checkpoint, open_shard, read_json_object, source_file
from .writer import write_safetensors

logger = logging.getLogger(__name__)

WORK_SUFFIX = ".tmp-glm_ms"
OLD_SUFFIX = ".old-glm_ms"
STATE = ".convert_state.json"
# Output dtype: None keeps each tensor's source dtype (bfloat16 arrives widened to float32).
DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32), "keep": None, None: None}
# Copied files that do not shape the weights: when only these changed, a re-run re-copies them.
SIDE_FILES = tuple(name for name in COPIED_FILES if name != "config.json")

Fingerprint = dict[str, list[int]]  # file name → [size, mtime_ns]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything known about a source before a byte is written."""

    src: Path
    ckpt: CheckpointFolder
    family: str  # recorded in the manifest
    table: NameTable
    expected: Shapes  # every parameter the config implies
    copied: tuple[str, ...]  # COPIED_FILES present in the source
    fingerprint: Fingerprint  # every source file the conversion reads

    @property
    def weights_fingerprint(self) -> Fingerprint:
        """The part of the fingerprint the converted shards depend on (what a resume must match)."""
        return weights_part(self.fingerprint)


def weights_part(files: dict[str, Any]) -> dict[str, Any]:
    """The entries of a fingerprint that shape the weights (shards, index, config.json)."""
    return {name: value for name, value in files.items() if name not in SIDE_FILES}


def _missing_unexpected(source: str, missing: list[str], unexpected: list[str]) -> ConversionError:
    parts = []
    if missing:
        parts.append(f"missing tensors ({len(missing)}): {listing(sorted(missing))}")
    if unexpected:
        parts.append(f"unexpected tensors ({len(unexpected)}): {listing(unexpected)}")
    return ConversionError(f"{source}: " + "; ".join(parts))


def _check_names(src: Path, table: NameTable, config: Any, names: list[str]) -> Shapes:
    """Every name known, the config's layers held by the checkpoint, every parameter given once: the shapes."""
    unknown, unexpected, targets = [], [], {}
    for name in names:
        try:
            target = table.map_name(name)
        except UnknownTensorError:
            unknown.append(name)
            continue
        if target in targets:
            unexpected.append(f"{name} (→ {target}, already given by {targets[target]})")
        elif target is not None:
            targets[target] = name
    if unknown:
        raise ConversionError(f"{src}: tensors not in the {table.name} name table ({len(unknown)}): "
                              f"{listing(unknown)}")
    # Before any table is built from the config: a config.json asking for more layers than the checkpoint holds
    # is refused here, however many it asks for.
    layers = {table.layer_of(name) for name in names} - {None}
    held = max(layers) + 1 if layers else 0
    if config.num_layers > held:
        raise ConversionError(f"{src}: config.json has num_layers = {config.num_layers}, but the checkpoint "
                              f"holds {held} layer(s)")
    expected = {k: tuple(v) for k, v in table.expected_shapes(config).items()}
    unexpected += [name for target, name in targets.items() if target not in expected]
    missing = sorted(set(expected) - set(targets))
    if missing or unexpected:
        raise _missing_unexpected(str(src), missing, unexpected)
    return expected


def _tensor_names(ckpt: CheckpointFolder) -> list[str]:
    """The names the checkpoint holds: its index, or (single file) the file's own header."""
    if ckpt.weight_map is not None:
        return list(ckpt.weight_map)
    with open_shard(ckpt, ckpt.shards[0]) as lazy:
        return [t.name for t in lazy]


def fingerprint(folder: Path, names: list[str]) -> Fingerprint:
    """{file: [size, mtime_ns]} of the source files a conversion reads: what a re-run and a resume trust."""
    out = {}
    for name in names:
        st = source_file(folder, name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def _plan(src: Path, family: str | None = None) -> Plan:
    """Check the source folder as far as it can be without writing: see the module docstring."""
    if not source_file(src, "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (is this a model folder?)")
    detected = families.detect(src, family=family)
    table = detected.family.load("names")
    try:
        ckpt = find_checkpoint(src)
    except ConversionError:
        raise
    except CheckpointError as exc:  # a source folder that cannot be converted, reported as such
        raise ConversionError(str(exc)) from exc
    expected = _check_names(src, table, detected.config, _tensor_names(ckpt))
    copied = tuple(name for name in COPIED_FILES if source_file(src, name).is_file())
    read = [*ckpt.shards, *([ckpt.index] if ckpt.index else []), *copied]
    return Plan(src, ckpt, detected.family.name, table, expected, copied, fingerprint(src, list(dict.fromkeys(read))))


def _dtype_name(dtype: str | None) -> str:
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}: use 'float16', 'float32' or 'keep'")
    return "keep" if DTYPES[dtype] is None else dtype


def _check_output(src: Path, out: Path) -> None:
    """Refuse an output whose folder, work folder or leftover would be (or hold) the source, however spelled."""
    real_src = src.resolve()
    holders = [real_src, *real_src.parents]
    for path in (out, out.with_name(out.name + WORK_SUFFIX), out.with_name(out.name + OLD_SUFFIX)):
        if path.resolve() in holders or any(same_file(path, holder) for holder in holders):
            raise ConversionError(f"{out}: the output folder must not be (or contain) the source folder {src} "
                                  f"({path} names it)")


def _decide(out: Path, request: dict[str, Any], files: Fingerprint, overwrite: bool) -> tuple[str, dict | None]:
    """("done" | "refresh" | "convert", manifest of `out`): what `out` needs; refuses what is in the way."""
    if not (out.exists() or out.is_symlink()):
        return "convert", None
    if out.is_dir() and not out.is_symlink() and is_converted(out):
        manifest = read_manifest(out)
        recorded = (manifest.get("source") or {}).get("files") or {}
        if (manifest.get("family"), manifest.get("dtype")) == (request["family"], request["dtype"]):
            if recorded == files:
                return "done", manifest
            if weights_part(recorded) == request["source_files"]:
                return "refresh", manifest
        if not overwrite:
            source = manifest.get("source") or {}
            what = (source.get("model_id") or source.get("folder") or "?") + \
                (f"@{source['revision']}" if source.get("revision") else "")
            raise ConversionError(f"{out}: already holds another conversion ({what}, {manifest.get('dtype')}); "
                                  "pass overwrite=True (--overwrite) to replace it")
    elif not overwrite and not (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        raise ConversionError(f"{out}: exists and is neither empty nor a glm_ms conversion; choose another "
                              "output folder or pass overwrite=True (--overwrite)")
    return "convert", None


def convert_checkpoint(src: os.PathLike | str, out: os.PathLike | str, *, dtype: str | None = "float16",
                       family: str | None = None, source: dict[str, Any] | None = None, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Convert the upstream checkpoint folder `src` into a MindSpore safetensors folder `out`; returns `out`.

    `dtype` is "float16" (as published), "float32" or "keep"/None (each tensor's source dtype); only floating
    tensors are cast. `family` overrides the family detected from config.json. `source` adds provenance to
    the manifest (e.g. model_id, revision, endpoint). An `out` that already holds this very conversion is
    returned as is; anything else in the way is an error unless `overwrite`.
    """
    dtype_name = _dtype_name(dtype)
    src = Path(src).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    out = out.parent.resolve() / out.name  # the last component stays as given: it may be a symlink to replace
    if not src.is_dir():
        raise ConversionError(f"{src}: source is not a directory")
    _check_output(src, out)
    plan = _plan(src, family)
    request = {"family": plan.family, "dtype": dtype_name, "source_files": plan.weights_fingerprint}
    if _decide(out, request, plan.fingerprint, overwrite)[0] == "done":
        logger.info("%s already holds this conversion", out)
        return out
    work = out.with_name(out.name + WORK_SUFFIX)
    with file_lock(out.parent / f".{out.name}.glm_ms-lock"):  # one converter per output folder at a time
        action, manifest = _decide(out, request, plan.fingerprint, overwrite)  # another may have finished
        if action == "refresh":
            _refresh(plan, out, work, manifest)
        elif action == "convert":
            _run(plan, out, work, _resume_state(work, request), DTYPES[dtype], dtype_name, source, progress)
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _resume_state(work: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The work folder's state if it belongs to the same request; otherwise a clean, empty work folder."""
    state = None
    if work.is_dir() and not work.is_symlink():
        try:
            state = read_json_object(work / STATE, "conversion state", ConversionError)
        except ConversionError:
            state = None
        if not state or state.get("version") != FORMAT_VERSION or state.get("request") != request:
            logger.info("%s: left by a conversion of another source or dtype; starting over", work)
            state = None
        else:
            for leftover in work.glob("*" + INCOMPLETE):
                leftover.unlink()
    if state is None:
        _remove(work)
        work.mkdir(parents=True)
        state = {"version": FORMAT_VERSION, "request": request, "shards": {}}
        atomic_write_json(work / STATE, state)
    return state


def _run(plan: Plan, out: Path, work: Path, state: dict[str, Any], out_dtype: np.dtype | None, dtype_name: str,
         source: dict[str, Any] | None, progress: bool) -> None:
    """Convert every shard not kept from an interrupted run, then finish; a failure keeps what can be resumed."""
    from tqdm.auto import tqdm

    shards, sizes = plan.ckpt.shards, plan.fingerprint
    filled: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    bar = tqdm(total=sum(sizes[s][0] for s in shards), unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"converting {plan.src.name}", disable=not progress, leave=True)
    try:
        for k, shard in enumerate(shards, 1):
            bar.set_postfix_str(f"shard {k}/{len(shards)}", refresh=True)
            rec = _shard(plan, work, state, shard, SHARD_NAME.format(k=k, n=len(shards)), out_dtype, bar.update)
            for src_name, target in rec["tensors"]:
                if target in filled:
                    raise _missing_unexpected(str(plan.src), [], [f"{shard}:{src_name} (→ {target}, already "
                                                                  f"given by {filled[target]})"])
                filled[target] = f"{shard}:{src_name}"
            bar.n = sum(sizes[s][0] for s in shards[:k])  # the rest of the file: zip/header overhead
            bar.refresh()
            records.append(rec)
        _finish(plan, out, work, records, filled, dtype_name, source)
    except BaseException:
        for leftover in work.glob("*" + INCOMPLETE) if work.is_dir() else ():
            leftover.unlink()
        if work.is_dir() and not state["shards"]:
            shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming
        elif work.is_dir():
            logger.warning("conversion stopped; %d finished shard(s) kept in %s, re-run to resume",
                           len(state["shards"]), work)
        raise
    finally:
        bar.close()


def _shard(plan: Plan, work: Path, state: dict[str, Any], shard: str, name: str, out_dtype: np.dtype | None,
           on_tensor: Callable[[int], object]) -> dict[str, Any]:
    """The record of one output shard: kept from an interrupted run when its sha256 still matches, else written."""
    rec = state["shards"].get(shard)
    if rec and rec.get("file") == name and file_matches(work / name, rec["size"], rec["sha256"]):
        logger.info("%s: kept from the interrupted run (sha256 verified)", name)
        return rec
    dest = work / (name + INCOMPLETE)
    with open_shard(plan.ckpt, shard) as lazy:
        rec = _convert_shard(lazy, f"{plan.src / shard}", plan, out_dtype, dest, on_tensor)
    rec["file"] = name
    os.replace(dest, work / name)  # complete: only now does it get its final name
    state["shards"][shard] = rec
    atomic_write_json(work / STATE, state)
    return rec


def _convert_shard(lazy: list[LazyTensor], label: str, plan: Plan, out_dtype: np.dtype | None, dest: Path,
                   on_tensor: Callable[[int], object]) -> dict[str, Any]:
    """Check the shapes of one shard's tensors, then stream them into `dest`; returns the shard's record."""
    kept, dropped, unexpected, shapes = [], [], [], []
    for t in lazy:
        target = plan.table.map_name(t.name)
        want = plan.expected.get(target) if target is not None else None
        if target is None:
            dropped.append(t.name)
        elif want is None:
            unexpected.append(f"{t.name} (→ {target}, not a parameter of this config)")
        elif t.shape != want:
            shapes.append(f"{t.name}: shape {list(t.shape)}, config.json implies {list(want)}")
        else:
            kept.append((target, t))
    if unexpected:
        raise _missing_unexpected(label, [], unexpected)
    if shapes:
        raise ConversionError(f"{label}: shape mismatch ({len(shapes)}): {listing(shapes, 5)}")
    tied = set(plan.table.tied) | set(plan.table.tied.values())
    hashers = {target: hashlib.sha256() for target, _ in kept if target in tied}
    entries = []
    for target, t in sorted(kept, key=lambda kt: kt[0]):
        dtype = out_dtype if (out_dtype is not None and t.dtype.kind == "f") else t.dtype

        def produce(t: LazyTensor = t) -> np.ndarray:
            array = t.load()
            if tuple(array.shape) != t.shape:
                raise ConversionError(f"{label}: {t.name}: read shape {list(array.shape)}, expected {list(t.shape)}")
            on_tensor(array.nbytes)
            return array
        entries.append((target, t.shape, dtype, produce))

    def digest(name: str, data: memoryview) -> None:  # tied copies are compared by digest: never two in memory
        if name in hashers:
            hashers[name].update(data)
    size, sha = write_safetensors(dest, entries, metadata={"glm_ms": FORMAT}, on_data=digest)
    order = {t.name: target for target, t in kept}
    return {
        "size": size,
        "sha256": sha,
        # Source order: the order a loader follows to fill tied parameters exactly as upstream does.
        "tensors": [[t.name, order[t.name]] for t in lazy if t.name in order],
        "dtypes": {target: np.dtype(dtype).name for target, _, dtype, _ in entries},
        "dropped": dropped,
        "digests": {name: h.hexdigest() for name, h in hashers.items()},
    }


def _tied(plan: Plan, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    digests = {k: v for rec in records for k, v in rec["digests"].items()}
    tied = {}
    for param, base in plan.table.tied.items():
        equal = digests.get(param) == digests.get(base)
        tied[param] = {"to": base, "equal": equal}
        if not equal:
            logger.warning("%s: %r differs from %r although the model ties them; both are kept, and loading fills "
                           "both from the later one in checkpoint order, as upstream does", plan.src, param, base)
    return tied


def _copy_side_files(plan: Plan, work: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    files = {}
    for name in names:
        atomic_copy(source_file(plan.src, name), work / name)
        files[name] = {"size": (work / name).stat().st_size, "sha256": sha256_file(work / name)}
    return files


def _finish(plan: Plan, out: Path, work: Path, records: list[dict[str, Any]], filled: dict[str, str],
            dtype_name: str, source: dict[str, Any] | None) -> None:
    """Completeness checks, index, copied files, manifest (last), then the rename that publishes it all."""
    from .. import __version__

    missing = sorted(set(plan.expected) - set(filled))
    if missing:
        raise _missing_unexpected(str(plan.src), missing, [])
    files = {rec["file"]: {"size": rec["size"], "sha256": rec["sha256"]} for rec in records}
    files.update(_copy_side_files(plan, work, plan.copied))
    total = sum(int(np.prod(plan.expected[t], dtype=np.int64)) * np.dtype(rec["dtypes"][t]).itemsize
                for rec in records for _, t in rec["tensors"])
    dtypes = sorted({d for rec in records for d in rec["dtypes"].values()})
    atomic_write_json(work / INDEX, {"metadata": {"format": FORMAT, "total_size": total, "dtypes": dtypes},
                                     "weight_map": {t: rec["file"] for rec in records for _, t in rec["tensors"]}})
    files[INDEX] = {"size": (work / INDEX).stat().st_size, "sha256": sha256_file(work / INDEX)}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "glm_ms_version": __version__,
        "family": plan.family,
        "dtype": dtype_name,
        "created": _now(),
        "source": {**(source or {}), "folder": str(plan.src), "format": plan.ckpt.format, "files": plan.fingerprint},
        "index": INDEX,
        "tied": _tied(plan, records),
        "dropped": sorted(n for rec in records for n in rec["dropped"]),
        "files": files,
    }
    (work / STATE).unlink()
    atomic_write_json(work / MANIFEST, manifest)  # last file: its presence marks a complete folder
    _publish(work, out)
    logger.info("converted %s → %s (%d shards, %s)", plan.src, out, len(records), dtype_name)


def _refresh(plan: Plan, out: Path, work: Path, manifest: dict[str, Any]) -> None:
    """Same weights, changed side files: a new folder of `out`'s weight files (hard links) and fresh copies."""
    _remove(work)
    work.mkdir(parents=True)
    files = {}
    for name, rec in manifest["files"].items():
        if name not in SIDE_FILES:
            try:
                os.link(source_file(out, name), work / name)
            except OSError:  # a filesystem without hard links: copy
                atomic_copy(source_file(out, name), work / name)
            files[name] = rec
    files.update(_copy_side_files(plan, work, tuple(n for n in plan.copied if n in SIDE_FILES)))
    source = dict(manifest.get("source") or {}, folder=str(plan.src), files=plan.fingerprint)
    atomic_write_json(work / MANIFEST, dict(manifest, created=_now(), source=source, files=files))
    _publish(work, out)
    logger.info("%s: re-copied the changed tokenizer/generation files of %s", out, plan.src)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _publish(work: Path, out: Path) -> None:
    """Replace `out` by the finished `work` folder: moved aside, renamed, the old one removed."""
    fsync_dir(work)
    if out.exists() or out.is_symlink():
        old = out.with_name(out.name + OLD_SUFFIX)
        _remove(old)
        if out.is_dir() and not out.is_symlink():
            os.replace(out, old)
        else:
            out.unlink()
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)
    fsync_dir(out.parent)
