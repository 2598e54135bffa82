"""Convert an upstream checkpoint folder into a MindSpore safetensors folder (layout: `convert.converted`).

Guarantees:

* less than one source shard in memory: tensors are read one at a time straight from the torch zip (or
  safetensors file) into their array and cast to the output dtype (or quantized) in chunks, so the peak is
  about the largest tensor;
* nothing is read outside the source folder (a symlink whose target lies outside is refused), and the output
  can never name the source (or a folder holding it) under another spelling: real paths and inodes are
  compared before anything is created, moved or removed;
* everything checkable is checked before a byte is written (`plan`); shapes are checked as each shard is
  opened;
* quantized weights stay quantized: an int8/int4 checkpoint's int8 weights and float16 scales are written as
  they are whatever the dtype, and `quantize` 8 or 4 writes the layers upstream quantizes as int8 weights and
  float16 scales computed as upstream's published checkpoints are, with the config.json saying so;
* nothing half-written looks valid: the folder is built in `<out>.tmp-glm_ms`, each shard is written as
  `*.incomplete` and renamed when complete, the manifest is written last, and the folder is renamed to
  `out` only at the very end;
* an interrupted run resumes: shards recorded in the work folder's state file whose sha256 still matches are
  kept, the rest are redone; a different source or dtype starts over cleanly;
* a re-run is a no-op only while every source file it read (shards, index, config, tokenizer files) is
  unchanged; changed tokenizer or generation files alone are re-copied without converting again.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConversionError
from ..files import INCOMPLETE, atomic_copy, atomic_write_json, file_lock, file_matches, fsync_dir, same_file, \
    sha256_file
from ..kernels.quantize import quantize_rows
from .converted import FORMAT, FORMAT_VERSION, INDEX, MANIFEST, SHARD_NAME, is_converted, listing, read_manifest
from .names import SCALE, Shapes
from .plan import (DTYPES, SIDE_FILES, Fingerprint, Plan, missing_unexpected, output_dtype_name, output_config,
                   plan_conversion, weights_part)
from .readers.layout import LazyTensor, open_shard, read_json_object, source_file
from .writer import PendingTensor, write_safetensors

logger = logging.getLogger(__name__)

WORK_SUFFIX = ".tmp-glm_ms"
OLD_SUFFIX = ".old-glm_ms"
STATE = ".convert_state.json"
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
        recorded_request = (manifest.get("family"), manifest.get("dtype"), manifest.get("quantization"))
        if recorded_request == (request["family"], request["dtype"], request["quantization"]):
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
                       progress: bool = True, quantize: int | None = None,
                       quantize_embeddings: bool = False) -> Path:
    """Convert the upstream checkpoint folder `src` into a MindSpore safetensors folder `out`; returns `out`.

    `dtype` is "float16" (as published), "float32" or "keep"/None (each tensor's source dtype); only floating
    tensors are cast, and quantized weights (int8, with float16 scales) never. `quantize` 8 or 4 writes the
    layers upstream quantizes as int8/int4 (`quantize_embeddings`: the embeddings and output layer too).
    `family` overrides the family detected from config.json. `source` adds provenance to the manifest (e.g.
    model_id, revision, endpoint). An `out` that already holds this very conversion is returned as is;
    anything else in the way is an error unless `overwrite`.
    """
    out_dtype_name = output_dtype_name(dtype)
    src = Path(src).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    out = out.parent.resolve() / out.name  # the last component stays as given: it may be a symlink to replace
    if not src.is_dir():
        raise ConversionError(f"{src}: source is not a directory")
    _check_output(src, out)
    plan = plan_conversion(src, family, quantize, quantize_embeddings)
    request = {"family": plan.family, "dtype": out_dtype_name, "source_files": plan.weights_fingerprint,
               "quantization": plan.output.config_entries() if plan.output else None}
    if _decide(out, request, plan.fingerprint, overwrite)[0] == "done":
        logger.info("%s already holds this conversion", out)
        return out
    work = out.with_name(out.name + WORK_SUFFIX)
    with file_lock(out.parent / f".{out.name}.glm_ms-lock"):  # one converter per output folder at a time
        action, manifest = _decide(out, request, plan.fingerprint, overwrite)  # another may have finished
        if action == "refresh":
            _refresh(plan, out, work, manifest)
        elif action == "convert":
            _run(plan, out, work, _resume_state(work, request), DTYPES[dtype], out_dtype_name, source, progress)
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
                    raise missing_unexpected(str(plan.src), [], [f"{shard}:{src_name} (→ {target}, already "
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
        raise missing_unexpected(label, [], unexpected)
    if shapes:
        raise ConversionError(f"{label}: shape mismatch ({len(shapes)}): {listing(shapes, 5)}")
    tied = set(plan.table.tied) | set(plan.table.tied.values())
    hashers = {target: hashlib.sha256() for target, _ in kept if target in tied}
    entries: list[PendingTensor] = []
    for target, t in kept:
        def produce(t: LazyTensor = t) -> np.ndarray:
            array = t.load()
            if tuple(array.shape) != t.shape:
                raise ConversionError(f"{label}: {t.name}: read shape {list(array.shape)}, expected {list(t.shape)}")
            on_tensor(array.nbytes)
            return array
        if target in plan.quantizes:
            entries += _quantized_entries(target, plan.output_shapes, plan.output.bits, produce)
        else:
            keep = out_dtype is None or t.dtype.kind != "f" or target in plan.kept_as_stored
            entries.append((target, t.shape, t.dtype if keep else out_dtype, produce))
    entries.sort(key=lambda entry: entry[0])

    def digest(name: str, data: memoryview) -> None:  # tied copies are compared by digest: never two in memory
        if name in hashers:
            hashers[name].update(data)
    size, sha = write_safetensors(dest, entries, metadata={"glm_ms": FORMAT}, on_data=digest)
    order = {t.name: target for target, t in kept}
    # Source order: the order a loader follows to fill tied parameters exactly as upstream does; a scale the
    # conversion computes follows its weight.
    written = []
    for t in lazy:
        if t.name in order:
            written.append([t.name, order[t.name]])
            if order[t.name] in plan.quantizes:
                written.append([t.name, _scale(order[t.name])])
    return {
        "size": size,
        "sha256": sha,
        "tensors": written,
        "dtypes": {target: np.dtype(dtype).name for target, _, dtype, _ in entries},
        "dropped": dropped,
        "digests": {name: h.hexdigest() for name, h in hashers.items()},
    }


def _scale(weight: str) -> str:
    return weight.rpartition(".")[0] + "." + SCALE


def _quantized_entries(target: str, shapes: Shapes, bits: int,
                       produce: Callable[[], np.ndarray]) -> list[PendingTensor]:
    """The int8 weight and float16 scale of a float weight, quantized once when the writer reaches the first."""
    result: dict[str, np.ndarray] = {}

    def part(key: str) -> np.ndarray:
        if not result:
            quantized = quantize_rows(produce(), bits)
            result.update(weight=quantized.weight, scale=quantized.scale)
        return result.pop(key)  # each is written once: nothing is kept after both are
    return [(target, shapes[target], np.dtype(np.int8), lambda: part("weight")),
            (_scale(target), shapes[_scale(target)], np.dtype(np.float16), lambda: part("scale"))]


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

    missing = sorted(set(plan.output_shapes) - set(filled))
    if missing:
        raise missing_unexpected(str(plan.src), missing, [])
    files = {rec["file"]: {"size": rec["size"], "sha256": rec["sha256"]} for rec in records}
    files.update(_copy_side_files(plan, work, plan.copied))
    config = output_config(plan)
    if config is not None:  # quantized here: the config says so, or the folder would load as float
        atomic_write_json(work / "config.json", config)
        files["config.json"] = {"size": (work / "config.json").stat().st_size, "sha256": sha256_file(work / "config.json")}
    total = sum(int(np.prod(plan.output_shapes[t], dtype=np.int64)) * np.dtype(rec["dtypes"][t]).itemsize
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
        "quantization": plan.output.config_entries() if plan.output else None,
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
