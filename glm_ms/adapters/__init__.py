"""Fine-tuned models: peft LoRA adapters and P-tuning v2 prefixes, read without torch and without running pickle.

`read_adapter(folder)` tells the two apart by what the folder holds — a peft `adapter_config.json` (LoRA, see
`lora.py`) or a `config.json` with `pre_seq_len` (P-tuning v2, see `ptuning.py`) — and returns a typed record the
model applies: a LoRA is merged into the weights as they load, a prefix fills the first cache slots of every row.
`resolve_adapter` turns a model id with `mirror="modelscope"` into a downloaded folder. No MindSpore here.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

from ..errors import CheckpointError, NotFoundError
from .lora import LoraAdapter, LoraConfig, LoraPair, is_lora, read_lora
from .ptuning import PrefixAdapter, PrefixCache, is_ptuning, prefix_from_tensors, prefix_settings, read_ptuning

__all__ = ["Adapter", "LoraAdapter", "LoraConfig", "LoraPair", "PrefixAdapter", "PrefixCache", "adapter_kind",
           "read_adapter", "resolve_adapter", "warn_if_other_base", "prefix_from_tensors", "prefix_settings"]

logger = logging.getLogger(__name__)

Adapter = Union[LoraAdapter, PrefixAdapter]


def adapter_kind(folder: os.PathLike | str) -> str | None:
    """"lora" (peft adapter_config.json), "ptuning" (config.json with pre_seq_len) or None for `folder`."""
    folder = Path(folder)
    if is_lora(folder):
        return "lora"
    return "ptuning" if is_ptuning(folder) else None


def read_adapter(folder: os.PathLike | str) -> Adapter:
    """The LoRA adapter or P-tuning v2 prefix in `folder`, read and checked on its own."""
    folder = Path(os.fspath(folder)).expanduser()
    if not folder.is_dir():
        raise NotFoundError(f"adapter {str(folder)!r} is not a local folder (for a model id pass mirror='modelscope')")
    kind = adapter_kind(folder)
    if kind == "lora":
        return read_lora(folder)
    if kind == "ptuning":
        return read_ptuning(folder)
    raise CheckpointError(f"{folder}: neither a LoRA adapter (peft adapter_config.json + adapter_model.bin or "
                          ".safetensors) nor a P-tuning v2 checkpoint (config.json with pre_seq_len + "
                          "pytorch_model.bin of transformer.prefix_encoder.*)")


def resolve_adapter(path_or_id: os.PathLike | str | Adapter, *, mirror: str | None = None, revision: str = "master",
                    cache_dir: os.PathLike | str | None = None, endpoint: str | None = None,
                    progress: bool = True) -> Adapter:
    """An adapter from a local folder, or from a model id downloaded (verified, cached) from `mirror`."""
    if isinstance(path_or_id, (LoraAdapter, PrefixAdapter)):
        return path_or_id
    path = Path(os.fspath(path_or_id)).expanduser()
    if path.is_dir() or mirror is None:
        return read_adapter(path)
    from ..hub.resolve import MIRRORS
    from ..hub.modelscope import InvalidArgumentError, snapshot_download
    if mirror not in MIRRORS:
        raise InvalidArgumentError(f"unsupported mirror {mirror!r}: supported: {', '.join(MIRRORS)}")
    return read_adapter(snapshot_download(str(path_or_id), revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                                          progress=progress))


def _short(name: str) -> str:
    return Path(str(name).rstrip("/\\")).name.lower()


def warn_if_other_base(adapter: Adapter, base: str | None) -> None:
    """Log a warning when the adapter names a base model other than `base` (compared by their last path part)."""
    named = adapter.base_name
    if not named or not base:
        return
    mine, theirs = _short(named), _short(base)
    if mine and theirs and mine not in theirs and theirs not in mine:
        logger.warning("%s was trained on %r, but is being applied to %r", adapter.path, named, base)

