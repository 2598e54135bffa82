"""`glm-ms-convert --adapter`: a converted folder with the LoRA merged, or with the prefix stored next to the weights.

The converter's plan carries the adapter: a LoRA is merged into each weight as its shard is converted (before
any quantization); a P-tuning v2 prefix encoder is written as one more shard under its upstream names
(`transformer.prefix_encoder.*`, float32) and `pre_seq_len` / `prefix_projection` go into the output's
config.json, so the folder loads with its prefix and no `adapter=`. The adapter's files join the conversion's
fingerprint: another adapter (or none) is another conversion. No MindSpore here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .. import families
from ..convert.readers.layout import find_checkpoint
from ..errors import ConversionError
from .lora import CONFIG_FILE, LoraAdapter
from .ptuning import PREFIX

PREFIX_SHARD = "prefix_encoder.safetensors"


def _files(adapter: Any) -> list[Path]:
    if isinstance(adapter, LoraAdapter):
        return [adapter.path / CONFIG_FILE, adapter.weights_file]
    ckpt = find_checkpoint(adapter.path)
    return [adapter.path / "config.json", *(adapter.path / s for s in ckpt.shards)]


def with_adapter(plan: Any, adapter: Any) -> Any:
    """`plan` (a `convert.plan.Plan`) that also applies `adapter`, checked against the source's family and sizes."""
    if adapter is None:
        return plan
    family = families.get(plan.family)
    adapter.check_against(family, families.detect(plan.src, family=plan.family).config)
    stamps = {f"adapter:{p.name}": [p.stat().st_size, p.stat().st_mtime_ns] for p in _files(adapter)}
    fingerprint = {**plan.fingerprint, **stamps}
    if isinstance(adapter, LoraAdapter):
        if plan.stored is not None:
            raise ConversionError(f"{plan.src}: is quantized (int{plan.stored.bits}); a LoRA adapter cannot be merged "
                                  "into int weights: convert the float16 checkpoint with --adapter and --quantize")
        return dataclasses.replace(plan, lora=adapter, fingerprint=fingerprint)
    shapes = {PREFIX + name: tuple(array.shape) for name, array in adapter.tensors.items()}
    return dataclasses.replace(plan, prefix=adapter, fingerprint=fingerprint,
                               output_shapes={**plan.output_shapes, **shapes})


def prefix_record(plan: Any, work: Path) -> dict[str, Any]:
    """Write the plan's prefix encoder (float32) as one more shard of `work`; its record, as a weight shard's."""
    from ..convert.converted import FORMAT
    from ..convert.writer import write_safetensors
    tensors = sorted((PREFIX + name, array) for name, array in plan.prefix.tensors.items())
    entries = [(name, tuple(array.shape), array.dtype, lambda array=array: array) for name, array in tensors]
    size, sha = write_safetensors(work / PREFIX_SHARD, entries, metadata={"glm_ms": FORMAT})
    return {"file": PREFIX_SHARD, "size": size, "sha256": sha, "tensors": [[name, name] for name, _ in tensors],
            "dtypes": {name: array.dtype.name for name, array in tensors}, "dropped": [], "digests": {}}
