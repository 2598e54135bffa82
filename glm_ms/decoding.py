"""Decoding on the static KV cache: the prompt, then one token per row and step, as eager Cells or compiled graphs.

Both paths share one `DecodeState` (cache slots used, each row's key mask and last position) and read only the
cache slots in use: a step's mask [b, 1, s, L] says which slots 0..L-1 it reads. A prompt longer than the
chunk (`PREFILL_CHUNK` by default) is prefilled in pieces, each against the cache written so far plus itself,
so no step holds more than chunk × context scores. The compiled path runs `model.forward_step` (of any
family) followed by the choice of the next token as one static-shape MindSpore graph, so a decode step is one
graph launch and one read of `batch` token ids. Shapes are static per (batch, prompt bucket, slots read), so a
run compiles a prefill graph for a short prompt and one decode graph (one per doubling past `DECODE_READ`
slots), and later runs in the same buckets compile nothing:

- a short prompt is left-padded to a bucket; the pads are written to the *last* cache slots and masked for every
  real row, so real tokens keep the slots, positions and mask of the eager path (cache slot i = token i);
- a long prompt's pieces run eagerly and its last token as a decode-shaped graph (see `prefill_pieces`);
- the cache capacity is max_length rounded up to a bucket; a step reads a power-of-two prefix of it (at least
  `DECODE_READ` slots for a decode step);
- token ids, positions, cache slots, masks, temperature, top-p and the sampling uniforms are tensors: no
  Python value that changes between steps is baked into a graph.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from .device import jit_config  # before MindSpore: device.py sets how the OpenMP runtime MindSpore loads idles
from .cells.masks import PromptMask
from .errors import GenerationError

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

BUCKET_STEP = 256  # powers of two up to here, then multiples of it: at most 255 wasted slots past 256
PREFILL_CHUNK = 512  # prompt tokens per prefill piece: longer prompts are prefilled piece by piece
DECODE_READ = 2048  # cache slots a compiled decode step reads at the least (see kv_bucket)
PROMPT_READ = 64    # ... and a compiled prompt: its scores are rows x slots on the MindSpore-ops path
_INF = float("inf")


def bucket(n: int, smallest: int = 16) -> int:
    """Round a length up to a bucket: powers of two from `smallest` to BUCKET_STEP, then multiples of it."""
    n = max(int(n), 1)
    if n <= BUCKET_STEP:
        return max(smallest, 1 << (n - 1).bit_length())
    return -(-n // BUCKET_STEP) * BUCKET_STEP


# ----------------------------------------------------------------------------- when sampling is impossible


def unsampleable(temperature: float) -> GenerationError:
    """The error both paths raise when the scores to sample from hold NaN or +inf (or a row has no finite one)."""
    return GenerationError(f"cannot sample: the scores divided by temperature {temperature!r} are NaN or overflow "
                           "float32 (use a larger temperature, do_sample=False, or InvalidScoreLogitsProcessor "
                           "for a model whose logits are not finite)")


def check_sampleable(scaled: np.ndarray, temperature: float) -> None:
    """Raise `unsampleable` for temperature-scaled scores [b, vocab]; the graph in `_sample` tests the same."""
    if not (np.all(scaled < _INF) and np.all(scaled.max(-1) > -_INF)):
        raise unsampleable(temperature)


@dataclass
class TokenChoice:
    """How the graph picks the next token: greedy argmax, or top-k → top-p sampling with host uniforms.

    `guard_token`/`guard_score`: upstream's InvalidScoreLogitsProcessor in the graph (when any score is NaN/Inf,
    every row scores zeros but `guard_score` at `guard_token`), or None. `rng` supplies one uniform per row and
    step, consumed exactly as the eager loop consumes it.
    """
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    guard_token: int | None = None
    guard_score: float = 0.0
    rng: np.random.Generator | None = None


MAX_TOP_K = 256  # the graph draws from this many candidates (fewer if the vocabulary is smaller); top_k masks them


def _permute(weights, rank):
    """weights [b, k] moved to positions `rank` [b, k] (a permutation of 0..k-1): a one-hot product, no Sort."""
    k = rank.shape[-1]
    onehot = (rank.reshape(-1, 1, k) == ops.arange(k, dtype=ms.float32).reshape(1, k, 1)).astype(ms.float32)
    return (onehot * weights.reshape(-1, 1, k)).sum(-1)


def _sample(logits, temperature, top_p, uniform, top_k, compute_dtype):
    """Token ids [b] int32 drawn like the eager warpers: temperature, top-k, top-p, then inverse-CDF in vocab order.

    Sort-free for 910A (its float32 Sort runs on the AI CPU; a float16 one corrupts ids above 2048): TopK on the
    compute-dtype scores picks MAX_TOP_K candidates, every order among them is a k×k comparison count, and the
    arithmetic (float32 softmax, cumulative sums in eager's order) is the one the eager path does.
    """
    scaled = logits / temperature
    k = min(MAX_TOP_K, logits.shape[-1])
    _, index = ops.topk(scaled.astype(compute_dtype), k)                # int32 [b, k] candidates
    values = ops.gather_elements(scaled, -1, index)                      # their float32 scores
    v_i, v_j = values.reshape(-1, k, 1), values.reshape(-1, 1, k)
    id_i, id_j = index.reshape(-1, k, 1), index.reshape(-1, 1, k)
    # top-k keeps every score no lower than the k-th best (ties kept), as top_k_warp does.
    above = (v_j > v_i).astype(ms.float32).sum(-1)
    values = ops.where(above < top_k.astype(ms.float32), values, ops.full_like(values, -_INF))
    probs = ops.softmax(values, -1)
    # Eager top-p walks the scores in stable ascending order (ties by id) and drops those whose running sum is
    # <= 1 - top_p, never the last; here the candidates are put in the reverse of that order, best first.
    descending = ops.logical_or(v_j > v_i, ops.logical_and(v_j == v_i, id_j > id_i)).astype(ms.float32).sum(-1)
    ascending_sum = ops.CumSum(reverse=True)(_permute(probs, descending), -1)
    keep = ops.logical_or(ascending_sum > (1.0 - top_p), ops.arange(k, dtype=ms.int32) == 0).astype(ms.float32)
    probs = probs * ops.gather_elements(keep, -1, descending.astype(ms.int32))   # back to candidate order
    # numpy's choice() inverts the CDF taken in vocabulary order: candidates ranked by id, Σ [id_j < id_i].
    by_id = (id_j < id_i).astype(ms.float32).sum(-1)
    cdf = ops.cumsum(_permute(probs, by_id), -1)
    below = (cdf <= uniform.reshape(-1, 1) * cdf[:, -1:]).astype(ms.float32).sum(-1, keepdims=True)
    pick = ops.minimum(below, k - 1)
    tokens = ops.amax(ops.where(by_id == pick, index, ops.full_like(index, -1)), -1)
    # check_sampleable's rule: NaN/+inf anywhere, or a row without a finite score → -1, which the host raises on.
    ok = ops.logical_and((scaled < _INF).all(), (ops.amax(scaled, -1) > -_INF).all())  # amax: no int64 argmax
    return ops.where(ok, tokens, ops.full_like(tokens, -1))


def guard_argmax(token: int, score: float) -> int:
    """The greedy choice over the guard's scores (zeros, `score` at `token`), as numpy's argmax makes it: the
    first maximum, a NaN counting as the maximum."""
    if not score <= 0:  # above zero, or NaN
        return token
    return int(token == 0) if score < 0 else 0


class _Step(nn.Cell):
    """`model.forward_step` on the last position followed by the token choice: the unit compiled as a graph."""

    def __init__(self, model: nn.Cell, mode: str, guard_token: int, guard_score: float):
        # auto_prefix=False: holding the model must not rename its parameters (they equal checkpoint names).
        super().__init__(auto_prefix=False)
        self.model = model
        self.mode = mode  # "logits" | "greedy" | "sample"
        self.guard_token = guard_token
        self.guard_score = guard_score
        self.guard_pick = guard_argmax(guard_token, guard_score)

    def construct(self, ids, positions, mask, slots, temperature, top_p, top_k, uniform, guard):
        logits = self.model.forward_step(ids, positions, mask, slots, True)   # [b, 1, vocab] float32
        # A reshape, not [:, -1]: MindSpore's CPU StridedSlice takes ~10 ms over 130528 logits (see last_position).
        logits = logits.reshape(logits.shape[0], logits.shape[-1])
        if self.mode == "logits":
            return logits
        # The guard's scores replace the logits before the choice, as the eager processor does.
        invalid = ops.logical_and(guard, ops.logical_not(ops.isfinite(logits).all()))
        if self.mode == "greedy":
            # Its argmax is a constant: no row of guard scores is built over the vocabulary.
            tokens = ops.Argmax(axis=-1, output_type=ms.int32)(logits)
            return ops.where(invalid, ops.full_like(tokens, self.guard_pick), tokens)
        column = (ops.arange(logits.shape[-1], dtype=ms.int32) == self.guard_token).astype(ms.float32)
        logits = ops.where(invalid, ops.zeros_like(logits) + column * self.guard_score, logits)
        return _sample(logits, temperature, top_p, uniform, top_k, self.model.compute_dtype)


# ----------------------------------------------------------------------------- compiled steps


def _compile_cache_size() -> int | None:
    """Graphs MindSpore has compiled in this process (None if this MindSpore does not expose the count)."""
    try:
        from mindspore.graph import api
        return len(api.ms_compile_cache)
    except (ImportError, AttributeError, TypeError):
        return None


def _storage_id(param: Any) -> int | None:
    try:
        return param.data_ptr()
    except (AttributeError, RuntimeError):
        return None


@dataclass
class StepInputs:
    """What one forward step reads (numpy): the tokens, their positions, the mask, and the cache slots written."""
    ids: np.ndarray        # [b, s]
    positions: np.ndarray  # [b, 2 | 1, s]
    mask: np.ndarray       # [b, 1, s, L] bool, True = masked: the step reads cache slots 0..L-1
    slots: np.ndarray      # [s]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The four inputs of `forward_step` (int32 ids, positions and slots), contiguous (GE rejects views)."""
        return (Tensor(np.ascontiguousarray(self.ids, dtype=np.int32)),
                Tensor(np.ascontiguousarray(self.positions, dtype=np.int32)),
                Tensor(np.ascontiguousarray(self.mask)), Tensor(np.ascontiguousarray(self.slots, dtype=np.int32)))


class CompiledRunner:
    """The compiled steps of one model, and how many graphs they have compiled (`compiles`)."""

    MAX_STEPS = 8

    def __init__(self, model: nn.Cell):
        self.model = model
        self.compiles = 0        # graph compilations counted by MindSpore during our calls
        self.shape_keys = set()  # distinct (step, input shapes) called: what a compilation counter keys on
        self._steps = OrderedDict()
        self._storage = None

    def bind(self) -> None:
        """Note the model's Parameter storages: call after allocating caches or loading weights, not per step."""
        # A graph is bound to the Parameter storages present when it was compiled: new cache Parameters (another
        # buffer shape) or weights replaced with set_data (loading, half()) need steps compiled afresh, and so
        # does a new P-tuning prefix length (a constant of the graph). The sweep (one data_ptr per Parameter, an
        # experimental API that may synchronise an NPU) runs once per Decoder.
        storages = tuple((id(p), _storage_id(p)) for _, p in self.model.parameters_and_names())
        self._storage = (getattr(self.model, "prefix_length", 0),) + storages

    def step(self, mode: str, guard_token: int | None = None, guard_score: float = 0.0) -> Any:
        """The jitted step for this token-choice mode and the model's current buffers."""
        if self._storage is None:
            self.bind()
        key = (self._storage, mode, guard_token, guard_score)
        fn = self._steps.pop(key, None)
        if fn is None:
            cell = _Step(self.model, mode, -1 if guard_token is None else guard_token, guard_score)
            fn = ms.jit(cell, **jit_config())
        self._steps[key] = fn
        while len(self._steps) > self.MAX_STEPS:
            self._steps.popitem(last=False)
        return fn

    def call(self, fn: Any, *inputs: Tensor) -> Tensor:
        """Run a step; count a compilation when MindSpore compiled one (or, failing that, a new shape key)."""
        shape_key = (id(fn.__self__),) + tuple((tuple(t.shape), str(t.dtype)) for t in inputs)
        new_shape = shape_key not in self.shape_keys
        self.shape_keys.add(shape_key)
        before = _compile_cache_size()
        out = fn(*inputs)
        after = _compile_cache_size()
        self.compiles += (after - before) if before is not None else int(new_shape)
        return out

    def run(self, inputs: StepInputs, choice: TokenChoice | None) -> np.ndarray:
        """Logits [b, vocab] of the last position (choice None), or the token ids [b] the graph chose."""
        batch = inputs.ids.shape[0]
        uniform = np.zeros(batch, np.float32)
        if choice is None:
            fn, settings = self.step("logits"), (1.0, 1.0, 0, False)
        else:
            fn = self.step("sample" if choice.do_sample else "greedy", choice.guard_token, choice.guard_score)
            settings = (choice.temperature, choice.top_p, choice.top_k, choice.guard_token is not None)
            if choice.do_sample:
                uniform = choice.rng.random(batch).astype(np.float32)  # one draw per row, as eager's choice() takes
        temperature, top_p, top_k, guard = settings
        # Settings are inputs, not constants: changing temperature, top_p or top_k never compiles a graph.
        out = self.call(fn, *inputs.tensors(), Tensor(np.float32(temperature)), Tensor(np.float32(top_p)),
                        Tensor(np.int32(top_k)), Tensor(uniform), Tensor(np.bool_(guard))).asnumpy()
        if choice is not None and (out < 0).any():
            raise unsampleable(choice.temperature)
        return out


def runner_for(model: nn.Cell) -> CompiledRunner:
    """The model's CompiledRunner (created on first use)."""
    runner = model.__dict__.get("_compiled_runner")
    if runner is None:
        runner = CompiledRunner(model)
        object.__setattr__(model, "_compiled_runner", runner)
    return runner


def graph_compilations(model: nn.Cell) -> int:
    """Graphs the compiled decode path has compiled for `model` so far."""
    runner = model.__dict__.get("_compiled_runner")
    return runner.compiles if runner is not None else 0


# ----------------------------------------------------------------------------- the decoder both paths share


def kv_bucket(used: int, capacity: int, smallest: int = DECODE_READ) -> int:
    """Cache slots a compiled step reads to cover `used` slots: a power of two from `smallest`, at most the capacity.

    Powers of two keep the graphs of a long run few (one per doubling) at the price of reading up to twice the
    slots in use; the slots past those in use are masked. A decode step reads at least DECODE_READ slots, so a
    run that stays within them (ChatGLM-6B's whole 2048-token context) has one decode graph: on GE each graph is
    minutes of compile. The CPU attention kernel leaves masked slots past the last one in use unread; elsewhere
    the read is small beside the weights' (ChatGLM2-6B: 2048 slots x 28 layers x 2 x 256 x 2 bytes = 59 MB).
    """
    return min(capacity, max(smallest, 1 << (max(int(used), 1) - 1).bit_length()))


def prompt_spans(seq: int, chunk: int) -> list[tuple[int, int]]:
    """(start, stop) of each prefill piece: the remainder first, then whole chunks (one piece if seq <= chunk).

    The remainder goes first so that, compiled, only the first piece is padded to a bucket; every later piece
    has the chunk's own shape.
    """
    if not (isinstance(chunk, int) and chunk > 0):
        raise GenerationError(f"prefill_chunk must be a positive integer, got {chunk!r}")
    first = seq % chunk or min(seq, chunk)
    return [(0, first)] + [(start, start + chunk) for start in range(first, seq, chunk)]


def exact_piece(ids: np.ndarray, mask: PromptMask, positions: np.ndarray, start: int, stop: int) -> StepInputs:
    """Prompt tokens start..stop-1 as they are, at slots start..stop-1, reading exactly slots 0..stop-1."""
    return StepInputs(ids[:, start:stop], positions[..., start:stop], mask.rows(start, stop), np.arange(start, stop))


def bucketed_prompt(ids: np.ndarray, mask: PromptMask, positions: np.ndarray, capacity: int) -> StepInputs:
    """The compiled prompt: left-padded to its bucket, reading a bucketed prefix of the cache.

    Pads go first (so the last row is the last real token) but into the *last* cache slots: real tokens keep
    slots 0..seq-1 as in eager; decoding overwrites the pad slots only when it gets there. Pad rows are masked
    from everything (their output is unused; the -10000 fill keeps them finite).
    """
    batch, seq = ids.shape
    pad = bucket(seq) - seq
    width = kv_bucket(seq, capacity, PROMPT_READ)
    slots = np.concatenate([np.arange(capacity - pad, capacity), np.arange(seq)])
    padded_ids = np.concatenate([np.zeros((batch, pad), np.int64), ids], axis=1)
    padded_positions = np.pad(positions, [(0, 0)] * (positions.ndim - 1) + [(pad, 0)])
    rows = np.ones((batch, 1, pad + seq, width), dtype=bool)
    rows[:, :, pad:] = mask.rows(0, seq, width)  # real rows see what they see in eager, never a pad
    return StepInputs(padded_ids, padded_positions, rows, slots)


@dataclass
class Piece:
    """One prefill piece and whether it runs as a compiled graph (else eagerly).

    `inputs` builds the piece's inputs when it runs: a 32k-token prompt's 64 piece masks together are 0.5 GB.
    """
    inputs: Callable[[], StepInputs]
    compiled: bool


def prefill_pieces(ids: np.ndarray, mask: PromptMask, positions: np.ndarray, capacity: int, compiled: bool,
                   chunk: int) -> list[Piece]:
    """How a prompt is prefilled: in one piece, or in chunks of `chunk` tokens when longer (causal masks only).

    Compiled, a long prompt's chunks run eagerly and only its last token runs as a graph, of a decode step's
    shape: MindSpore's CPU graphs keep every intermediate of a graph allocated for as long as the graph lives
    (a 512-token piece against 4096 keys holds gigabytes per layer), whereas an eager piece frees each one as
    it goes, and a piece is large enough that op dispatch does not count.
    """
    seq = ids.shape[1]
    spans = prompt_spans(seq, chunk) if mask.chunkable else [(0, seq)]
    if not compiled:
        return [Piece(partial(exact_piece, ids, mask, positions, a, b), False) for a, b in spans]
    if len(spans) == 1:
        return [Piece(partial(bucketed_prompt, ids, mask, positions, capacity), True)]
    last = partial(StepInputs, ids[:, -1:], positions[..., -1:], mask.rows(seq - 1, seq, kv_bucket(seq, capacity)),
                   np.array([seq - 1]))
    return [Piece(partial(exact_piece, ids, mask, positions, a, b), False) for a, b in prompt_spans(seq - 1, chunk)] \
        + [Piece(last, True)]


class DecodeState:
    """The bookkeeping both paths share: tokens in the cache, each row's key mask and last position."""

    def __init__(self, model: nn.Cell, mask: PromptMask, positions: np.ndarray, capacity: int, limit: int,
                 bucketed: bool):
        batch, seq = mask.shape
        self.model = model
        self.capacity = capacity  # cache slots allocated
        self.limit = limit        # tokens this run may hold (max_length)
        self.bucketed = bucketed  # compiled: steps read a bucketed prefix of the cache (else the slots in use)
        self.length = seq
        # Decode rows see what the last prompt row saw plus every generated token; unwritten slots stay masked.
        self.key_mask = np.ones((batch, capacity), dtype=bool)
        self.key_mask[:, :seq] = mask.last_row()
        self.last_position = positions[..., -1:].copy()

    def advance(self, tokens: np.ndarray) -> StepInputs:
        """The inputs that append one token per row at the next cache slot, reading only the slots in use."""
        if self.length >= self.limit:
            raise GenerationError(f"KV cache full ({self.limit} tokens)")
        slot = self.length
        self.key_mask[:, slot] = False
        self.last_position = self.model.next_position_ids(self.last_position)
        self.length += 1
        width = kv_bucket(self.length, self.capacity) if self.bucketed else self.length
        return StepInputs(np.asarray(tokens)[:, None], self.last_position, self.key_mask[:, None, None, :width],
                          np.array([slot]))

    def reorder(self, index: np.ndarray) -> None:
        """Keep rows `index` (beam search)."""
        self.model.reorder_cache(index)
        self.key_mask = self.key_mask[index]
        self.last_position = self.last_position[index]


class Decoder:
    """Prefill, then one token per row and step, on the model's static KV cache: eager Cells or compiled graphs.

    A prompt longer than `chunk` tokens is prefilled in pieces (`prefill_pieces`), each attending to the cache
    written so far plus itself, so memory grows with chunk × context rather than prompt × context. `prefill(choice)` and
    `step(tokens, choice)` return float32 logits [b, vocab] of the last position when `choice` is None; with a
    TokenChoice (compiled only) the token ids [b] the graph chose.
    """

    def __init__(self, model: nn.Cell, ids: np.ndarray, mask: PromptMask, positions: np.ndarray, max_length: int,
                 compiled: bool, chunk: int = PREFILL_CHUNK):
        seq = ids.shape[1]
        limit = model.max_positions
        if limit is not None and max_length > limit:
            raise GenerationError(f"max_length {max_length} is beyond this model's seq_length {limit} (the positions "
                                  f"it has); the prompt holds {seq} tokens")
        self.model = model
        self.runner = runner_for(model) if compiled else None
        capacity = bucket(max(max_length, bucket(seq)), smallest=64) if compiled else max_length
        self.pieces = prefill_pieces(ids, mask, positions, capacity, compiled, chunk)
        model.allocate_cache(ids.shape[0], capacity)
        if self.runner is not None:
            self.runner.bind()
        self.state = DecodeState(model, mask, positions, capacity, max_length, bucketed=compiled)

    def _run(self, inputs: StepInputs, choice: TokenChoice | None, compiled: bool = True) -> np.ndarray:
        if self.runner is not None and compiled:
            return self.runner.run(inputs, choice)
        return self.model.forward_step(*inputs.tensors(), last_only=True).asnumpy()[:, -1]

    def prefill(self, choice: TokenChoice | None = None) -> np.ndarray:
        """Logits [b, vocab] at the last prompt position, or the first chosen tokens [b]."""
        for piece in self.pieces[:-1]:
            self._run(piece.inputs(), None, piece.compiled)  # fills the cache; only the last piece's output is needed
        return self._run(self.pieces[-1].inputs(), choice, self.pieces[-1].compiled)

    def step(self, tokens: np.ndarray, choice: TokenChoice | None = None) -> np.ndarray:
        """Append one token per row; logits [b, vocab] for the next one, or the next chosen tokens [b]."""
        return self._run(self.state.advance(tokens), choice)

    def reorder(self, index: np.ndarray) -> None:
        """Keep rows `index` (beam search)."""
        self.state.reorder(index)
