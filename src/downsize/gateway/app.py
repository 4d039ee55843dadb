"""The OpenAI-compatible gateway as an ASGI app: agents change their base URL and nothing else.

`POST /v1/chat/completions` is validated just enough to route and log it, offered to the router (when
one is given and applies), and otherwise forwarded byte for byte to the upstreams (in fallback order),
streaming or not. Every exchange goes to an `ExchangeWriter` queue after the answer is on its way
(`async` capture) or is committed before the answer goes out (`sync`): parsing the upstream's response,
reassembling streams, hashing origin ids and redacting happen on the writer's thread.

Also served: `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus), `POST /v1/downsize/outcomes`
(agent), `GET /v1/downsize/exchanges` (reader), `GET /v1/downsize/specialists` (admin). See
docs/gateway.md for configuration, keys and roles.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from downsize.backends.upstream import (
    BufferedReply,
    Upstream,
    UpstreamPool,
    UpstreamStream,
    UpstreamTimeoutError,
)
from downsize.config import GatewayConfig
from downsize.errors import ConfigError, InvalidRequestError, UpstreamError
from downsize.gateway.admin import META_MAX, AdminEndpoints
from downsize.gateway.auth import CALL_MODELS, Authorizer, KeyRing, OriginHasher
from downsize.gateway.capture import Capture, capture_pipeline
from downsize.gateway.metrics import GatewayMetrics
from downsize.gateway.protocol import (
    completion_events,
    error_response,
    parse_chat_request,
    read_body,
)
from downsize.gateway.writer import ExchangeWriter, Item
from downsize.route.rollback import RollbackVerdict, check_all
from downsize.route.router import RouteOutcome, Slot
from downsize.types import RouteDecision

if TYPE_CHECKING:
    from downsize.route.router import Router
    from downsize.store.store import Store

__all__ = ["completion_events", "create_app", "error_response", "parse_chat_request", "read_body"]

logger = logging.getLogger(__name__)

# Request headers passed on to the upstream (ASGI gives names lower-cased); everything else stays here.
# `Authorization` is handled apart: it is the agent's upstream key, unless gateway keys are configured.
_FORWARD_HEADERS = {
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
_SSE_HEADERS = {"Cache-Control": "no-cache"}
_CORS_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-Upstream-Authorization",
    "X-Downsize-Agent",
    "X-Downsize-Session",
    "X-Downsize-Task",
    "OpenAI-Organization",
    "OpenAI-Project",
    "OpenAI-Beta",
]


class _Head:
    """What one pass over a request's headers yields."""

    __slots__ = ("forward", "client_auth", "token", "meta", "length")

    def __init__(self) -> None:
        self.forward: dict[str, str] = {"Content-Type": "application/json"}
        self.client_auth: str | None = None  # the agent's upstream key, as an Authorization value
        self.token: str | None = None  # the gateway key, as an Authorization value
        self.meta: dict[str, str] = {}
        self.length: int | None = None


def read_headers(scope: MutableMapping[str, Any], gateway_auth: bool) -> _Head:
    """Sort the raw headers: to forward upstream, the upstream key, the gateway key, metadata, body length.

    Without gateway keys, `Authorization` is the agent's upstream key (as with any OpenAI proxy). With
    them, `Authorization` carries the gateway key and the upstream key comes in `X-Upstream-Authorization`
    (`Bearer sk-...` or the bare key). `X-Upstream-Authorization` wins whenever it is sent.
    """
    head = _Head()
    upstream_auth: str | None = None
    for name, value in scope["headers"]:
        key = _FORWARD_HEADERS.get(name)
        if key is not None:
            head.forward[key] = value.decode("latin-1")
            continue
        field = _META_HEADERS.get(name)
        if field is not None:
            head.meta[field] = value.decode("utf-8", "replace")[:META_MAX]
        elif name == b"authorization":
            if gateway_auth:
                head.token = value.decode("latin-1")
            else:
                head.client_auth = value.decode("latin-1")
        elif name == b"x-upstream-authorization":
            upstream_auth = value.decode("latin-1").strip()
        elif name == b"content-length" and value.isdigit():
            head.length = int(value)
    if upstream_auth:
        head.client_auth = upstream_auth if " " in upstream_auth else f"Bearer {upstream_auth}"
    return head


# -- the app ---------------------------------------------------------------------------------------------


class _Gateway:
    """The endpoints, holding what they share (no module globals)."""

    def __init__(
        self,
        config: GatewayConfig,
        router: Router | None,
        pool: UpstreamPool,
        writer: ExchangeWriter,
        auth: Authorizer,
        metrics: GatewayMetrics,
        store: Store | None = None,
        reloader: Callable[[], Router | None] | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.store = store
        self.reloader = reloader
        self.routing_version: tuple[int, int] | None = None
        self.rollbacks: list[RollbackVerdict] = []  # the verdicts this gateway applied
        self.pool = pool
        self.writer = writer
        self.auth = auth
        self.auth_on = auth.enabled
        self.metrics = metrics
        self.sync = config.capture_mode == "sync"
        self.block = config.queue_policy == "block"
        self.wait_s = config.capture_wait_s
        self.specialist_timeout_s = config.specialist_timeout_s
        self.executor: ThreadPoolExecutor | None = None
        self._stuck: Future[RouteOutcome] | None = None  # a specialist call still running past its timeout
        self.probe = config.probe
        self.probe_tasks: set[asyncio.Task[None]] = set()
        self.probe_counts = {"sent": 0, "skipped_busy": 0, "failed": 0}
        self.local_models = self._listed(router)

    @staticmethod
    def _listed(router: Router | None) -> list[dict[str, Any]]:
        return [
            {
                "id": f"downsize/{sp.name}",
                "object": "model",
                "created": int(time.time()),
                "owned_by": "downsize",
            }
            for sp in (router.specialists if router is not None else [])
        ]

    # -- routing changes: reload, rollback ---------------------------------------------------------------

    async def reload_router(self, why: str) -> bool:
        """Rebuild the router from the store (modes changed) and swap it in: a request in flight keeps the
        router it started with, so none is dropped; a specialist that stays keeps its loaded model. False (the
        old router stays) when this gateway cannot reload or the new one cannot be built."""
        if self.reloader is None:
            return False
        try:
            fresh = await asyncio.to_thread(self.reloader)
        except Exception:  # a bad specialist row must not take routing down: keep what works
            logger.exception("routing reload failed (%s); keeping the current specialists", why)
            return False
        if fresh is not None and self.router is not None:
            previous = {slot.specialist.id: slot for slot in self.router.slots}
            for slot in fresh.slots:
                if slot.specialist.id in previous:
                    slot.adopt(previous[slot.specialist.id])
        self.router = fresh
        self.local_models = self._listed(fresh)
        logger.info(
            "routing reloaded (%s): %s",
            why,
            ", ".join(f"{s.specialist.name}={s.mode}" for s in fresh.slots) if fresh else "no specialist",
        )
        return True

    async def watch_routing(self, interval_s: float) -> None:
        """Reload when the store's routing changes (`downsize route`, the flywheel, another gateway's rollback)."""
        assert self.store is not None
        store = self.store
        self.routing_version = await asyncio.to_thread(store.routing_version)
        while True:
            await asyncio.sleep(interval_s)
            try:
                version = await asyncio.to_thread(store.routing_version)
            except Exception:
                logger.exception("cannot read the routing version; retrying")
                continue
            if version != self.routing_version:
                self.routing_version = version
                await self.reload_router("routing changed in the store")

    async def check_rollback(self) -> list[RollbackVerdict]:
        """Check every canary and live task against the rollback limits, roll back those past them (to shadow,
        recorded with the figures) and reload; returns the verdicts that rolled back."""
        if self.store is None or not self.config.rollback.enabled:
            return []
        verdicts = await asyncio.to_thread(check_all, self.store, self.config.rollback)
        rolled = [v for v in verdicts if v.roll_back]
        for verdict in rolled:
            logger.warning(
                "rolled back %s (id %s) to shadow: %s",
                verdict.specialist.name,
                verdict.specialist.id,
                verdict.reason,
            )
        if rolled:
            self.rollbacks.extend(rolled)
            await self.reload_router("rollback")
        return rolled

    async def watch_rollback(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check_rollback()
            except Exception:
                logger.exception("the rollback check failed; retrying")

    # One thread: the specialist model is used by one request at a time, and never on the event loop.
    def router_executor(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="downsize-router")
        return self.executor

    def shutdown_router(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    # -- shared steps ------------------------------------------------------------------------------------

    def _capture(self, item: Item) -> Awaitable[bool]:
        """Hand an exchange to the writer under the configured mode and policy (never raises)."""
        if self.sync:
            return self.writer.put_committed(item, self.block, self.wait_s)
        return self.writer.put_async(item, self.block, self.wait_s)

    def _observe(self, capture: Capture, status: int) -> None:
        kind = capture.route_kind
        self.metrics.requests.inc(kind, str(status))
        self.metrics.latency.observe(time.perf_counter() - capture.started, kind)

    # -- chat completions --------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        wall = time.time()
        head = read_headers(request.scope, self.auth_on)
        if self.auth_on:
            denied = self.auth.check(head.token, CALL_MODELS)
            if denied is not None:
                return denied
        try:
            body = await read_body(request, self.config.max_body_bytes, head.length)
            payload = parse_chat_request(body)
        except InvalidRequestError as exc:
            self.metrics.requests.inc("rejected", str(exc.status))
            return error_response(exc.status, str(exc), param=exc.param)
        stream = payload.get("stream") is True
        decision: RouteDecision | None = None
        specialist_id: int | None = None
        router = self.router
        dispatched = self._dispatch(router, payload, head.meta) if router is not None else (None, None)
        if router is not None and dispatched[0] is not None:
            outcome = await self._route(router, payload, head.meta, dispatched)
            if outcome is not None:
                decision, specialist_id = outcome.decision, outcome.specialist_id
                if decision is not None and decision.served and outcome.response is not None:
                    capture = Capture(payload, head.meta, wall, started, decision, specialist_id)
                    await self._capture(partial(capture.record, outcome.response, None, capture.elapsed_ms()))
                    self._observe(capture, 200)
                    self._maybe_probe(payload, head, served=True)
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
                if decision is not None and not decision.served:
                    self.metrics.fallbacks.inc(decision.reason.split(":", 1)[0])
        capture = Capture(payload, head.meta, wall, started, decision, specialist_id)
        if stream:
            return await self._forward_stream(body, head, capture)
        return await self._forward(body, head, capture)

    @staticmethod
    def _dispatch(
        router: Router, payload: dict[str, Any], meta: dict[str, str]
    ) -> tuple[Slot | None, str | None]:
        """Which specialist answers the request (a millisecond: call site, then the task assigner)."""
        try:
            return router.slot_for(payload, meta.get("agent"), meta.get("task_hint"), meta.get("session"))
        except Exception:  # a dispatch bug must not fail the agent's call: log it and go upstream
            logger.exception("the router could not dispatch the request; forwarding it upstream")
            return None, None

    async def _route(
        self,
        router: Router,
        payload: dict[str, Any],
        meta: dict[str, str] | None,
        dispatched: tuple[Slot | None, str | None],
    ) -> RouteOutcome | None:
        """The router's answer within `specialist_timeout_s`; past it (or while a timed-out call still
        runs), a `specialist_timeout` fallback. None when the router itself failed."""
        stuck = self._stuck
        if stuck is not None:
            if not stuck.done():
                return self._timed_out(dispatched[0], 0.0)
            self._stuck = None
        meta = meta or {}
        future = self.router_executor().submit(
            router.route, payload, meta.get("agent"), meta.get("task_hint"), dispatched
        )
        try:
            if self.specialist_timeout_s is None:
                return await asyncio.wrap_future(future)
            return await asyncio.wait_for(asyncio.wrap_future(future), self.specialist_timeout_s)
        except TimeoutError:
            if not future.cancel():  # running: the thread cannot be stopped, so later calls skip it
                self._stuck = future
            logger.warning(
                "the specialist did not answer within %s s; forwarding upstream", self.specialist_timeout_s
            )
            return self._timed_out(
                dispatched[0], self.specialist_timeout_s * 1000 if self.specialist_timeout_s else 0
            )
        except Exception:  # a router bug must not fail the agent's call: log it and go upstream
            logger.exception("the router failed; forwarding the request upstream")
            return None

    @staticmethod
    def _timed_out(slot: Slot | None, waited_ms: float) -> RouteOutcome:
        assert slot is not None
        decision = RouteDecision(
            served=False,
            reason="specialist_timeout",
            specialist=str(slot.specialist.id),
            threshold=slot.decider.threshold,
            latency_ms=waited_ms,
        )
        return RouteOutcome(decision=decision, specialist_id=slot.specialist.id)

    async def _upstream_failed(self, exc: UpstreamError, capture: Capture) -> JSONResponse:
        if isinstance(exc, UpstreamTimeoutError):
            status, code = 504, "upstream_timeout"
        else:
            status, code = 502, "upstream_unreachable"
        logger.warning("upstream call failed: %s", exc)
        body = {"error": {"message": str(exc), "type": "upstream_error", "param": None, "code": code}}
        await self._capture(capture.record(body, None, capture.elapsed_ms()))
        self._observe(capture, status)
        return JSONResponse(body, status_code=status, headers={"X-Downsize-Route": capture.route})

    async def _forward(self, body: bytes, head: _Head, capture: Capture) -> Response:
        try:
            status, headers, data = await self.pool.post_chat(body, head.forward, head.client_auth)
        except UpstreamError as exc:
            return await self._upstream_failed(exc, capture)
        await self._capture(partial(capture.from_body, data, status, capture.elapsed_ms()))
        headers["X-Downsize-Route"] = capture.route
        self._observe(capture, status)
        if status < 400:
            self._maybe_probe(capture.request, head, served=False)
        return Response(data, status_code=status, headers=headers)

    async def _forward_stream(self, body: bytes, head: _Head, capture: Capture) -> Response:
        try:
            stream = await self.pool.stream_chat(body, head.forward, head.client_auth)
        except UpstreamError as exc:
            return await self._upstream_failed(exc, capture)
        headers = stream.headers
        headers["X-Downsize-Route"] = capture.route
        if isinstance(stream, BufferedReply) or stream.status >= 400 or not stream.is_event_stream:
            # An error (or a server that ignored `stream`) answers with one JSON body: pass it on whole.
            try:
                data = await stream.read()
            except UpstreamError as exc:
                return await self._upstream_failed(exc, capture)
            finally:
                stream.release()
            await self._capture(partial(capture.from_body, data, stream.status, capture.elapsed_ms()))
            self._observe(capture, stream.status)
            return Response(data, status_code=stream.status, headers=headers)
        self._maybe_probe(capture.request, head, served=False)
        return StreamingResponse(self._relay(stream, capture), status_code=stream.status, headers=headers)

    # -- the consistency probe ---------------------------------------------------------------------------

    def _maybe_probe(self, payload: dict[str, Any], head: _Head, served: bool) -> None:
        """Re-ask the upstream this call, in the background, for a `probe.fraction` share of eligible calls
        (upstream answers; in `live` mode a specialist's too), and for `rollback.check_fraction` of served
        calls (the LLM's answer is what rollback judges a served answer by). At most `max_in_flight` at once:
        more are skipped, never queued, so a probe cannot pile up cost or memory."""
        probe = self.probe
        share = probe.fraction
        if served:
            checks = self.config.rollback.check_fraction if self.config.rollback.enabled else 0.0
            share = max(probe.fraction if probe.mode == "live" else 0.0, checks)
        if share <= 0.0:
            return
        if share < 1.0 and random.random() >= share:
            return
        if len(self.probe_tasks) >= probe.max_in_flight:
            self.probe_counts["skipped_busy"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._probe(payload, head))
        self.probe_tasks.add(task)
        task.add_done_callback(self.probe_tasks.discard)

    async def _probe(self, payload: dict[str, Any], head: _Head) -> None:
        """The second upstream answer, stored as an exchange of the same request, session and agent with
        route `probe` (never served, never trained on; `evaluate/probe.py` pairs it with the first)."""
        request = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
        capture = Capture(request, head.meta, time.time(), time.perf_counter(), None, None, probe=True)
        try:
            status, _, data = await self.pool.post_chat(
                json.dumps(request).encode(), head.forward, head.client_auth
            )
        except UpstreamError as exc:
            self.probe_counts["failed"] += 1
            logger.warning("consistency probe failed: %s", exc)
            return
        self.probe_counts["sent"] += 1
        await self._capture(partial(capture.from_body, data, status, capture.elapsed_ms()))

    async def drain_probes(self, timeout_s: float = 30.0) -> None:
        """Wait for the probes in flight (at shutdown, before the writer closes)."""
        if self.probe_tasks:
            await asyncio.wait(list(self.probe_tasks), timeout=timeout_s)

    async def _relay(self, stream: UpstreamStream, capture: Capture) -> AsyncIterator[bytes]:
        """Pass SSE bytes on as they arrive, keeping them for the log; a broken stream ends with an error event.

        The exchange is queued as soon as `[DONE]` arrives, before the client can see it (and in sync mode
        committed before), so that once an agent has its answer, a `flush()` of the writer covers it.
        """
        parts: list[bytes] = []
        logged = False
        try:
            async for chunk in stream.chunks():
                parts.append(chunk)
                if not logged and b"[DONE]" in chunk[-16:]:
                    logged = True
                    await self._capture(
                        partial(capture.from_stream, list(parts), stream.status, capture.elapsed_ms())
                    )
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
                logged = True
                await self._capture(partial(capture.from_stream, parts, stream.status, capture.elapsed_ms()))
            yield event
        finally:
            stream.release()
            self._observe(capture, stream.status)
            if not logged:  # the stream ended without [DONE], or the client went away: never wait here
                self.writer.put(partial(capture.from_stream, parts, stream.status, capture.elapsed_ms()))

    # -- models, health, metrics -------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        head = read_headers(request.scope, self.auth_on)
        if self.auth_on:
            denied = self.auth.check(head.token, CALL_MODELS)
            if denied is not None:
                return denied
        del head.forward["Content-Type"]
        local = self.local_models
        try:
            status, data = await self.pool.models(head.forward, head.client_auth)
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


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 (and any other HTTPException) as OpenAI-shaped errors."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404:
        message = (
            f"unknown path {request.method} {request.url.path}: the gateway serves "
            "POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics and /v1/downsize/..."
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


def build_pool(config: GatewayConfig, metrics: GatewayMetrics | None = None) -> UpstreamPool:
    """The upstreams of `config` in fallback order, their own keys read from the environment now."""
    upstreams = []
    for index, target in enumerate(config.upstreams):
        env = target.api_key_env or config.upstream_api_key_env
        key = None
        if env is not None:
            key = os.environ.get(env) or None
            if key is None:
                raise ConfigError(f"the key for upstream {target.url} is read from ${env}, which is not set")
        upstreams.append(
            Upstream(
                target.url,
                timeout_s=config.upstream_timeout_s,
                connect_timeout_s=config.upstream_connect_timeout_s,
                api_key=key,
                # A fallback's own key replaces the agent's, which must not reach another provider.
                own_key=index > 0 and target.api_key_env is not None,
            )
        )
    hook = None
    if metrics is not None:
        attempts = metrics.upstream_attempts

        def hook(upstream: Upstream, outcome: str) -> None:
            attempts.inc(upstream.label, outcome)

    return UpstreamPool(
        upstreams,
        retries=config.upstream_retries,
        retry_statuses=config.retry_statuses,
        backoff_base_s=config.backoff_base_s,
        backoff_max_s=config.backoff_max_s,
        on_attempt=hook,
    )


def create_app(
    config: GatewayConfig,
    store: Store,
    router: Router | None = None,
    upstream: Upstream | UpstreamPool | None = None,
    reload: Callable[[], Router | None] | None = None,
) -> Starlette:
    """The gateway app. The upstreams' connection pools and the exchange writer live as long as the app's
    lifespan (startup opens them, shutdown drains and closes them); `app.state.writer` is the writer.

    `reload` rebuilds the router from the store: given, the gateway reloads when routing changes in the store
    (polled every `route.reload_s`) or through `POST /v1/downsize/routes`, and checks its canary and live
    tasks for rollback every `rollback.interval_s`.

    Configuration errors (a missing key variable, encryption asked for without a store key, a redaction
    hook that does not import) raise ConfigError here, before anything is served.
    """
    metrics = GatewayMetrics()
    keys = KeyRing.from_config(config.gateway_keys)
    hasher = OriginHasher.from_env(config.anonymize_key_env) if config.anonymize else None
    if config.encrypt_bodies and not getattr(store, "encrypts", False):
        raise ConfigError(
            f"encrypt_bodies is on but the store has no key: set ${config.store_key_env} to base64 of 32 random "
            "bytes before starting the gateway"
        )
    if isinstance(upstream, Upstream):
        pool = UpstreamPool(
            [upstream],
            retries=config.upstream_retries,
            retry_statuses=config.retry_statuses,
            backoff_base_s=config.backoff_base_s,
            backoff_max_s=config.backoff_max_s,
        )
    else:
        pool = upstream or build_pool(config, metrics)
    writer = ExchangeWriter(
        store,
        max_batch=config.capture_batch,
        # sync capture commits as soon as it can (a request is waiting); async lingers to batch
        max_wait_s=0.0 if config.capture_mode == "sync" else config.capture_interval_s,
        max_queue=config.queue_max,
        prepare=capture_pipeline(hasher, config.redact),
        observe_write=metrics.store_write.observe,
    )
    metrics.watch_writer(writer)
    auth = Authorizer(keys, metrics.auth_failures)
    gateway = _Gateway(config, router, pool, writer, auth, metrics, store, reload)
    admin = AdminEndpoints(
        config, store, lambda: gateway.router, writer, auth, hasher, metrics, gateway.reload_router
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        await pool.start()
        watchers = []
        if reload is not None and config.route.reload_s > 0:
            watchers.append(asyncio.create_task(gateway.watch_routing(config.route.reload_s)))
        if reload is not None:  # it checks nothing while rollback is disabled (which can change at run time)
            watchers.append(asyncio.create_task(gateway.watch_rollback(config.rollback.interval_s)))
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            gateway.shutdown_router()
            await gateway.drain_probes()
            await pool.close()
            await asyncio.to_thread(writer.close)
            logger.info("gateway stopped; %d exchange(s) written, %d dropped", writer.written, writer.dropped)

    middleware = []
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=config.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=_CORS_HEADERS,
                expose_headers=["X-Downsize-Route"],
            )
        )
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
            Route("/v1/models", gateway.models, methods=["GET"]),
            Route("/health", admin.health, methods=["GET"]),
            Route("/metrics", admin.prometheus, methods=["GET"]),
            Route("/v1/downsize/outcomes", admin.outcomes, methods=["POST"]),
            Route("/v1/downsize/exchanges", admin.exchanges, methods=["GET"]),
            Route("/v1/downsize/specialists", admin.specialists, methods=["GET"]),
            Route("/v1/downsize/routes", admin.routes, methods=["GET"]),
            Route("/v1/downsize/routes", admin.set_route, methods=["POST"]),
            Route("/v1/downsize/savings", admin.savings, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.writer = writer
    app.state.upstream = pool
    app.state.router = router  # the router at start; `app.state.gateway.router` is the current one
    app.state.config = config
    app.state.metrics = metrics
    app.state.gateway = gateway  # its probe counts and tasks (`probe_counts`, `drain_probes`)
    return app
