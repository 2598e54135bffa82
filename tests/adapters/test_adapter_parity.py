"""Every adapter fixture applied to its base reproduces the upstream goldens (logits, greedy ids on both decode
paths, chat transcripts); P-tuning also its prefix cache, the cache after a prompt and the mask it applies."""
import numpy as np
import pytest
from mindspore import Tensor

from glm_ms.adapters import read_adapter
from glm_ms.decoding import graph_compilations
from tests.support import PREFIX_ADAPTERS, adapted, as_json, rel_err


def _prompt_indices(golden):
    return sorted(int(k[len("fwd"):-len("_logits")]) for k in golden if k.startswith("fwd") and k.endswith("_logits"))


def test_forward_logits_match_golden(adapter_case):
    golden = adapter_case.golden
    for i in _prompt_indices(golden):
        logits = adapter_case.model(golden[f"fwd{i}_input_ids"]).logits.asnumpy()
        assert rel_err(logits, golden[f"fwd{i}_logits"]) <= 1e-4, f"prompt {i}"


def test_greedy_ids_match_golden_compiled_and_eager(adapter_case):
    golden, lm = adapter_case.golden, adapter_case.model
    for i in _prompt_indices(golden):
        ids = golden[f"fwd{i}_input_ids"]
        # Every prompt compiled; the first also eagerly (per-op eager decoding is what costs time here).
        for compiled in (True, False) if i == 0 else (True,):
            out = lm.generate(ids, max_length=ids.shape[1] + 24, do_sample=False, compiled=compiled)
            np.testing.assert_array_equal(out, golden[f"greedy{i}_output_ids"], err_msg=f"prompt {i}, {compiled=}")


def test_chat_greedy_transcript(adapter_case):
    lm, tok = adapter_case.model, adapter_case.base.tokenizer
    history = []
    for turn in adapter_case.golden_json["chat_greedy"]:
        response, history = lm.chat(tok, turn["query"], history=history, max_length=turn["max_length"],
                                    do_sample=False)
        assert response == turn["response"]
        assert as_json(history) == turn["history"]


def test_a_second_compiled_run_compiles_nothing(adapter_case):
    golden, lm = adapter_case.golden, adapter_case.model
    ids = golden["fwd0_input_ids"]
    lm.generate(ids, max_new_tokens=4, do_sample=False, compiled=True)
    before = graph_compilations(lm)
    out = lm.generate(ids, max_new_tokens=4, do_sample=False, compiled=True)
    assert graph_compilations(lm) == before
    np.testing.assert_array_equal(out, golden["greedy0_output_ids"][:, :ids.shape[1] + 4])


# ----------------------------------------------------------------------------- P-tuning v2 only


@pytest.mark.parametrize("name", PREFIX_ADAPTERS)
def test_prefix_keys_and_values_match_golden(name):
    case = adapted(name)
    prefix = read_adapter(case.dir).cache(case.model.config)
    assert prefix.length == case.golden_json["pre_seq_len"]
    for layer, (key, value) in enumerate(zip(prefix.keys, prefix.values)):
        np.testing.assert_allclose(key, case.golden[f"prefix_past{layer}_key"][:, 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(value, case.golden[f"prefix_past{layer}_value"][:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PREFIX_ADAPTERS)
def test_cache_after_a_prompt_and_the_mask_applied_match_golden(name):
    case = adapted(name)
    lm, golden = case.model, case.golden
    ids = golden["fwd0_input_ids"]
    lm(ids)
    for layer, attention in enumerate(lm.attention_layers()):
        for part, held in zip(("key", "value"), attention.kv_cache.held(attention.kv_cache.capacity)):
            want = golden[f"fwd0_past{layer}_{part}"][:, 0].transpose(1, 0, 2)   # [heads, pre + seq, d]
            have = held.asnumpy()[0, :, :want.shape[1]]
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    mask, _ = lm.prefix_inputs(lm.check_ids(ids))
    applied, _ = lm.prefixed(Tensor(mask), Tensor(np.arange(ids.shape[1], dtype=np.int32)))
    np.testing.assert_array_equal(applied.asnumpy(), golden["fwd0_full_attention_mask"])


@pytest.mark.parametrize("name", PREFIX_ADAPTERS)
def test_a_padded_batch_with_a_prefix_equals_its_rows_alone(name):
    case = adapted(name)
    lm, tok = case.model, case.base.tokenizer
    prompts = case.golden_json["prompts"][:2]
    batch = tok(prompts, padding=True, return_tensors="np")
    out = lm.generate(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch},
                      max_new_tokens=8, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row, prompt in enumerate(prompts):
        alone = tok([prompt], return_tensors="np")["input_ids"]
        want = lm.generate(alone, max_new_tokens=8, do_sample=False)
        got = out[row, width:]
        np.testing.assert_array_equal(got[:want.shape[1] - alone.shape[1]], want[0, alone.shape[1]:])


@pytest.mark.parametrize("name", PREFIX_ADAPTERS)
def test_beam_search_with_a_prefix_is_the_same_eager_and_compiled(name):
    case = adapted(name)
    ids = case.golden["fwd0_input_ids"]
    eager = case.model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, compiled=False)
    compiled = case.model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, compiled=True)
    np.testing.assert_array_equal(eager, compiled)
