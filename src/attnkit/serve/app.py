"""The FastAPI application: the OpenAI routes, the guard in front of them and the errors.

Routes: ``GET /health`` (no key needed), ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/embeddings`` (encoders), ``POST /v1/completions`` and
``POST /v1/chat/completions`` (GPTs; ``"stream": true`` answers with server-sent events,
``data: {json}`` lines ending with ``data: [DONE]``).

:class:`Guard`, an ASGI middleware, runs first: with an API key a request without
``Authorization: Bearer <key>`` is a 401; a body over ``max_body_bytes`` is a 413 (read no
further than the limit). Every error is an OpenAI-style JSON body
(:func:`~attnkit.serve.errors.error_body`): malformed JSON 400, a wrong type or a missing
field 422 (naming the field), an unknown model 404, a full queue 429, an overloaded or stopped
worker 503, and anything unexpected 500; none of them stops the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from attnkit.serve.batching import Job
from attnkit.serve.completions import CompletionService
from attnkit.serve.embeddings import EmbeddingService
from attnkit.serve.errors import APIError, error_body
from attnkit.serve.limits import Limits
from attnkit.serve.schemas import ChatRequest, CompletionRequest, EmbeddingRequest

__all__ = ["Guard", "Service", "create_app"]

Service = EmbeddingService | CompletionService
OPEN_PATHS = ("/health",)


def _json_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(
        error_body(status, message, param, code), status_code=status, headers=headers
    )


class Guard:
    """API key and body-size checks in front of the app (see the module docstring).

    The body is read in full (up to the limit) before ``app`` is called, then replayed to it.

    Args:
        app: the ASGI application behind the guard.
        api_key: the key requests must carry as ``Authorization: Bearer <key>`` (None: no
            key needed); ``/health`` is always open.
        max_body_bytes: the largest request body accepted (413 past it).

    Examples:
        >>> guarded = Guard(FastAPI(), api_key="secret", max_body_bytes=2 << 20)
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def _refuse(self, send: Any, status: int, message: str, code: str) -> None:
        body = json.dumps(error_body(status, message, code=code)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                + ([(b"www-authenticate", b"Bearer")] if status == 401 else []),
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.api_key.encode()
            ):
                await self._refuse(
                    send,
                    401,
                    "missing or wrong API key: expected the header 'Authorization: Bearer <key>'",
                    "invalid_api_key",
                )
                return
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        too_big = f"the request body is larger than this server's limit of {limit} bytes"
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await self._refuse(
                    send,
                    400,
                    f"Content-Length {declared.decode('latin-1')!r} is not a number",
                    "bad_request",
                )
                return
            if size > limit:
                await self._refuse(send, 413, too_big, "body_too_large")
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await self._refuse(send, 413, too_big, "body_too_large")
                return
            if not message.get("more_body", False):
                break
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # a disconnect, while a stream is being sent

        await self.app(scope, replay, send)


TYPE_NAMES = ("str", "int", "float", "bool")


def _field(loc: Any) -> tuple[str | None, str | None]:
    """(the field a pydantic error location names, the union member tried, if any)."""
    parts, member = [], None
    for p in loc:
        text = str(p)
        if p == "body":
            continue
        if text in TYPE_NAMES or "[" in text:  # a member of a union type
            member = member or text
            continue
        parts.append(text)
    return ".".join(parts) or None, member


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _json_error(400, "the request body is not valid JSON", code="invalid_json")
    first = errors[0] if errors else {}
    param, _ = _field(first.get("loc", ()))
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return _json_error(422, "the request body must be a JSON object", code="invalid_body")
    members = []
    for e in errors:  # the union members tried for the same field
        field, member = _field(e.get("loc", ()))
        if field == param and member is not None and member not in members:
            members.append(member)
    if members:
        message = f"{param}: expected {' or '.join(members)}"
    else:
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if first.get("type") != "missing" and "input" in first:
        message += f" (got {json.dumps(first['input'])[:80]})"
    return _json_error(422, message, param, "invalid_value")


def create_app(
    services: Mapping[str, Service], limits: Limits, api_key: str | None = None
) -> Guard:
    """The ASGI application serving ``services`` (model id -> service): the routes of the
    module docstring behind a :class:`Guard`.

    Args:
        services: the services by model id.
        limits: the server's caps (body size, answer timeout).
        api_key: the key requests must carry (None: no key needed).

    Examples:
        >>> limits = Limits()
        >>> app = create_app(load_services(["minilm"], limits), limits, api_key="secret")
    """
    app = FastAPI(title="attnkit", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return _json_error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _json_error(
                404, f"no route {request.method} {request.url.path}", code="not_found"
            )
        return _json_error(exc.status_code, str(exc.detail), code="http_error")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _json_error(
            500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"
        )

    def service(name: str, kind: str) -> Service:
        found = services.get(name)
        if found is None:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has {sorted(services)}",
                "model",
                "model_not_found",
            )
        if found.kind != kind:
            raise APIError(
                400,
                f"the model {name!r} serves /v1/{found.kind}, not /v1/{kind}",
                "model",
                "wrong_model_kind",
            )
        return found

    async def result(svc: Service, job: Job) -> Any:
        svc.queue.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), limits.answer_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(
                503,
                "the model did not answer in time; the server is overloaded, retry later",
                code="timeout",
            ) from None
        finally:
            job.cancelled = True  # answered or given up: nothing more to do for it

    @app.get("/health")
    async def health() -> JSONResponse:
        states = {
            n: {**s.describe(), "alive": s.queue.alive, "waiting": s.queue.depth()}
            for n, s in services.items()
        }
        ok = all(s["alive"] for s in states.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "models": states},
            status_code=200 if ok else 503,
        )

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "attnkit"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in services]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if name not in services:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has {sorted(services)}",
                "model",
                "model_not_found",
            )
        return model_card(name)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> JSONResponse:
        svc = service(req.model, "embeddings")
        assert isinstance(svc, EmbeddingService)
        job = svc.prepare(req)
        # straight to json.dumps: FastAPI's encoder of a returned dict visits every float
        return JSONResponse(svc.response(req, job, await result(svc, job)))

    async def complete(req: CompletionRequest | ChatRequest, chat: bool) -> Any:
        svc = service(req.model, "completions")
        assert isinstance(svc, CompletionService)
        if not req.stream:
            job = svc.prepare(req)
            return svc.response(chat, await result(svc, job))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

        def emit(choice: int, text: str) -> None:  # called by the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (choice, text))
            except RuntimeError:  # the loop has closed: the server is stopping
                pass

        job = svc.prepare(req, emit)
        svc.queue.submit(job)
        return StreamingResponse(
            _sse(svc, job, events, chat, limits), media_type="text/event-stream"
        )

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        return await complete(req, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Any:
        return await complete(req, chat=True)

    return Guard(app, api_key, limits.max_body_bytes)


async def _sse(
    svc: CompletionService,
    job: Job,
    events: asyncio.Queue[tuple[int, str]],
    chat: bool,
    limits: Limits,
) -> AsyncIterator[bytes]:
    """Server-sent events of one streamed request: a chunk per piece of text, the finish
    reasons, then ``[DONE]``; an error after the stream began is sent as an ``error`` event."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    made = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: int, text: str | None, finish: str | None, role: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            item: dict[str, Any] = {
                "index": choice,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": None,
            }
        else:
            item = {"index": choice, "text": text or "", "finish_reason": finish, "logprobs": None}
        body = {
            "id": ident,
            "object": kind,
            "created": made,
            "model": svc.model_id,
            "choices": [item],
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    done = asyncio.wrap_future(job.future)
    try:
        if chat:
            for c in range(len(job.payload.rows)):
                yield chunk(c, "", None, role=True)
        deadline = time.monotonic() + limits.answer_timeout_s
        while True:
            getter = asyncio.ensure_future(events.get())
            finished, _ = await asyncio.wait(
                {getter, done},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getter in finished:
                c, text = getter.result()
                yield chunk(c, text, None)
                continue
            getter.cancel()
            if done not in finished:
                raise APIError(
                    503,
                    "the model did not answer in time; the server is overloaded",
                    code="timeout",
                )
            while not events.empty():
                c, text = events.get_nowait()
                yield chunk(c, text, None)
            work = done.result()  # raises the job's error
            for c in range(len(work.choices)):
                yield chunk(c, None if chat else "", svc.finish_reason(work, c))
            break
        yield b"data: [DONE]\n\n"
    except APIError as e:
        yield f"data: {json.dumps(error_body(e.status, e.message, e.param, e.code))}\n\n".encode()
    finally:
        job.cancelled = True
