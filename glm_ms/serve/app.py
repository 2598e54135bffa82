"""The HTTP routes (FastAPI): OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health and
/metrics. Errors are OpenAI error objects with real status codes; with an API key every route but /health wants
`Authorization: Bearer <key>`.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GlmMsError
from .conversation import ConversationError
from .engine import EngineStopped, QueueFull, RequestTooLong
from .protocol import DONE, ChatRequest, CompletionRequest, envelope, error_body, new_id, sse, usage
from .service import ChatService, TextStream, merged

DISCONNECT_POLL_S = 0.5  # how often a non-streamed request checks that its client is still there
MAX_BODY_BYTES = 16 * 2**20  # a request body beyond this is refused (413) before it is read into memory


class ApiError(Exception):
    """An error answered as OpenAI's error object with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        """The JSON response."""
        return JSONResponse(error_body(self.status, self.message, self.param, self.code), self.status,
                            headers=self.headers)


def api_error(err: GlmMsError) -> ApiError:
    """The HTTP answer to an error the engine or the conversation raised."""
    if isinstance(err, QueueFull):
        return ApiError(429, str(err), code="queue_full", headers={"Retry-After": "1"})
    if isinstance(err, EngineStopped):
        return ApiError(503, str(err), code="shutting_down")
    if isinstance(err, RequestTooLong):
        return ApiError(400, str(err), param="messages", code="context_length_exceeded")
    if isinstance(err, ConversationError):
        return ApiError(400, str(err), param="messages")
    if isinstance(err, ValueError):  # GenerationError, TokenizerError: values the model cannot take
        return ApiError(400, str(err))
    return ApiError(500, str(err), code="engine_error")


class EventStream(StreamingResponse):
    """An SSE response that runs `on_close` however it ends (finished, client gone, server stopping)."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes (declared or streamed), as an OpenAI error."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        too_big = ApiError(413, f"the request body is over {self.limit} bytes", code="body_too_large").response()
        if not declared.isdigit() or int(declared) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"the request body is over {self.limit} bytes", code="body_too_large")
            return message
        await self.app(scope, counted, send)


def _cancel_all(streams: Sequence[TextStream]) -> Callable[[], None]:
    return lambda: [s.cancel() for s in streams]


def _finish_parts(stream: TextStream) -> tuple[dict, str]:
    """(message fields, finish_reason) of a finished stream."""
    reply = stream.reply
    if reply.tool_calls:
        return {"content": None, "tool_calls": [c.as_openai() for c in reply.tool_calls]}, "tool_calls"
    return {"content": reply.text}, stream.finish_reason


def _ids(request: ChatRequest | CompletionRequest, stream: TextStream) -> dict:
    return {"token_ids": stream.token_ids} if request.return_token_ids else {}


def _usage(streams: Sequence[TextStream]) -> dict:
    # Each distinct prompt counts once (n choices share theirs), as OpenAI counts them.
    prompts = {id(s.handle.prompt.ids): s.prompt_tokens for s in streams}
    return usage(sum(prompts.values()), sum(s.completion_tokens for s in streams))


async def _drain(request: Request, streams: list[TextStream]) -> None:
    """Run every stream to its end; a client that goes away cancels them."""
    async def consume() -> None:
        async for _ in merged(streams):
            pass
    task = asyncio.ensure_future(consume())
    try:
        while not task.done():
            await asyncio.wait([task], timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                task.cancel()
        await task
    finally:
        for stream in streams:
            stream.cancel()


async def _chat_events(service: ChatService, request: ChatRequest, streams: list[TextStream]) -> AsyncIterator[str]:
    rid, model = new_id("chatcmpl"), service.model_id
    extra = {"usage": None} if request.include_usage else {}

    def chunk(index: int, delta: dict, finish: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if request.return_token_ids:
            choice["token_ids"] = streams[index].take_ids()
        return sse(envelope("chat.completion.chunk", rid, model, [choice], **extra))
    try:
        for i in range(len(streams)):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for index, delta in merged(streams):
            if delta:
                yield chunk(index, {"content": delta})
            elif delta is None:
                stream = streams[index]
                if stream.reply.tool_calls:
                    calls = [c.as_openai(k) for k, c in enumerate(stream.reply.tool_calls)]
                    yield chunk(index, {"tool_calls": calls})
                yield chunk(index, {}, stream.finish_reason)
        if request.include_usage:
            yield sse(envelope("chat.completion.chunk", rid, model, [], usage=_usage(streams)))
    except GlmMsError as err:
        failure = api_error(err)
        yield sse(error_body(failure.status, failure.message, failure.param, failure.code))
    yield DONE


async def _completion_events(service: ChatService, request: CompletionRequest,
                             streams: list[TextStream]) -> AsyncIterator[str]:
    rid, model = new_id("cmpl"), service.model_id
    extra = {"usage": None} if request.include_usage else {}

    def chunk(index: int, text: str, finish: str | None = None) -> str:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        if request.return_token_ids:
            choice["token_ids"] = streams[index].take_ids()
        return sse(envelope("text_completion", rid, model, [choice], **extra))
    try:
        async for index, delta in merged(streams):
            yield chunk(index, delta) if delta is not None else chunk(index, "", streams[index].finish_reason)
        if request.include_usage:
            yield sse(envelope("text_completion", rid, model, [], usage=_usage(streams)))
    except GlmMsError as err:
        failure = api_error(err)
        yield sse(error_body(failure.status, failure.message, failure.param, failure.code))
    yield DONE


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return ApiError(400, "the request body is not valid JSON", code="invalid_json").response()
        first = problems[0] if problems else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        message = "; ".join(f"{'.'.join(str(x) for x in p.get('loc', ())[1:]) or 'body'}: {p.get('msg')}"
                            for p in problems[:5])
        return ApiError(400, message, param=param, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return ApiError(err.status_code, str(err.detail), headers=getattr(err, "headers", None)).response()


def _key_check(api_keys: Sequence[str]) -> Callable[[Request], None]:
    """The dependency that wants `Authorization: Bearer <key>` with one of `api_keys` (none: open)."""
    keys = [k.encode() for k in api_keys]

    def authorized(request: Request) -> None:
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip().encode(), k) for k in keys):
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                           code="invalid_api_key")
    return authorized


def _check_model(service: ChatService, name: str | None) -> None:
    if name not in (None, service.model_id):
        raise ApiError(404, f"The model `{name}` does not exist (this server has `{service.model_id}`).",
                       param="model", code="model_not_found")


def _started(start: Callable[[], list[TextStream]]) -> list[TextStream]:
    try:
        return start()
    except GlmMsError as err:
        raise api_error(err) from None


def _info_routes(app: FastAPI, service: ChatService, auth: list) -> None:
    started = int(time.time())

    def model_card() -> dict:
        return {"id": service.model_id, "object": "model", "created": started, "owned_by": "glm_ms",
                "root": service.model_id, "max_model_len": service.engine.capacity}

    @app.get("/health")
    async def health() -> JSONResponse:
        running = service.engine.running
        return JSONResponse({"status": "ok" if running else "shutting down"}, 200 if running else 503)

    @app.get("/metrics", dependencies=auth)
    async def metrics() -> PlainTextResponse:
        stats = service.engine.stats()
        return PlainTextResponse(service.engine.metrics.exposition(stats["queued"], stats["active"]),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=auth)
    async def model(name: str) -> dict:
        _check_model(service, name)
        return model_card()


def _generation_routes(app: FastAPI, service: ChatService, auth: list) -> None:
    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat(body: ChatRequest, request: Request):
        _check_model(service, body.model)
        streams = _started(lambda: service.chat(body))
        if body.stream:
            return EventStream(_chat_events(service, body, streams), _cancel_all(streams))
        await _drain_or_raise(request, streams)
        choices = []
        for i, stream in enumerate(streams):
            fields, finish = _finish_parts(stream)
            choices.append({"index": i, "message": {"role": "assistant", **fields}, "logprobs": None,
                            "finish_reason": finish, **_ids(body, stream)})
        return envelope("chat.completion", new_id("chatcmpl"), service.model_id, choices, usage=_usage(streams))

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        _check_model(service, body.model)
        streams = _started(lambda: service.completion(body))
        if body.stream:
            return EventStream(_completion_events(service, body, streams), _cancel_all(streams))
        await _drain_or_raise(request, streams)
        choices = [{"index": i, "text": s.reply.text, "logprobs": None, "finish_reason": s.finish_reason,
                    **_ids(body, s)} for i, s in enumerate(streams)]
        return envelope("text_completion", new_id("cmpl"), service.model_id, choices, usage=_usage(streams))


def create_app(service: ChatService, api_keys: Sequence[str] = (), cors_origins: Sequence[str] = ()) -> FastAPI:
    """The app serving `service`; `api_keys` non-empty turns bearer auth on; `cors_origins` allows browsers."""
    app = FastAPI(title=f"glm_ms: {service.title}", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    app.add_middleware(BodyLimit)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    auth = [Depends(_key_check(api_keys))]
    _info_routes(app, service, auth)
    _generation_routes(app, service, auth)
    return app


async def _drain_or_raise(request: Request, streams: list[TextStream]) -> None:
    try:
        await _drain(request, streams)
    except GlmMsError as err:
        raise api_error(err) from None
