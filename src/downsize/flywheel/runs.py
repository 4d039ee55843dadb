"""Flywheel runs in the store (`flywheel_runs`): each run's config, its state as steps finish, its report, and
the process that runs it, so a run whose process died can be told from one still going and resumed."""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from downsize.errors import StoreError
from downsize.store import Store, schema
from downsize.store import runs as store_runs

_RUNS = schema.flywheel_runs


def this_process() -> dict[str, Any]:
    """What identifies the running process: host, pid and the kernel's start time of the pid (so a pid the
    system reused for another process is not taken for the flywheel)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": _started(os.getpid())}


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux `/proc/PID/stat` field 22); None elsewhere."""
    try:
        stat = open(f"/proc/{pid}/stat", encoding="ascii").read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(process: dict[str, Any] | None) -> bool:
    """Whether the process a run recorded still runs. A run recorded on another host is taken as alive (its
    pid cannot be checked from here), and so is one that recorded no process."""
    if not process or process.get("host") != socket.gethostname():
        return True
    pid = int(process.get("pid") or 0)
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process holds the pid: not ours, so ours is gone
        return False
    recorded = process.get("pid_started")
    return recorded is None or _started(pid) == recorded


def start(store: Store, config: dict[str, Any], trigger: str, state: dict[str, Any]) -> int:
    """Record a new run (status `running`), its config, what triggered it, and its starting state."""
    try:
        with store.engine.begin() as conn:
            result = conn.execute(
                _RUNS.insert().values(
                    created_at=store_runs.now_utc(),
                    status="running",
                    trigger=trigger,
                    config=config,
                    state=state,
                )
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record a flywheel run: {exc}") from exc
    key = result.inserted_primary_key
    if key is None:
        raise StoreError("the database did not return the id of the flywheel run")
    return int(key[0])


def save_state(store: Store, run_id: int, state: dict[str, Any]) -> None:
    """Write a run's state (called as each step starts and finishes: what a resumed run reads)."""
    try:
        with store.engine.begin() as conn:
            conn.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(state=state))
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record the state of flywheel run {run_id}: {exc}") from exc


def finish(store: Store, run_id: int, status: str, report: dict[str, Any] | None) -> None:
    try:
        with store.engine.begin() as conn:
            conn.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(status=status, report=report, finished_at=store_runs.now_utc())
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot finish flywheel run {run_id}: {exc}") from exc


def flywheel_runs(store: Store, limit: int | None = None) -> list[dict[str, Any]]:
    """Flywheel runs, newest first."""
    q = select(_RUNS).order_by(_RUNS.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def running(store: Store) -> list[dict[str, Any]]:
    """Runs recorded as `running`, newest first (alive or left behind by a process that died)."""
    q = select(_RUNS).where(_RUNS.c.status == "running").order_by(_RUNS.c.id.desc())
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def newest_exchange_id(store: Store) -> int:
    """The highest exchange id stored: a run records it, and the next one counts the exchanges past it."""
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.max(schema.exchanges.c.id))).scalar() or 0)


def exchanges_since(store: Store, exchange_id: int) -> int:
    """How many exchanges were stored after `exchange_id` (consistency probes not counted)."""
    t = schema.exchanges
    q = select(func.count()).select_from(t).where(t.c.id > exchange_id)
    q = q.where((t.c.route.is_(None)) | (t.c.route != "probe"))
    with store.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())
