"""Run bookkeeping shared by the stages that record runs (curation, discovery): one table per stage, each with
id, created_at, status (running | done | failed), config and report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from downsize.errors import StoreError
from downsize.store.store import Store


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def start(store: Store, table: Table, config: dict[str, Any], what: str) -> int:
    """Record a new run (status `running`) with its resolved config; returns its id. `what`: "curation" ..."""
    try:
        with store.engine.begin() as conn:
            result = conn.execute(
                insert(table).values(created_at=now_utc(), status="running", config=config, report=None)
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record a {what} run: {exc}") from exc
    key = result.inserted_primary_key
    if key is None:
        raise StoreError(f"the database did not return the id of the {what} run")
    return int(key[0])


def finish(
    store: Store, table: Table, run_id: int, report: dict[str, Any] | None, status: str, what: str
) -> None:
    try:
        with store.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == run_id).values(status=status, report=report))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot finish {what} run {run_id}: {exc}") from exc


def all_runs(store: Store, table: Table) -> list[dict[str, Any]]:
    """Every run of the table, oldest first: id, created_at, status, config, report."""
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).order_by(table.c.id)).mappings()]


def latest_done(store: Store, table: Table) -> int | None:
    """The newest finished run of the table, or None when none has completed."""
    q = select(table.c.id).where(table.c.status == "done").order_by(table.c.id.desc()).limit(1)
    with store.engine.connect() as conn:
        found = conn.execute(q).scalar_one_or_none()
    return None if found is None else int(found)
