"""The gateway's metrics in the Prometheus text format (0.0.4), written by hand.

A dict update per observation is all the request path pays (about a microsecond); rendering happens only
when `/metrics` is scraped. Each series is updated from one thread only (the event loop, or the writer
thread for store writes), so no locks are needed: a scrape may read a histogram mid-update and be off by
one observation, which Prometheus tolerates.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class WriterCounts(Protocol):
    """What the metrics read of the exchange writer."""

    @property
    def depth(self) -> int: ...

    max_queue: int
    written: int
    dropped: int
    failed: int
    filtered: int
    sync_timeouts: int


class Counter:
    """A monotonically increasing count per label set."""

    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Histogram:
    """Observations counted into fixed buckets per label set (cumulated only when rendered)."""

    def __init__(self, name: str, help_: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self.buckets = tuple(buckets)
        # per label set: [count in each bucket..., count above the last bucket], sum
        self.series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        series[0][bisect_left(self.buckets, value)] += 1
        series[1][0] += value

    def count(self, *labels: str) -> int:
        series = self.series.get(labels)
        return sum(series[0]) if series else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, total) in sorted(self.series.items()):
            running = 0
            bucket, plain = self.name + "_bucket", _labels(self.label_names, labels)
            for bound, n in zip(self.buckets, counts, strict=False):
                running += n
                yield bucket + _labels(self.label_names, labels, f'le="{bound:g}"') + f" {running}"
            running += counts[-1]
            yield bucket + _labels(self.label_names, labels, 'le="+Inf"') + f" {running}"
            yield f"{self.name}_sum{plain} {_number(total[0])}"
            yield f"{self.name}_count{plain} {running}"


class Sampled:
    """A value read when scraped (a gauge, or a counter kept elsewhere, such as the writer's totals)."""

    def __init__(self, name: str, help_: str, kind: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.kind, self.read = name, help_, kind, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield f"{self.name} {_number(self.read())}"


class GatewayMetrics:
    """Every metric the gateway exports; `render()` is the body of `GET /metrics`."""

    def __init__(self) -> None:
        self.requests = Counter(
            "downsize_requests_total",
            "Chat completion requests answered, by route (upstream, specialist, fallback) and HTTP status.",
            ("route", "code"),
        )
        self.latency = Histogram(
            "downsize_request_duration_seconds",
            "Time from request to the end of the answer, by route (upstream, specialist, fallback).",
            LATENCY_BUCKETS,
            ("route",),
        )
        self.fallbacks = Counter(
            "downsize_fallbacks_total",
            "Requests a specialist applied to that went upstream instead, by reason.",
            ("reason",),
        )
        self.upstream_attempts = Counter(
            "downsize_upstream_attempts_total",
            "Calls to each upstream, by outcome (ok, timeout, error, status_<code> when retried).",
            ("upstream", "outcome"),
        )
        self.auth_failures = Counter(
            "downsize_auth_failures_total",
            "Requests refused by the gateway's key check, by reason (missing, invalid, forbidden).",
            ("reason",),
        )
        self.store_write = Histogram(
            "downsize_store_write_seconds",
            "Time to write one batch of exchanges to the store.",
            WRITE_BUCKETS,
        )
        self._sampled: list[Sampled] = []

    def sample(self, name: str, help_: str, kind: str, read: Callable[[], float]) -> None:
        """Export a value read at scrape time (kind: gauge or counter)."""
        self._sampled.append(Sampled(name, help_, kind, read))

    def watch_writer(self, writer: WriterCounts) -> None:
        """Export the exchange writer's queue and counters, read at scrape time."""
        self.sample(
            "downsize_capture_queue_depth", "Exchanges waiting to be stored.", "gauge", lambda: writer.depth
        )
        self.sample(
            "downsize_capture_queue_capacity", "Size of the capture queue.", "gauge", lambda: writer.max_queue
        )
        self.sample(
            "downsize_exchanges_written_total", "Exchanges stored.", "counter", lambda: writer.written
        )
        self.sample(
            "downsize_exchanges_dropped_total",
            "Exchanges not stored because the queue was full (shed, or block timed out).",
            "counter",
            lambda: writer.dropped,
        )
        self.sample(
            "downsize_exchanges_failed_total",
            "Exchanges that could not be built, redacted or written.",
            "counter",
            lambda: writer.failed,
        )
        self.sample(
            "downsize_exchanges_filtered_total",
            "Exchanges the redaction hook chose not to store.",
            "counter",
            lambda: writer.filtered,
        )
        self.sample(
            "downsize_sync_capture_timeouts_total",
            "Sync-mode requests answered before their exchange's commit was confirmed.",
            "counter",
            lambda: writer.sync_timeouts,
        )

    def render(self) -> str:
        lines: list[str] = []
        metrics: list[Counter | Histogram | Sampled] = [
            self.requests,
            self.latency,
            self.fallbacks,
            self.upstream_attempts,
            self.auth_failures,
            self.store_write,
            *self._sampled,
        ]
        for metric in metrics:
            lines.extend(metric.render())
        lines.append("")
        return "\n".join(lines)
