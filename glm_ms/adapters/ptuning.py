"""P-tuning v2 prefixes: `config.json` (the base's plus `pre_seq_len`, `prefix_projection`) + the prefix encoder.

Upstream's prefix encoder maps `arange(pre_seq_len)` to [pre, 2·layers·kv_width]: an embedding, or with
`prefix_projection` embedding → Linear → tanh → Linear. Viewed as [pre, 2·layers, kv_heads, head_dim], index 2l is
layer l's key and 2l + 1 its value (no rotary on them; dropout is off at inference). glm_ms computes that once,
in float32, and the model writes it into the first `pre` cache slots of every row. No MindSpore here.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import read_config_json
from ..errors import ConfigError, UnknownTensorError, WeightError

PREFIX = "transformer.prefix_encoder."
PROJECTED = ("embedding.weight", "trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias")
MAX_PREFIX = 1 << 16


@dataclass(frozen=True)
class PrefixCache:
    """What the prefix puts in every layer's cache, float32: keys[l], values[l] [pre, kv_heads, head_dim]."""
    keys: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]

    @property
    def length(self) -> int:
        """pre_seq_len: cache slots the prefix takes in front of every row."""
        return int(self.keys[0].shape[0])


@dataclass(frozen=True)
class PrefixAdapter:
    """A P-tuning v2 prefix encoder: its tensors (names without `transformer.prefix_encoder.`) and settings."""
    path: Path
    pre_seq_len: int
    prefix_projection: bool
    tensors: dict[str, np.ndarray]  # "embedding.weight" (and "trans.{0,2}.{weight,bias}" with projection), float32
    config: dict                    # the checkpoint's config.json
    base_name: str | None = None    # config.json `_name_or_path`: the base it was trained on

    kind = "ptuning"

    def check_against(self, family: Any, config: Any) -> None:
        """Raise unless the prefix was trained for this family and these sizes."""
        from ..families import family_of
        mine = family_of(self.config, self.path, source=str(self.path / "config.json"))
        if mine.config != family.config:
            raise ConfigError(f"{self.path}: a P-tuning checkpoint for {mine.title}, but the base model is "
                              f"{family.title}")
        for name in ("hidden_size", "num_layers", "num_attention_heads", "multi_query_group_num", "kv_channels"):
            if name in self.config and getattr(config, name, self.config[name]) != self.config[name]:
                raise ConfigError(f"{self.path / 'config.json'}: {name} = {self.config[name]}, but the base model "
                                  f"has {getattr(config, name)}")
        self.cache(config)  # shape checks of every tensor

    def cache(self, config: Any) -> PrefixCache:
        """Run the prefix encoder (float32) for a model of `config`'s sizes: every layer's prefix keys/values."""
        layers, heads, head_dim = config.num_layers, _kv_heads(config), config.head_dim
        width = layers * 2 * heads * head_dim
        x = self.tensors["embedding.weight"]
        _expect(self, "embedding.weight", (self.pre_seq_len, None))
        if self.prefix_projection:
            hidden = _expect(self, "trans.0.weight", (None, x.shape[1]))[0]
            _expect(self, "trans.0.bias", (hidden,))
            _expect(self, "trans.2.weight", (width, hidden))
            _expect(self, "trans.2.bias", (width,))
            t = self.tensors
            x = np.tanh(x @ t["trans.0.weight"].T + t["trans.0.bias"]) @ t["trans.2.weight"].T + t["trans.2.bias"]
        elif x.shape[1] != width:
            raise WeightError(f"{self.path}: tensor {PREFIX}embedding.weight has shape {list(x.shape)}; the base "
                              f"model needs [{self.pre_seq_len}, {width}] (layers × 2 × {heads} heads × {head_dim})")
        kv = x.astype(np.float32).reshape(self.pre_seq_len, 2 * layers, heads, head_dim)
        return PrefixCache(tuple(np.ascontiguousarray(kv[:, 2 * i]) for i in range(layers)),
                           tuple(np.ascontiguousarray(kv[:, 2 * i + 1]) for i in range(layers)))


def _kv_heads(config: Any) -> int:
    return getattr(config, "num_kv_heads", config.num_attention_heads)


def _expect(adapter: PrefixAdapter, name: str, shape: tuple) -> tuple[int, ...]:
    have = adapter.tensors[name].shape
    if len(have) != len(shape) or any(want is not None and s != want for s, want in zip(have, shape)):
        wanted = ["*" if s is None else s for s in shape]
        raise WeightError(f"{adapter.path}: tensor {PREFIX}{name} has shape {list(have)}, expected {wanted}")
    return have


def prefix_settings(config: dict, source: str) -> tuple[int, bool] | None:
    """(pre_seq_len, prefix_projection) of a config.json dict, or None when it has no prefix."""
    pre = config.get("pre_seq_len")
    if pre is None or pre == 0:
        return None
    if not (isinstance(pre, int) and not isinstance(pre, bool) and 0 < pre <= MAX_PREFIX):
        raise ConfigError(f"{source}: pre_seq_len must be an integer in [1, {MAX_PREFIX}], got {pre!r}")
    projection = config.get("prefix_projection", False)
    if not isinstance(projection, bool):
        raise ConfigError(f"{source}: prefix_projection must be true or false, got {projection!r}")
    return pre, projection


def prefix_from_tensors(folder: Path, config: dict, tensors: Iterable[tuple[str, np.ndarray]]) -> PrefixAdapter:
    """The PrefixAdapter of `config`'s settings from (checkpoint name, array) pairs of the prefix encoder."""
    source = str(folder / "config.json")
    settings = prefix_settings(config, source)
    if settings is None:
        raise ConfigError(f"{source}: no pre_seq_len: not a P-tuning v2 checkpoint")
    pre, projection = settings
    wanted = PROJECTED if projection else PROJECTED[:1]
    found = {}
    for name, array in tensors:
        short = name[len(PREFIX):] if name.startswith(PREFIX) else None
        if short not in wanted:
            raise UnknownTensorError(f"{folder}: unexpected tensor {name!r} in a P-tuning v2 checkpoint "
                                     f"(prefix_projection {str(projection).lower()}: "
                                     f"{', '.join(PREFIX + w for w in wanted)})")
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightError(f"{folder}: tensor {name!r} is {array.dtype}, not floating point")
        found[short] = np.asarray(array, dtype=np.float32)
    missing = [PREFIX + w for w in wanted if w not in found]
    if missing:
        raise WeightError(f"{folder}: missing tensors: {', '.join(missing)}")
    base = config.get("_name_or_path")
    return PrefixAdapter(folder, pre, projection, found, config, base if isinstance(base, str) else None)


def is_ptuning(folder: Path) -> bool:
    """True when `folder`'s config.json sets a pre_seq_len."""
    if not (folder / "config.json").is_file():
        return False
    path, data = read_config_json(folder)
    return prefix_settings(data, str(path)) is not None


def read_ptuning(folder: Path) -> PrefixAdapter:
    """The prefix encoder of a P-tuning v2 checkpoint folder (read with the checkpoint readers, no pickle run)."""
    from ..convert.readers.layout import iter_checkpoint
    path, data = read_config_json(folder)
    return prefix_from_tensors(folder, data, iter_checkpoint(folder))
