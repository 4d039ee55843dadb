"""What the gateway stores of a call: the Exchange built from it, and what happens to it before the store.

`Capture` holds what is known before the response; its `from_body` / `from_stream` run on the writer
thread, after the agent has its answer. `capture_pipeline` builds the writer's `prepare` step: origin
identifiers replaced by keyed hashes (when anonymisation is on), then the operator's redaction hook.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from downsize.backends.upstream import reassemble_stream
from downsize.errors import ConfigError
from downsize.gateway.auth import OriginHasher
from downsize.gateway.writer import Prepare, Record
from downsize.shapes import describe_response
from downsize.types import PROBE_ROUTE, Exchange, RouteDecision

# Request fields that identify the end user (OpenAI's `user`, and its successor `safety_identifier`).
ORIGIN_FIELDS = ("user", "safety_identifier")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Capture:
    """What the gateway knows of one call before the response: enough to build its Exchange later."""

    __slots__ = ("request", "meta", "wall", "started", "decision", "specialist_id", "probe")

    def __init__(
        self,
        request: dict[str, Any],
        meta: dict[str, str],
        wall: float,
        started: float,
        decision: RouteDecision | None,
        specialist_id: int | None,
        probe: bool = False,
    ) -> None:
        self.probe = probe  # a consistency probe's second upstream answer (route `probe`)
        self.request = request
        self.meta = meta
        self.wall = wall
        self.started = started
        self.decision = decision
        self.specialist_id = specialist_id

    @property
    def route(self) -> str:
        if self.probe:
            return PROBE_ROUTE
        return self.decision.route if self.decision is not None else "upstream"

    @property
    def route_kind(self) -> str:
        """The metrics label: upstream, specialist or fallback."""
        if self.decision is None:
            return "upstream"
        return "specialist" if self.decision.served else "fallback"

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


def anonymizer(hasher: OriginHasher) -> Prepare:
    """Replace the agent, session and end-user ids of an exchange by their keyed hashes."""

    def anonymize(exchange: Exchange) -> Exchange:
        if exchange.agent is not None:
            exchange.agent = hasher(exchange.agent)
        if exchange.session is not None:
            exchange.session = hasher(exchange.session)
        request = exchange.request
        if any(isinstance(request.get(f), str) for f in ORIGIN_FIELDS):
            exchange.request = {
                k: hasher(v) if k in ORIGIN_FIELDS and isinstance(v, str) else v for k, v in request.items()
            }
        return exchange

    return anonymize


def load_redactor(path: str) -> Callable[[Exchange], Exchange | None]:
    """The redaction hook at `package.module:function` (or `package.module.function`).

    It gets each Exchange on the writer thread and returns the Exchange to store (changed as it likes),
    or None to store nothing. ConfigError when it cannot be imported.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"redact must be a dotted path such as 'mypackage.hooks:redact', not {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import the redaction hook's module {module_name!r}: {exc}") from exc
    hook = getattr(module, attr, None)
    if not callable(hook):
        raise ConfigError(f"the redaction hook {path!r} is not a callable in module {module_name!r}")
    return hook


def capture_pipeline(hasher: OriginHasher | None, redact: str | None) -> Prepare | None:
    """The writer's `prepare` step: anonymise, then redact (None when neither is configured)."""
    steps: list[Prepare] = []
    if hasher is not None:
        steps.append(anonymizer(hasher))
    if redact:
        steps.append(load_redactor(redact))
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def prepare(exchange: Exchange) -> Exchange | None:
        current: Exchange | None = exchange
        for step in steps:
            if current is None:
                return None
            current = step(current)
        return current

    return prepare
