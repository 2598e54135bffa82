"""Converted folders: layout and manifest, weights equal to the source in source order, golden parity, damage."""
import hashlib
import json
import os

import numpy as np
import pytest

from glm_ms.convert.converted import INDEX, MANIFEST, iter_converted, read_manifest, verify_converted
from glm_ms.convert.driver import WORK_SUFFIX, convert_checkpoint
from glm_ms.errors import ConversionError
from tests.convert.upstream import FIXTURE, OTHER_FILES, SHARDS, golden_check, read_torch_file, source_tensors


def test_converted_layout_and_manifest(converted):
    names = sorted(os.listdir(converted))
    assert names == sorted(OTHER_FILES + [INDEX, MANIFEST] +
                           [f"mindspore_model-{k:05d}-of-{len(SHARDS):05d}.safetensors" for k in (1, 2, 3)])
    assert not converted.with_name(converted.name + WORK_SUFFIX).exists()
    manifest = read_manifest(converted)
    assert manifest["dtype"] == "float16" and manifest["family"] == "chatglm-6b"
    assert manifest["glm_ms_version"] == __import__("glm_ms").__version__
    assert manifest["source"]["folder"] == str(FIXTURE) and manifest["source"]["format"] == "torch"
    # Every file the conversion read is fingerprinted: shards, index, config and the copied side files.
    assert set(manifest["source"]["files"]) == set(SHARDS + OTHER_FILES + ["pytorch_model.bin.index.json"])
    for name, rec in manifest["files"].items():
        data = (converted / name).read_bytes()
        assert len(data) == rec["size"] and hashlib.sha256(data).hexdigest() == rec["sha256"], name
    assert set(manifest["files"]) == set(names) - {MANIFEST}
    for name in OTHER_FILES:
        assert (converted / name).read_bytes() == (FIXTURE / name).read_bytes()
    assert manifest["dropped"] == [f"transformer.layers.{i}.attention.rotary_emb.inv_freq" for i in (0, 1)]
    assert manifest["tied"] == {"lm_head.weight": {"to": "transformer.word_embeddings.weight", "equal": False}}
    verify_converted(converted)


def test_weights_equal_the_source_in_source_order(converted):
    src = source_tensors()
    got = list(iter_converted(converted))
    # Source order (shard by shard, as the files list them): a loader fills tied parameters like upstream.
    order = [n for shard in SHARDS for n in read_torch_file(FIXTURE / shard) if "inv_freq" not in n]
    assert [n for n, _ in got] == order
    for name, array in got:
        assert array.dtype == np.float16 and np.array_equal(array, src[name]), name
    weight_map = json.loads((converted / INDEX).read_text())["weight_map"]
    assert list(weight_map) == order
    assert weight_map["lm_head.weight"] == f"mindspore_model-00003-of-{len(SHARDS):05d}.safetensors"


def test_converted_fixture_reproduces_golden(converted):
    from glm_ms.api import ChatGLMForConditionalGeneration

    model = ChatGLMForConditionalGeneration.from_pretrained(converted, dtype="float32")
    golden_check(model)


def test_reading_a_truncated_converted_folder_fails_clearly(tmp_path):
    out = convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    shard = out / "mindspore_model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="truncated or replaced"):
        list(iter_converted(out))
    with pytest.raises(ConversionError, match="differ from the manifest"):
        verify_converted(out)


def test_a_manifest_of_another_format_is_refused(tmp_path):
    out = convert_checkpoint(FIXTURE, tmp_path / "out", progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps(dict(manifest, format_version=99)))
    with pytest.raises(ConversionError, match="not a glm_ms conversion manifest of format version 1"):
        read_manifest(out)
