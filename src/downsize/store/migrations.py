"""Ordered, recorded schema migrations (the store migrates itself on open, as simonw/llm does).

Each migration runs once, inside a transaction, and is recorded in `_migrations`. Append new
ones to MIGRATIONS; never edit one that has shipped. Later migrations must tolerate running on a
database created by migration 1 from the current metadata (use `add_column_if_missing`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, inspect, select, text

from downsize.store import schema

_meta = MetaData()
applied = Table(
    "_migrations",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("applied_at", String(32), nullable=False),
)


def m001_initial(conn: Connection) -> None:
    schema.metadata.create_all(conn)


def add_column_if_missing(conn: Connection, table: str, column: str, ddl_type: str) -> None:
    names = {c["name"] for c in inspect(conn).get_columns(table)}
    if column not in names:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl_type}"))


def m002_curation(conn: Connection) -> None:
    """Curation runs and the curated (masked) view of exchanges; m001 already made them on a new database."""
    schema.curation_runs.create(conn, checkfirst=True)
    schema.curated_exchanges.create(conn, checkfirst=True)


def m003_discovery(conn: Connection) -> None:
    """Discovery runs, their tasks and each exchange's task; m001 already made them on a new database."""
    schema.discovery_runs.create(conn, checkfirst=True)
    schema.tasks.create(conn, checkfirst=True)
    schema.exchange_tasks.create(conn, checkfirst=True)


def m004_workflows(conn: Connection) -> None:
    """Every exchange's workflow and split rule. Old rows are filled in by `Store.assign_splits` on first
    use (it reads the bodies, which may be encrypted: the migration cannot)."""
    add_column_if_missing(conn, "exchanges", "workflow", "VARCHAR(200)")
    add_column_if_missing(conn, "exchanges", "split_rule", "VARCHAR(8)")
    conn.execute(
        text("UPDATE exchanges SET split_rule = 'source' WHERE split IS NOT NULL AND split_rule IS NULL")
    )
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_exchanges_workflow ON exchanges (workflow)"))


def m005_operations(conn: Connection) -> None:
    """Routing modes in operation: a canary's traffic share, the history of mode changes (rollbacks among
    them) and the flywheel's runs; m001 already made them on a new database."""
    add_column_if_missing(conn, "specialists", "traffic", "FLOAT")
    schema.route_events.create(conn, checkfirst=True)
    schema.flywheel_runs.create(conn, checkfirst=True)
    conn.execute(
        text("CREATE INDEX IF NOT EXISTS ix_route_events_specialist ON route_events (specialist_id)")
    )


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("m001_initial", m001_initial),
    ("m002_curation", m002_curation),
    ("m003_discovery", m003_discovery),
    ("m004_workflows", m004_workflows),
    ("m005_operations", m005_operations),
]


def migrate(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now."""
    _meta.create_all(conn)
    done = {row.name for row in conn.execute(select(applied.c.name))}
    ran = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        step(conn)
        conn.execute(applied.insert().values(name=name, applied_at=datetime.now(UTC).isoformat()))
        ran.append(name)
    return ran
