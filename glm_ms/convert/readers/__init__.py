"""Every way glm_ms reads weights: `open_weights(folder)` for a converted, MindNLP or upstream folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class WeightSource:
    """A local folder of weights: its kind and (converted folders) its manifest, read once."""
    path: Path
    kind: str  # "converted" (glm_ms) | "mindnlp" (MindSpore .ckpt) | "upstream" (torch/safetensors shards)
    manifest: dict | None = None

    @property
    def names_are_parameters(self) -> bool:
        """True when tensor names are already model parameter names (converted folders)."""
        return self.kind == "converted"

    def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) pairs, lazily, in the order that fills tied parameters as upstream does."""
        from ..hub import folder_tensors
        return folder_tensors(self.path)[0]


def open_weights(path, manifest: dict | None = None) -> WeightSource:
    """The WeightSource of `path`; a converted folder's manifest is read (and checked) now unless given."""
    from ..convert import read_manifest
    from ..hub import folder_kind
    path = Path(path)
    kind = folder_kind(path)
    if kind == "converted" and manifest is None:
        manifest = read_manifest(path)
    return WeightSource(path, kind, manifest)
