"""What a compiled decode costs besides the graph: one device→host read per step and no sweep over the
Parameters, and few graphs for a whole chat whatever its sampling settings."""
import numpy as np
from mindspore import Tensor

from glm_ms.decoding import Decoder, TokenChoice, bucket, graph_compilations, kv_bucket, runner_for
from tests.support import FAMILY_FOLDERS, tiny


def test_a_decode_step_reads_the_device_once_and_never_sweeps_parameters(model, golden, monkeypatch):
    ids = golden["fwd1_input_ids"]
    mask, positions = model.prompt_inputs(model.check_ids(ids))
    dec = Decoder(model, ids, mask, positions, max_length=ids.shape[1] + 6, compiled=True)
    choice = TokenChoice(do_sample=True, top_k=5, top_p=0.8, temperature=0.9, rng=np.random.default_rng(0))
    tokens = dec.step(dec.prefill(choice), choice)  # both graphs compiled (compiling reads Parameters)
    calls = {"asnumpy": 0, "data_ptr": 0}
    for name in calls:
        original = getattr(Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(Tensor, name, counted)
    steps = 4
    for _ in range(steps):
        tokens = dec.step(tokens, choice)
    assert calls == {"asnumpy": steps, "data_ptr": 0}
    assert tokens.shape == (ids.shape[0],) and tokens.dtype == np.int32


def test_five_turn_chat_with_changing_settings_compiles_graphs_per_shape_bucket_only():
    from glm_ms import AutoModel
    fresh = AutoModel.from_pretrained(FAMILY_FOLDERS["chatglm-6b"], dtype="float32")
    tokenizer = tiny("chatglm-6b").tokenizer
    turns = [("你好", 50, 0.7, 0.95), ("介绍一下清华大学", 5, 0.9, 0.5), ("Write a poem about the sea.", 20, 1.0, 1.3),
             ("晚上睡不着怎么办", 1, 0.5, 0.8), ("再说一遍", 200, 0.8, 1.0)]
    history, buckets = [], set()
    for query, top_k, top_p, temperature in turns:
        buckets.add(bucket(len(fresh.prompt_ids(tokenizer, query, history, max_length=160))))
        _, history = fresh.chat(tokenizer, query, history=history, max_length=160, top_k=top_k, top_p=top_p,
                                temperature=temperature, seed=len(history))
    assert len(buckets) >= 2  # the prompts did grow across buckets
    # Graphs come from shapes only, never from the settings: one per prompt bucket, and one decode graph (a
    # 160-token run stays within the cache prefix every decode step reads).
    assert {kv_bucket(n, bucket(160, smallest=64)) for n in range(1, 161)} == {bucket(160, smallest=64)}
    assert 0 < graph_compilations(fresh) == len(runner_for(fresh).shape_keys) <= len(buckets) + 1
