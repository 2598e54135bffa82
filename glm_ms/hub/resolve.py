"""What a user passes to `from_pretrained` (a folder or a model id) → the weights (or tokenizer folder) to load.

* a local folder (glm_ms-converted, MindNLP or upstream) is read in place, whatever its kind: the per-tensor
  upstream readers are about as fast as reading converted safetensors, so a cached copy would only double
  the disk use;
* a model id with `mirror="modelscope"` is downloaded (verified, resumable) and converted into
  `<cache>/converted/modelscope/<owner>/<name>/<revision>`. Once that exists no request is made, and its
  manifest is read once and handed on with the weights.

The cache root is `cache_dir`, else `$GLM_MS_CACHE`, else `~/.cache/glm_ms` (shared with the ModelScope client,
whose downloads live under `<cache>/modelscope`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConversionError, NotFoundError
from ..convert.converted import CONFIG_FILES, TOKENIZER_FILES, is_converted, read_manifest
from ..convert.readers import WeightSource, open_weights
from .modelscope import InvalidArgumentError

__all__ = ["MIRRORS", "resolve_model", "resolve_tokenizer_folder", "converted_cache_path"]

MIRRORS = ("modelscope",)


def _local(path_or_id: os.PathLike | str, mirror: str | None) -> Path | None:
    """The local folder `path_or_id` names, or None for a model id to fetch from `mirror`."""
    if mirror is not None and mirror not in MIRRORS:
        raise InvalidArgumentError(f"unsupported mirror {mirror!r}: supported: {', '.join(MIRRORS)}")
    path = Path(os.fspath(path_or_id)).expanduser()
    if path.is_dir():
        return path
    if mirror is None:
        raise NotFoundError(f"{str(path_or_id)!r} is not a local folder; to download a model id pass "
                            "mirror='modelscope' (e.g. from_pretrained('ZhipuAI/ChatGLM-6B', mirror='modelscope'))")
    return None


def converted_cache_path(model_id: str, revision: str = "master", cache_dir: os.PathLike | str | None = None) -> Path:
    """Where the converted copy of `model_id` at `revision` is cached."""
    from .modelscope import resolve_cache_dir, safe_component, split_model_id

    owner, name = split_model_id(model_id)
    root = resolve_cache_dir(cache_dir) / "converted" / "modelscope"
    return root / safe_component(owner) / safe_component(name) / safe_component(revision)


def _cached_manifest(out: Path, model_id: str, revision: str) -> dict[str, Any] | None:
    """The manifest of the cached conversion of `model_id`@`revision`, read once; None when there is none."""
    if not is_converted(out):
        return None
    try:
        manifest = read_manifest(out)
    except ConversionError:
        return None
    source = manifest.get("source") or {}
    return manifest if (source.get("model_id"), source.get("revision")) == (model_id, revision) else None


def resolve_model(path_or_id: os.PathLike | str, *, mirror: str | None = None, revision: str = "master",
                  cache_dir: os.PathLike | str | None = None, endpoint: str | None = None,
                  progress: bool = True) -> WeightSource:
    """The weights of a local folder, or of a model id downloaded and converted once into the cache."""
    local = _local(path_or_id, mirror)
    if local is not None:
        return open_weights(local)
    from ..convert.driver import convert_checkpoint
    from .modelscope import resolve_endpoint, snapshot_download

    model_id = str(path_or_id)
    out = converted_cache_path(model_id, revision, cache_dir)
    manifest = _cached_manifest(out, model_id, revision)
    if manifest is not None:
        return open_weights(out, manifest)  # converted earlier: no request at all
    snapshot = snapshot_download(model_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                                 progress=progress)
    convert_checkpoint(snapshot, out, dtype=None, overwrite=True, progress=progress,
                       source={"model_id": model_id, "revision": revision, "endpoint": resolve_endpoint(endpoint)})
    return open_weights(out)


def resolve_tokenizer_folder(path_or_id: os.PathLike | str, *, mirror: str | None = None, revision: str = "master",
                             cache_dir: os.PathLike | str | None = None, endpoint: str | None = None,
                             progress: bool = True) -> Path:
    """A local folder holding the tokenizer files; for a model id only those (and config.json) are fetched."""
    local = _local(path_or_id, mirror)
    if local is not None:
        return local
    from .modelscope import snapshot_download

    model_id = str(path_or_id)
    out = converted_cache_path(model_id, revision, cache_dir)
    if _cached_manifest(out, model_id, revision) is not None:
        return out  # the converted folder carries the tokenizer files
    return snapshot_download(model_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                             allow_patterns=[*TOKENIZER_FILES, CONFIG_FILES[0]], progress=progress)
