"""The OpenAI-compatible gateway as an ASGI app: agents change their base URL and nothing else.

`POST /v1/chat/completions` is validated just enough to route and log it, offered to the router (when
one is given and applies), and otherwise forwarded byte for byte to the upstream LLM, streaming or not.
Every exchange goes to an `ExchangeWriter` queue after the answer is on its way: parsing the upstream's
response and reassembling streams happen on the writer's thread, not in the request path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from downsize.backends.upstream import Upstream, UpstreamStream, UpstreamTimeoutError, reassemble_stream
from downsize.config import GatewayConfig
from downsize.errors import InvalidRequestError, UpstreamError
from downsize.gateway.writer import ExchangeWriter, Record
from downsize.shapes import describe_response
from downsize.types import Exchange, RouteDecision

if TYPE_CHECKING:
    from downsize.route.router import RouteOutcome, Router
    from downsize.store.store import Store

logger = logging.getLogger(__name__)

# Request headers passed on to the upstream (ASGI gives names lower-cased); everything else stays here.
_FORWARD_HEADERS = {
    b"authorization": "Authorization",
    b"api-key": "api-key",
    b"openai-organization": "OpenAI-Organization",
    b"openai-project": "OpenAI-Project",
    b"openai-beta": "OpenAI-Beta",
}
# Optional metadata headers an agent may send, and the Exchange fields they fill.
_META_HEADERS = {
    b"x-downsize-agent": "agent",
    b"x-downsize-session": "session",
    b"x-downsize-task": "task_hint",
}
_META_MAX = 200  # the store's column width

_EXAMPLE = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'
_SSE_HEADERS = {"Cache-Control": "no-cache"}


# -- errors ----------------------------------------------------------------------------------------------


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error the way OpenAI's API shapes it, so every OpenAI client surfaces the message."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- request parsing -------------------------------------------------------------------------------------


async def read_body(request: Request, max_bytes: int, content_length: int | None = None) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    too_large = InvalidRequestError(
        f"the request body is larger than the gateway's limit of {max_bytes} bytes: "
        "send fewer or shorter messages, or raise max_body_bytes in the gateway config",
        status=413,
    )
    if content_length is not None and content_length > max_bytes:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise too_large
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """Parse and minimally validate a chat-completion request; InvalidRequestError says what to fix.

    Only what the gateway itself relies on is checked (the upstream validates the rest): a JSON object,
    a non-empty `messages` array of objects with a string `role`, and the types of `model`, `tools`
    and `stream`. `null` counts as absent for the optional fields.
    """
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            f"send a JSON object such as {_EXAMPLE}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # bad UTF-8, or nesting too deep to parse
        raise InvalidRequestError(
            f"the request body is not valid JSON ({type(exc).__name__}): send UTF-8 JSON such as {_EXAMPLE}"
        ) from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError(
            f"the request body must be a JSON object, not {_json_type(payload)}: send e.g. {_EXAMPLE}"
        )
    messages = payload.get("messages")
    if messages is None:
        raise InvalidRequestError(
            "'messages' is missing: send a non-empty array of message objects, e.g. "
            '"messages": [{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    if not isinstance(messages, list):
        raise InvalidRequestError(
            f"'messages' must be an array of message objects, not {_json_type(messages)}: "
            'e.g. "messages": [{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    if not messages:
        raise InvalidRequestError(
            "'messages' is an empty array: send at least one message, e.g. "
            '[{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(
                f"messages[{i}] must be an object such as "
                f'{{"role": "user", "content": "Hello"}}, not {_json_type(message)}',
                param=f"messages[{i}]",
            )
        role = message.get("role")
        if not isinstance(role, str):
            what = "has no 'role'" if role is None else f"has a 'role' that is {_json_type(role)}"
            raise InvalidRequestError(
                f"messages[{i}] {what}: give every message a string role "
                '("system", "user", "assistant" or "tool")',
                param=f"messages[{i}].role",
            )
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError(
            f"'model' must be a string such as \"gpt-4o-mini\", not {_json_type(model)}", param="model"
        )
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequestError(
            f"'tools' must be an array of tool objects such as "
            f'[{{"type": "function", "function": {{"name": "...", "parameters": {{...}}}}}}], '
            f"not {_json_type(tools)}",
            param="tools",
        )
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError(
            f"'stream' must be true or false, not {_json_type(stream)} ({json.dumps(stream)[:40]})",
            param="stream",
        )
    return payload


def _read_headers(scope: MutableMapping[str, Any]) -> tuple[dict[str, str], dict[str, str], int | None]:
    """One pass over the raw headers: those to forward upstream, the X-Downsize-* metadata, the body length."""
    forward = {"Content-Type": "application/json"}
    meta: dict[str, str] = {}
    length: int | None = None
    for name, value in scope["headers"]:
        key = _FORWARD_HEADERS.get(name)
        if key is not None:
            forward[key] = value.decode("latin-1")
            continue
        field = _META_HEADERS.get(name)
        if field is not None:
            meta[field] = value.decode("utf-8", "replace")[:_META_MAX]
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    return forward, meta, length


# -- responses -------------------------------------------------------------------------------------------


def completion_events(response: dict[str, Any], include_usage: bool = False) -> bytes:
    """A chat.completion rendered as the SSE `chat.completion.chunk` stream OpenAI clients expect.

    Per choice: one chunk with the role, content and every tool call (each with its `index`), then one
    with the finish reason; then the usage chunk if asked for; then `[DONE]`.
    """
    base: dict[str, Any] = {
        "id": response.get("id"),
        "object": "chat.completion.chunk",
        "created": response.get("created"),
        "model": response.get("model"),
    }
    if response.get("system_fingerprint"):
        base["system_fingerprint"] = response["system_fingerprint"]
    events: list[dict[str, Any]] = []
    for choice in response.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        events.append(
            {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]}
        )
        finish = choice.get("finish_reason") or ("tool_calls" if message.get("tool_calls") else "stop")
        events.append(
            {**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}]}
        )
    if include_usage and response.get("usage") is not None:
        events.append({**base, "choices": [], "usage": response["usage"]})
    out = [b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n" for event in events]
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Capture:
    """What the gateway knows of one call before the response: enough to build its Exchange later."""

    __slots__ = ("request", "meta", "wall", "started", "decision", "specialist_id")

    def __init__(
        self,
        request: dict[str, Any],
        meta: dict[str, str],
        wall: float,
        started: float,
        decision: RouteDecision | None,
        specialist_id: int | None,
    ) -> None:
        self.request = request
        self.meta = meta
        self.wall = wall
        self.started = started
        self.decision = decision
        self.specialist_id = specialist_id

    @property
    def route(self) -> str:
        return self.decision.route if self.decision is not None else "upstream"

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def record(self, response: dict[str, Any] | None, status: int | None, latency_ms: float) -> Record:
        kind, names = describe_response(response, status)
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict):
            usage = {}
        model = response.get("model") if isinstance(response, dict) else None
        exchange = Exchange(
            request=self.request,
            response=response,
            created_at=datetime.fromtimestamp(self.wall, UTC).isoformat(timespec="milliseconds"),
            source="gateway",
            agent=self.meta.get("agent"),
            session=self.meta.get("session"),
            task_hint=self.meta.get("task_hint"),
            model=model if isinstance(model, str) else self.request.get("model"),
            response_kind=kind,
            tool_names=names,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            latency_ms=round(latency_ms, 3),
            upstream_status=status,
            route=self.route,
            is_hci=kind == "text",
        )
        return exchange, self.decision, self.specialist_id

    def from_body(self, body: bytes, status: int, latency_ms: float) -> Record:
        """Runs on the writer thread: parse the upstream's (non-streamed) answer."""
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, RecursionError):
            parsed = None
        return self.record(parsed if isinstance(parsed, dict) else None, status, latency_ms)

    def from_stream(self, parts: list[bytes], status: int, latency_ms: float) -> Record:
        """Runs on the writer thread: reassemble the relayed SSE bytes into one chat.completion."""
        return self.record(reassemble_stream(parts), status, latency_ms)


# -- the app ---------------------------------------------------------------------------------------------


class _Gateway:
    """The endpoints, holding what they share (no module globals)."""

    def __init__(
        self, config: GatewayConfig, router: Router | None, upstream: Upstream, writer: ExchangeWriter
    ) -> None:
        self.config = config
        self.router = router
        self.upstream = upstream
        self.writer = writer
        self.executor: ThreadPoolExecutor | None = None
        self.local_models: list[dict[str, Any]] = []
        if router is not None:
            self.local_models.append(
                {
                    "id": f"downsize/{router.specialist.name}",
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "downsize",
                }
            )

    # One thread: the specialist model is used by one request at a time, and never on the event loop.
    def router_executor(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="downsize-router")
        return self.executor

    def shutdown_router(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        wall = time.time()
        forward, meta, length = _read_headers(request.scope)
        try:
            body = await read_body(request, self.config.max_body_bytes, length)
            payload = parse_chat_request(body)
        except InvalidRequestError as exc:
            return error_response(exc.status, str(exc), param=exc.param)
        stream = payload.get("stream") is True
        decision: RouteDecision | None = None
        specialist_id: int | None = None
        router = self.router
        if router is not None and router.applies(payload) is None:
            outcome = await self._route(router, payload)
            if outcome is not None:
                decision, specialist_id = outcome.decision, outcome.specialist_id
                if decision is not None and decision.served and outcome.response is not None:
                    capture = _Capture(payload, meta, wall, started, decision, specialist_id)
                    self.writer.put(partial(capture.record, outcome.response, None, capture.elapsed_ms()))
                    headers = {"X-Downsize-Route": decision.route}
                    if stream:
                        options = payload.get("stream_options")
                        usage = isinstance(options, dict) and options.get("include_usage") is True
                        return Response(
                            completion_events(outcome.response, usage),
                            media_type="text/event-stream",
                            headers={**headers, **_SSE_HEADERS},
                        )
                    return JSONResponse(outcome.response, headers=headers)
        capture = _Capture(payload, meta, wall, started, decision, specialist_id)
        if stream:
            return await self._forward_stream(body, forward, capture)
        return await self._forward(body, forward, capture)

    async def _route(self, router: Router, payload: dict[str, Any]) -> RouteOutcome | None:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.router_executor(), router.route, payload)
        except Exception:  # a router bug must not fail the agent's call: log it and go upstream
            logger.exception("the router failed; forwarding the request upstream")
            return None

    def _upstream_failed(self, exc: UpstreamError, capture: _Capture) -> JSONResponse:
        if isinstance(exc, UpstreamTimeoutError):
            status, code = 504, "upstream_timeout"
        else:
            status, code = 502, "upstream_unreachable"
        logger.warning("upstream call failed: %s", exc)
        body = {"error": {"message": str(exc), "type": "upstream_error", "param": None, "code": code}}
        self.writer.put(capture.record(body, None, capture.elapsed_ms()))
        return JSONResponse(body, status_code=status, headers={"X-Downsize-Route": capture.route})

    async def _forward(self, body: bytes, forward: dict[str, str], capture: _Capture) -> Response:
        try:
            status, headers, data = await self.upstream.post_chat(body, forward)
        except UpstreamError as exc:
            return self._upstream_failed(exc, capture)
        self.writer.put(partial(capture.from_body, data, status, capture.elapsed_ms()))
        headers["X-Downsize-Route"] = capture.route
        return Response(data, status_code=status, headers=headers)

    async def _forward_stream(self, body: bytes, forward: dict[str, str], capture: _Capture) -> Response:
        try:
            stream = await self.upstream.stream_chat(body, forward)
        except UpstreamError as exc:
            return self._upstream_failed(exc, capture)
        headers = stream.headers
        headers["X-Downsize-Route"] = capture.route
        if stream.status >= 400 or not stream.is_event_stream:
            # An error (or a server that ignored `stream`) answers with one JSON body: pass it on whole.
            try:
                data = await stream.read()
            except UpstreamError as exc:
                return self._upstream_failed(exc, capture)
            finally:
                stream.release()
            self.writer.put(partial(capture.from_body, data, stream.status, capture.elapsed_ms()))
            return Response(data, status_code=stream.status, headers=headers)
        return StreamingResponse(self._relay(stream, capture), status_code=stream.status, headers=headers)

    async def _relay(self, stream: UpstreamStream, capture: _Capture) -> AsyncIterator[bytes]:
        """Pass SSE bytes on as they arrive, keeping them for the log; a broken stream ends with an error event.

        The exchange is queued as soon as `[DONE]` arrives, before the client can see it, so that once an
        agent has its answer, a `flush()` of the writer covers the exchange.
        """
        parts: list[bytes] = []
        logged = False
        try:
            async for chunk in stream.chunks():
                parts.append(chunk)
                if b"[DONE]" in chunk[-16:]:
                    self.writer.put(
                        partial(capture.from_stream, list(parts), stream.status, capture.elapsed_ms())
                    )
                    logged = True
                yield chunk
        except UpstreamError as exc:
            logger.warning("upstream stream broke: %s", exc)
            error = {
                "error": {
                    "message": str(exc),
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_stream",
                }
            }
            event = b"data: " + json.dumps(error).encode() + b"\n\n"
            parts.append(event)
            if not logged:
                self.writer.put(partial(capture.from_stream, parts, stream.status, capture.elapsed_ms()))
                logged = True
            yield event
        finally:
            stream.release()
            if not logged:  # the stream ended without [DONE], or the client went away
                self.writer.put(partial(capture.from_stream, parts, stream.status, capture.elapsed_ms()))

    async def models(self, request: Request) -> Response:
        forward, _, _ = _read_headers(request.scope)
        del forward["Content-Type"]
        local = self.local_models
        try:
            status, data = await self.upstream.models(forward)
        except UpstreamError as exc:
            if not local:
                return self._models_unreachable(exc)
            logger.warning("upstream model list unavailable (%s); listing local models only", exc)
            return JSONResponse({"object": "list", "data": local})
        if not local:
            return Response(data, status_code=status, media_type="application/json")
        try:
            listing = json.loads(data) if status < 400 else None
        except (ValueError, RecursionError):
            listing = None
        if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
            logger.warning("upstream model list unusable (status %d); listing local models only", status)
            return JSONResponse({"object": "list", "data": local})
        known = {m.get("id") for m in listing["data"] if isinstance(m, dict)}
        listing["data"].extend(m for m in local if m["id"] not in known)
        return JSONResponse(listing)

    @staticmethod
    def _models_unreachable(exc: UpstreamError) -> JSONResponse:
        if isinstance(exc, UpstreamTimeoutError):
            return error_response(504, str(exc), type_="upstream_error", code="upstream_timeout")
        return error_response(502, str(exc), type_="upstream_error", code="upstream_unreachable")

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "queue_depth": self.writer.depth,
                "specialist": self.router.specialist.name if self.router is not None else None,
                "written": self.writer.written,
                "write_failures": self.writer.failed,
                "dropped": self.writer.dropped,
            }
        )


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 (and any other HTTPException) as OpenAI-shaped errors."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404:
        message = (
            f"unknown path {request.method} {request.url.path}: the gateway serves "
            "POST /v1/chat/completions, GET /v1/models and GET /health"
        )
        return error_response(404, message, code="unknown_url", headers=headers)
    if exc.status_code == 405:
        allowed = (headers or {}).get("Allow", "another method")
        message = f"{request.method} is not allowed on {request.url.path}: use {allowed}"
        return error_response(405, message, code="method_not_allowed", headers=headers)
    return error_response(exc.status_code, str(exc.detail), headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(
        500,
        "the gateway failed unexpectedly; its log has the details",
        type_="server_error",
        code="internal_error",
    )


def create_app(
    config: GatewayConfig,
    store: Store,
    router: Router | None = None,
    upstream: Upstream | None = None,
) -> Starlette:
    """The gateway app. The upstream's connection pool and the exchange writer live as long as the app's
    lifespan (startup opens them, shutdown drains and closes them); `app.state.writer` is the writer."""
    upstream = upstream or Upstream(config.upstream, timeout_s=config.upstream_timeout_s)
    writer = ExchangeWriter(store)
    gateway = _Gateway(config, router, upstream, writer)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        await upstream.start()
        try:
            yield
        finally:
            gateway.shutdown_router()
            await upstream.close()
            await asyncio.to_thread(writer.close)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
            Route("/v1/models", gateway.models, methods=["GET"]),
            Route("/health", gateway.health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.writer = writer
    app.state.upstream = upstream
    app.state.router = router
    app.state.config = config
    return app
