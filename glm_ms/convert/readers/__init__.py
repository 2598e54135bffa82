"""Every way glm_ms reads weights: `open_weights(folder)` for a converted, MindNLP or upstream folder.

* a glm_ms-converted folder (`glm_ms_manifest.json`): MindSpore safetensors, parameter names already;
* a MindNLP folder of MindSpore checkpoints: read as it is, MindSpore's parameter names mapped to upstream ones;
* an upstream folder (torch `.bin` or safetensors shards): read in place, one tensor at a time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["WeightSource", "open_weights", "folder_kind"]


def folder_kind(folder: os.PathLike | str) -> str:
    """"converted" (glm_ms), "mindnlp" (MindSpore .ckpt shards) or "upstream" (torch/safetensors shards)."""
    from ..converted import is_converted
    from .mindnlp import is_mindnlp

    folder = Path(folder)
    if is_converted(folder):
        return "converted"
    return "mindnlp" if is_mindnlp(folder) else "upstream"


@dataclass(frozen=True)
class WeightSource:
    """A local folder of weights: its kind and (converted folders) its manifest, read once."""

    path: Path
    kind: str  # "converted" (glm_ms) | "mindnlp" (MindSpore .ckpt) | "upstream" (torch/safetensors shards)
    manifest: dict[str, Any] | None = None

    @property
    def names_are_parameters(self) -> bool:
        """True when tensor names are already model parameter names (converted folders)."""
        return self.kind == "converted"

    def tensors(self, skip_equal_tied: bool = False) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) pairs, lazily, in the order that fills tied parameters as upstream does.

        Converted folders give parameter names, the others upstream checkpoint names (the model maps them with
        its family's name table). The layout (index, shards present) is checked when this is called.
        `skip_equal_tied`: a converted folder leaves out the tied copies its manifest records as equal.
        """
        if self.kind == "converted":
            from ..converted import iter_converted
            return iter_converted(self.path, self.manifest, skip_equal_tied)
        if self.kind == "mindnlp":
            from .mindnlp import iter_mindnlp
            return iter_mindnlp(self.path)
        from .layout import iter_checkpoint
        return iter_checkpoint(self.path)


def open_weights(path: os.PathLike | str, manifest: dict[str, Any] | None = None) -> WeightSource:
    """The WeightSource of `path`; a converted folder's manifest is read (and checked) now unless given."""
    from ..converted import read_manifest

    path = Path(path)
    kind = folder_kind(path)
    if kind == "converted" and manifest is None:
        manifest = read_manifest(path)
    return WeightSource(path, kind, manifest)
