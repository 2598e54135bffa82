"""Find a Hugging Face style checkpoint in a folder and read it one shard at a time.

Both layouts HF writes are understood, sharded (an `*.index.json` whose `weight_map` names the
shard of every tensor) or single-file, in torch zip (`pytorch_model*.bin`, read by our restricted
reader) or safetensors (`model*.safetensors`) format. The index is checked against what the shards
actually hold, so a broken or tampered download fails loudly instead of converting half a model.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import CheckpointError
from .torch_reader import load_torch_file

__all__ = ["CheckpointFolder", "find_checkpoint", "iter_shards", "load_state_dict", "load_safetensors_file"]

# (format, index file, single file), in order of preference: safetensors first, since reading it
# involves no pickle at all (it is also what transformers prefers when a repo ships both).
_LAYOUTS = (
    ("safetensors", "model.safetensors.index.json", "model.safetensors"),
    ("torch", "pytorch_model.bin.index.json", "pytorch_model.bin"),
)


@dataclass
class CheckpointFolder:
    """A checkpoint found in `folder`: its format, shard file names and (if sharded) name -> shard map."""

    folder: str
    format: str  # "torch" | "safetensors"
    shards: list[str]  # file names relative to `folder`, in the order they are read
    weight_map: dict[str, str] | None  # tensor name -> shard file name; None for a single file


def _read_index(folder: str, index_name: str) -> dict[str, str]:
    path = os.path.join(folder, index_name)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint index ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: no 'weight_map' mapping tensor names to shard files")
    for name, shard in weight_map.items():
        # The index comes with the download: a shard name must not point outside the folder.
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise CheckpointError(f"{path}: tensor {name!r} maps to an invalid shard file name {shard!r}")
    return weight_map


def find_checkpoint(folder: str | os.PathLike) -> CheckpointFolder:
    """Detect the checkpoint layout in `folder` (safetensors or torch, sharded or single)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: not a directory")
    for fmt, index_name, single_name in _LAYOUTS:
        if os.path.isfile(os.path.join(folder, index_name)):
            weight_map = _read_index(folder, index_name)
            shards = sorted(set(weight_map.values()))
            return CheckpointFolder(folder, fmt, shards, weight_map)
        if os.path.isfile(os.path.join(folder, single_name)):
            return CheckpointFolder(folder, fmt, [single_name], None)
    looked_for = ", ".join(name for _, index_name, single_name in _LAYOUTS for name in (index_name, single_name))
    raise CheckpointError(f"{folder}: no checkpoint found (looked for {looked_for})")


def load_safetensors_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a safetensors file into {name: numpy array}; bfloat16 tensors are widened to float32."""
    from safetensors import safe_open  # imported here so torch-only users need not have it

    path = os.fspath(path)
    out: dict[str, np.ndarray] = {}
    header = None
    try:
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype == "BF16":  # numpy has no bfloat16: read the raw bytes ourselves
                    if header is None:
                        header = _safetensors_header(path)
                    out[name] = _read_bf16(path, header, name)
                else:
                    out[name] = f.get_tensor(name)
    except (CheckpointError, MemoryError):
        raise
    except Exception as exc:  # safetensors only parses, so any failure means a bad or unsupported file
        raise CheckpointError(f"{path}: cannot read safetensors file ({type(exc).__name__}: {exc})") from exc
    return out


def _safetensors_header(path: str) -> tuple[int, dict]:
    # Layout: u64 little-endian header length, JSON header, then the data block.
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def _read_bf16(path: str, header: tuple[int, dict], name: str) -> np.ndarray:
    data_start, entries = header
    entry = entries[name]
    shape = tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if end - begin != 2 * int(np.prod(shape, dtype=np.int64)):
        raise CheckpointError(f"{path}: {name}: {end - begin} bytes do not match bfloat16 shape {shape}")
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        raw = np.frombuffer(f.read(end - begin), dtype="<u2")
    # bfloat16 is the top half of a float32, so widening is exact.
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def _load_shard(ckpt: CheckpointFolder, shard: str) -> dict[str, np.ndarray]:
    path = os.path.join(ckpt.folder, shard)
    if ckpt.format == "torch":
        return load_torch_file(path)
    if ckpt.format == "safetensors":
        return load_safetensors_file(path)
    raise CheckpointError(f"{ckpt.folder}: unknown checkpoint format {ckpt.format!r}")


def _check_against_index(ckpt: CheckpointFolder, shard: str, tensors: dict) -> None:
    expected = [n for n, s in ckpt.weight_map.items() if s == shard]
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{ckpt.folder}: tensor {missing[0]!r} is listed for shard {shard} in the "
                              f"index but is not in it ({len(missing)} missing: {missing[:5]})")
    for name in tensors:
        mapped = ckpt.weight_map.get(name)
        if mapped is None:
            raise CheckpointError(f"{ckpt.folder}: tensor {name!r} in shard {shard} is not listed in the index")
        if mapped != shard:
            raise CheckpointError(f"{ckpt.folder}: tensor {name!r} is in shard {shard} but the index maps it "
                                  f"to {mapped}")


def iter_shards(ckpt: CheckpointFolder) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield (shard file name, {name: array}) one shard at a time, checked against the index."""
    # Check every shard is present before reading any, so a partial download fails at once.
    missing = [s for s in ckpt.shards if not os.path.isfile(os.path.join(ckpt.folder, s))]
    if missing:
        raise CheckpointError(f"{ckpt.folder}: shard {missing[0]} is missing "
                              f"({len(missing)} of {len(ckpt.shards)} shards missing: {missing})")
    for shard in ckpt.shards:
        tensors = _load_shard(ckpt, shard)
        if ckpt.weight_map is not None:
            _check_against_index(ckpt, shard, tensors)
        yield shard, tensors


def load_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every tensor of the checkpoint in `folder` into one dict (all shards in memory)."""
    ckpt = find_checkpoint(folder)
    state: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for shard, tensors in iter_shards(ckpt):
        for name, array in tensors.items():
            if name in state:
                raise CheckpointError(f"{ckpt.folder}: tensor {name!r} appears in both {where[name]} and {shard}")
            state[name] = array
            where[name] = shard
    return state
