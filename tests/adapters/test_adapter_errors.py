"""Bad adapters fail with one clear error naming the file, field or tensor; a base name mismatch only warns."""
import json
import logging
import shutil

import numpy as np
import pytest

from glm_ms import AutoModel
from glm_ms.adapters import read_adapter
from glm_ms.errors import CheckpointError, ConfigError, UnknownTensorError, WeightError
from tests.support import FIXTURES, adapted, rel_err, tiny
from tests.torchfile import save_torch_file

LORA, LORA3 = adapted("tiny-chatglm-6b-lora"), adapted("tiny-chatglm3-6b-lora")
PREFIX, PREFIX2 = adapted("tiny-chatglm-6b-ptuning"), adapted("tiny-chatglm2-6b-ptuning")


def _copy(case, tmp_path):
    return shutil.copytree(case.dir, tmp_path / case.name)


def _edit_json(path, **changes):
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _lora_tensors(case):
    adapter = read_adapter(case.dir)
    tensors = {}
    for pair in adapter.pairs.values():
        tensors[pair.a_name], tensors[pair.b_name] = pair.a, pair.b
    return tensors


def _load(base, adapter, **options):
    return AutoModel.from_pretrained(base.dir, dtype="float32", adapter=adapter, **options)


def test_unknown_target_module_is_an_error_naming_it(tmp_path):
    folder = _copy(LORA, tmp_path)
    _edit_json(folder / "adapter_config.json", target_modules=["query_key_value", "c_attn"])
    with pytest.raises(ConfigError, match="'c_attn'.*not a linear layer of ChatGLM-6B"):
        _load(LORA.base, folder)
    _edit_json(folder / "adapter_config.json", target_modules="nothing.*here")
    with pytest.raises(ConfigError, match="matches no linear layer"):
        _load(LORA.base, folder)


def test_a_factor_that_does_not_fit_the_weight_names_the_tensor(tmp_path):
    folder = _copy(LORA, tmp_path)
    tensors = _lora_tensors(LORA)
    name = sorted(n for n in tensors if n.endswith("lora_A.weight"))[0]
    tensors[name] = np.concatenate([tensors[name], tensors[name][:, :1]], axis=1)  # one input column too many
    save_torch_file(folder / "adapter_model.bin", tensors)
    with pytest.raises(WeightError, match=name.replace(".", r"\.")):
        _load(LORA.base, folder)


def test_an_adapter_for_another_family_is_an_error(tmp_path):
    with pytest.raises(WeightError, match=r"transformer\.encoder\.layers\.0\..*ChatGLM-6B does not have "
                                          r"\(an adapter for ChatGLM2-6B or ChatGLM3-6B\?\)"):
        _load(LORA.base, LORA3.dir)
    with pytest.raises(WeightError, match=r"transformer\.layers\.0\..*an adapter for ChatGLM-6B"):
        _load(LORA3.base, LORA.dir)
    with pytest.raises(ConfigError, match="P-tuning checkpoint for ChatGLM2-6B, but the base model is ChatGLM-6B"):
        _load(PREFIX.base, PREFIX2.dir)


def test_another_base_model_name_only_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="glm_ms.adapters"):
        _load(LORA.base, LORA.dir)
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]
    folder = _copy(LORA, tmp_path)
    _edit_json(folder / "adapter_config.json", base_model_name_or_path="THUDM/chatglm2-6b")
    with caplog.at_level(logging.WARNING, logger="glm_ms.adapters"):
        lm = _load(LORA.base, folder)
    assert any("trained on 'THUDM/chatglm2-6b'" in r.getMessage() for r in caplog.records)
    assert rel_err(lm(LORA.golden["fwd0_input_ids"]).logits.asnumpy(), LORA.golden["fwd0_logits"]) <= 1e-4


def test_lora_on_a_pre_quantized_checkpoint_is_an_error():
    with pytest.raises(WeightError, match=r"query_key_value\.weight' is int8 \(a quantized checkpoint\)"):
        AutoModel.from_pretrained(FIXTURES / "tiny-chatglm-6b-int8", dtype="float32", adapter=LORA.dir)


def test_unknown_or_unpaired_adapter_tensors_are_errors(tmp_path):
    folder = _copy(LORA, tmp_path)
    tensors = _lora_tensors(LORA)
    save_torch_file(folder / "adapter_model.bin", {**tensors, "base_model.model.lm_head.weight": np.zeros((2, 2))})
    with pytest.raises(UnknownTensorError, match="'base_model.model.lm_head.weight': not a LoRA factor"):
        read_adapter(folder)
    b_name = sorted(n for n in tensors if n.endswith("lora_B.weight"))[0]
    save_torch_file(folder / "adapter_model.bin", {n: t for n, t in tensors.items() if n != b_name})
    with pytest.raises(WeightError, match="has no lora_B partner"):
        read_adapter(folder)


def test_unsupported_peft_settings_are_errors(tmp_path):
    folder = _copy(LORA, tmp_path)
    for field, value, message in (("bias", "all", "trained biases"), ("fan_in_fan_out", True, "fan_in_fan_out"),
                                  ("r", 0, "r must be"), ("peft_type", "IA3", "only LORA")):
        shutil.copy(LORA.dir / "adapter_config.json", folder / "adapter_config.json")
        _edit_json(folder / "adapter_config.json", **{field: value})
        with pytest.raises(ConfigError, match=message):
            read_adapter(folder)


def test_a_safetensors_adapter_loads_like_the_bin(tmp_path):
    from safetensors.numpy import save_file
    folder = _copy(LORA, tmp_path)
    save_file(_lora_tensors(LORA), str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.bin").unlink()
    lm = _load(LORA.base, folder)
    assert rel_err(lm(LORA.golden["fwd0_input_ids"]).logits.asnumpy(), LORA.golden["fwd0_logits"]) <= 1e-4


def test_bad_prefix_checkpoints_are_errors(tmp_path):
    folder = _copy(PREFIX, tmp_path)
    tensors = dict(read_adapter(PREFIX.dir).tensors)
    save_torch_file(folder / "pytorch_model.bin", {"transformer.prefix_encoder.embedding.weight": tensors[
        "embedding.weight"], "transformer.layers.0.attention.dense.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(UnknownTensorError, match="'transformer.layers.0.attention.dense.weight' in a P-tuning"):
        read_adapter(folder)
    save_torch_file(folder / "pytorch_model.bin",
                    {"transformer.prefix_encoder.embedding.weight": tensors["embedding.weight"][:, :-1]})
    with pytest.raises(WeightError, match=r"prefix_encoder\.embedding\.weight has shape"):
        _load(PREFIX.base, folder)
    _edit_json(folder / "config.json", pre_seq_len=-1)
    with pytest.raises(ConfigError, match="pre_seq_len must be"):
        read_adapter(folder)


def test_a_folder_that_is_no_adapter_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither a LoRA adapter"):
        read_adapter(tiny("chatglm-6b").dir)
    with pytest.raises(FileNotFoundError):
        _load(LORA.base, tmp_path / "absent")


def test_float16_merges_in_float32_then_casts():
    lm = AutoModel.from_pretrained(LORA.base.dir, dtype="float16", adapter=LORA.dir)
    adapter = read_adapter(LORA.dir)
    pair = next(iter(adapter.pairs.values()))
    base = tiny("chatglm-6b").model.weight_parameters()[pair.module + ".weight"].asnumpy()  # float16 stored, exact
    want = (base.astype(np.float32) + pair.delta(adapter.config.scaling)).astype(np.float16)
    np.testing.assert_array_equal(lm.weight_parameters()[pair.module + ".weight"].asnumpy(), want)


def test_a_lora_folder_given_as_the_model_says_what_to_do():
    with pytest.raises(ConfigError, match="is a LoRA adapter, not a model: load its base model with adapter="):
        AutoModel.from_pretrained(LORA.dir)


def test_load_time_quantization_quantizes_the_merged_weights():
    ids = LORA.golden["fwd0_input_ids"]
    quantized = type(LORA.base.model).from_folder(LORA.base.dir, dtype="float32", quantize=8,
                                                  adapter=read_adapter(LORA.dir))
    merged_then_quantized = _load(LORA.base, LORA.dir).quantize(8)
    np.testing.assert_array_equal(quantized(ids).logits.asnumpy(), merged_then_quantized(ids).logits.asnumpy())


def test_lora_into_an_already_quantized_model_is_an_error():
    lm = AutoModel.from_pretrained(LORA.base.dir, dtype="float32").quantize(8)
    with pytest.raises(WeightError, match="cannot be merged into a quantized model"):
        lm.load_adapter(LORA.dir)
