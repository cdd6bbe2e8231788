"""The HTTP API: OpenAI-style completions and chat over an `EngineLoop`, on FastAPI + uvicorn.

    POST /v1/completions, /v1/chat/completions
        body -> protocol.parse_* (4xx on anything wrong) -> EngineLoop.submit (429 when full)
        -> first event (a rejection is still a 4xx) -> JSON, or server-sent events per token
    GET /v1/models, /health, /metrics (Prometheus text format)

A client that disconnects (before or during its stream) has its request cancelled in the
engine, which frees its device and host pages. On shutdown uvicorn lets open streams finish
for `timeout_graceful_shutdown` seconds; then the engine thread cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from jaxserve.engine import Engine, Event
from jaxserve.server import protocol
from jaxserve.server.chat import ConversationHistory
from jaxserve.server.engine_loop import EngineLoop, Handle, Overloaded, Unavailable
from jaxserve.server.metrics import ServerMetrics
from jaxserve.server.protocol import ApiError, GenRequest, Limits
from jaxserve.server.responses import STOPS, TERMINAL, Bodies
from jaxserve.server.text import TextStream
from jaxserve.tokenizer import Tokenizer


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (the request body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _Disconnected(Exception):
    pass


async def _or_disconnect(awaitable, request: Request):
    """Await `awaitable`, or raise _Disconnected if the client leaves first."""
    task = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise _Disconnected()
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()


class Api(Bodies):
    """The endpoints' logic, around one EngineLoop (response bodies: `Bodies`)."""

    def __init__(
        self,
        loop: EngineLoop,
        limits: Limits,
        tokenizer: Tokenizer | None,
        chat_template: Callable[[list[dict[str, str]]], str],
        info: dict[str, Any] | None = None,
    ):
        self.loop, self.limits, self.tokenizer = loop, limits, tokenizer
        self.info = info or {}
        self._prefixes: dict[str, str] = {}  # SSE chunk prefix of each open stream
        self.chat_template = chat_template
        self.created = int(time.time())
        self.history = ConversationHistory()  # chat turns of conversations (event loop only)

    def continuation(self, conversation: str, text: str) -> list[int] | None:
        """The prompt ids of a chat turn that continues `conversation` (protocol.parse_chat)."""
        if self.tokenizer is None:
            return None
        return self.history.prompt_ids(conversation, text, self.tokenizer.encode)

    def _remember(self, handle: Handle, text: TextStream, terminal: Event) -> None:
        """A chat turn of a conversation ended: keep its ids for the next turn."""
        req = handle.request
        if not (req.chat and req.conversation) or terminal.detail not in STOPS or text.cut:
            return
        out = text.ids[:-1] if text.ids and text.ids[-1] in req.params.stop_token_ids else text.ids
        self.history.record(req.conversation, req.prompt_text, text.text, req.prompt_ids + out)

    def tokenize(self) -> Callable[[str], list[int]] | None:
        return self.tokenizer.encode if self.tokenizer is not None else None

    # -- generation -------------------------------------------------------------------------

    async def generate(self, request: Request, gen: GenRequest) -> Response:
        try:
            handle = self.loop.submit(gen)
        except Overloaded as e:
            raise ApiError(
                429,
                f"server overloaded: {e}; retry later",
                None,
                type="rate_limit_exceeded",
                code="overloaded",
            ) from None
        except Unavailable as e:
            raise ApiError(503, f"server unavailable: {e}", None, type="server_error") from None
        try:
            first = await _or_disconnect(handle.queue.get(), request)
            while first.kind not in ("token", *TERMINAL):  # preempt/resume before a token
                first = await _or_disconnect(handle.queue.get(), request)
        except _Disconnected:
            self.loop.cancel(handle.id)
            return Response(status_code=499)
        if first.kind == "reject" or (first.kind == "finish" and first.detail not in STOPS):
            raise self._refusal(first)
        if gen.stream:
            return StreamingResponse(
                self._sse(handle, first),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        events = [first]
        try:
            while events[-1].kind not in TERMINAL:
                events.append(await _or_disconnect(handle.queue.get(), request))
        except _Disconnected:
            self.loop.cancel(handle.id)
            return Response(status_code=499)
        return JSONResponse(self._response(handle, events))

    def _refusal(self, e: Event) -> ApiError:
        detail = e.detail or ""
        if detail.startswith(("rejected", "invalid")):
            return ApiError(400, f"request refused: {detail}", None)
        return ApiError(
            503, f"request ended before its first token: {detail}", None, type="server_error"
        )

    # -- other endpoints --------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.limits.model,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "jaxserve",
                    "max_model_len": self.limits.max_model_len,
                    "max_tokens": self.limits.max_tokens,
                    "vocab_size": self.limits.vocab_size,
                    "jaxserve": self.info,
                }
            ],
        }


MAX_BODY_BYTES = 16 << 20


async def _json_body(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None


def create_app(
    loop: EngineLoop,
    limits: Limits,
    tokenizer: Tokenizer | None,
    chat_template: Callable[[list[dict[str, str]]], str] = protocol.plain_template,
    info: dict[str, Any] | None = None,
) -> FastAPI:
    """`info`: what GET /v1/models reports under "jaxserve" (scheduler, model, ...)."""
    api = Api(loop, limits, tokenizer, chat_template, info)
    metrics = loop.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, loop.stop)

    app = FastAPI(title="jaxserve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.api = api

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        metrics.http_errors.labels(status=str(e.status)).inc()
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        metrics.http_errors.labels(status=str(e.status_code)).inc()
        return _error(ApiError(e.status_code, str(e.detail), None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        metrics.http_errors.labels(status="500").inc()
        return _error(
            ApiError(500, f"internal error: {type(e).__name__}", None, type="server_error")
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        gen = protocol.parse_completion(await _json_body(request), limits, api.tokenize())
        return await api.generate(request, gen)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request)
        gen = protocol.parse_chat(body, limits, api.tokenize(), chat_template, api.continuation)
        return await api.generate(request, gen)

    @app.get("/v1/models")
    async def models():
        return api.models()

    @app.get("/health")
    async def health():
        if loop.healthy:
            return {"status": "ok", "inflight": loop.inflight}
        return JSONResponse({"status": "unavailable", "error": loop.error}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def limits_for(
    engine: Engine, tokenizer: Tokenizer | None, model_name: str, max_tokens: int | None = None
) -> Limits:
    """What one request may hold: the model's context, capped by the KV pool."""
    sc = engine.sched_config
    max_len = min(engine.config.max_seq_len, sc.usable_pages * sc.page_size)
    cap = max_len - 1 if max_tokens is None else min(max_tokens, max_len - 1)
    eos = tokenizer.eos_id if tokenizer is not None else engine.config.eos_token_id
    return Limits(
        model=model_name,
        vocab_size=engine.config.vocab_size,
        max_model_len=max_len,
        max_tokens=max(1, cap),
        eos_id=eos,
    )


def build_app(
    engine: Engine,
    tokenizer: Tokenizer | None,
    model_name: str,
    *,
    max_inflight: int = 256,
    max_chunk_s: float | None = None,
    max_tokens: int | None = None,
    chat_template: Callable[[list[dict[str, str]]], str] | None = None,
    info: dict[str, Any] | None = None,
) -> tuple[FastAPI, EngineLoop]:
    """An app serving `engine` (the engine thread starts with the app). `info` defaults to
    the scheduler, the model config and the page size."""
    loop = EngineLoop(engine, ServerMetrics(), max_inflight=max_inflight, max_chunk_s=max_chunk_s)
    limits = limits_for(engine, tokenizer, model_name, max_tokens)
    info = {
        "scheduler": engine.policy,
        "prefill": "base",
        "model": {"config": engine.config.to_dict()},
        "page_size": engine.page_size,
        "kv_pages": engine.sched_config.num_pages,
        "max_batch": engine.sched_config.max_batch,
        "reuse": engine.reuse,
        **(info or {}),
    }
    app = create_app(loop, limits, tokenizer, chat_template or protocol.plain_template, info)
    return app, loop
