"""Shapes and layouts with no golden file: other layer/head/width counts and the old 150528-vocab layout."""
import numpy as np
import pytest

from glm_ms import ChatGLMForConditionalGeneration, ChatGLMTokenizer
from glm_ms.positions import position_ids_2d, prefix_lm_mask
from tests import reference_numpy
from tests.random_checkpoint import make_checkpoint


@pytest.mark.parametrize("shape", [
    dict(num_layers=3, hidden_size=96, num_attention_heads=6),
    dict(num_layers=1, hidden_size=128, num_attention_heads=2, inner_hidden_size=200),
    dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_image_tokens=20000),  # 150528-style ids
])
def test_other_shapes_match_numpy_reference_and_cache(tmp_path, shape):
    folder, config, sd = make_checkpoint(tmp_path / "ckpt", **shape)
    tok = ChatGLMTokenizer.from_pretrained(folder)
    model = ChatGLMForConditionalGeneration.from_pretrained(folder, dtype="float32")
    ids = tok.encode("介绍一下清华大学")
    offset = shape.get("num_image_tokens", 0)
    assert ids[-2:] == [config["gmask_token_id"], config["bos_token_id"]] and min(ids) >= offset

    logits = model([ids]).logits.asnumpy()[0]
    positions = position_ids_2d(ids, config["bos_token_id"], config["mask_token_id"], config["gmask_token_id"])
    ref = reference_numpy.forward(sd, config, np.array(ids), positions, prefix_lm_mask(ids, config["bos_token_id"])[0])
    assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()

    # Greedy with the static cache equals re-running the whole sequence at every step.
    out = model.generate([ids], max_new_tokens=6, do_sample=False)
    seq = list(ids)
    for _ in range(6):
        seq.append(int(model([seq]).logits.asnumpy()[0, -1].argmax()))
    assert out[0].tolist() == seq
    assert tok.decode(out[0, len(ids):].tolist()) == tok.decode(seq[len(ids):])
