"""The curated training view in the store: curation runs and, per exchange, kept or why not, masked bodies.

Originals in `exchanges` are never changed. A kept exchange's masked request and response are stored in
`curated_exchanges`; NULL bodies mean "as the original" (a run without PII masking copies nothing). When
the store encrypts bodies at rest, the masked bodies are encrypted too.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from downsize.errors import StoreError
from downsize.store import Store, schema
from downsize.store import runs as store_runs

_RUNS = schema.curation_runs
_CURATED = schema.curated_exchanges


def _seal(store: Store, value: Any, column: str) -> Any:
    cipher = getattr(store, "cipher", None)
    return cipher.encrypt(value, column) if cipher is not None and value is not None else value


def _open(store: Store, value: Any, column: str) -> Any:
    if isinstance(value, dict) and "enc" in value and "ct" in value:
        cipher = getattr(store, "cipher", None)
        if cipher is None:
            raise StoreError(
                f"the curated {column} is encrypted at rest and the store has no key: set "
                "$DOWNSIZE_STORE_KEY to the key it was written with"
            )
        return cipher.decrypt(value, column)
    return value


def start_run(store: Store, config: dict[str, Any]) -> int:
    """Record a new curation run (status `running`) with its resolved config; returns its id."""
    return store_runs.start(store, _RUNS, config, "curation")


def finish_run(store: Store, run_id: int, report: dict[str, Any] | None, status: str = "done") -> None:
    store_runs.finish(store, _RUNS, run_id, report, status, "curation")


def write_curated(store: Store, run_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Insert per-exchange outcomes: exchange_id, kept, reason, is_hci, and masked request/response/pii."""
    values = [
        {
            "run_id": run_id,
            "exchange_id": row["exchange_id"],
            "kept": row["kept"],
            "reason": row.get("reason"),
            "is_hci": row.get("is_hci"),
            "request": _seal(store, row.get("request"), "curated_request"),
            "response": _seal(store, row.get("response"), "curated_response"),
            "pii": row.get("pii"),
        }
        for row in rows
    ]
    if not values:
        return 0
    try:
        with store.engine.begin() as conn:
            conn.execute(insert(_CURATED), values)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot write curated exchanges: {exc}") from exc
    return len(values)


def curation_runs(store: Store) -> list[dict[str, Any]]:
    """Every curation run, oldest first: id, created_at, status, config, report."""
    return store_runs.all_runs(store, _RUNS)


def latest_run_id(store: Store) -> int | None:
    """The newest finished curation run, or None when curate has never completed."""
    return store_runs.latest_done(store, _RUNS)


def curation_report(store: Store, run_id: int | None = None) -> dict[str, Any]:
    """The report of a run (default: the newest finished one)."""
    run_id = run_id if run_id is not None else _require_run(store)
    with store.engine.connect() as conn:
        row = conn.execute(select(_RUNS).where(_RUNS.c.id == run_id)).mappings().first()
    if row is None:
        raise StoreError(f"no curation run {run_id} in the store: see `downsize curate`")
    return dict(row["report"] or {})


def curated_rows(
    store: Store, run_id: int, kept: bool | None = None
) -> Generator[dict[str, Any], None, None]:
    """A run's per-exchange rows in exchange order, masked bodies decrypted."""
    q = select(_CURATED).where(_CURATED.c.run_id == run_id).order_by(_CURATED.c.exchange_id)
    if kept is not None:
        q = q.where(_CURATED.c.kept == kept)
    with store.engine.connect() as conn:
        for row in conn.execute(q).mappings():
            data = dict(row)
            data["request"] = _open(store, data["request"], "curated_request")
            data["response"] = _open(store, data["response"], "curated_response")
            yield data


def _require_run(store: Store) -> int:
    run_id = latest_run_id(store)
    if run_id is None:
        raise StoreError("no finished curation run in the store: run `downsize curate` first")
    return run_id
