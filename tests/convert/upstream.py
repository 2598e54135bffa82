"""Helpers of the converter and hub tests: upstream folders built from the tiny ChatGLM-6B fixture, reading a
torch file whole through the real per-tensor reader, a writer that counts (and can crash), the golden check."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np

from glm_ms.convert import driver
from glm_ms.convert.readers.layout import iter_checkpoint
from glm_ms.convert.readers.torch_zip import torch_tensors
from tests.support import rel_err, tiny
from tests.torchfile import save_torch_file

FIXTURE = tiny("chatglm-6b").dir
INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_MAP = json.loads((FIXTURE / INDEX_NAME).read_text())["weight_map"]
SHARDS = sorted(set(WEIGHT_MAP.values()))
OTHER_FILES = ["config.json", "tokenizer_config.json", "ice_text.model", "generation_config.json"]


def read_torch_file(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one torch file, in file order, through the per-tensor reader the package uses."""
    with contextlib.ExitStack() as stack:
        return {t.name: t.load() for t in torch_tensors(Path(path), stack)}


def source_tensors(folder: Path = FIXTURE) -> dict[str, np.ndarray]:
    """Every tensor of an upstream folder, by name."""
    return dict(iter_checkpoint(folder))


def fixture_groups() -> list[list[str]]:
    """The fixture's tensor names, grouped by shard as its index groups them."""
    return [[n for n, s in WEIGHT_MAP.items() if s == shard] for shard in SHARDS]


def copy_fixture(dest: Path) -> Path:
    """A copy of the fixture's checkpoint and side files (not its goldens)."""
    dest.mkdir(parents=True)
    for name in SHARDS + OTHER_FILES + [INDEX_NAME]:
        shutil.copy2(FIXTURE / name, dest / name)
    return dest


def write_upstream(dest: Path, tensors: dict, groups: list[list[str]] | None = None,
                   config: dict | None = None) -> Path:
    """An upstream torch folder holding `tensors`, sharded by `groups` (lists of names; None: one file)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in OTHER_FILES:
        shutil.copy2(FIXTURE / name, dest / name)
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config))
    if groups is None:
        save_torch_file(dest / "pytorch_model.bin", tensors, archive_name="pytorch_model")
        return dest
    weight_map = {}
    for k, group in enumerate(groups, 1):
        shard = f"pytorch_model-{k:05d}-of-{len(groups):05d}.bin"
        save_torch_file(dest / shard, {n: tensors[n] for n in group}, archive_name=shard[:-4])
        weight_map.update({n: shard for n in group})
    (dest / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


class CountingWriter:
    """Stands in for the driver's write_safetensors: counts calls and can fail on the n-th one."""

    def __init__(self, fail_on: int | None = None, exc: BaseException = RuntimeError("simulated crash while writing")):
        self.calls, self.fail_on, self.exc, self.real = 0, fail_on, exc, driver.write_safetensors

    def __call__(self, path, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            Path(path).write_bytes(b"partial")  # as a crash half-way through the file would leave it
            raise self.exc
        return self.real(path, *args, **kwargs)


def golden_check(model, greedy=(0, 1, 2, 3)) -> None:
    """Forward logits of every golden prompt within 1e-4 x max|logit|; greedy ids exactly equal."""
    golden = tiny("chatglm-6b").golden
    prompts = sorted(int(k[3:-len("_input_ids")]) for k in golden if k.startswith("fwd") and k.endswith("_input_ids"))
    for i in prompts:
        out = model(golden[f"fwd{i}_input_ids"]).logits.asnumpy()
        assert out.shape == golden[f"fwd{i}_logits"].shape
        assert rel_err(out, golden[f"fwd{i}_logits"]) <= 1e-4, f"fwd{i}"
    for i in greedy:
        ids = golden[f"fwd{i}_input_ids"]
        out = np.asarray(model.generate(ids, max_length=ids.shape[1] + 24, do_sample=False))
        np.testing.assert_array_equal(out, golden[f"greedy{i}_output_ids"], err_msg=f"greedy{i}")
