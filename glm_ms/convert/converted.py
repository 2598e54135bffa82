"""The folders glm-ms-convert writes, and reading and verifying them.

Layout::

    mindspore_model-00001-of-0000N.safetensors   one per source shard, parameter names of glm_ms
    mindspore_model.safetensors.index.json        {"metadata": {...}, "weight_map": {name: shard}}
    config.json, tokenizer files                  copied unchanged
    glm_ms_manifest.json                          source, dtype, sha256 of every file; written last

The weight map keeps the source order, so loading the folder fills tied parameters (ChatGLM-6B's lm_head and
word embeddings) exactly as loading the upstream shards would.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import families
from ..errors import ConversionError
from ..files import file_matches
from .readers.layout import read_json_object, source_file

MANIFEST = "glm_ms_manifest.json"
INDEX = "mindspore_model.safetensors.index.json"
SHARD_NAME = "mindspore_model-{k:05d}-of-{n:05d}.safetensors"
FORMAT = "glm_ms-mindspore-safetensors"
FORMAT_VERSION = 1
# Copied from the source folder when present: config first, then the tokenizer files of every family.
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (*dict.fromkeys(row.tokenizer_file for row in families.FAMILIES.values()),
                   "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "added_tokens.json")
COPIED_FILES = CONFIG_FILES + TOKENIZER_FILES


def is_converted(folder: os.PathLike | str) -> bool:
    """True for a folder the converter completed (its manifest is written last)."""
    return (Path(folder) / MANIFEST).is_file()


def read_manifest(folder: os.PathLike | str) -> dict[str, Any]:
    """The manifest of a converted folder (checked to be ours and of a version we read)."""
    folder = Path(folder)
    manifest = read_json_object(source_file(folder, MANIFEST), "conversion manifest", ConversionError)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ConversionError(f"{folder / MANIFEST}: not a glm_ms conversion manifest of format version "
                              f"{FORMAT_VERSION}")
    return manifest


def listing(names: list[str], limit: int = 20) -> str:
    """Up to `limit` names joined by commas, with a count of the rest."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _weight_map(folder: Path, manifest: dict[str, Any]) -> dict[str, str]:
    index_name = manifest.get("index", INDEX)
    weight_map = read_json_object(source_file(folder, index_name), "weight index", ConversionError).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{folder / index_name}: no 'weight_map'")
    files = manifest.get("files") or {}
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard not in files:
            raise ConversionError(f"{folder}: index names shard {shard!r}, which the manifest does not list")
        path = source_file(folder, shard)
        if not path.is_file():
            raise ConversionError(f"{folder}: shard {shard} is missing")
        if path.stat().st_size != files[shard]["size"]:
            raise ConversionError(f"{folder}: shard {shard} holds {path.stat().st_size} bytes, the manifest says "
                                  f"{files[shard]['size']} (truncated or replaced)")
    return weight_map


def equal_tied_copies(manifest: dict[str, Any]) -> set[str]:
    """The tensors the manifest records as equal copies of the parameter they are tied to."""
    tied = manifest.get("tied") or {}
    return {name for name, rec in tied.items() if isinstance(rec, dict) and rec.get("equal") is True}


def iter_converted(folder: os.PathLike | str, manifest: dict[str, Any] | None = None,
                   skip_equal_tied: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """(parameter name, array) of a converted folder in the recorded (source) order; `manifest` if read already.

    `skip_equal_tied` leaves out the tied copies the converter found equal (`equal_tied_copies`): filling a tied
    parameter from them again would change nothing, and reading ChatGLM-6B's lm_head copy would put a second
    1 GB matrix beside the loaded model.
    """
    from safetensors import safe_open

    from .readers.safetensors import read_header, read_tensor

    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    weight_map = _weight_map(folder, manifest)
    skipped = equal_tied_copies(manifest) if skip_equal_tied else set()

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        header, current = None, None
        for name, shard in weight_map.items():
            if name in skipped:
                continue
            if shard != current:
                try:  # opening validates the file; the tensors are then read without a memory map
                    with safe_open(str(folder / shard), framework="np"):
                        header = read_header(folder / shard)
                except Exception as exc:
                    raise ConversionError(f"{folder / shard}: cannot read ({type(exc).__name__}: {exc})") from exc
                current = shard
            try:
                array = read_tensor(folder / shard, header, name)
            except Exception as exc:
                raise ConversionError(f"{folder / shard}: cannot read tensor {name!r} "
                                      f"({type(exc).__name__}: {exc})") from exc
            yield name, array
    return tensors()


def verify_converted(folder: os.PathLike | str) -> None:
    """Re-hash every file the manifest lists; raise ConversionError naming those that changed."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    bad = [name for name, rec in (manifest.get("files") or {}).items()
           if os.path.basename(name) != name or not file_matches(source_file(folder, name), rec["size"], rec["sha256"])]
    if bad:
        raise ConversionError(f"{folder}: files differ from the manifest: {listing(bad)}")
