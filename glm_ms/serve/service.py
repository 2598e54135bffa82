"""The OpenAI semantics on top of the engine, without HTTP: requests → prompts → `TextStream`s of reply text.

`ChatService.submit_chat(messages, ...)` is also the in-process API for other front ends: a `TextStream` is
iterated (plainly or with `async for`) for text deltas, `cancel()` frees its row before the next decode step, and
afterwards `reply`, `finish_reason` and the token counts tell how it ended. `submit_turn(query, history, ...)` is
the same for a turn as `model.chat` takes it (the chat page): the model's own history, shortened to fit
`max_length`, and `chat_result()` at the end is what `model.chat` returns for the generated ids.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import families
from ..errors import GenerationError
from .conversation import ChatTemplate, Conversation, Reply
from .engine import Engine, Finished, Handle, TokenEvent
from .protocol import ChatRequest, CompletionRequest
from .sampling import Sampling
from .text import ReplyText


class TextStream:
    """One choice being generated: iterate for text deltas; then read `reply`, `finish_reason` and the counts."""

    def __init__(self, handle: Handle, text: ReplyText, conversation: Conversation | None = None):
        self.handle = handle
        self.text = text
        self.conversation = conversation
        self.reply: Reply | None = None
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.token_ids: list[int] = []  # generated ids the answer is made of (a stop token that ended it included)
        self._taken = 0

    @property
    def prompt_tokens(self) -> int:
        """Ids in the prompt."""
        return self.handle.prompt_tokens

    def cancel(self) -> None:
        """Stop generating (the row is freed before the next decode step)."""
        self.handle.cancel()

    def take_ids(self) -> list[int]:
        """The ids of `token_ids` not taken yet (a stream sends each chunk the ids that arrived with it)."""
        ids = self.token_ids[self._taken:]
        self._taken = len(self.token_ids)
        return ids

    def _on(self, event: TokenEvent | Finished) -> str:
        if isinstance(event, TokenEvent):
            if self.text.stopped:
                return ""  # generated after the stop string, before the row was freed: not part of the answer
            delta = self.text.push(event.token)
            self.token_ids.append(event.token)
            if self.text.stopped:
                self.handle.cancel()  # a stop string appeared: the rest is not wanted
            return delta
        if event.stop_token is not None and not self.text.stopped:
            self.token_ids.append(event.stop_token)
        delta = self.text.finish()
        stopped = self.text.stopped or event.reason == "stop"
        self.completion_tokens = len(self.token_ids)
        if self.conversation is not None:
            self.reply = self.conversation.reply(self.text.raw_text(), self.text.final())
        else:
            self.reply = Reply(self.text.final())
        self.finish_reason = "tool_calls" if self.reply.tool_calls else ("stop" if stopped else "length")
        return delta

    def __iter__(self) -> Iterator[str]:
        for delta in self.steps():
            if delta:
                yield delta

    def steps(self) -> Iterator[str]:
        """Like iterating, but one delta per generated token, '' when it added no final text yet: a consumer that
        must react between tokens (to be closed, to check a flag) gets control back at every decode step."""
        for event in self.handle:
            yield self._on(event)

    def chat_result(self) -> tuple[Any, list]:
        """After a `submit_turn` stream ended: (response, history) as `model.chat` returns them for its ids."""
        if self.conversation is None or self.finish_reason is None:
            raise GenerationError("chat_result() needs a finished chat stream")
        return self.conversation.chat_result(self.token_ids)

    async def __aiter__(self) -> AsyncIterator[str]:
        async for event in self.handle:
            delta = self._on(event)
            if delta:
                yield delta


@dataclass(frozen=True)
class ChatDefaults:
    """Sampling when a chat request leaves it unset: the family's chat settings and generate's top_k."""
    temperature: float
    top_p: float
    top_k: int = 50


class ChatService:
    """The model, its engine and template, and the OpenAI request rules (`model_id` is what /v1/models lists)."""

    def __init__(self, engine: Engine, tokenizer, model_id: str):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.template = ChatTemplate(engine.model, tokenizer)
        row = families.get(engine.model.config.family)
        self.title = row.title
        self.defaults = ChatDefaults(temperature=row.chat.temperature, top_p=row.chat.top_p)

    def sampling(self, request: ChatRequest | CompletionRequest, index: int, chat: bool) -> Sampling:
        """The request's token choice for choice `index` (seed + index, so the n choices differ yet repeat)."""
        defaults = self.defaults if chat else ChatDefaults(temperature=1.0, top_p=1.0, top_k=0)
        top_k = defaults.top_k if request.top_k is None else max(request.top_k, 0)
        return Sampling(temperature=defaults.temperature if request.temperature is None else request.temperature,
                        top_p=defaults.top_p if request.top_p is None else request.top_p, top_k=top_k,
                        repetition_penalty=request.repetition_penalty or 1.0,
                        seed=None if request.seed is None else (request.seed + index) % 2**63)

    def submit_chat(self, messages: list[dict], tools: list[dict] | None = None, max_tokens: int | None = None,
                    sampling: Sampling | None = None, stop: Sequence[str] = ()) -> TextStream:
        """Start one chat answer; raises GenerationError (bad messages, too long), QueueFull, EngineStopped."""
        conversation = self.template.prompt(messages, tools)
        sampling = sampling or Sampling(self.defaults.temperature, self.defaults.top_p, self.defaults.top_k)
        handle = self.engine.submit(conversation.ids, max_tokens, sampling, self.template.stop_ids)
        text = ReplyText(self.tokenizer.decode, conversation.clean, stop)
        return TextStream(handle, text, conversation)

    def submit_turn(self, query: str, history: list | None, max_length: int, sampling: Sampling) -> TextStream:
        """Start one answer as `model.chat(query, history, max_length=...)` makes it: history in the model's own
        form, the oldest turns left out until an answer fits, `max_length` counting prompt and answer.

        Raises GenerationError (empty query, no room for an answer, longer than a row), QueueFull, EngineStopped.
        """
        conversation = self.template.turn(query, list(history or []), max_length)
        handle = self.engine.submit(conversation.ids, max(max_length - len(conversation.ids), 1), sampling,
                                    self.template.stop_ids)
        return TextStream(handle, ReplyText(self.tokenizer.decode, conversation.clean), conversation)

    def chat(self, request: ChatRequest) -> list[TextStream]:
        """The request's n choices, submitted (all or none: a refusal cancels those already queued)."""
        messages = [m.as_dict() for m in request.messages]
        return self._all(lambda i: self.submit_chat(messages, request.functions, request.new_tokens,
                                                    self.sampling(request, i, True), request.stops), request.n)

    def completion_prompts(self, request: CompletionRequest) -> list[list[int]]:
        """Prompt ids of a completion request: one text, several texts, or token ids."""
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        texts = [prompt] if isinstance(prompt, str) else prompt
        return [self.tokenizer.encode(text) for text in texts]

    def completion(self, request: CompletionRequest) -> list[TextStream]:
        """n choices per prompt, in OpenAI's order (prompt-major)."""
        prompts = self.completion_prompts(request)

        def start(i: int) -> TextStream:
            ids = prompts[i // request.n]
            handle = self.engine.submit(ids, request.new_tokens or 16, self.sampling(request, i % request.n, False),
                                        (self.engine.model.config.eos_token_id,))
            return TextStream(handle, ReplyText(self.tokenizer.decode, lambda raw, done: raw, request.stops))
        return self._all(start, request.n * len(prompts))

    @staticmethod
    def _all(start, count: int) -> list[TextStream]:
        streams = []
        try:
            for i in range(count):
                streams.append(start(i))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams


async def merged(streams: list[TextStream]) -> AsyncIterator[tuple[int, str | None]]:
    """(choice index, text delta) from every stream as it comes, then (index, None) when that one has ended.

    An error of any stream (EngineError, GenerationError) is raised here, after every stream is cancelled.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: TextStream) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
            await queue.put((index, None))
        except Exception as err:  # handed to the consumer, which raises it
            await queue.put((index, err))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        for _ in range(len(streams)):
            while True:
                index, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield index, item
                if item is None:
                    break
    finally:
        for stream in streams:
            stream.cancel()
        for task in tasks:
            task.cancel()
