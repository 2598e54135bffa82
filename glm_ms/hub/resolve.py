"""What a user passes to `from_pretrained` (a folder or a model id) → a local folder to load."""
from __future__ import annotations

from pathlib import Path

from ..convert.hub import resolve_model_folder, resolve_tokenizer_folder
from ..convert.readers import WeightSource, open_weights

__all__ = ["resolve_model", "resolve_tokenizer_folder"]


def resolve_model(path_or_id, *, mirror: str | None = None, revision: str = "master", cache_dir=None,
                  endpoint: str | None = None, progress: bool = True) -> WeightSource:
    """The weights of a local folder, or of a model id downloaded and converted once into the cache."""
    folder = resolve_model_folder(path_or_id, mirror=mirror, revision=revision, cache_dir=cache_dir,
                                  endpoint=endpoint, progress=progress)
    return open_weights(Path(folder))
