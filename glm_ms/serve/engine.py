"""The serving engine: continuous batching of token-level requests over one batched static KV cache.

`Engine(model).submit(prompt_ids, max_new_tokens, sampling)` returns a `Handle` at once; iterating it (plainly or
with `async for`) yields `TokenEvent`s and ends with one `Finished`. A background thread owns the model: it waits
for work, places each queued request into a free cache row (a batch-1 prefill, see glm_ms.serve.rows), and runs
one decode step for all busy rows at a time. A row leaves on a stop token, `max_new_tokens` or `Handle.cancel()`
and is reused by the next request in the queue. The engine knows token ids only; text (detokenizing, stop
strings, reply clean-up) is glm_ms.serve.text, on the consumer's side.

While an engine runs, its thread is the only user of the model: do not call `generate` / `chat` on the same model
object from elsewhere (they would switch its caches).
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..decoding import bucket
from ..device import compiled_by_default
from ..errors import GenerationError, GlmMsError
from .metrics import EngineMetrics
from .rows import BatchRows, Prompt
from .sampling import LogitsProcessor, RowSampler, Sampling

log = logging.getLogger(__name__)


class EngineError(GlmMsError, RuntimeError):
    """The engine cannot take or finish a request (see the subclasses)."""


class QueueFull(EngineError):
    """Every row is busy and the queue holds `max_queue` requests already: try again later."""


class EngineStopped(EngineError):
    """The engine is shutting down (or has stopped): the request was not, or not completely, served."""


class RequestTooLong(GenerationError):
    """The prompt plus the requested new tokens do not fit in one cache row."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of a request (never a stop token)."""
    token: int


@dataclass(frozen=True)
class Finished:
    """The end of a request: why ("stop", "length" or "cancelled") and how many tokens went in and came out.

    `completion_tokens` counts every generated token, the stop token that ended the answer included.
    """
    reason: str
    prompt_tokens: int
    completion_tokens: int
    stop_token: int | None = None


Event = TokenEvent | Finished


class Handle:
    """A submitted request: iterate it for its events (sync or async), `cancel()` to end it early."""

    def __init__(self, engine: Engine, request_id: int, prompt: Prompt, max_new_tokens: int, sampler: RowSampler,
                 stop_ids: frozenset[int]):
        self.engine = engine
        self.id = request_id
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler
        self.stop_ids = stop_ids
        self.submitted = time.monotonic()
        self.cancelled = False
        self.done = False
        self.generated = 0
        self._events: collections.deque = collections.deque()
        self._ready = threading.Condition()
        try:
            self._loop = asyncio.get_running_loop()
            self._wakeup = asyncio.Event()
        except RuntimeError:  # submitted outside an event loop: sync iteration only
            self._loop, self._wakeup = None, None

    @property
    def prompt_tokens(self) -> int:
        """How many ids the prompt has."""
        return len(self.prompt.ids)

    def cancel(self) -> None:
        """Stop generating: the row is freed before the next decode step; iteration ends with `cancelled`."""
        self.engine.cancel(self)

    def deliver(self, event: Event | GlmMsError) -> None:
        """Hand the consumer an event, or an error it raises (called by the engine thread)."""
        with self._ready:
            self._events.append(event)
            self._ready.notify_all()
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wakeup.set)
            except RuntimeError:  # the consumer's loop has closed: nobody is listening
                pass

    def _next(self, event: Event | GlmMsError) -> Event:
        if isinstance(event, GlmMsError):
            raise event
        return event

    def __iter__(self) -> Iterator[Event]:
        while True:
            with self._ready:
                while not self._events:
                    self._ready.wait()
                event = self._events.popleft()
            yield self._next(event)
            if isinstance(event, Finished):
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._wakeup is None:
            raise EngineError("async iteration needs a handle submitted inside the event loop")
        while True:
            with self._ready:
                event = self._events.popleft() if self._events else None
                if event is None:
                    self._wakeup.clear()
            if event is None:
                await self._wakeup.wait()
                continue
            yield self._next(event)
            if isinstance(event, Finished):
                return

    def tokens(self) -> tuple[list[int], Finished]:
        """Wait for the whole answer: (generated ids without the stop token, the Finished event)."""
        ids = []
        for event in self:
            if isinstance(event, TokenEvent):
                ids.append(event.token)
            else:
                return ids, event
        raise EngineError("the request ended without a Finished event")


@dataclass
class _Row:
    handle: Handle
    next_token: int
    last_time: float = field(default_factory=time.monotonic)


class Engine:
    """Continuous batching over `slots` rows of `capacity` tokens (prompt + answer) each; see the module docstring.

    `max_queue`: requests waiting for a row beyond which `submit` raises QueueFull. `capacity`: tokens per row,
    rounded up to a cache bucket (default: the family's chat max_length). `compiled`: graphs (default where the
    model's generate compiles) or eager Cells. `logits_processor`: applied to every request's scores, as
    `generate(logits_processor=...)` does.
    """

    def __init__(self, model, slots: int = 4, max_queue: int = 64, capacity: int | None = None,
                 compiled: bool | None = None, logits_processor: Sequence[LogitsProcessor] = ()):
        from .. import families
        if not (isinstance(slots, int) and slots >= 1):
            raise GenerationError(f"slots must be an integer >= 1, got {slots!r}")
        if not (isinstance(max_queue, int) and max_queue >= 0):
            raise GenerationError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        capacity = families.get(model.config.family).chat.max_length if capacity is None else capacity
        if not (isinstance(capacity, int) and capacity >= 2):
            raise GenerationError(f"capacity must be an integer >= 2, got {capacity!r}")
        self.model = model
        self.slots = slots
        self.max_queue = max_queue
        self.capacity = bucket(capacity, smallest=64)
        self.compiled = bool(compiled_by_default(model.compute_dtype) if compiled is None else compiled)
        self.logits_processor = tuple(logits_processor)
        self.metrics = EngineMetrics(slots)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._waiting: collections.deque[Handle] = collections.deque()
        self._rows: list[_Row | None] = [None] * slots
        self._joining = 0  # requests taken from the queue and being placed into rows
        self._stopping = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="glm-ms-engine", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    # ----- the caller's side
    def submit(self, prompt_ids: Sequence[int], max_new_tokens: int | None = None, sampling: Sampling = Sampling(),
               stop_ids: Sequence[int] | None = None) -> Handle:
        """Queue a request; its Handle yields the answer's tokens. Raises RequestTooLong, QueueFull, EngineStopped.

        `max_new_tokens` None fills the row; `stop_ids` default to the model's eos.
        """
        ids = self.model.check_ids([list(prompt_ids)])
        seq = ids.shape[1]
        if max_new_tokens is None:
            max_new_tokens = max(self.capacity - seq, 1)
        if not (isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1):
            raise GenerationError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if seq + max_new_tokens > self.capacity:
            raise RequestTooLong(f"this server's context length is {self.capacity} tokens (prompt + new tokens); "
                                 f"this request needs {seq + max_new_tokens} ({seq} in the prompt, "
                                 f"{max_new_tokens} new): shorten the prompt or lower max_tokens")
        mask, positions = self.model.prefix_inputs(ids)
        prompt = Prompt(ids[0], mask[0, 0], positions[0])
        stops = self.model.config.eos_token_id if stop_ids is None else stop_ids
        stops = frozenset(int(s) for s in (stops if isinstance(stops, (list, tuple, set, frozenset)) else [stops]))
        handle = Handle(self, next(self._ids), prompt, max_new_tokens,
                        RowSampler(sampling, ids[0].tolist(), self.logits_processor), stops)
        with self._lock:
            if self._stopping:
                raise EngineStopped("the server is shutting down")
            # Free rows not yet claimed by a request being placed will take waiting ones at once.
            free = max(self._rows.count(None) - self._joining, 0)
            if len(self._waiting) >= self.max_queue + free:
                self.metrics.rejected += 1
                raise QueueFull(f"all {self.slots} slots are busy and {len(self._waiting)} requests are queued "
                                f"(max_queue {self.max_queue}); retry later")
            self._waiting.append(handle)
            self._lock.notify_all()
        return handle

    def cancel(self, handle: Handle) -> None:
        """End `handle`: dropped from the queue now, or its row freed before the next decode step."""
        with self._lock:
            if handle.done or handle.cancelled:
                return
            handle.cancelled = True
            if handle in self._waiting:
                self._waiting.remove(handle)
                self._finish(handle, "cancelled")
            self._lock.notify_all()

    def warmup(self, prompt_ids: Sequence[int]) -> None:
        """Compile the graphs a first request would wait for: a short prefill, greedy and sampling decode steps."""
        for sampling in (Sampling(), Sampling(temperature=1.0, seed=0)):
            self.submit(prompt_ids, 2, sampling).tokens()

    def stats(self) -> dict[str, int]:
        """Queue length and busy rows now."""
        with self._lock:
            return {"queued": len(self._waiting), "active": sum(r is not None for r in self._rows),
                    "slots": self.slots}

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop: queued and running requests end with EngineStopped, the thread exits (waits up to `timeout` s)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """False once `shutdown` has been called."""
        return not self._stopping

    # ----- the engine thread
    def _run(self) -> None:
        try:
            self.rows = BatchRows(self.model, self.slots, self.capacity, self.compiled)
        except BaseException as err:  # surfaced by the constructor, in the caller's thread
            self._start_error = err
            self._started.set()
            return
        self._started.set()
        try:
            while self._serve_once():
                pass
        except BaseException:  # a bug here must end every request with an error, never leave one waiting
            log.exception("the engine stopped on an unexpected error")
            with self._lock:
                self._stopping = True
        self._fail_all()

    def _serve_once(self) -> bool:
        """Wait for work, let waiting requests join free rows, run one decode step; False once stopping."""
        with self._lock:
            while not self._stopping and not self._waiting and all(r is None for r in self._rows):
                self._lock.wait()
            if self._stopping:
                return False
            self._free_cancelled()
            # While rows decode, one request joins per step: a prefill stalls every busy row, so a burst of
            # arrivals delays their tokens by one prefill at a time, not by all of them at once.
            free = self._rows.count(None)
            room = free if free == self.slots else min(free, 1)
            joining = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            self._joining = len(joining)
        for handle in joining:
            self._join(handle)
            with self._lock:
                self._joining -= 1
        if any(r is not None for r in self._rows):
            self._decode()
        return True

    def _free_cancelled(self) -> None:
        for index, row in enumerate(self._rows):
            if row is not None and row.handle.cancelled:
                self._release(index, "cancelled")

    def _join(self, handle: Handle) -> None:
        index = self._rows.index(None)
        try:
            logits = self.rows.prefill(index, handle.prompt)
            token = handle.sampler.choose(logits)
        except GlmMsError as err:
            self._fail(handle, err)
            return
        except Exception as err:  # a failing graph must not take the server down; the request says why
            log.exception("prefill failed")
            self._fail(handle, EngineError(f"prefill failed: {err}"))
            return
        self.metrics.time_to_first_token.observe(time.monotonic() - handle.submitted)
        self._rows[index] = _Row(handle, token)
        self._accept(index, token)

    def _decode(self) -> None:
        rows = self._rows
        active = np.array([r is not None for r in rows])
        tokens = np.array([r.next_token if r is not None else 0 for r in rows], dtype=np.int64)
        greedy = not any(r.handle.sampler.host_only for r in rows if r is not None)
        try:
            out = self.rows.step(tokens, active, greedy)
        except Exception as err:
            log.exception("decode step failed")
            for index, row in enumerate(rows):
                if row is not None:
                    self._fail(row.handle, EngineError(f"decode step failed: {err}"))
                    self._rows[index] = None
                    self.rows.release(index)
            return
        now = time.monotonic()
        for index, row in enumerate(rows):
            if row is None:
                continue
            try:
                token = int(out[index]) if greedy else row.handle.sampler.choose(out[index])
            except GlmMsError as err:
                self._fail(row.handle, err)
                self._rows[index] = None
                self.rows.release(index)
                continue
            self.metrics.time_per_token.observe(now - row.last_time)
            row.last_time, row.next_token = now, token
            self._accept(index, token)

    def _accept(self, index: int, token: int) -> None:
        """Count and hand out row `index`'s new token; free the row when it ends the request."""
        handle = self._rows[index].handle
        handle.generated += 1
        handle.sampler.accept(token)
        self.metrics.generated_tokens += 1
        if token in handle.stop_ids:
            self._release(index, "stop", stop_token=token)
            return
        handle.deliver(TokenEvent(token))
        if handle.generated >= handle.max_new_tokens:
            self._release(index, "length")

    def _release(self, index: int, reason: str, stop_token: int | None = None) -> None:
        handle = self._rows[index].handle
        self._rows[index] = None
        self.rows.release(index)
        with self._lock:
            self._finish(handle, reason, stop_token)

    def _finish(self, handle: Handle, reason: str, stop_token: int | None = None) -> None:
        if handle.done:
            return
        handle.done = True
        self.metrics.finished[reason] = self.metrics.finished.get(reason, 0) + 1
        handle.deliver(Finished(reason, handle.prompt_tokens, handle.generated, stop_token))

    def _fail(self, handle: Handle, error: GlmMsError) -> None:
        with self._lock:
            if not handle.done:
                handle.done = True
                self.metrics.finished["error"] = self.metrics.finished.get("error", 0) + 1
                handle.deliver(error)

    def _fail_all(self) -> None:
        stopped = EngineStopped("the server is shutting down; the answer was cut short")
        with self._lock:
            pending = list(self._waiting) + [r.handle for r in self._rows if r is not None]
            self._waiting.clear()
            self._rows = [None] * self.slots
        for handle in pending:
            self._fail(handle, stopped)
