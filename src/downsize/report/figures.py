"""What `downsize report` shows, read from the store: tasks, specialists, routing over time, mode changes and
the share of each task's calls specialists take. Only labels, counts and figures leave this module: no stored
body (request, response or a specialist's candidate) is ever copied into the figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select

from downsize.artifacts import EvalReport, SpecialistScope
from downsize.contracts import OutputContract
from downsize.discover import runs
from downsize.discover.names import task_names
from downsize.errors import DownsizeError
from downsize.evaluate.probe import answers_agree, pair_probes
from downsize.evaluate.promotion import GateResult, served_on_test
from downsize.route.modes import mode_of
from downsize.sites import short_hash
from downsize.store import Store, schema
from downsize.types import PROBE_ROUTE, Exchange, Specialist

Progress = Callable[[str], None]
NOT_FALLBACKS = ("served", "shadow", "canary_holdout")  # decided, not fallen back
HOURLY_SPAN = timedelta(days=2)  # a shorter span is bucketed by the hour, a longer one by the day
MINUTE_SPAN = timedelta(hours=3)  # ... and a span this short by the minute (a test run, a replay)


@dataclass
class TaskRow:
    key: str
    name: str
    kind: str
    volume: int
    tokens: int
    cost: float
    suitability: float
    specialist: str | None = None  # the routed (else newest) specialist whose scope holds the task
    specialist_id: int | None = None
    mode: str | None = None


@dataclass
class TestCoverage:
    """What a specialist serves on its eval's test split at the thresholds it routes with: the promotion's (per
    risk tier, where promotion set them) else the eval's calibrated one."""

    served: int
    agreed: int
    calls: int  # the test calls the teacher answered in the specialist's kind: the share's denominator
    how: str

    @property
    def share(self) -> float:
        return self.served / self.calls if self.calls else 0.0


def test_coverage(specialist: Specialist, report: EvalReport) -> TestCoverage | None:
    """The specialist's test coverage (None when its eval has no test calls of its kind)."""
    promotion = specialist.metrics.get("promotion")
    if isinstance(promotion, dict) and promotion.get("to") in ("shadow", "canary", "live"):
        gate = GateResult(True, str(promotion.get("reason") or ""), promotion, specialist.threshold)
        found = served_on_test(report, gate)
        if found is not None and found[2]:
            served, agreed, calls = found
            return TestCoverage(
                served,
                agreed,
                calls,
                f"eval test split at the promoted thresholds ({promotion.get('rule', 'strict')} rule)",
            )
    at = report.test.at_threshold
    if not at.tool_calls:
        return None
    how = (
        f"eval test split at threshold {report.threshold:.3g}"
        if isinstance(report.threshold, int | float)
        else "eval test split (no threshold: serves nothing)"
    )
    return TestCoverage(at.served, at.agreed, at.tool_calls, how)


@dataclass
class SpecialistFigures:
    id: int
    name: str
    task: str
    mode: str
    threshold: float | None
    report: dict[str, Any] | None  # the eval report as a dict (curves.py draws it); None: never evaluated
    tasks: list[str] = field(default_factory=list)
    coverage: TestCoverage | None = None


@dataclass
class Bucket:
    """One hour or day of routed traffic: decisions, served, and the agreement checks that fell in it."""

    start: str
    decided: int = 0
    served: int = 0
    shadow_pairs: int = 0  # shadow decisions that would have served, compared with the LLM's answer
    shadow_agreed: int = 0
    probe_pairs: int = 0  # served calls the LLM was asked again (consistency probe)
    probe_agreed: int = 0

    @property
    def served_share(self) -> float | None:
        return self.served / self.decided if self.decided else None

    @property
    def agreement(self) -> float | None:
        pairs = self.shadow_pairs + self.probe_pairs
        return (self.shadow_agreed + self.probe_agreed) / pairs if pairs else None


@dataclass
class Conversion:
    """The share of a task's calls specialists take, measured, and where the number comes from."""

    task: str
    name: str
    volume: int  # calls of the task in the discovery run (the imported log)
    share: float | None  # None: no specialist, or nothing measured
    measured_on: int  # calls the share was measured on
    source: str  # replayed traffic | eval test split | no specialist
    specialist: str | None = None


@dataclass
class ReportFigures:
    generated_at: str
    exchanges: int
    sources: dict[str, int]
    run_id: int | None = None
    run_calls: int = 0
    tasks: list[TaskRow] = field(default_factory=list)
    centroids: np.ndarray | None = None  # one row per task of `tasks`, for the map
    specialists: list[SpecialistFigures] = field(default_factory=list)
    bucket_unit: str = "hour"
    buckets: list[Bucket] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    served: int = 0
    shadow_pairs: int = 0
    shadow_agreed: int = 0
    probe_pairs: int = 0
    probe_agreed: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    conversions: list[Conversion] = field(default_factory=list)


def gather(store: Store, progress: Progress | None = None) -> ReportFigures:
    """Every figure of the report; a clear error when the store holds nothing to report on."""
    say = progress or (lambda _msg: None)
    sources = _sources(store)
    if not sources:
        raise DownsizeError(
            "the store holds no exchanges: import a log (`downsize import ...`) or serve traffic through the "
            "gateway (`downsize serve`), then run `downsize report` again"
        )
    figures = ReportFigures(
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        exchanges=sum(sources.values()),
        sources=sources,
    )
    specialists = store.specialists()
    figures.run_id = runs.latest_run_id(store)
    task_of: dict[int, str | None] = {}
    if figures.run_id is not None:
        say(f"tasks of discovery run {figures.run_id}: naming them from their prompts")
        _tasks(store, figures, specialists)
        task_of = {ex_id: key for ex_id, (key, _c) in runs.exchange_tasks(store, figures.run_id).items()}
    in_use = [sp for sp in specialists if sp.status != "retired"]  # a retired version's curve is history
    say(f"specialists: {len(in_use)} in use, {len(specialists) - len(in_use)} retired")
    figures.specialists = [_specialist(sp) for sp in in_use]
    say("routing: decisions, shadow checks and probes over time")
    taken = _routing(store, figures, specialists, task_of)
    figures.events = store.route_events()
    names = {sp.id: sp.name for sp in specialists}
    for event in figures.events:
        event["specialist"] = names.get(event["specialist_id"], str(event["specialist_id"]))
    figures.conversions = _conversions(figures, specialists, taken)
    return figures


def _sources(store: Store) -> dict[str, int]:
    t = schema.exchanges
    q = select(t.c.source, func.count()).where(t.c.route.is_(None) | (t.c.route != PROBE_ROUTE))
    with store.engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(q.group_by(t.c.source).order_by(t.c.source))}


def covers(specialist: Specialist, task: dict[str, Any]) -> bool:
    """Whether a specialist's scope holds a discovered task: named, through its tool unit (`tool:NAME`), or,
    for a specialist of a whole call site (no tasks), because the task was asked with that call site's tools."""
    scope = SpecialistScope.of(specialist)
    if not scope.tasks and scope.task_tools:
        offered = str(task.get("signature") or "").split("|")
        return len(offered) > 2 and offered[2] == short_hash(",".join(scope.task_tools))
    keys = set(scope.tasks) | {specialist.task}
    return task["task_key"] in keys or (
        task["output_kind"] == "tool_call" and f"tool:{task.get('dominant_tool')}" in keys
    )


def _routed_first(specialists: list[Specialist]) -> list[Specialist]:
    order = {"live": 0, "canary": 1, "shadow": 2, "candidate": 3, "off": 4, "retired": 5}
    return sorted(specialists, key=lambda sp: (order.get(sp.status, 6), -(sp.id or 0)))


def _tasks(store: Store, figures: ReportFigures, specialists: list[Specialist]) -> None:
    assert figures.run_id is not None
    rows = runs.run_tasks(store, figures.run_id)
    names = task_names(store, figures.run_id)
    ranked = _routed_first(specialists)
    cents = []
    for t in rows:
        sp = next((s for s in ranked if covers(s, t)), None)
        figures.tasks.append(
            TaskRow(
                key=t["task_key"],
                name=names.get(t["task_key"], t["task_key"]),
                kind=t["output_kind"],
                volume=int(t["volume"]),
                tokens=int(t["tokens"]),
                cost=float(t["cost"]),
                suitability=float(t["suitability"]),
                specialist=sp.name if sp else None,
                specialist_id=sp.id if sp else None,
                mode=mode_of(sp) if sp and sp.status != "candidate" else (sp.status if sp else None),
            )
        )
        cents.append((t.get("details") or {}).get("centroid") or [])
    width = max((len(c) for c in cents), default=0)
    if width and all(len(c) == width for c in cents):
        figures.centroids = np.asarray(cents, dtype=np.float64)
    figures.run_calls = int(
        runs.run_report(store, figures.run_id).get("calls") or sum(t.volume for t in figures.tasks)
    )


def _specialist(sp: Specialist) -> SpecialistFigures:
    report = EvalReport.of(sp)
    return SpecialistFigures(
        id=int(sp.id or 0),
        name=sp.name,
        task=sp.task,
        mode=sp.status,
        threshold=sp.threshold,
        report=report.to_dict() if report else None,
        tasks=list(SpecialistScope.of(sp).tasks),
        coverage=test_coverage(sp, report) if report else None,
    )


def _decisions(store: Store) -> list[dict[str, Any]]:
    d, e = schema.route_decisions, schema.exchanges
    q = (
        select(d.c.exchange_id, d.c.specialist_id, d.c.served, d.c.reason, d.c.candidate, e.c.created_at)
        .join(e, e.c.id == d.c.exchange_id)
        .order_by(e.c.created_at, d.c.id)
    )
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def _when(stamp: str) -> datetime:
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def bucket_start(stamp: str, unit: str) -> str:
    when = _when(stamp)
    if unit == "day":
        return when.strftime("%Y-%m-%d")
    if unit == "minute":
        return when.strftime("%Y-%m-%d %H:%M")
    return when.strftime("%Y-%m-%d %H:00")


def _routing(
    store: Store, figures: ReportFigures, specialists: list[Specialist], task_of: dict[int, str | None]
) -> dict[str, Counter[str]]:
    """Fill the routing figures; returns, per discovered task, calls decided and taken on replayed traffic."""
    decisions = _decisions(store)
    taken: dict[str, Counter[str]] = {}
    if not decisions:
        return taken
    stamps = [_when(d["created_at"]) for d in decisions]
    span = max(stamps) - min(stamps)
    figures.bucket_unit = "minute" if span <= MINUTE_SPAN else "hour" if span <= HOURLY_SPAN else "day"
    buckets: dict[str, Bucket] = {}

    def bucket(stamp: str) -> Bucket:
        start = bucket_start(stamp, figures.bucket_unit)
        return buckets.setdefault(start, Bucket(start))

    contracts = {sp.id: OutputContract.from_dict(sp.config.get("contract")) for sp in specialists}
    by_exchange = {d["exchange_id"]: d for d in decisions}
    wanted = set(by_exchange)
    fallbacks: Counter[str] = Counter()
    decided: list[tuple[dict[str, Any], Exchange]] = []
    gateway: list[Exchange] = []
    for ex in store.exchanges(probes=True):  # one pass: the decided exchanges and the probes' pairs
        if ex.id in wanted:
            decided.append((by_exchange[ex.id], ex))
        if ex.source == "gateway" or ex.route == PROBE_ROUTE:
            gateway.append(ex)
    assigner = _assigner(store, figures.run_id) if figures.run_id is not None else None
    for d, ex in decided:
        b = bucket(d["created_at"])
        b.decided += 1
        figures.decisions += 1
        reason = str(d["reason"])
        if d["served"]:
            b.served += 1
            figures.served += 1
        elif reason not in NOT_FALLBACKS:
            fallbacks[_reason_group(reason)] += 1
        if reason == "shadow" and d["candidate"]:
            contract = contracts.get(d["specialist_id"]) or OutputContract("tool_call")
            agreed = contract.agrees(contract.parse(d["candidate"]), ex.response)
            b.shadow_pairs += 1
            b.shadow_agreed += agreed
            figures.shadow_pairs += 1
            figures.shadow_agreed += agreed
        key = task_of.get(ex.id or -1)
        if key is None and assigner is not None:
            key = assigner.assign(ex.request, ex.agent, ex.task_hint).task
        if key is not None:
            counted = taken.setdefault(key, Counter())
            counted["decided"] += 1
            counted["taken"] += bool(d["served"]) or reason == "shadow"
    for first, probe in pair_probes(gateway):
        if not (first.route or "").startswith("specialist:") or first.created_at is None:
            continue
        verdict = answers_agree(first, probe)
        if verdict is None:
            continue
        b = bucket(first.created_at)
        b.probe_pairs += 1
        b.probe_agreed += verdict
        figures.probe_pairs += 1
        figures.probe_agreed += verdict
    figures.buckets = [buckets[k] for k in sorted(buckets)]
    figures.fallbacks = dict(fallbacks.most_common())
    return taken


def _assigner(store: Store, run_id: int | None) -> Any:
    """The run's task assigner, for decided calls outside the run (replayed traffic); None when it is gone."""
    from downsize.discover.discovery import load_assigner

    try:
        return load_assigner(store, run_id)
    except (DownsizeError, OSError):
        return None


def _reason_group(reason: str) -> str:
    """A fallback reason as the chart groups it: `other_task:t012` and `novel_task:...` by their kind."""
    head = reason.split(":", 1)[0]
    return head if head in ("other_task", "novel_task") else reason


def _conversions(
    figures: ReportFigures, specialists: list[Specialist], taken: dict[str, Counter[str]]
) -> list[Conversion]:
    by_id = {sp.id: sp for sp in specialists}
    out = []
    for t in figures.tasks:
        counted = taken.get(t.key)
        sp = by_id.get(t.specialist_id) if t.specialist_id is not None else None
        if counted and counted["decided"]:
            out.append(
                Conversion(
                    t.key,
                    t.name,
                    t.volume,
                    counted["taken"] / counted["decided"],
                    counted["decided"],
                    "replayed traffic",
                    t.specialist,
                )
            )
            continue
        report = EvalReport.of(sp) if sp is not None else None
        coverage = test_coverage(sp, report) if sp is not None and report is not None else None
        if coverage is not None:
            out.append(
                Conversion(
                    t.key, t.name, t.volume, coverage.share, coverage.calls, coverage.how, t.specialist
                )
            )
            continue
        out.append(
            Conversion(
                t.key,
                t.name,
                t.volume,
                None,
                0,
                "not evaluated" if sp is not None else "no specialist",
                t.specialist,
            )
        )
    return out
