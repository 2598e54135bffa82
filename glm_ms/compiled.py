"""Compiled decoding: prefill and one-token decode as static-shape MindSpore graphs over the eager Cells.

What gets compiled is `model.forward_step` (of any model that has one: ChatGLM-6B, ChatGLM2/3) followed by the
choice of the next token, so a decode step is one graph launch and one read of `batch` token ids. Shapes are
static per (batch, prompt bucket, cache capacity), so a run compiles one prefill graph and one decode graph,
and later runs in the same buckets compile nothing:

- the prompt is left-padded to a bucket; the pads are written to the *last* cache slots and masked for every
  real row, so real tokens keep the slots, positions and mask of the eager path (cache slot i = token i);
- the cache capacity is max_length rounded up to a bucket;
- token ids, positions, cache slots, masks, temperature, top-p and the sampling uniforms are tensors: no
  Python value that changes between steps is baked into a graph.
"""
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from .device import jit_config

BUCKET_STEP = 256  # powers of two up to here, then multiples of it: at most 255 wasted slots past 256


def bucket(n, smallest=16):
    """Round a length up to a bucket: powers of two from `smallest` to BUCKET_STEP, then multiples of it."""
    n = max(int(n), 1)
    if n <= BUCKET_STEP:
        return max(smallest, 1 << (n - 1).bit_length())
    return -(-n // BUCKET_STEP) * BUCKET_STEP


@dataclass
class TokenChoice:
    """How the graph picks the next token: greedy argmax, or top-k → top-p sampling with host uniforms.

    `fallback`: the token every row gets when any score is NaN/Inf (upstream's InvalidScoreLogitsProcessor),
    or None. `rng` supplies one uniform per row and step, consumed exactly as the eager loop consumes it.
    """
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    fallback: int = None
    rng: np.random.Generator = None


def _sample(logits, temperature, top_p, uniform, top_k):
    """Token ids [b] drawn like the eager warpers: temperature, top-k, top-p, then inverse-CDF over vocab order."""
    values, index = ops.topk(logits / temperature, top_k)               # [b, k], best first
    probs = ops.softmax(values, -1)
    # Eager top-p walks the scores in ascending order and drops those whose running sum is <= 1 - top_p
    # (never the best); the running sum of the r-th best is the sum from it down to the worst: a reverse cumsum.
    ascending_sum = ops.CumSum(reverse=True)(probs, -1)
    keep = ops.logical_or(ascending_sum > (1.0 - top_p), ops.arange(top_k) == 0)
    probs = ops.where(keep, probs, ops.zeros_like(probs))
    # numpy's choice() inverts the CDF taken in vocabulary order; sort the candidates by token id to match it.
    ids, order = ops.sort(index.astype(ms.float32), -1)               # ids < 2**24 are exact in float32
    cdf = ops.cumsum(ops.gather_elements(probs, -1, order), -1)
    below = (cdf <= uniform.reshape(-1, 1) * cdf[:, -1:]).astype(ms.int32).sum(-1, keepdims=True)
    pick = ops.minimum(below, top_k - 1)
    return ops.gather_elements(ids, -1, pick).reshape(-1).astype(ms.int32)


class _Step(nn.Cell):
    """`model.forward_step` on the last position followed by the token choice: the unit compiled as a graph."""

    def __init__(self, model, mode, top_k, fallback):
        # auto_prefix=False: holding the model must not rename its parameters (they equal checkpoint names).
        super().__init__(auto_prefix=False)
        self.model = model
        self.mode = mode  # "logits" | "greedy" | "sample"
        self.top_k = top_k
        self.fallback = fallback

    def construct(self, ids, positions, mask, slots, temperature, top_p, uniform, guard):
        logits = self.model.forward_step(ids, positions, mask, slots, True)[:, -1]   # [b, vocab] float32
        if self.mode == "logits":
            return logits
        if self.mode == "greedy":
            tokens = ops.argmax(logits, -1).astype(ms.int32)
        else:
            tokens = _sample(logits, temperature, top_p, uniform, self.top_k)
        # NaN/Inf anywhere → every row gets the fallback token, as the eager guard makes it certain.
        valid = ops.logical_or(ops.logical_not(guard), ops.isfinite(logits).all())
        return ops.where(valid, tokens, ops.full_like(tokens, self.fallback))


def _compile_cache_size():
    """Graphs MindSpore has compiled in this process (None if this MindSpore does not expose the count)."""
    try:
        from mindspore.graph import api
        return len(api.ms_compile_cache)
    except (ImportError, AttributeError, TypeError):
        return None


def _storage_id(param):
    try:
        return param.data_ptr()
    except (AttributeError, RuntimeError):
        return None


class CompiledRunner:
    """The compiled steps of one model, and how many graphs they have compiled (`compiles`)."""

    MAX_STEPS = 8

    def __init__(self, model):
        self.model = model
        self.compiles = 0       # graph compilations counted by MindSpore during our calls
        self.shape_keys = set() # distinct (step, input shapes) called: what a compilation counter keys on
        self._steps = OrderedDict()

    def _fingerprint(self):
        # A graph is bound to the Parameter storages present when it was compiled: new cache Parameters (another
        # buffer shape) or weights replaced with set_data (loading, half()) need steps compiled afresh.
        return tuple((id(p), _storage_id(p)) for _, p in self.model.parameters_and_names())

    def step(self, mode, top_k=0, fallback=None):
        """The jitted step for this token-choice mode and the model's current buffers."""
        key = (self._fingerprint(), mode, top_k, fallback)
        fn = self._steps.pop(key, None)
        if fn is None:
            fn = ms.jit(_Step(self.model, mode, top_k, -1 if fallback is None else fallback), **jit_config())
        self._steps[key] = fn
        while len(self._steps) > self.MAX_STEPS:
            self._steps.popitem(last=False)
        return fn

    def call(self, fn, *inputs):
        """Run a step; count a compilation when MindSpore compiled one (or, failing that, a new shape key)."""
        shape_key = (id(fn.__self__),) + tuple((tuple(t.shape), str(t.dtype)) for t in inputs)
        new_shape = shape_key not in self.shape_keys
        self.shape_keys.add(shape_key)
        before = _compile_cache_size()
        out = fn(*inputs)
        after = _compile_cache_size()
        self.compiles += (after - before) if before is not None else int(new_shape)
        return out


def runner_for(model):
    """The model's CompiledRunner (created on first use)."""
    runner = model.__dict__.get("_compiled_runner")
    if runner is None:
        runner = CompiledRunner(model)
        object.__setattr__(model, "_compiled_runner", runner)
    return runner


def graph_compilations(model):
    """Graphs the compiled decode path has compiled for `model` so far."""
    runner = model.__dict__.get("_compiled_runner")
    return runner.compiles if runner is not None else 0


class CompiledDecoder:
    """`CacheDecoder`'s interface (prefill / step / reorder) on compiled graphs with bucketed static shapes.

    `prefill(choice)` and `step(tokens, choice)` return logits [b, vocab] (numpy float32) when `choice` is None,
    otherwise the chosen token ids [b] picked inside the graph (the only host read of the step).
    """

    def __init__(self, model, ids, mask, positions, capacity):
        self.model = model
        self.runner = runner_for(model)
        batch, seq = ids.shape
        width = bucket(seq)
        pad = width - seq
        self.capacity = bucket(max(capacity, width), smallest=64)
        self.length = seq
        self.limit = capacity
        model.allocate_cache(batch, self.capacity)
        cap = self.capacity
        # Pads go first in the prompt (so its last row is the last real token) but into the *last* cache slots:
        # real tokens keep slots 0..seq-1 as in eager; decoding overwrites the pad slots only when it gets there.
        self.prompt_slots = np.concatenate([np.arange(cap - pad, cap), np.arange(seq)]).astype(np.int32)
        self.prompt_ids = np.concatenate([np.zeros((batch, pad), np.int64), ids], axis=1).astype(np.int32)
        pad_width = [(0, 0)] * (positions.ndim - 1) + [(pad, 0)]
        self.prompt_positions = np.pad(positions, pad_width).astype(np.int32)
        prompt_mask = np.ones((batch, 1, width, cap), dtype=bool)
        prompt_mask[:, :, pad:, :seq] = mask                 # real rows see what they see in eager, never a pad
        prompt_mask[:, :, :pad, cap - pad:] = False          # pad rows see only pads (their output is unused)
        self.prompt_mask = prompt_mask
        self.key_mask = np.ones((batch, cap), dtype=bool)
        self.key_mask[:, :seq] = mask[:, 0, -1, :]
        self.last_position = positions[..., -1:].copy()

    def _run(self, ids, positions, mask, slots, choice):
        batch = ids.shape[0]
        if choice is None:
            fn = self.runner.step("logits")
        else:
            mode = "sample" if choice.do_sample else "greedy"
            fn = self.runner.step(mode, int(choice.top_k) if choice.do_sample else 0, choice.fallback)
        uniform = np.zeros(batch, np.float32)
        if choice is not None and choice.do_sample:
            uniform = choice.rng.random(batch).astype(np.float32)  # one draw per row, as eager's choice() takes
        out = self.runner.call(
            fn, Tensor(ids), Tensor(positions), Tensor(mask), Tensor(slots),
            Tensor(np.float32(choice.temperature if choice else 1.0)),
            Tensor(np.float32(choice.top_p if choice else 1.0)), Tensor(uniform),
            Tensor(np.bool_(choice is not None and choice.fallback is not None)))
        return out.asnumpy()

    def prefill(self, choice=None):
        """Logits [b, vocab] at the last prompt position, or the first chosen tokens [b]."""
        return self._run(self.prompt_ids, self.prompt_positions, self.prompt_mask, self.prompt_slots, choice)

    def step(self, tokens, choice=None):
        """Append one token per row; logits [b, vocab] for the next one, or the next chosen tokens [b]."""
        if self.length >= self.limit:
            raise RuntimeError(f"KV cache full ({self.limit} tokens)")
        slot = self.length
        self.key_mask[:, slot] = False
        self.last_position = self.model.next_position_ids(self.last_position)
        out = self._run(np.asarray(tokens, dtype=np.int32)[:, None], self.last_position.astype(np.int32),
                        self.key_mask[:, None, None, :], np.array([slot], dtype=np.int32), choice)
        self.length += 1
        return out

    def reorder(self, index):
        """Keep rows `index` (beam search)."""
        self.model.reorder_cache(index)
        self.key_mask = self.key_mask[index]
        self.last_position = self.last_position[index]
