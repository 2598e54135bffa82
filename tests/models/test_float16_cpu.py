"""float16 on the CPU: every Linear runs through the float16 kernel, compiled by default, the same ids as eager,
and a compiled graph holds no float32 copy of the weights."""
import json

import mindspore as ms
import numpy as np
import pytest

from glm_ms.api import ChatGLM2ForConditionalGeneration
from glm_ms.config import ChatGLM2Config
from glm_ms.decoding import graph_compilations
from glm_ms.device import compiled_by_default
from tests.support import FAMILY_FOLDERS, tiny


@pytest.fixture(scope="module", params=list(FAMILY_FOLDERS))
def half_model(request):
    return request.param, type(tiny(request.param).model).from_pretrained(FAMILY_FOLDERS[request.param],
                                                                           dtype="float16")


def test_float16_compiles_by_default_on_the_cpu():
    assert compiled_by_default(ms.float16) and compiled_by_default(ms.float32)


def test_compiled_equals_eager(half_model):
    family, model = half_model
    golden = tiny(family).golden
    before = graph_compilations(model)
    for i in (0, 2):
        ids = golden[f"fwd{i}_input_ids"]
        default = model.generate(ids, max_length=ids.shape[1] + 24, do_sample=False)
        eager = model.generate(ids, max_length=ids.shape[1] + 24, do_sample=False, compiled=False)
        np.testing.assert_array_equal(default, eager)
    assert graph_compilations(model) > before  # the default path is the compiled one


@pytest.mark.slow
def test_sampling_compiled_equals_eager(half_model):
    _, model = half_model
    ids = tiny(half_model[0]).golden["fwd1_input_ids"]
    runs = [model.generate(ids, max_length=ids.shape[1] + 12, do_sample=True, top_p=0.8, temperature=0.9,
                           seed=7, compiled=c) for c in (True, False)]
    np.testing.assert_array_equal(*runs)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
def test_a_compiled_float16_graph_holds_no_float32_copy_of_the_weights():
    data = json.loads((FAMILY_FOLDERS["chatglm2"] / "config.json").read_text())
    data.update(hidden_size=2048, num_attention_heads=16, kv_channels=128, ffn_hidden_size=5504, num_layers=2,
                family="chatglm2")
    model = ChatGLM2ForConditionalGeneration(ChatGLM2Config.from_dict(data), dtype="float16")
    rng = np.random.default_rng(0)
    weights = 0
    for param in model.weight_parameters().values():
        array = (rng.standard_normal(param.shape, dtype=np.float32) * 0.02).astype(np.float16)
        weights += array.nbytes / 2**20
        param.set_data(ms.Tensor.from_numpy(array))
    before = rss_mib()
    model.generate(np.array([[5, 6, 7, 8]]), max_new_tokens=4, do_sample=False, compiled=True)
    # float32 casts of the weights would add twice the float16 weights (measured with $GLM_MS_KERNELS=off:
    # +552 MiB for 189 MiB of weights); through the kernel the graph adds about as much as a float32 one does.
    assert rss_mib() - before < 2 * weights
