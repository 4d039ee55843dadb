"""The gateway's own endpoints: health, metrics, workflow outcomes, and reading logs and specialists.

They share the app's store, writer and metrics but none of the request path; each checks its role first
(`downsize.gateway.auth`). Store reads run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from downsize.artifacts import specialist_summary
from downsize.config import GatewayConfig
from downsize.errors import DownsizeError, InvalidRequestError, NoSpecialistError, StoreError
from downsize.gateway.auth import CALL_MODELS, MANAGE, READ_LOGS, Authorizer, OriginHasher
from downsize.gateway.metrics import GatewayMetrics
from downsize.gateway.protocol import error_response, parse_outcome, read_body
from downsize.gateway.writer import ExchangeWriter

if TYPE_CHECKING:
    from downsize.route.router import Router
    from downsize.store.store import Store

logger = logging.getLogger(__name__)

META_MAX = 200  # the store's column width for session, agent and task ids
_MAX_SMALL_BODY = 64 * 1024  # these endpoints take small JSON bodies


class AdminEndpoints:
    """`/health`, `/metrics` and `/v1/downsize/...`."""

    def __init__(
        self,
        config: GatewayConfig,
        store: Store,
        current_router: Callable[[], Router | None],
        writer: ExchangeWriter,
        auth: Authorizer,
        hasher: OriginHasher | None,
        metrics: GatewayMetrics,
        reload: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.current_router = current_router
        self.reload = reload
        self.writer = writer
        self.auth = auth
        self.hasher = hasher
        self.metrics = metrics
        self.wait_s = config.capture_wait_s

    @property
    def router(self) -> Router | None:
        return self.current_router()

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "queue_depth": self.writer.depth,
                "specialists": [sp.name for sp in self.router.specialists] if self.router is not None else [],
                "capture_mode": self.config.capture_mode,
                "written": self.writer.written,
                "write_failures": self.writer.failed,
                "dropped": self.writer.dropped,
            }
        )

    async def prometheus(self, request: Request) -> Response:
        if not self.config.public_metrics:
            denied = self.auth.check(request.headers.get("authorization"), READ_LOGS)
            if denied is not None:
                return denied
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def outcomes(self, request: Request) -> Response:
        """Record a workflow's outcome on every exchange of its session (after what is queued is written)."""
        denied = self.auth.check(request.headers.get("authorization"), CALL_MODELS)
        if denied is not None:
            return denied
        try:
            session, success = parse_outcome(await read_body(request, _MAX_SMALL_BODY))
        except InvalidRequestError as exc:
            return error_response(exc.status, str(exc), param=exc.param)
        stored = session[:META_MAX]
        if self.hasher is not None:
            stored = self.hasher(stored)
        await self.writer.flush_async(self.wait_s)
        try:
            updated = await asyncio.to_thread(self.store.set_outcome, stored, 1.0 if success else 0.0)
        except StoreError as exc:
            logger.error("could not record an outcome: %s", str(exc)[:300])
            return error_response(503, "the store could not record the outcome; retry", type_="server_error")
        return JSONResponse(
            {"object": "downsize.outcome", "session": session, "success": success, "updated": updated}
        )

    async def exchanges(self, request: Request) -> Response:
        """The newest exchanges, newest first (reader or admin)."""
        denied = self.auth.check(request.headers.get("authorization"), READ_LOGS)
        if denied is not None:
            return denied
        raw = request.query_params.get("limit", "20")
        # ASCII only: "²".isdigit() is true, and int("²") raises
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
            return error_response(
                400, f"limit must be a whole number from 1 to 1000, not {raw!r}", param="limit"
            )
        try:
            rows = await asyncio.to_thread(self.store.recent_exchanges, int(raw))
        except StoreError as exc:
            return error_response(500, str(exc), type_="server_error", code="store_error")
        return JSONResponse({"object": "list", "data": [asdict(row) for row in rows]})

    async def specialists(self, request: Request) -> Response:
        """Every specialist version with its status and threshold (admin)."""
        denied = self.auth.check(request.headers.get("authorization"), MANAGE)
        if denied is not None:
            return denied
        try:
            rows = await asyncio.to_thread(self.store.specialists)
        except StoreError as exc:
            return error_response(500, str(exc), type_="server_error", code="store_error")
        slots = {slot.specialist.id: slot for slot in self.router.slots} if self.router is not None else {}
        return JSONResponse(
            {
                "object": "list",
                "routing": sorted(slots),
                "data": [
                    {
                        **specialist_summary(row),
                        "routing": row.id in slots,
                        "loaded": row.id in slots and slots[row.id].loaded,
                        "mode": slots[row.id].mode if row.id in slots else None,
                    }
                    for row in rows
                ],
            }
        )

    async def savings(self, request: Request) -> Response:
        """What the specialists saved, measured on served traffic (`evaluate/costs.py`; reader or admin).
        `?since=ISO-TIME` counts only calls stored from then on."""
        from downsize.evaluate.costs import savings

        denied = self.auth.check(request.headers.get("authorization"), READ_LOGS)
        if denied is not None:
            return denied
        since = request.query_params.get("since")
        if since is not None:
            try:
                datetime.fromisoformat(since)
            except ValueError:
                return error_response(
                    400,
                    f"since must be an ISO time such as 2026-12-01T00:00:00+00:00, not {since!r}",
                    "since",
                )
        try:
            figures = await asyncio.to_thread(savings, self.store, since=since)
        except StoreError as exc:
            return error_response(500, str(exc), type_="server_error", code="store_error")
        except DownsizeError as exc:  # a bad price file or `since`: say what to fix
            return error_response(400, str(exc), param="since" if since else None)
        return JSONResponse(figures)

    # -- routing modes ------------------------------------------------------------------------------------

    async def routes(self, request: Request) -> Response:
        """Each task's routing mode, canary share and last change, and the newest mode changes (reader)."""
        from downsize.route.modes import routes_table

        denied = self.auth.check(request.headers.get("authorization"), READ_LOGS)
        if denied is not None:
            return denied
        try:
            table = await asyncio.to_thread(routes_table, self.store)
            events = await asyncio.to_thread(self.store.route_events)
        except StoreError as exc:
            return error_response(500, str(exc), type_="server_error", code="store_error")
        router = self.router
        serving = {slot.specialist.id: slot.mode for slot in router.slots} if router is not None else {}
        for row in table:
            row["in_gateway"] = serving.get(row["specialist_id"])
        return JSONResponse({"object": "list", "data": table, "events": events[-50:]})

    async def set_route(self, request: Request) -> Response:
        """`{"task": ..., "mode": "off|shadow|canary|live", "traffic"?, "rule"?, "force"?, "reason"?}` (admin):
        change a task's mode as `downsize route` does, then reload this gateway's specialists at once."""
        from downsize.route.modes import set_mode

        denied = self.auth.check(request.headers.get("authorization"), MANAGE)
        if denied is not None:
            return denied
        try:
            body = json.loads(await read_body(request, _MAX_SMALL_BODY, None) or b"null")
            args = _route_args(body)
        except (ValueError, RecursionError):
            return error_response(400, 'the body must be JSON: {"task": ..., "mode": ...}')
        except InvalidRequestError as exc:
            return error_response(exc.status, str(exc), param=exc.param)
        try:
            change = await asyncio.to_thread(set_mode, self.store, actor="admin", **args)
        except NoSpecialistError as exc:
            return error_response(404, str(exc), param="task", code="not_found")
        except DownsizeError as exc:
            return error_response(409, str(exc), param="mode", code="route_refused")
        reloaded = await self.reload("routing changed over the admin API") if self.reload else False
        sp = change.specialist
        return JSONResponse(
            {
                "task": sp.task,
                "specialist_id": sp.id,
                "specialist": sp.name,
                "from": change.from_mode,
                "to": change.to_mode,
                "traffic": change.traffic,
                "reason": change.reason,
                "reloaded": reloaded,
            }
        )


def _route_args(body: Any) -> dict[str, Any]:
    """set_mode's arguments from a POST /v1/downsize/routes body; InvalidRequestError naming what to fix."""
    if not isinstance(body, dict):
        raise InvalidRequestError('the body must be a JSON object: {"task": ..., "mode": ...}')
    unknown = set(body) - {"task", "mode", "traffic", "rule", "force", "reason"}
    if unknown:
        raise InvalidRequestError(f"unknown fields {sorted(unknown)}", param=sorted(unknown)[0])
    task, mode = body.get("task"), body.get("mode")
    if not isinstance(task, str | int) or isinstance(task, bool) or not str(task):
        raise InvalidRequestError("task must name a specialist (id or name) or its task", param="task")
    if not isinstance(mode, str):
        raise InvalidRequestError("mode must be one of off, shadow, canary, live", param="mode")
    traffic = body.get("traffic")
    if traffic is not None and (isinstance(traffic, bool) or not isinstance(traffic, int | float)):
        raise InvalidRequestError("traffic must be a number between 0 and 1", param="traffic")
    rule = body.get("rule", "strict")
    if rule not in ("strict", "parity"):
        raise InvalidRequestError("rule must be strict or parity", param="rule")
    if not isinstance(body.get("force", False), bool):
        raise InvalidRequestError("force must be true or false", param="force")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidRequestError("reason must be a string", param="reason")
    return {
        "ref": str(task),
        "mode": mode,
        "traffic": None if traffic is None else float(traffic),
        "rule": rule,
        "force": body.get("force", False),
        "reason": reason[:500],
    }
