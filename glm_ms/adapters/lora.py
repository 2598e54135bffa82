"""peft LoRA adapters: `adapter_config.json` + `adapter_model.{safetensors,bin}`, merged into the base weights.

peft stores `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r] for each target
module; the merged weight is W' = W + (lora_alpha / r) · B·A (alpha / √r with `use_rslora`). The merge happens on
the checkpoint tensors as they are read, in the upstream layout, in float32 (the loader then casts to the compute
dtype and, when asked, quantizes), so a float16 base loses nothing to the adapter. No MindSpore here.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..convert.readers.layout import read_json_object, source_file
from ..errors import CheckpointError, ConfigError, UnknownTensorError, WeightError

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # safetensors first: no pickle at all
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_UNSUPPORTED = {"use_dora": "DoRA", "rank_pattern": "per-module ranks (rank_pattern)",
                "alpha_pattern": "per-module alphas (alpha_pattern)", "modules_to_save": "modules_to_save",
                "layers_to_transform": "layers_to_transform", "fan_in_fan_out": "fan_in_fan_out"}
MAX_RANK = 1 << 16


@dataclass(frozen=True)
class LoraConfig:
    """The fields of peft's adapter_config.json that decide the merge."""
    r: int                               # rank: A is [r, in], B is [out, r]
    lora_alpha: float                    # scaling = lora_alpha / r
    target_modules: tuple[str, ...] | str  # module names (suffix match) or one regex (full match), as peft
    base_model_name_or_path: str | None  # what the adapter was trained on (a mismatch is only a warning)
    use_rslora: bool = False             # scaling = lora_alpha / sqrt(r)

    @property
    def scaling(self) -> float:
        """The factor of B·A in the merged weight."""
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def targets(self, module: str) -> bool:
        """Whether peft applies this adapter to `module` (a dotted module path)."""
        if isinstance(self.target_modules, str):
            return re.fullmatch(self.target_modules, module) is not None
        return any(module == t or module.endswith("." + t) for t in self.target_modules)


@dataclass(frozen=True)
class LoraPair:
    """One adapted module: its upstream path and the two low-rank factors (float32)."""
    module: str      # e.g. transformer.layers.0.attention.query_key_value
    a: np.ndarray    # [r, in]
    b: np.ndarray    # [out, r]
    a_name: str      # the adapter's tensor names, for errors
    b_name: str

    def delta(self, scaling: float) -> np.ndarray:
        """scaling · B·A [out, in], float32."""
        return (self.b @ self.a) * np.float32(scaling)


@dataclass(frozen=True)
class LoraAdapter:
    """A peft LoRA adapter folder, read and checked on its own (`check_against` checks it against a base)."""
    path: Path
    config: LoraConfig
    weights_file: Path
    pairs: dict[str, LoraPair]  # module path → factors

    kind = "lora"

    @property
    def base_name(self) -> str | None:
        """The base model the adapter names (peft's base_model_name_or_path)."""
        return self.config.base_model_name_or_path

    def check_against(self, family: Any, config: Any) -> None:
        """Raise unless every target module and factor fits this family's weights of `config`'s sizes."""
        table = family.load("names")
        shapes = table.expected_shapes(config)
        linear = sorted(_linear_modules(shapes, table))
        leaves = sorted({m.rpartition(".")[2] for m in linear})
        if isinstance(self.config.target_modules, str):
            if not any(self.config.targets(m) for m in linear):
                raise ConfigError(f"{self.path / CONFIG_FILE}: target_modules {self.config.target_modules!r} "
                                  f"matches no linear layer of {family.title} ({', '.join(leaves)})")
        else:
            unknown = [t for t in self.config.target_modules
                       if not any(m == t or m.endswith("." + t) for m in linear)]
            if unknown:
                raise ConfigError(f"{self.path / CONFIG_FILE}: target_modules {unknown[0]!r} is not a linear layer "
                                  f"of {family.title} (its layers: {', '.join(leaves)})")
        for pair in self.pairs.values():
            weight = pair.module + ".weight"
            if pair.module not in linear:
                others = _families_knowing(weight, family)
                hint = f" (an adapter for {' or '.join(others)}?)" if others else ""
                raise WeightError(f"{self.weights_file}: tensor {pair.a_name!r} adapts {pair.module!r}, which "
                                  f"{family.title} does not have{hint}")
            out, inp = shapes[weight]
            if pair.a.shape[1] != inp or pair.b.shape[0] != out:
                raise WeightError(f"{self.weights_file}: tensors {pair.a_name!r} {list(pair.a.shape)} and "
                                  f"{pair.b_name!r} {list(pair.b.shape)} do not fit {weight!r} {[out, inp]} "
                                  f"(need [r, {inp}] and [{out}, r])")

    def merge_one(self, name: str, array: np.ndarray, source: str) -> np.ndarray:
        """Checkpoint tensor `name` with its adapter merged (float32), or `array` itself if it is not adapted."""
        pair = self.pairs.get(name[:-len(".weight")]) if name.endswith(".weight") else None
        if pair is None:
            return array
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightError(f"{source}: tensor {name!r} is {array.dtype} (a quantized checkpoint): a LoRA adapter "
                              "cannot be merged into it; load the float16 checkpoint with quantize= instead (the "
                              "adapter is merged first, then quantized)")
        if tuple(array.shape) != (pair.b.shape[0], pair.a.shape[1]):
            raise WeightError(f"{source}: tensor {name!r} has shape {list(array.shape)}; the adapter's "
                              f"{pair.a_name!r} and {pair.b_name!r} need {[pair.b.shape[0], pair.a.shape[1]]}")
        return array.astype(np.float32) + pair.delta(self.config.scaling)

    def merged(self, tensors: Iterable[tuple[str, np.ndarray]], source: str) -> Iterator[tuple[str, np.ndarray]]:
        """The checkpoint's (name, array) pairs with every adapted weight merged (float32); the others as they are."""
        seen = set()
        for name, array in tensors:
            merged = self.merge_one(name, array, source)
            if merged is not array:
                seen.add(name[:-len(".weight")])
            yield name, merged
        unused = sorted(set(self.pairs) - seen)
        if unused:
            raise WeightError(f"{source}: has no weight {unused[0] + '.weight'!r} for the adapter tensor "
                              f"{self.pairs[unused[0]].a_name!r} ({self.weights_file})")


def _linear_modules(shapes: dict[str, tuple[int, ...]], table: Any) -> set[str]:
    """Module paths of the matrices LoRA may adapt: 2-D weights that are neither embeddings nor tied copies."""
    tied = set(table.tied) | set(table.tied.values())
    return {name[:-len(".weight")] for name, shape in shapes.items()
            if name.endswith(".weight") and len(shape) == 2 and "embedding" not in name and name not in tied}


def _families_knowing(weight: str, family: Any) -> list[str]:
    """Titles of the other families whose name table has `weight` (to say which model an adapter was made for)."""
    from ..families import FAMILIES
    titles = []
    for other in FAMILIES.values():
        if other.names == family.names:
            continue
        try:
            other.load("names").map_name(weight)
        except UnknownTensorError:
            continue
        titles.append(other.title)
    return titles


def is_lora(folder: Path) -> bool:
    """True when `folder` holds a peft adapter_config.json."""
    return (folder / CONFIG_FILE).is_file()


def _lora_config(path: Path) -> LoraConfig:
    data = read_json_object(path, "peft adapter config", ConfigError)
    if str(data.get("peft_type", "LORA")).upper() != "LORA":
        raise ConfigError(f"{path}: peft_type {data.get('peft_type')!r} is not supported (only LORA)")
    for key, what in _UNSUPPORTED.items():
        if data.get(key):
            raise ConfigError(f"{path}: {key} = {data[key]!r}: {what} is not supported")
    if data.get("bias", "none") != "none":
        raise ConfigError(f"{path}: bias = {data['bias']!r}: trained biases are not supported (only 'none')")
    r, alpha, targets = data.get("r"), data.get("lora_alpha"), data.get("target_modules")
    if not (isinstance(r, int) and not isinstance(r, bool) and 0 < r <= MAX_RANK):
        raise ConfigError(f"{path}: r must be an integer in [1, {MAX_RANK}], got {r!r}")
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)):
        raise ConfigError(f"{path}: lora_alpha must be a number, got {alpha!r}")
    if isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets):
        targets = tuple(targets)
    elif not (isinstance(targets, str) and targets):
        raise ConfigError(f"{path}: target_modules must be a list of module names or a regex, got {targets!r}")
    base = data.get("base_model_name_or_path")
    return LoraConfig(r=r, lora_alpha=float(alpha), target_modules=targets,
                      base_model_name_or_path=base if isinstance(base, str) else None,
                      use_rslora=bool(data.get("use_rslora", False)))


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        path = source_file(folder, name)
        if path.is_file():
            return path
    raise CheckpointError(f"{folder}: no adapter weights (looked for {', '.join(WEIGHT_FILES)})")


def _read_pairs(path: Path, config: LoraConfig) -> dict[str, LoraPair]:
    """module → LoraPair from the weights file, every key understood and every factor of rank r."""
    from ..convert.readers.safetensors import safetensors_tensors
    from ..convert.readers.torch_zip import torch_tensors

    factors: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    with contextlib.ExitStack() as stack:
        reader = safetensors_tensors if path.suffix == ".safetensors" else torch_tensors
        for lazy in reader(path, stack):
            match = _KEY.match(lazy.name)
            if match is None:
                raise UnknownTensorError(f"{path}: unexpected tensor {lazy.name!r}: not a LoRA factor "
                                         "(base_model.model.<module>.lora_A.weight / .lora_B.weight)")
            want = (config.r, None) if match["part"] == "A" else (None, config.r)
            if len(lazy.shape) != 2 or any(w is not None and s != w for s, w in zip(lazy.shape, want)):
                raise WeightError(f"{path}: tensor {lazy.name!r} has shape {list(lazy.shape)}; lora_{match['part']} "
                                  f"of rank r = {config.r} is {'[r, in]' if match['part'] == 'A' else '[out, r]'}")
            if not np.issubdtype(lazy.dtype, np.floating):
                raise WeightError(f"{path}: tensor {lazy.name!r} is {lazy.dtype}, not floating point")
            part = factors.setdefault(match["module"], {})
            if match["part"] in part:
                raise WeightError(f"{path}: tensor {lazy.name!r} repeats {part[match['part']][0]!r}")
            part[match["part"]] = (lazy.name, lazy.load().astype(np.float32))
    pairs = {}
    for module, part in factors.items():
        if set(part) != {"A", "B"}:
            have = next(iter(part.values()))[0]
            raise WeightError(f"{path}: tensor {have!r} has no lora_{'B' if 'A' in part else 'A'} partner")
        pairs[module] = LoraPair(module, part["A"][1], part["B"][1], part["A"][0], part["B"][0])
    if not pairs:
        raise WeightError(f"{path}: holds no LoRA factors")
    return pairs


def read_lora(folder: Path) -> LoraAdapter:
    """The LoRA adapter in `folder` (adapter_config.json and its weights), checked on its own."""
    config = _lora_config(source_file(folder, CONFIG_FILE))
    path = _weights_file(folder)
    return LoraAdapter(folder, config, path, _read_pairs(path, config))
