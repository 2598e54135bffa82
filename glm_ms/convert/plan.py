"""What a conversion will do, decided before a byte is written: the source's family, config, tensors and their
shapes, the files it reads, and (weight-only quantization) which weights are kept int8 or quantized on the way.

Everything checkable is checked here: the family and config (sizes bounded), every shard present, every tensor
name of the index known to the family's name table, the config's number of layers held by the checkpoint,
then every parameter the config implies given exactly once -- otherwise "missing / unexpected tensors" listing
them. Shapes are checked as each shard is opened (`driver`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from .. import families
from ..config import read_config_json
from ..errors import CheckpointError, ConversionError, UnknownTensorError
from .converted import COPIED_FILES, listing
from .names import SCALE, NameTable, Quantization, Shapes, requested_quantization
from .readers.layout import CheckpointFolder, find_checkpoint, open_shard, source_file

# Output dtype: None keeps each tensor's source dtype (bfloat16 arrives widened to float32).
DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32), "keep": None, None: None}
# Copied files that do not shape the weights: when only these changed, a re-run re-copies them.
SIDE_FILES = tuple(name for name in COPIED_FILES if name != "config.json")

Fingerprint = dict[str, list[int]]  # file name → [size, mtime_ns]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything known about a source before a byte is written."""

    src: Path
    ckpt: CheckpointFolder
    family: str  # recorded in the manifest
    table: NameTable
    expected: Shapes  # every parameter the source holds, as its config (and quantization) implies
    copied: tuple[str, ...]  # COPIED_FILES present in the source
    fingerprint: Fingerprint  # every source file the conversion reads
    stored: Quantization | None = None  # how the source is quantized (config.json), if it is
    output: Quantization | None = None  # how the output is: `stored`, or what the conversion quantizes to
    output_shapes: Shapes = dataclasses.field(default_factory=dict)  # every parameter the output holds
    quantizes: frozenset[str] = frozenset()  # float `…weight`s of the source that the conversion quantizes
    kept_as_stored: frozenset[str] = frozenset()  # int8 weights and float16 scales written as they are

    @property
    def weights_fingerprint(self) -> Fingerprint:
        """The part of the fingerprint the converted shards depend on (what a resume must match)."""
        return weights_part(self.fingerprint)


def weights_part(files: dict[str, Any]) -> dict[str, Any]:
    """The entries of a fingerprint that shape the weights (shards, index, config.json)."""
    return {name: value for name, value in files.items() if name not in SIDE_FILES}


def missing_unexpected(source: str, missing: list[str], unexpected: list[str]) -> ConversionError:
    """The error naming missing and unexpected tensors."""
    parts = []
    if missing:
        parts.append(f"missing tensors ({len(missing)}): {listing(sorted(missing))}")
    if unexpected:
        parts.append(f"unexpected tensors ({len(unexpected)}): {listing(unexpected)}")
    return ConversionError(f"{source}: " + "; ".join(parts))


def _check_names(src: Path, table: NameTable, config: Any, names: list[str], stored: Quantization | None) -> Shapes:
    """Every name known, the config's layers held by the checkpoint, every parameter given once: the shapes."""
    unknown, unexpected, targets = [], [], {}
    for name in names:
        try:
            target = table.map_name(name)
        except UnknownTensorError:
            unknown.append(name)
            continue
        if target in targets:
            unexpected.append(f"{name} (→ {target}, already given by {targets[target]})")
        elif target is not None:
            targets[target] = name
    if unknown:
        raise ConversionError(f"{src}: tensors not in the {table.name} name table ({len(unknown)}): "
                              f"{listing(unknown)}")
    # Before any table is built from the config: a config.json asking for more layers than the checkpoint holds
    # is refused here, however many it asks for.
    layers = {table.layer_of(name) for name in names} - {None}
    held = max(layers) + 1 if layers else 0
    if config.num_layers > held:
        raise ConversionError(f"{src}: config.json has num_layers = {config.num_layers}, but the checkpoint "
                              f"holds {held} layer(s)")
    expected = {k: tuple(v) for k, v in table.expected_shapes(config, stored).items()}
    unexpected += [name for target, name in targets.items() if target not in expected]
    missing = sorted(set(expected) - set(targets))
    if missing or unexpected:
        raise missing_unexpected(str(src), missing, unexpected)
    return expected


def _tensor_names(ckpt: CheckpointFolder) -> list[str]:
    """The names the checkpoint holds: its index, or (single file) the file's own header."""
    if ckpt.weight_map is not None:
        return list(ckpt.weight_map)
    with open_shard(ckpt, ckpt.shards[0]) as lazy:
        return [t.name for t in lazy]


def fingerprint(folder: Path, names: list[str]) -> Fingerprint:
    """{file: [size, mtime_ns]} of the source files a conversion reads: what a re-run and a resume trust."""
    out = {}
    for name in names:
        st = source_file(folder, name).stat()
        out[name] = [st.st_size, st.st_mtime_ns]
    return out


def plan_conversion(src: Path, family: str | None = None, quantize: int | None = None,
                    quantize_embeddings: bool = False) -> Plan:
    """Check the source folder as far as it can be without writing: see the module docstring."""
    if not source_file(src, "config.json").is_file():
        raise ConversionError(f"{src}: no config.json (is this a model folder?)")
    detected = families.detect(src, family=family)
    config_path, data = read_config_json(src)
    stored = Quantization.from_config(data, source=str(config_path))
    output = requested_quantization(stored, quantize, quantize_embeddings)
    table = detected.family.load("names")
    try:
        ckpt = find_checkpoint(src)
    except ConversionError:
        raise
    except CheckpointError as exc:  # a source folder that cannot be converted, reported as such
        raise ConversionError(str(exc)) from exc
    expected = _check_names(src, table, detected.config, _tensor_names(ckpt), stored)
    copied = tuple(name for name in COPIED_FILES if source_file(src, name).is_file())
    read = [*ckpt.shards, *([ckpt.index] if ckpt.index else []), *copied]
    n = detected.config.num_layers
    already = set(table.quantized_modules(n, stored))
    return Plan(src, ckpt, detected.family.name, table, expected, copied, fingerprint(src, list(dict.fromkeys(read))),
                stored=stored, output=output, output_shapes=table.expected_shapes(detected.config, output),
                quantizes=frozenset(f"{m}.weight" for m in table.quantized_modules(n, output) if m not in already),
                kept_as_stored=frozenset(f"{m}.{part}" for m in already for part in ("weight", SCALE)))


def output_config(plan: Plan) -> dict[str, Any] | None:
    """The output's config.json when the conversion quantizes (the source's plus the quantization keys)."""
    if plan.output == plan.stored:
        return None
    _, data = read_config_json(plan.src)
    return dict(data, **plan.output.config_entries())


def output_dtype_name(dtype: str | None) -> str:
    """The manifest's name of an output dtype ("keep" for None)."""
    if dtype not in DTYPES:
        raise ConversionError(f"unknown dtype {dtype!r}: use 'float16', 'float32' or 'keep'")
    return "keep" if DTYPES[dtype] is None else dtype
