"""The ways an adapter gets applied: `model.load_adapter` on a loaded model, a model id through the (fake)
ModelScope mirror, and chat on a P-tuned model streamed and with ChatGLM2's kept cache."""
import logging

import numpy as np
import pytest

from glm_ms import AutoModel
from glm_ms.decoding import graph_compilations
from glm_ms.hub import http
from tests.fake_modelscope import serve
from tests.support import ADAPTERS, adapted, as_json, rel_err

BASE_IDS = {"tiny-chatglm-6b": "ZhipuAI/ChatGLM-6B", "tiny-chatglm2-6b": "ZhipuAI/chatglm2-6b",
            "tiny-chatglm3-6b": "ZhipuAI/chatglm3-6b"}


def _check_golden(lm, case, prompt=0):
    golden = case.golden
    ids = golden[f"fwd{prompt}_input_ids"]
    assert rel_err(lm(ids).logits.asnumpy(), golden[f"fwd{prompt}_logits"]) <= 1e-4
    out = lm.generate(ids, max_length=ids.shape[1] + 24, do_sample=False)
    np.testing.assert_array_equal(out, golden[f"greedy{prompt}_output_ids"])


@pytest.mark.parametrize("name", ADAPTERS)
def test_load_adapter_after_a_compiled_run_equals_loading_with_it(name):
    case = adapted(name)
    lm = AutoModel.from_pretrained(case.base.dir, dtype="float32")
    ids = case.golden["fwd0_input_ids"]
    np.testing.assert_array_equal(lm.generate(ids, max_length=ids.shape[1] + 24, do_sample=False, compiled=True),
                                  case.base.golden["greedy0_output_ids"])  # graphs compiled before the adapter
    before = graph_compilations(lm)
    assert lm.load_adapter(case.dir) is lm
    _check_golden(lm, case)
    assert graph_compilations(lm) > before  # new weights or a prefix: graphs compiled afresh, not stale ones


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    monkeypatch.setattr(http, "sleep", lambda s: None)
    repos = {BASE_IDS[adapted(n).golden_json["base_fixture"]]: adapted(n).base.dir for n in ADAPTERS}
    repos.update({f"someone/{n}": adapted(n).dir for n in ADAPTERS})
    with serve(repos) as hub:
        yield hub


@pytest.mark.server
@pytest.mark.parametrize("name", ["tiny-chatglm-6b-lora", "tiny-chatglm2-6b-ptuning"])
def test_adapter_by_model_id_through_the_mirror(mirror, tmp_path, caplog, name):
    case = adapted(name)
    base_id = BASE_IDS[case.golden_json["base_fixture"]]
    with caplog.at_level(logging.WARNING, logger="glm_ms.adapters"):
        lm = AutoModel.from_pretrained(base_id, mirror="modelscope", endpoint=mirror.url, cache_dir=tmp_path,
                                       dtype="float32", adapter=f"someone/{name}")
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]  # the ids' names agree
    assert mirror.count(kind="list", repo=f"someone/{name}") == 1
    _check_golden(lm, case)
    mirror.clear_requests()
    again = AutoModel.from_pretrained(base_id, mirror="modelscope", endpoint=mirror.url, cache_dir=tmp_path,
                                      dtype="float32", adapter=f"someone/{name}")
    assert mirror.count(kind="download") == 0  # both cached: the listing is checked, nothing fetched again
    np.testing.assert_array_equal(again(case.golden["fwd0_input_ids"]).logits.asnumpy(),
                                  lm(case.golden["fwd0_input_ids"]).logits.asnumpy())


def test_stream_chat_on_a_prefix_ends_with_what_chat_returns():
    case = adapted("tiny-chatglm-6b-ptuning")
    turn = case.golden_json["chat_greedy"][0]
    streamed = list(case.model.stream_chat(case.base.tokenizer, turn["query"], [], max_length=turn["max_length"],
                                           do_sample=False, include_last=True))
    assert as_json(streamed[-1]) == [turn["response"], turn["history"]]


def test_chatglm2_kept_cache_turns_with_a_prefix():
    case = adapted("tiny-chatglm2-6b-ptuning")
    lm, tok = case.model, case.base.tokenizer
    first, second = case.golden_json["chat_greedy"][:2]
    *_, (_, history, past) = lm.stream_chat(tok, first["query"], [], max_length=first["max_length"],
                                                   do_sample=False, return_past_key_values=True)
    assert as_json(history)[0][0] == first["query"]  # (the golden response may end in a '�' stream_chat skips)
    *_, (kept, kept_history, after) = lm.stream_chat(tok, second["query"], history, past_key_values=past,
                                                     max_length=32, do_sample=False, return_past_key_values=True)
    # The kept turn feeds only its new ids after the cached ones; the prefix stays in front, positions count on.
    fed = list(past.input_ids) + lm.build_stream_inputs(tok, second["query"], history)["input_ids"][0].tolist()
    want = lm.generate([fed], max_length=len(past.input_ids) + 32, do_sample=False)
    assert list(after.input_ids) == want[0, :-1].tolist()
    assert kept == lm.process_response(tok.decode(want[0, len(fed):].tolist()))


@pytest.mark.parametrize("name", ["tiny-chatglm-6b-ptuning", "tiny-chatglm2-6b-ptuning"])
def test_the_serving_engine_answers_with_the_prefix_as_generate_does(name):
    from glm_ms.serve.engine import Engine
    case = adapted(name)
    prompts = [case.base.tokenizer.encode(q) for q in case.golden_json["prompts"][:3]]
    want = [case.model.generate([p], max_new_tokens=6, do_sample=False)[0, len(p):].tolist() for p in prompts]
    engine = Engine(AutoModel.from_pretrained(case.base.dir, dtype="float32", adapter=case.dir), slots=2,
                    capacity=128)  # a model of its own: the engine holds its cache
    try:
        handles = [engine.submit(p, 6) for p in prompts]  # three requests on two rows, the prefix in each
        results = [h.tokens() for h in handles]
    finally:
        engine.shutdown()
    assert [ids + ([done.stop_token] if done.stop_token is not None else []) for ids, done in results] == want


@pytest.mark.parametrize("app", ["glm_ms.chat_app", "glm_ms.cli_chat", "glm_ms.serve.cli"])
def test_the_apps_load_their_model_with_adapter(app):
    import importlib
    from glm_ms.loading import load_from_args
    case = adapted("tiny-chatglm-6b-ptuning")
    args = importlib.import_module(app).parse_args(["--model", str(case.base.dir), "--adapter", str(case.dir),
                                                    "--dtype", "float32"])
    lm, _ = load_from_args(args)
    assert lm.prefix_length == case.golden_json["pre_seq_len"]
    assert rel_err(lm(case.golden["fwd0_input_ids"]).logits.asnumpy(), case.golden["fwd0_logits"]) <= 1e-4
