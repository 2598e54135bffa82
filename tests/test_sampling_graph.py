"""Sampling inside the compiled step on a ChatGLM-size vocabulary: the sort-free graph draws what the eager
warpers draw for a seed, at adjacent high token ids (which a float16 round-trip of sort keys would merge: 130000
and 130001 both overflow float16, 40000 and 40001 share one float16 value), and top_k never recompiles."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn

from glm_ms.decoding import MAX_TOP_K, CompiledRunner, StepInputs, TokenChoice
from glm_ms.generation import GenerationOptions, GenerationPlan

VOCAB = 130528  # ChatGLM-6B's
ROWS = 3
STEPS = 40


class LogitsModel(nn.Cell):
    """A stand-in model whose step returns fixed logits: the unit under test is the token choice."""

    def __init__(self, logits: np.ndarray, dtype):
        super().__init__()
        self.compute_dtype = dtype
        self.logits = Parameter(Tensor(logits[:, None, :]), requires_grad=False)

    def forward_step(self, ids, positions, mask, slots, last_only=False):
        return self.logits


def crafted_logits() -> np.ndarray:
    """Near-equal candidates at adjacent high ids over 300 distinct lower scores (so the k-th best score is never
    a tie of the far background) and a background far below, one pattern per row."""
    logits = np.full((ROWS, VOCAB), -20.0, np.float32)
    spread = np.linspace(-6.0, 0.0, 300, dtype=np.float32)  # steps above float16's resolution there
    logits[0, 1000:1300] = spread
    logits[0, [40000, 40001, 130000, 130001]] = [3.0, 3.0, 2.9, 2.95]                   # an exact tie
    logits[1, 50000:50900:3] = spread
    logits[1, [130001, 130000, 40001, 40000]] = [2.0, 2.0001, 1.9999, 2.0]              # equal in float16
    logits[2, 100000:100300] = spread + 3.0
    return logits


def step_inputs() -> StepInputs:
    return StepInputs(np.zeros((ROWS, 1), np.int32), np.zeros((ROWS, 1, 1), np.int32),
                      np.zeros((ROWS, 1, 1, 4), bool), np.array([0]))


def eager_draws(logits, seed, **settings) -> np.ndarray:
    """STEPS draws per row by the eager path (GenerationPlan.next_tokens on host logits)."""
    options = GenerationOptions(do_sample=True, **settings)
    plan = GenerationPlan(ids=np.zeros((ROWS, 1), np.int64), mask=None, positions=None, options=options,
                          max_length=STEPS + 1, eos=(), pad=0, processors=(), rng=np.random.default_rng(seed),
                          compiled=False, choice=None)
    return np.stack([plan.next_tokens(plan.ids, logits)[0] for _ in range(STEPS)], 1)


def graph_draws(runner, seed, **settings) -> np.ndarray:
    choice = TokenChoice(do_sample=True, rng=np.random.default_rng(seed), **settings)
    return np.stack([runner.run(step_inputs(), choice) for _ in range(STEPS)], 1)


SETTINGS = [dict(top_k=4, top_p=1.0, temperature=1.0), dict(top_k=50, top_p=0.7, temperature=0.95),
            dict(top_k=MAX_TOP_K, top_p=0.9, temperature=0.5), dict(top_k=1, top_p=1.0, temperature=1.0)]


@pytest.mark.parametrize("dtype", [ms.float32, ms.float16], ids=["fp32", "fp16"])
def test_large_vocabulary_draws_equal_eager_and_top_k_never_recompiles(dtype):
    logits = crafted_logits()
    runner = CompiledRunner(LogitsModel(logits, dtype))
    seen = set()
    for seed, settings in enumerate(SETTINGS):
        got, want = graph_draws(runner, seed, **settings), eager_draws(logits, seed, **settings)
        np.testing.assert_array_equal(got, want, err_msg=str(settings))
        seen |= set(got.ravel().tolist())
    assert {40000, 40001, 130000, 130001} <= seen  # both ids of each adjacent pair were drawn
    assert runner.compiles == 1  # one graph for every top_k, top_p and temperature


def test_top_k_keeps_ties_at_the_kth_score_like_the_eager_warper():
    logits = np.full((ROWS, VOCAB), -30.0, np.float32)
    logits[:, [50, 60, 70]] = [5.0, 4.0, 4.0]  # top_k=2 keeps 50 and both 4.0s, as top_k_warp does
    runner = CompiledRunner(LogitsModel(logits, ms.float32))
    got = graph_draws(runner, 3, top_k=2, top_p=1.0, temperature=4.0)
    np.testing.assert_array_equal(got, eager_draws(logits, 3, top_k=2, top_p=1.0, temperature=4.0))
    assert set(got.ravel().tolist()) == {50, 60, 70}
