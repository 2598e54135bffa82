"""Norm parameters stay float32 in a float16 model (read in float32 anyway: no Cast per call), through loading
and dtype changes; every other weight follows the model's dtype."""
import mindspore as ms
import pytest

from glm_ms import AutoModel
from glm_ms.cells.layers import LayerNorm, RMSNorm
from tests.support import FAMILY_FOLDERS


def dtypes(model):
    norms = {id(p) for _, c in model.cells_and_names() if isinstance(c, (LayerNorm, RMSNorm))
             for p in c.get_parameters()}
    weights = model.weight_parameters().values()
    return {p.dtype for p in weights if id(p) in norms}, {p.dtype for p in weights if id(p) not in norms}


@pytest.mark.parametrize("family", ["chatglm-6b", "chatglm2"])
def test_norms_stay_float32_when_loaded_and_cast(family):
    model = AutoModel.from_pretrained(FAMILY_FOLDERS[family], dtype="float16")
    assert dtypes(model) == ({ms.float32}, {ms.float16})
    assert dtypes(model.float()) == ({ms.float32}, {ms.float32})
    assert dtypes(model.half()) == ({ms.float32}, {ms.float16})
