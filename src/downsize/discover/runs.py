"""Discovery runs in the store: each run's config and report, its tasks, and the task of every exchange.

Runs are versions: nothing is overwritten, the newest finished run is the current view of the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from downsize.errors import StoreError
from downsize.store import Store, schema
from downsize.store import runs as store_runs

_RUNS = schema.discovery_runs
_TASKS = schema.tasks
_EXCHANGE_TASKS = schema.exchange_tasks
TASK_FIELDS = (
    "task_key",
    "label",
    "signature",
    "output_kind",
    "volume",
    "tokens",
    "cost",
    "regularity",
    "suitability",
    "dominant_tool",
    "details",
)


def start_run(store: Store, config: dict[str, Any]) -> int:
    """Record a new discovery run (status `running`) with its resolved config; returns its id."""
    return store_runs.start(store, _RUNS, config, "discovery")


def finish_run(store: Store, run_id: int, report: dict[str, Any] | None, status: str = "done") -> None:
    store_runs.finish(store, _RUNS, run_id, report, status, "discovery")


def write_tasks(
    store: Store,
    run_id: int,
    tasks: Iterable[dict[str, Any]],
    assignments: Iterable[tuple[int, str | None, float | None]],
) -> int:
    """Write a run's tasks and (exchange id, task key or None, confidence) rows in one transaction."""
    task_rows = [{"run_id": run_id, **{k: t.get(k) for k in TASK_FIELDS}} for t in tasks]
    rows = [
        {"run_id": run_id, "exchange_id": ex_id, "task_key": key, "confidence": conf}
        for ex_id, key, conf in assignments
    ]
    try:
        with store.engine.begin() as conn:
            if task_rows:
                conn.execute(insert(_TASKS), task_rows)
            for start in range(0, len(rows), 5000):
                conn.execute(insert(_EXCHANGE_TASKS), rows[start : start + 5000])
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot write the tasks of discovery run {run_id}: {exc}") from exc
    return len(task_rows)


def discovery_runs(store: Store) -> list[dict[str, Any]]:
    """Every discovery run, oldest first: id, created_at, status, config, report."""
    return store_runs.all_runs(store, _RUNS)


def latest_run_id(store: Store) -> int | None:
    """The newest finished discovery run, or None when discover has never completed."""
    return store_runs.latest_done(store, _RUNS)


def require_run(store: Store, run_id: int | None = None) -> int:
    """`run_id` if it exists, else the newest finished run; a clear error when there is none."""
    if run_id is None:
        found = latest_run_id(store)
        if found is None:
            raise StoreError("no finished discovery run in the store: run `downsize discover` first")
        return found
    with store.engine.connect() as conn:
        exists = conn.execute(select(_RUNS.c.id).where(_RUNS.c.id == run_id)).scalar_one_or_none()
    if exists is None:
        raise StoreError(f"no discovery run {run_id} in the store: see `downsize tasks` for the newest")
    return run_id


def run_report(store: Store, run_id: int | None = None) -> dict[str, Any]:
    """The report of a run (default: the newest finished one)."""
    run_id = require_run(store, run_id)
    with store.engine.connect() as conn:
        row = conn.execute(select(_RUNS.c.report).where(_RUNS.c.id == run_id)).scalar_one_or_none()
    return dict(row or {})


def run_tasks(store: Store, run_id: int | None = None) -> list[dict[str, Any]]:
    """A run's tasks (default: the newest finished run), most suitable first."""
    run_id = require_run(store, run_id)
    q = (
        select(_TASKS)
        .where(_TASKS.c.run_id == run_id)
        .order_by(_TASKS.c.suitability.desc(), _TASKS.c.volume.desc(), _TASKS.c.task_key)
    )
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def all_task_keys(store: Store) -> list[str]:
    """Every task key any discovery run gave out (a new key must never reuse one)."""
    with store.engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(select(_TASKS.c.task_key).distinct())]


def exchange_tasks(store: Store, run_id: int | None = None) -> dict[int, tuple[str | None, float | None]]:
    """exchange id -> (task key or None for an outlier, confidence) for a run (default: the newest)."""
    run_id = require_run(store, run_id)
    q = select(_EXCHANGE_TASKS.c.exchange_id, _EXCHANGE_TASKS.c.task_key, _EXCHANGE_TASKS.c.confidence).where(
        _EXCHANGE_TASKS.c.run_id == run_id
    )
    with store.engine.connect() as conn:
        return {int(r[0]): (r[1], r[2]) for r in conn.execute(q)}
