"""PromptMask: the rows of a prefill piece equal the same rows of the whole mask upstream builds, without ever
building it."""
import numpy as np

from glm_ms.cells.masks import PromptMask


def _upstream(keep):
    """Upstream ChatGLM2's get_masks: causal, pad keys masked, pad rows masked nowhere (True = masked)."""
    seq = keep.shape[1]
    allowed = np.tril(np.ones((seq, seq), dtype=bool))[None] & keep[:, None, :]
    allowed |= ~keep[:, :, None]
    return ~allowed[:, None]


def test_causal_rows_are_slices_of_the_whole_mask():
    keep = np.ones((2, 9), dtype=bool)
    keep[1, :3] = False  # a left-padded row
    mask, full = PromptMask.causal(keep.astype(np.int64)), _upstream(keep)
    assert mask.shape == (2, 9) and mask.chunkable
    np.testing.assert_array_equal(mask.rows(0, 9), full)
    for start, stop, width in ((0, 4, 4), (4, 9, 9), (2, 7, 16)):
        rows = mask.rows(start, stop, width)
        assert rows.shape == (2, 1, stop - start, width)
        real = keep[:, None, start:stop]                    # [b, 1, rows]
        prompt_keys = min(width, 9)
        np.testing.assert_array_equal(rows[..., :prompt_keys][real], full[:, :, start:stop, :prompt_keys][real])
        assert rows[..., 9:].all()                          # slots past the prompt are not prompt tokens
        assert not rows[1, 0, ~real[1, 0]][:, :stop].any()  # a pad row sees every key written so far
    np.testing.assert_array_equal(mask.last_row(), full[:, 0, -1])
    np.testing.assert_array_equal(mask.repeat(3).rows(0, 9), np.repeat(full, 3, axis=0))


def test_dense_masks_are_used_as_given_and_never_split():
    dense = np.random.default_rng(0).random((2, 1, 5, 5)) < 0.5
    mask = PromptMask.given(dense)
    assert mask.shape == (2, 5) and not mask.chunkable
    np.testing.assert_array_equal(mask.rows(0, 5), dense)
    wide = mask.rows(0, 5, 8)
    np.testing.assert_array_equal(wide[..., :5], dense)
    assert wide[..., 5:].all()
    np.testing.assert_array_equal(mask.last_row(), dense[:, 0, -1])
    np.testing.assert_array_equal(mask.repeat(2).rows(0, 5), np.repeat(dense, 2, axis=0))
