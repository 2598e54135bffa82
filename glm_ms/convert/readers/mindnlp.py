"""MindNLP folders of MindSpore checkpoints: `mindspore.ckpt.index.json` + `mindspore-0000k-of-0000n.ckpt`, or one
`mindspore.ckpt`. Read as they are, MindSpore's `gamma`/`beta`/`embedding_table` names mapped to upstream ones;
only this layout needs MindSpore to read (its protobuf `.ckpt` format)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import CheckpointError
from ..names import mindspore_to_upstream
from .layout import read_weight_map, require_shards, source_file

INDEX = "mindspore.ckpt.index.json"
SINGLE = "mindspore.ckpt"
SHARD_GLOB = "mindspore-*-of-*.ckpt"


def is_mindnlp(folder: Path) -> bool:
    """True for a folder holding MindSpore `.ckpt` weights as MindNLP saves them."""
    return (folder / INDEX).is_file() or (folder / SINGLE).is_file() or any(folder.glob(SHARD_GLOB))


def _shards(folder: Path) -> tuple[list[str], dict[str, str] | None]:
    if source_file(folder, INDEX).is_file():
        weight_map = read_weight_map(folder / INDEX)
        shards = sorted(set(weight_map.values()))
        require_shards(folder, shards, INDEX)
        return shards, weight_map
    if source_file(folder, SINGLE).is_file():
        return [SINGLE], None
    shards = sorted(p.name for p in folder.glob(SHARD_GLOB))
    require_shards(folder, shards, "the folder")  # confines every shard to the folder
    return shards, None


def iter_mindnlp(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(upstream name, array) of a MindNLP folder, one shard in memory at a time; the layout is checked now."""
    shards, weight_map = _shards(folder)

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        import mindspore as ms

        for shard in shards:
            try:
                params = ms.load_checkpoint(str(folder / shard))
            except Exception as exc:  # MindSpore raises ValueError/RuntimeError for a bad file
                raise CheckpointError(f"{folder / shard}: cannot read MindSpore checkpoint "
                                      f"({type(exc).__name__}: {exc})") from exc
            if weight_map is not None:
                listed = [n for n, s in weight_map.items() if s == shard]
                missing = [n for n in listed if n not in params]
                extra = [n for n in params if weight_map.get(n) != shard]
                if missing or extra:
                    raise CheckpointError(f"{folder / shard}: does not match {INDEX} "
                                          f"(missing {missing[:5]}, not listed {extra[:5]})")
            for name in list(params):
                yield mindspore_to_upstream(name), params.pop(name).asnumpy()  # pop: one copy of a shard at a time
    return tensors()
