"""Generation on the static KV cache: greedy, sampling, beam search, left-padded batches, streaming.

Semantics follow the upstream ChatGLM code as run by transformers 4.33 (what the golden fixtures record).
A call's arguments are checked once (`GenerationOptions`) and turned into a typed `GenerationPlan`; the
`decoding.Decoder` then runs the same Cells eagerly or as compiled graphs, where greedy and top-k/top-p
sampling happen inside the graph and a step reads back only the chosen ids. Scores needed on the host
(output_scores, repetition penalty, other logits processors, beam search) are float32 numpy logits of the last
position on both paths.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cells.masks import PromptMask
from .decoding import MAX_TOP_K, PREFILL_CHUNK, Decoder, TokenChoice, check_sampleable
from .device import compiled_by_default
from .errors import GenerationError

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids [b, s], scores [b, vocab]) → scores

# ----------------------------------------------------------------------------- logits processors and warpers


class InvalidScoreLogitsProcessor:
    """Upstream's guard: NaN/Inf scores become zeros with index 5 set to 5e4, so generation continues."""

    token = 5  # the id upstream forces
    score = 5e4

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if not np.isfinite(scores).all():
            scores = np.zeros_like(scores)
            scores[..., self.token] = self.score
        return scores


class RepetitionPenaltyLogitsProcessor:
    """CTRL-style penalty on tokens already in the sequence (divide positive, multiply negative scores)."""

    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores = scores.copy()
        for row, ids in enumerate(input_ids):
            seen = np.unique(ids)
            s = scores[row, seen]
            scores[row, seen] = np.where(s < 0, s * self.penalty, s / self.penalty)
        return scores


def temperature_warp(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Divide by the temperature."""
    with np.errstate(over="ignore"):  # an overflow is reported by check_sampleable, as the graph reports it
        return scores / np.float32(temperature)


def top_k_warp(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Keep the `top_k` highest scores per row (ties at the k-th value kept), the rest → -inf."""
    top_k = min(int(top_k), scores.shape[-1])
    kth = -np.partition(-scores, top_k - 1, axis=-1)[..., top_k - 1:top_k]
    return np.where(scores < kth, -np.inf, scores).astype(np.float32)


def top_p_warp(scores: np.ndarray, top_p: float) -> np.ndarray:
    """Nucleus filter: drop the lowest tokens whose total probability is at most 1 - top_p (keep at least one)."""
    order = np.argsort(scores, axis=-1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(ordered), axis=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, scores).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis (float32)."""
    x = x.astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sampling_probs(scores: np.ndarray, temperature: float, top_k: int | None, top_p: float) -> np.ndarray:
    """float64 probabilities [b, vocab] to draw from: temperature, then top-k, then top-p, as upstream warps."""
    if temperature != 1.0:
        scores = temperature_warp(scores, temperature)
    check_sampleable(scores, temperature)
    if top_k:
        scores = top_k_warp(scores, top_k)
    if top_p < 1.0:
        scores = top_p_warp(scores, top_p)
    return softmax(scores).astype(np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) over the last axis (float32)."""
    x = x.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- the typed plan


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, (float, np.floating))) and math.isfinite(value)


def _token_ids(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not all(_is_int(v) and v >= 0 for v in values):
        raise GenerationError(f"{name} must be a token id or a list of token ids, got {value!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class GenerationOptions:
    """The caller's generation arguments, checked once here: both decode paths see the same valid values."""
    max_length: int | None = None
    max_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50              # 0: no top-k filter (as in transformers)
    repetition_penalty: float = 1.0
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    logits_processor: Sequence[LogitsProcessor] | None = None
    seed: int | None = None
    output_scores: bool = False
    compiled: bool | None = None

    def __post_init__(self) -> None:
        for name in ("max_length", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value > 0):
                raise GenerationError(f"{name} must be a positive integer, got {value!r}")
        if not (_is_int(self.num_beams) and self.num_beams >= 1):
            raise GenerationError(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        if self.num_beams > 1 and self.do_sample:
            raise GenerationError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
        if not (_is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            raise GenerationError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if self.do_sample:
            if not (_is_number(self.temperature) and self.temperature > 0):
                raise GenerationError(f"temperature must be a finite number > 0 when sampling, "
                                      f"got {self.temperature!r}")
            if not (_is_int(self.top_k) and self.top_k >= 0):
                raise GenerationError(f"top_k must be an integer >= 0 (0: no top-k), got {self.top_k!r}")
            if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
                raise GenerationError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        _token_ids("eos_token_id", self.eos_token_id)
        if self.pad_token_id is not None and _token_ids("pad_token_id", self.pad_token_id) is None:
            raise GenerationError(f"pad_token_id must be a token id, got {self.pad_token_id!r}")
        if self.logits_processor is not None and not all(callable(p) for p in self.logits_processor):
            raise GenerationError("logits_processor must be a list of callables (input_ids, scores) -> scores")


@dataclass
class GenerationPlan:
    """One run decided up front: the prompt, when to stop, and how each next token is chosen."""
    ids: np.ndarray                  # prompt int64 [b, s]
    mask: PromptMask                 # which prompt keys each prompt token is masked from
    positions: np.ndarray            # int64 [b, 2 | 1, s]
    options: GenerationOptions
    max_length: int                  # tokens per row when done, prompt included
    eos: tuple[int, ...]
    pad: int
    processors: tuple[LogitsProcessor, ...]
    rng: np.random.Generator
    compiled: bool
    choice: TokenChoice | None       # set when the graph chooses tokens itself (no scores needed on the host)

    @classmethod
    def build(cls, model: Any, input_ids: Any, attention_mask: Any, position_ids: Any,
              options: GenerationOptions) -> GenerationPlan:
        """The plan of `options` for `model` on these inputs (ids, mask and positions checked by the model)."""
        ids = model.check_ids(input_ids)
        mask, positions = model.prompt_inputs(ids, attention_mask, position_ids)
        seq = ids.shape[1]
        if options.max_new_tokens is not None:
            max_length = seq + options.max_new_tokens
        else:
            max_length = options.max_length or 20  # transformers' GenerationConfig default, which upstream inherits
        # As in transformers, at least one token is generated even if the prompt already reaches max_length.
        max_length = max(max_length, seq + 1)
        eos = options.eos_token_id if options.eos_token_id is not None else model.config.eos_token_id
        pad = options.pad_token_id if options.pad_token_id is not None else model.config.pad_token_id
        processors = []
        if options.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
        processors.extend(options.logits_processor or [])
        try:
            rng = np.random.default_rng(options.seed)
        except (TypeError, ValueError) as err:
            raise GenerationError(f"seed must be None or a non-negative integer, got {options.seed!r}") from err
        compiled = options.compiled
        if compiled is None:
            compiled = model.compiled_decode and compiled_by_default(model.compute_dtype)
        compiled = bool(compiled)
        return cls(ids=ids, mask=mask, positions=positions, options=options, max_length=max_length,
                   eos=_token_ids("eos_token_id", eos), pad=int(pad), processors=tuple(processors), rng=rng,
                   compiled=compiled, choice=_graph_choice(options, processors, compiled, model.config.vocab_size, rng))

    def next_tokens(self, ids: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [b], the scores they were chosen from) for host logits [b, vocab]."""
        scores = logits
        for processor in self.processors:
            scores = processor(ids, scores)
        o = self.options
        if not o.do_sample:
            return np.argmax(scores, axis=-1), scores
        probs = sampling_probs(scores, o.temperature, o.top_k, o.top_p)
        return np.array([self.rng.choice(probs.shape[-1], p=p / p.sum()) for p in probs]), scores


def _graph_choice(options: GenerationOptions, processors: list, compiled: bool, vocab_size: int,
                  rng: np.random.Generator) -> TokenChoice | None:
    """How the compiled graph chooses tokens, or None when the host must see the scores."""
    # The token is chosen inside the graph unless the host needs the scores: to return them, for beam search,
    # or for processors the graph does not have (only upstream's NaN/Inf guard is built in), or when top_k is
    # off or above the graph's MAX_TOP_K candidates.
    guards = [p for p in processors if type(p) is InvalidScoreLogitsProcessor]
    if (not compiled or len(guards) < len(processors) or options.output_scores or options.num_beams > 1
            or (options.do_sample and not 0 < min(options.top_k, vocab_size) <= MAX_TOP_K)):
        return None
    return TokenChoice(do_sample=bool(options.do_sample), temperature=float(options.temperature),
                       top_p=float(options.top_p), top_k=min(options.top_k, vocab_size) if options.do_sample else 0,
                       guard_token=guards[0].token if guards else None,
                       guard_score=guards[0].score if guards else 0.0, rng=rng)


# ----------------------------------------------------------------------------- the loops


class GenerationMixin:
    """`generate` / `stream_generate` for a model with `check_ids`, `prompt_inputs`, `forward_step` and caches."""

    compiled_decode = True  # default for `compiled=None`: compiled graphs; False runs the Cells eagerly
    prefill_chunk = PREFILL_CHUNK  # longer prompts are prefilled in pieces of this many tokens

    def generate(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None,
                 max_length: int | None = None, max_new_tokens: int | None = None, do_sample: bool = False,
                 num_beams: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 50,
                 repetition_penalty: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, logits_processor: Sequence[LogitsProcessor] | None = None,
                 seed: int | None = None, output_scores: bool = False,
                 compiled: bool | None = None) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Generate continuations; int64 [batch, total_len] (and per-step scores if `output_scores`).

        `compiled`: True runs static-shape compiled graphs, False the eager Cells, None the model's
        `compiled_decode` attribute (except float16 on CPU, see `device.compiled_by_default`). Both give the
        same tokens.
        """
        options = GenerationOptions(max_length=max_length, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    num_beams=num_beams, temperature=temperature, top_p=top_p, top_k=top_k,
                                    repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                                    pad_token_id=pad_token_id, logits_processor=logits_processor, seed=seed,
                                    output_scores=output_scores, compiled=compiled)
        plan = GenerationPlan.build(self, input_ids, attention_mask, position_ids, options)
        if num_beams > 1:
            ids, scores = _beam_search(self, plan), []
        else:
            ids, scores = None, []
            for ids, step_scores, _ in _sample_steps(self, plan):
                scores.append(step_scores)
        return (ids, scores) if output_scores else ids

    def stream_generate(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None,
                        max_length: int | None = None, max_new_tokens: int | None = None, do_sample: bool = False,
                        temperature: float = 1.0, top_p: float = 1.0, top_k: int = 50,
                        repetition_penalty: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
                        pad_token_id: int | None = None, logits_processor: Sequence[LogitsProcessor] | None = None,
                        seed: int | None = None, include_last: bool = False,
                        compiled: bool | None = None) -> Iterator[np.ndarray]:
        """Yield the growing int64 [batch, len] ids after each step.

        Like upstream, the step that ends generation (eos or max_length) is not yielded unless `include_last`.
        `compiled` as in `generate`.
        """
        options = GenerationOptions(max_length=max_length, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    temperature=temperature, top_p=top_p, top_k=top_k,
                                    repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                                    pad_token_id=pad_token_id, logits_processor=logits_processor, seed=seed,
                                    compiled=compiled)
        plan = GenerationPlan.build(self, input_ids, attention_mask, position_ids, options)
        for ids, _, stop in _sample_steps(self, plan):
            if stop and not include_last:
                return
            yield ids

    def warmup(self, max_length: int = 2048, batch: int = 1, longest_prompt: int | None = None,
               do_sample: bool = True) -> int:
        """Compile ahead the graphs a chat of `max_length` would compile on first use (see `glm_ms.warmup`);
        returns how many were compiled: on a GE backend each takes minutes."""
        from .warmup import warm_up
        return warm_up(self, max_length, batch, longest_prompt, do_sample)


def _sample_steps(model: Any, plan: GenerationPlan) -> Iterator[tuple[np.ndarray, np.ndarray | None, bool]]:
    """Greedy or sampling: (ids so far, the step's host scores or None, whether this step ends the run)."""
    ids = plan.ids
    decoder = Decoder(model, ids, plan.mask, plan.positions, plan.max_length, plan.compiled, model.prefill_chunk)
    unfinished = np.ones(ids.shape[0], dtype=bool)
    choice = plan.choice
    out = decoder.prefill(choice)
    while True:
        if choice is not None:
            tokens, scores = out, None  # chosen in the graph; only the ids came back
        else:
            tokens, scores = plan.next_tokens(ids, out)
        # Finished rows keep receiving pad, as transformers does.
        tokens = np.where(unfinished, tokens, plan.pad).astype(np.int64)
        ids = np.concatenate([ids, tokens[:, None]], axis=1)
        unfinished &= ~np.isin(tokens, plan.eos)
        stop = not unfinished.any() or ids.shape[1] >= plan.max_length
        yield ids, scores, stop
        if stop:
            return
        out = decoder.step(tokens, choice)


def _beam_search(model: Any, plan: GenerationPlan) -> np.ndarray:
    """transformers' beam search (length_penalty 1, early_stopping False) over host log-probs."""
    beams = plan.options.num_beams
    batch = plan.ids.shape[0]
    ids = np.repeat(plan.ids, beams, axis=0)
    decoder = Decoder(model, ids, plan.mask.repeat(beams), np.repeat(plan.positions, beams, axis=0),
                      plan.max_length, plan.compiled, model.prefill_chunk)
    hyps = [BeamHypotheses(beams) for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
    beam_scores = np.zeros((batch, beams), dtype=np.float32)
    beam_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step one
    beam_scores = beam_scores.reshape(-1)
    logits = decoder.prefill()
    while True:
        scores = log_softmax(logits)
        for processor in plan.processors:
            scores = processor(ids, scores)
        vocab = scores.shape[-1]
        scores = (scores + beam_scores[:, None]).reshape(batch, beams * vocab)
        next_scores, next_tokens, rows = _expand_beams(scores, vocab, beams, ids, hyps, done, plan)
        beam_scores = next_scores.reshape(-1)
        rows = rows.reshape(-1)
        ids = np.concatenate([ids[rows], next_tokens.reshape(-1, 1)], axis=1)
        if done.all() or ids.shape[1] >= plan.max_length:
            break
        decoder.reorder(rows)
        logits = decoder.step(next_tokens.reshape(-1))
    return _finalize_beams(hyps, done, ids, beam_scores, beams, plan)


def _expand_beams(scores: np.ndarray, vocab: int, beams: int, ids: np.ndarray, hyps: list[BeamHypotheses],
                  done: np.ndarray, plan: GenerationPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One beam step: (scores, tokens, source rows) [batch, beams] of the kept beams; finished hypotheses added."""
    batch = scores.shape[0]
    n_top = max(2, 1 + len(plan.eos)) * beams
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n_top]
    top_scores = np.take_along_axis(scores, top, axis=1)
    next_scores = np.zeros((batch, beams), dtype=np.float32)
    next_tokens = np.full((batch, beams), plan.pad, dtype=np.int64)
    rows = np.zeros((batch, beams), dtype=np.int64)
    cur_len = ids.shape[1] + 1
    for b in range(batch):
        if done[b]:
            rows[b] = b * beams
            continue
        slot = 0
        for rank, (flat, score) in enumerate(zip(top[b], top_scores[b])):
            token, row = int(flat % vocab), b * beams + int(flat // vocab)
            if token in plan.eos:
                if rank < beams:  # an eos outside the top `beams` candidates is not a hypothesis
                    hyps[b].add(ids[row], float(score))
            else:
                next_scores[b, slot], next_tokens[b, slot], rows[b, slot] = score, token, row
                slot += 1
            if slot == beams:
                break
        done[b] = done[b] or hyps[b].is_done(float(top_scores[b].max()), cur_len)
    return next_scores, next_tokens, rows


class BeamHypotheses:
    """The `num_beams` best finished hypotheses of one batch row (length-normalized log-probs)."""

    def __init__(self, num_beams: int, length_penalty: float = 1.0):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams = []
        self.worst_score = 1e9

    def add(self, hyp: np.ndarray, sum_logprobs: float) -> None:
        """Keep `hyp` if it is among the best so far."""
        score = sum_logprobs / (len(hyp) ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, np.array(hyp)))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        """No open beam can beat the worst kept hypothesis any more (transformers' early_stopping=False)."""
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / cur_len ** self.length_penalty


def _finalize_beams(hyps: list[BeamHypotheses], done: np.ndarray, ids: np.ndarray, beam_scores: np.ndarray,
                    beams: int, plan: GenerationPlan) -> np.ndarray:
    for b, hyp in enumerate(hyps):
        if not done[b]:
            for k in range(beams):
                hyp.add(ids[b * beams + k], float(beam_scores[b * beams + k]))
    # transformers sorts by score (stable) and pops the last: among equal scores the latest added wins.
    best = [sorted(hyp.beams, key=lambda item: item[0])[-1][1] for hyp in hyps]
    width = min(max(len(h) for h in best) + 1, plan.max_length)
    out = np.full((len(best), width), plan.pad, dtype=np.int64)
    for i, h in enumerate(best):
        out[i, :len(h)] = h
        if len(h) < width:
            out[i, len(h)] = plan.eos[0]
    return out
