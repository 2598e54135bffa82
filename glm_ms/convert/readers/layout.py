"""What an upstream checkpoint folder holds: its shards and index, every file confined to the folder.

Both layouts Hugging Face writes are understood, sharded (an `*.index.json` whose `weight_map` names the shard
of every tensor) or single-file, in safetensors (`model*.safetensors`) or torch zip (`pytorch_model*.bin`)
format. Shards are read one tensor at a time (`open_shard`) and checked against the index, so a broken or
tampered download fails loudly instead of loading half a model.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ...errors import CheckpointError
from ...files import within

# (format, index file, single file), in order of preference: safetensors first, since reading it involves no
# pickle at all (it is also what transformers prefers when a repo ships both).
LAYOUTS = (
    ("safetensors", "model.safetensors.index.json", "model.safetensors"),
    ("torch", "pytorch_model.bin.index.json", "pytorch_model.bin"),
)
INDEX_NAMES = tuple(index for _, index, _ in LAYOUTS)
MAX_JSON_BYTES = 64 << 20  # an index of a few thousand tensors is well under 1 MB


@dataclass(frozen=True)
class LazyTensor:
    """One tensor of a shard: what a header needs now, the data only when `load()` is called."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype  # the dtype `load()` returns (bfloat16 arrives widened to float32)
    load: Callable[[], np.ndarray]


@dataclass(frozen=True)
class CheckpointFolder:
    """A checkpoint found in `folder`: its format, shard file names and (if sharded) name → shard map."""

    folder: Path
    format: str  # "torch" | "safetensors"
    shards: list[str]  # file names relative to `folder`, in the order they are read
    weight_map: dict[str, str] | None  # tensor name → shard file name; None for a single file
    index: str | None  # the index file name, None for a single file


def source_file(folder: Path, name: str) -> Path:
    """`folder / name` for a plain file name whose path, symlinks resolved, stays inside `folder`."""
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
        raise CheckpointError(f"{folder}: invalid file name {name!r}")
    path = folder / name
    if not within(folder, path):
        raise CheckpointError(f"{path}: is a symlink to {path.resolve()}, outside {folder}; refusing to read "
                              "outside the model folder")
    return path


def read_json_object(path: Path, what: str, error: type[CheckpointError] = CheckpointError) -> dict[str, Any]:
    """A JSON object from `path` (at most MAX_JSON_BYTES); anything else is `error` naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{path}: not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from exc
    if len(raw) > MAX_JSON_BYTES:
        raise error(f"{path}: larger than {MAX_JSON_BYTES >> 20} MB, too large for a {what}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: {what} is not a JSON object")
    return data


def read_weight_map(path: Path) -> dict[str, str]:
    """The `weight_map` of an index file: tensor name → shard file name (plain names, checked)."""
    weight_map = read_json_object(path, "checkpoint index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: no 'weight_map' mapping tensor names to shard files")
    for name, shard in weight_map.items():
        # The index comes with the download: a shard name must not point outside the folder.
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise CheckpointError(f"{path}: tensor {name!r} maps to an invalid shard file name {shard!r}")
    return weight_map


def require_shards(folder: Path, shards: list[str], listed_in: str) -> None:
    """Every shard is a file inside `folder`, checked before any is read so a partial download fails at once."""
    absent = [s for s in shards if not source_file(folder, s).is_file()]
    if absent:
        shown = ", ".join(absent[:20]) + (f", ... ({len(absent) - 20} more)" if len(absent) > 20 else "")
        raise CheckpointError(f"{folder}: shard {absent[0]} is listed in {listed_in} but missing "
                              f"({len(absent)} of {len(shards)} missing: {shown})")


def find_checkpoint(folder: os.PathLike | str) -> CheckpointFolder:
    """The checkpoint in `folder` (safetensors or torch, sharded or single), every shard present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory")
    for fmt, index_name, single_name in LAYOUTS:
        index = source_file(folder, index_name)
        if index.is_file():
            weight_map = read_weight_map(index)
            shards = sorted(set(weight_map.values()))
            require_shards(folder, shards, "the index")
            return CheckpointFolder(folder, fmt, shards, weight_map, index_name)
        if source_file(folder, single_name).is_file():
            return CheckpointFolder(folder, fmt, [single_name], None, None)
    looked_for = ", ".join(name for _, index_name, single_name in LAYOUTS for name in (index_name, single_name))
    raise CheckpointError(f"{folder}: no checkpoint found (looked for {looked_for})")


def check_against_index(ckpt: CheckpointFolder, shard: str, names: list[str]) -> None:
    """The tensors `shard` holds are exactly those the index maps to it."""
    if ckpt.weight_map is None:
        return
    present = set(names)
    missing = [n for n, s in ckpt.weight_map.items() if s == shard and n not in present]
    if missing:
        raise CheckpointError(f"{ckpt.folder}: tensor {missing[0]!r} is listed for shard {shard} in the "
                              f"index but is not in it ({len(missing)} missing: {missing[:5]})")
    for name in names:
        mapped = ckpt.weight_map.get(name)
        if mapped is None:
            raise CheckpointError(f"{ckpt.folder}: tensor {name!r} in shard {shard} is not listed in the index")
        if mapped != shard:
            raise CheckpointError(f"{ckpt.folder}: tensor {name!r} is in shard {shard} but the index maps it "
                                  f"to {mapped}")


@contextlib.contextmanager
def open_shard(ckpt: CheckpointFolder, shard: str) -> Iterator[list[LazyTensor]]:
    """The tensors of one shard, checked against the index, each loadable while the shard is open."""
    from .safetensors import safetensors_tensors
    from .torch_zip import torch_tensors

    path = source_file(ckpt.folder, shard)
    with contextlib.ExitStack() as stack:
        tensors = (torch_tensors if ckpt.format == "torch" else safetensors_tensors)(path, stack)
        check_against_index(ckpt, shard, [t.name for t in tensors])
        yield tensors


def iter_checkpoint(folder: os.PathLike | str) -> Iterator[tuple[str, np.ndarray]]:
    """(upstream name, array) of an upstream folder, one tensor in memory at a time; the layout is checked now."""
    ckpt = find_checkpoint(folder)

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for shard in ckpt.shards:
            with open_shard(ckpt, shard) as lazy:
                for t in lazy:
                    yield t.name, t.load()
    return tensors()
