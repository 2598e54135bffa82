"""Generation on the static KV cache: greedy, sampling, beam search, left-padded batches, streaming.

Semantics follow the upstream ChatGLM-6B code as run by transformers 4.33 (what the golden fixtures record).
Two ways to run the same Cells: compiled graphs (`compiled.CompiledDecoder`, the default), where greedy and
top-k/top-p sampling happen inside the decode graph and a step reads back only the chosen ids; and eager
PyNative (`CacheDecoder`, `compiled=False`). Scores needed on the host (output_scores, repetition penalty, other
logits processors, beam search) are float32 numpy logits of the last position in both.
"""
import numpy as np
from mindspore import Tensor

from .compiled import CompiledDecoder, TokenChoice
from .device import compiled_by_default

# ----------------------------------------------------------------------------- logits processors


class InvalidScoreLogitsProcessor:
    """Upstream's guard: NaN/Inf scores become zeros with index 5 set to 5e4, so generation continues."""

    token = 5  # the id upstream forces; the compiled path picks it in the graph

    def __call__(self, input_ids, scores):
        if not np.isfinite(scores).all():
            scores = np.zeros_like(scores)
            scores[..., self.token] = 5e4
        return scores


class RepetitionPenaltyLogitsProcessor:
    """CTRL-style penalty on tokens already in the sequence (divide positive, multiply negative scores)."""

    def __init__(self, penalty):
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty = penalty

    def __call__(self, input_ids, scores):
        scores = scores.copy()
        for row, ids in enumerate(input_ids):
            seen = np.unique(ids)
            s = scores[row, seen]
            scores[row, seen] = np.where(s < 0, s * self.penalty, s / self.penalty)
        return scores


def temperature_warp(scores, temperature):
    """Divide by the temperature (> 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return scores / np.float32(temperature)


def top_k_warp(scores, top_k):
    """Keep the `top_k` highest scores per row (ties at the k-th value kept), the rest → -inf."""
    top_k = min(max(int(top_k), 1), scores.shape[-1])
    kth = -np.partition(-scores, top_k - 1, axis=-1)[..., top_k - 1:top_k]
    return np.where(scores < kth, -np.inf, scores).astype(np.float32)


def top_p_warp(scores, top_p):
    """Nucleus filter: drop the lowest tokens whose total probability is at most 1 - top_p (keep at least one)."""
    order = np.argsort(scores, axis=-1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(ordered), axis=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, scores).astype(np.float32)


def softmax(x):
    """Numerically stable softmax over the last axis (float32)."""
    x = x.astype(np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    """log(softmax(x)) over the last axis (float32)."""
    x = x.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- the cache driver


class CacheDecoder:
    """Feeds a prompt and then one token per step through the model's static KV cache."""

    def __init__(self, model, ids, mask, positions, capacity):
        self.model = model
        batch, seq = ids.shape
        self.capacity = capacity
        self.length = seq
        model.allocate_cache(batch, capacity)
        # Decode rows see what the last prompt row saw plus every generated token; unwritten slots stay masked.
        self.key_mask = np.ones((batch, capacity), dtype=bool)
        self.key_mask[:, :seq] = mask[:, 0, -1, :]
        self.prompt_mask = np.concatenate([mask, np.ones((batch, 1, seq, capacity - seq), dtype=bool)], axis=-1)
        self.last_position = positions[..., -1:].copy()
        self.prompt_ids = ids
        self.prompt_positions = positions

    def prefill(self):
        """Logits [b, vocab] at the last prompt position."""
        logits = self.model.forward_step(Tensor(self.prompt_ids.astype(np.int32)),
                                         Tensor(self.prompt_positions.astype(np.int32)),
                                         Tensor(self.prompt_mask), Tensor(np.arange(self.length, dtype=np.int32)),
                                         last_only=True)
        return logits.asnumpy()[:, -1]

    def step(self, tokens):
        """Append one token per row; logits [b, vocab] for the next one."""
        if self.length >= self.capacity:
            raise RuntimeError(f"KV cache full ({self.capacity} tokens)")
        slot = self.length
        self.key_mask[:, slot] = False
        self.last_position = self.model.next_position_ids(self.last_position)
        logits = self.model.forward_step(Tensor(np.asarray(tokens, dtype=np.int32)[:, None]),
                                         Tensor(self.last_position.astype(np.int32)),
                                         Tensor(self.key_mask[:, None, None, :]),
                                         Tensor(np.array([slot], dtype=np.int32)), last_only=True)
        self.length += 1
        return logits.asnumpy()[:, -1]

    def reorder(self, index):
        """Keep rows `index` (beam search)."""
        self.model.reorder_cache(index)
        self.key_mask = self.key_mask[index]
        self.last_position = self.last_position[index]


# ----------------------------------------------------------------------------- the loops


class GenerationMixin:
    """`generate` / `stream_generate` for a model with `check_ids`, `prefix_inputs`, `forward_step` and caches."""

    compiled_decode = True  # default for `compiled=None`: compiled graphs; False runs the Cells eagerly

    def generate(self, input_ids, attention_mask=None, position_ids=None, max_length=None, max_new_tokens=None,
                 do_sample=False, num_beams=1, temperature=1.0, top_p=1.0, top_k=50, repetition_penalty=1.0,
                 eos_token_id=None, pad_token_id=None, logits_processor=None, seed=None, output_scores=False,
                 compiled=None):
        """Generate continuations; int64 [batch, total_len] (and per-step scores if `output_scores`).

        `compiled`: True runs static-shape compiled graphs, False the eager Cells, None the model's
        `compiled_decode` attribute (except float16 on CPU, see `device.compiled_by_default`). Both give the
        same tokens.
        """
        run = self._prepare_run(input_ids, attention_mask, position_ids, max_length, max_new_tokens, do_sample,
                                num_beams, temperature, top_p, top_k, repetition_penalty, eos_token_id,
                                pad_token_id, logits_processor, seed, compiled, output_scores)
        if num_beams > 1:
            ids, scores = self._beam_search(run), []
        else:
            ids, scores = None, []
            for ids, step_scores, _ in self._sample_steps(run):
                scores.append(step_scores)
        return (ids, scores) if output_scores else ids

    def stream_generate(self, input_ids, attention_mask=None, position_ids=None, max_length=None,
                        max_new_tokens=None, do_sample=False, temperature=1.0, top_p=1.0, top_k=50,
                        repetition_penalty=1.0, eos_token_id=None, pad_token_id=None, logits_processor=None,
                        seed=None, include_last=False, compiled=None):
        """Yield the growing int64 [batch, len] ids after each step.

        Like upstream, the step that ends generation (eos or max_length) is not yielded unless `include_last`.
        `compiled` as in `generate`.
        """
        run = self._prepare_run(input_ids, attention_mask, position_ids, max_length, max_new_tokens, do_sample, 1,
                                temperature, top_p, top_k, repetition_penalty, eos_token_id, pad_token_id,
                                logits_processor, seed, compiled, False)
        for ids, _, stop in self._sample_steps(run):
            if stop and not include_last:
                return
            yield ids

    # -- shared set-up
    def _prepare_run(self, input_ids, attention_mask, position_ids, max_length, max_new_tokens, do_sample,
                     num_beams, temperature, top_p, top_k, repetition_penalty, eos_token_id, pad_token_id,
                     logits_processor, seed, compiled=None, output_scores=False):
        ids = self.check_ids(input_ids)
        mask, positions = self.prefix_inputs(ids, attention_mask, position_ids)
        seq = ids.shape[1]
        if max_new_tokens is not None:
            max_length = seq + int(max_new_tokens)
        elif max_length is None:
            max_length = 20  # transformers' GenerationConfig default, which upstream inherits
        # As in transformers, at least one token is generated even if the prompt already reaches max_length.
        total = max(int(max_length), seq + 1)
        eos = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        eos = [int(e) for e in (eos if isinstance(eos, (list, tuple, np.ndarray)) else [eos])]
        pad = pad_token_id if pad_token_id is not None else self.config.pad_token_id
        if int(num_beams) < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if num_beams > 1 and do_sample:
            raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        processors = []
        if repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
        processors.extend(logits_processor or [])
        warpers = []
        if do_sample:
            if temperature != 1.0:
                warpers.append(lambda s: temperature_warp(s, temperature))
            if top_k:
                warpers.append(lambda s: top_k_warp(s, top_k))
            if top_p < 1.0:
                warpers.append(lambda s: top_p_warp(s, top_p))
        rng = np.random.default_rng(seed)
        if compiled is None:
            compiled = self.compiled_decode and compiled_by_default(self.compute_dtype)
        compiled = bool(compiled)
        # The token is chosen inside the graph unless the host needs the scores: to return them, or for
        # processors the graph does not have (only upstream's NaN/Inf guard is built in).
        host = [p for p in processors if type(p) is not InvalidScoreLogitsProcessor]
        guard = [p.token for p in processors if type(p) is InvalidScoreLogitsProcessor]
        choice = None
        if compiled and not host and not output_scores and (not do_sample or top_k):
            choice = TokenChoice(do_sample=bool(do_sample), temperature=float(temperature), top_p=float(top_p),
                                 top_k=min(int(top_k), self.config.vocab_size) if do_sample else 0,
                                 fallback=guard[0] if guard else None, rng=rng)
        return dict(ids=ids, mask=mask, positions=positions, max_length=total, eos=eos, pad=int(pad),
                    processors=processors, warpers=warpers, do_sample=do_sample, num_beams=int(num_beams),
                    rng=rng, compiled=compiled, choice=choice)

    def _decoder(self, run, ids, mask, positions):
        decoder = CompiledDecoder if run["compiled"] else CacheDecoder
        return decoder(self, ids, mask, positions, run["max_length"])

    # -- greedy and sampling
    def _sample_steps(self, run):
        ids = run["ids"]
        decoder = self._decoder(run, ids, run["mask"], run["positions"])
        unfinished = np.ones(ids.shape[0], dtype=bool)
        choice = run["choice"]
        if choice is not None:
            tokens = decoder.prefill(choice)
        else:
            logits = decoder.prefill()
        while True:
            if choice is not None:
                scores = None  # chosen in the graph; only the ids came back
            else:
                scores = logits
                for processor in run["processors"]:
                    scores = processor(ids, scores)
                if run["do_sample"]:
                    for warp in run["warpers"]:
                        scores = warp(scores)
                    probs = softmax(scores)
                    tokens = np.array([run["rng"].choice(probs.shape[-1], p=p / p.sum())
                                       for p in probs.astype(np.float64)])
                else:
                    tokens = np.argmax(scores, axis=-1)
            # Finished rows keep receiving pad, as transformers does.
            tokens = np.where(unfinished, tokens, run["pad"]).astype(np.int64)
            ids = np.concatenate([ids, tokens[:, None]], axis=1)
            unfinished &= ~np.isin(tokens, run["eos"])
            stop = not unfinished.any() or ids.shape[1] >= run["max_length"]
            yield ids, scores, stop
            if stop:
                return
            if choice is not None:
                tokens = decoder.step(tokens, choice)
            else:
                logits = decoder.step(tokens)

    # -- beam search
    def _beam_search(self, run):
        beams = run["num_beams"]
        ids = np.repeat(run["ids"], beams, axis=0)
        batch = run["ids"].shape[0]
        decoder = self._decoder(run, ids, np.repeat(run["mask"], beams, axis=0),
                                np.repeat(run["positions"], beams, axis=0))
        hyps = [BeamHypotheses(beams) for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        beam_scores = np.zeros((batch, beams), dtype=np.float32)
        beam_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step one
        beam_scores = beam_scores.reshape(-1)
        logits = decoder.prefill()
        eos = run["eos"]
        while True:
            scores = log_softmax(logits)
            for processor in run["processors"]:
                scores = processor(ids, scores)
            vocab = scores.shape[-1]
            scores = (scores + beam_scores[:, None]).reshape(batch, beams * vocab)
            n_top = max(2, 1 + len(eos)) * beams
            top = np.argsort(-scores, axis=1, kind="stable")[:, :n_top]
            top_scores = np.take_along_axis(scores, top, axis=1)
            next_beam_scores = np.zeros((batch, beams), dtype=np.float32)
            next_tokens = np.full((batch, beams), run["pad"], dtype=np.int64)
            next_rows = np.zeros((batch, beams), dtype=np.int64)
            cur_len = ids.shape[1] + 1
            for b in range(batch):
                if done[b]:
                    next_rows[b] = b * beams
                    continue
                slot = 0
                for rank, (flat, score) in enumerate(zip(top[b], top_scores[b])):
                    token, row = int(flat % vocab), b * beams + int(flat // vocab)
                    if token in eos:
                        if rank < beams:  # an eos outside the top `beams` candidates is not a hypothesis
                            hyps[b].add(ids[row], float(score))
                    else:
                        next_beam_scores[b, slot], next_tokens[b, slot], next_rows[b, slot] = score, token, row
                        slot += 1
                    if slot == beams:
                        break
                done[b] = done[b] or hyps[b].is_done(float(top_scores[b].max()), cur_len)
            beam_scores = next_beam_scores.reshape(-1)
            rows = next_rows.reshape(-1)
            ids = np.concatenate([ids[rows], next_tokens.reshape(-1, 1)], axis=1)
            if done.all() or ids.shape[1] >= run["max_length"]:
                break
            decoder.reorder(rows)
            logits = decoder.step(next_tokens.reshape(-1))
        return _finalize_beams(hyps, done, ids, beam_scores, beams, run)


class BeamHypotheses:
    """The `num_beams` best finished hypotheses of one batch row (length-normalized log-probs)."""

    def __init__(self, num_beams, length_penalty=1.0):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams = []
        self.worst_score = 1e9

    def add(self, hyp, sum_logprobs):
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

    def is_done(self, best_sum_logprobs, cur_len):
        """No open beam can beat the worst kept hypothesis any more (transformers' early_stopping=False)."""
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / cur_len ** self.length_penalty


def _finalize_beams(hyps, done, ids, beam_scores, beams, run):
    for b, hyp in enumerate(hyps):
        if not done[b]:
            for k in range(beams):
                hyp.add(ids[b * beams + k], float(beam_scores[b * beams + k]))
    # transformers sorts by score (stable) and pops the last: among equal scores the latest added wins.
    best = [sorted(hyp.beams, key=lambda item: item[0])[-1][1] for hyp in hyps]
    lengths = [len(h) for h in best]
    width = min(max(lengths) + 1, run["max_length"])
    out = np.full((len(best), width), run["pad"], dtype=np.int64)
    for i, h in enumerate(best):
        out[i, :len(h)] = h
        if len(h) < width:
            out[i, len(h)] = run["eos"][0]
    return out
