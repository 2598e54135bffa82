"""Norm parameters stay float32 in a float16 model (read in float32 anyway: no Cast per call), through loading
and dtype changes; every other weight follows the model's dtype, and so do the rotary tables."""
import mindspore as ms
import numpy as np
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


@pytest.mark.parametrize("family", ["chatglm-6b", "chatglm2"])
def test_rotary_tables_follow_the_compute_dtype_with_the_same_rows(family):
    model = AutoModel.from_pretrained(FAMILY_FOLDERS[family], dtype="float32")
    tables = model.position_tables()
    model.allocate_cache(1, 40)
    cos32, sin32 = tables.cos.asnumpy(), tables.sin.asnumpy()
    model.half().allocate_cache(1, 40)  # a step gathers float16 rows: no Cast of the tables in a graph
    assert (tables.cos.dtype, tables.sin.dtype) == (ms.float16, ms.float16)
    np.testing.assert_array_equal(tables.cos.asnumpy(), cos32.astype(np.float16))
    np.testing.assert_array_equal(tables.sin.asnumpy(), sin32.astype(np.float16))
    model.float().allocate_cache(1, 40)
    assert tables.cos.dtype == ms.float32
    np.testing.assert_array_equal(tables.cos.asnumpy(), cos32)
