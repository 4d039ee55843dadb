"""Store over SQLAlchemy Core: SQLite in WAL mode by default, any SQLAlchemy URL (PostgreSQL) for scale.

With a store key (`Store.open(url, encryption_key=...)` or $DOWNSIZE_STORE_KEY) exchange request and
response bodies are encrypted at rest (`downsize.store.crypto`) and decrypted transparently on read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, case, create_engine, event, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from downsize.artifacts import from_home, home_relative
from downsize.config import default_db_url
from downsize.errors import NoSpecialistError, StoreError
from downsize.splits import TEST_FRACTION, hash_split, workflow_key
from downsize.store import schema
from downsize.store.crypto import BodyCipher, is_envelope, require_key
from downsize.store.migrations import migrate
from downsize.types import PROBE_ROUTE, Exchange, RouteDecision, Specialist

_EXCHANGE_FIELDS = [c.name for c in schema.exchanges.columns if c.name != "id"]
_BODY_COLUMNS = ("request", "response")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """All reads and writes of downsize's data go through here. Open with `Store.open(url)`."""

    def __init__(self, engine: Engine, cipher: BodyCipher | None = None) -> None:
        self.engine = engine
        self.cipher = cipher
        dialect = engine.dialect
        self._sqlite = dialect.name == "sqlite"
        # Elsewhere (PostgreSQL): batched INSERT ... RETURNING id with the ids in row order.
        self._returning_many = bool(
            getattr(dialect, "insert_executemany_returning_sort_by_parameter_order", False)
        )
        self._insert_returning = insert(schema.exchanges).returning(
            schema.exchanges.c.id, sort_by_parameter_order=True
        )

    @property
    def encrypts(self) -> bool:
        """True when exchange bodies are written encrypted."""
        return self.cipher is not None

    @classmethod
    def open(cls, url: str | None = None, encryption_key: str | bytes | None = None) -> Store:
        """Open (and create or migrate) the store at a SQLAlchemy URL; default $DOWNSIZE_HOME/downsize.db.

        `encryption_key` (base64 of 32 bytes; default $DOWNSIZE_STORE_KEY when set) turns on encryption
        at rest of exchange bodies.
        """
        cipher = BodyCipher(encryption_key) if encryption_key else BodyCipher.from_env()
        url = url or default_db_url()
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            # hide_parameters: an error message must never echo a stored body (or a secret in it) into a log
            engine = create_engine(url, hide_parameters=True)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            with engine.begin() as conn:
                migrate(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the store at {url}: {exc}") from exc
        return cls(engine, cipher)

    def close(self) -> None:
        self.engine.dispose()

    # -- exchanges -------------------------------------------------------------------------------

    def _row(self, ex: Exchange) -> dict[str, Any]:
        row = {name: getattr(ex, name) for name in _EXCHANGE_FIELDS if name != "tool_names"}
        row["tool_names"] = ",".join(ex.tool_names) if ex.tool_names else None
        row["created_at"] = ex.created_at or now_iso()
        if self.cipher is not None:
            for column in _BODY_COLUMNS:
                row[column] = self.cipher.encrypt(row[column], column)
        return row

    def _exchange(self, row: Any) -> Exchange:
        data = dict(row)
        data["tool_names"] = data["tool_names"].split(",") if data["tool_names"] else []
        for column in _BODY_COLUMNS:
            if is_envelope(data[column]):
                if self.cipher is None:
                    raise require_key(column)
                data[column] = self.cipher.decrypt(data[column], column)
        return Exchange(**data)

    def _place(self, exchanges: list[Exchange]) -> list[Exchange]:
        """Each exchange with its workflow and split (splits.py): the source's own split, else its stored
        workflow's, else a hash of the workflow."""
        placed = [replace(ex, workflow=workflow_key(ex)) for ex in exchanges]
        unplaced = {ex.workflow for ex in placed if ex.split is None}
        known = self.workflow_splits(unplaced) if unplaced else {}
        for ex in placed:
            if ex.split is not None:
                ex.split_rule = ex.split_rule or "source"
            elif ex.workflow in known:
                ex.split, ex.split_rule = known[ex.workflow]  # type: ignore[assignment]
            else:
                ex.split, ex.split_rule = hash_split(ex.workflow or ""), "hash"  # type: ignore[assignment]
        return placed

    def workflow_splits(self, workflows: Iterable[str | None]) -> dict[str, tuple[str, str]]:
        """The recorded (split, rule) of each of these workflows that is already stored."""
        wanted = sorted({w for w in workflows if w})
        found: dict[str, tuple[str, str]] = {}
        t = schema.exchanges
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                q = (
                    select(t.c.workflow, t.c.split, t.c.split_rule)
                    .where(t.c.workflow.in_(wanted[start : start + 500]), t.c.split.is_not(None))
                    .distinct()
                )
                for row in conn.execute(q):
                    found[row.workflow] = (row.split, row.split_rule or "hash")
        return found

    def add_exchanges(self, exchanges: Iterable[Exchange]) -> int:
        """Insert exchanges; ones whose `source_key` is already stored are skipped. Returns rows added.

        Each gets its workflow and split here (`_place`), so every source, imported or captured, is split.
        """
        rows = [self._row(ex) for ex in self._place(list(exchanges))]
        if not rows:
            return 0
        stmt = insert(schema.exchanges)
        if self.engine.dialect.name == "sqlite":
            stmt = stmt.prefix_with("OR IGNORE")
        elif self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(schema.exchanges).on_conflict_do_nothing(index_elements=["source_key"])
        try:
            with self.engine.begin() as conn:
                before = conn.execute(select(func.count()).select_from(schema.exchanges)).scalar_one()
                conn.execute(stmt, rows)
                after = conn.execute(select(func.count()).select_from(schema.exchanges)).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write exchanges: {exc}") from exc
        return int(after - before)

    def add_exchanges_batched(self, exchanges: Iterable[Exchange], batch: int = 500) -> tuple[int, int]:
        """Stream exchanges in with one transaction per `batch`; returns (read, added). Importers use it."""
        read = added = 0
        pending: list[Exchange] = []
        for exchange in exchanges:
            read += 1
            pending.append(exchange)
            if len(pending) >= batch:
                added += self.add_exchanges(pending)
                pending = []
        return read, added + self.add_exchanges(pending)

    def record(self, exchange: Exchange, decision: RouteDecision | None, specialist_id: int | None) -> int:
        """Store one exchange and its route decision in one transaction; returns the exchange id."""
        return self.record_many([(exchange, decision, specialist_id)])[0]

    def record_many(self, items: list[tuple[Exchange, RouteDecision | None, int | None]]) -> list[int]:
        """Batch form of `record`, one transaction for the whole batch (the gateway's writer uses it).

        One executemany per table. On SQLite the ids are computed inside the transaction: it holds the write
        lock from the first insert, and rowids are allocated as max + 1, so the batch's ids are the
        `len(rows)` consecutive ids ending at `last_insert_rowid()` (SQLAlchemy would send RETURNING one row
        per statement there, ~15% slower). PostgreSQL gets batched INSERT ... RETURNING with ids in row order;
        row-at-a-time only where neither applies.
        """
        if not items:
            return []
        rows = [self._row(exchange) for exchange in self._place([ex for ex, _, _ in items])]
        try:
            with self.engine.begin() as conn:
                if self._sqlite:
                    conn.execute(insert(schema.exchanges), rows)
                    last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
                    ids = list(range(last - len(rows) + 1, last + 1))
                    found = conn.execute(
                        select(func.count())
                        .select_from(schema.exchanges)
                        .where(schema.exchanges.c.id.between(ids[0], last))
                    ).scalar_one()
                    if found != len(rows):  # never expected: rowids not consecutive
                        raise StoreError(f"{found} rows carry the ids of a batch of {len(rows)} exchanges")
                elif self._returning_many:
                    ids = [int(r[0]) for r in conn.execute(self._insert_returning, rows)]
                else:
                    ids = [_inserted_id(conn.execute(insert(schema.exchanges).values(**r))) for r in rows]
                if len(ids) != len(rows):
                    raise StoreError(f"the database returned {len(ids)} ids for {len(rows)} exchanges")
                decisions = [
                    {
                        "exchange_id": exchange_id,
                        "specialist_id": specialist_id,
                        "served": decision.served,
                        "reason": decision.reason,
                        "confidence": decision.confidence,
                        "threshold": decision.threshold,
                        "candidate": decision.candidate,
                        "latency_ms": decision.latency_ms,
                    }
                    for exchange_id, (_, decision, specialist_id) in zip(ids, items, strict=True)
                    if decision is not None and decision.specialist is not None
                ]
                if decisions:
                    conn.execute(insert(schema.route_decisions), decisions)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record exchanges: {exc}") from exc
        return ids

    def set_outcome(self, session: str, outcome: float) -> int:
        """Set the workflow outcome (1.0 success, 0.0 failure) of every exchange of a session; rows updated."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(schema.exchanges)
                    .where(schema.exchanges.c.session == session)
                    .values(outcome=outcome)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the outcome of session {session!r}: {exc}") from exc
        return int(result.rowcount)

    def assign_splits(self) -> int:
        """Place exchanges stored before workflows were recorded (migration m004); returns how many."""
        t = schema.exchanges
        q = select(t).where(t.c.workflow.is_(None)).order_by(t.c.id)
        with self.engine.connect() as conn:
            pending = [self._exchange(row) for row in conn.execute(q).mappings()]
        if not pending:
            return 0
        placed = self._place(pending)
        try:
            with self.engine.begin() as conn:
                for ex in placed:
                    conn.execute(
                        update(t)
                        .where(t.c.id == ex.id)
                        .values(workflow=ex.workflow, split=ex.split, split_rule=ex.split_rule)
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record splits: {exc}") from exc
        return len(placed)

    def reassign_by_time(self, source: str, test_fraction: float = TEST_FRACTION) -> dict[str, int]:
        """Re-cut a source so its newest workflows (by first call) are the test split (rule `time`).

        A source's own split (rule `source`) is never changed. Returns the workflows now in each split.
        """
        if not 0 < test_fraction < 1:
            raise StoreError(f"the test fraction must be between 0 and 1, not {test_fraction}")
        self.assign_splits()
        t = schema.exchanges
        q = (
            select(t.c.workflow, func.min(t.c.created_at).label("first"), func.min(t.c.id).label("first_id"))
            .where(t.c.source == source, or_(t.c.split_rule.is_(None), t.c.split_rule != "source"))
            .group_by(t.c.workflow)
        )
        with self.engine.connect() as conn:
            flows = sorted(conn.execute(q), key=lambda r: (r.first, r.first_id))
        if not flows:
            own = self.count_exchanges(source=source)
            raise StoreError(
                f"source {source!r} has no exchanges to re-split"
                + (" (its split is the source's own)" if own else ": see `downsize splits` for the sources")
            )
        cut = len(flows) - max(1, round(len(flows) * test_fraction))
        newest = {r.workflow for r in flows[cut:]}
        try:
            with self.engine.begin() as conn:
                base = update(t).where(
                    t.c.source == source, or_(t.c.split_rule.is_(None), t.c.split_rule != "source")
                )
                conn.execute(base.values(split="dev", split_rule="time"))
                for start in range(0, len(flows), 500):
                    chunk = [r.workflow for r in flows[start : start + 500] if r.workflow in newest]
                    if chunk:
                        conn.execute(base.where(t.c.workflow.in_(chunk)).values(split="test"))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record splits: {exc}") from exc
        return {"dev": cut, "test": len(flows) - cut}

    def split_counts(self) -> list[dict[str, Any]]:
        """Per source, split and rule: exchanges, tool calls and workflows."""
        t = schema.exchanges
        q = (
            select(
                t.c.source,
                t.c.split,
                t.c.split_rule,
                func.count().label("exchanges"),
                func.sum(case((t.c.response_kind == "tool_call", 1), else_=0)).label("tool_calls"),
                func.count(func.distinct(t.c.workflow)).label("workflows"),
            )
            .group_by(t.c.source, t.c.split, t.c.split_rule)
            .order_by(t.c.source, t.c.split)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(q)]

    def recent_exchanges(self, limit: int = 20) -> list[Exchange]:
        """The newest exchanges first (bodies decrypted when the store has the key)."""
        q = select(schema.exchanges).order_by(schema.exchanges.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [self._exchange(row) for row in conn.execute(q).mappings()]

    def exchanges(
        self,
        source: str | None = None,
        split: str | None = None,
        agent: str | None = None,
        response_kind: str | None = None,
        is_hci: bool | None = None,
        limit: int | None = None,
        probes: bool = False,
        since: str | None = None,
        routes: Sequence[str] | None = None,
    ) -> Iterator[Exchange]:
        """Exchanges in insertion order, filtered by the given columns. A consistency probe's second answer
        (route `probe`) is left out unless `probes` (or `routes` names it): it is never trained, discovered or
        evaluated on. `since`: stored at or after this ISO time; `routes`: only these routes."""
        q = select(schema.exchanges).order_by(schema.exchanges.c.id)
        route = schema.exchanges.c.route
        if routes is not None:
            q = q.where(route.in_(list(routes)))
        elif not probes:
            q = q.where(or_(route.is_(None), route != PROBE_ROUTE))
        if since is not None:
            q = q.where(schema.exchanges.c.created_at >= since)
        for col, value in (
            ("source", source),
            ("split", split),
            ("agent", agent),
            ("response_kind", response_kind),
            ("is_hci", is_hci),
        ):
            if value is not None:
                q = q.where(schema.exchanges.c[col] == value)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            for row in conn.execute(q).mappings():
                yield self._exchange(row)

    def count_exchanges(self, **where: Any) -> int:
        q = select(func.count()).select_from(schema.exchanges)
        for col, value in where.items():
            q = q.where(schema.exchanges.c[col] == value)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def decisions_of(self, specialist_id: int, since: str | None = None) -> list[dict[str, Any]]:
        """A specialist's route decisions (stored at or after `since`) with their exchange's time, agent,
        session and reported outcome: what rollback and the report read."""
        d, e = schema.route_decisions, schema.exchanges
        q = (
            select(
                d.c.exchange_id,
                d.c.served,
                d.c.reason,
                d.c.confidence,
                d.c.latency_ms,
                e.c.created_at,
                e.c.agent,
                e.c.session,
                e.c.outcome,
            )
            .join(e, e.c.id == d.c.exchange_id)
            .where(d.c.specialist_id == specialist_id)
            .order_by(d.c.id)
        )
        if since is not None:
            q = q.where(e.c.created_at >= since)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def session_outcomes(self, agent: str | None, since: str | None = None) -> dict[str, tuple[float, bool]]:
        """{session: (its reported outcome, whether any of its calls was served by a specialist)} for the
        agent's sessions with an outcome (stored at or after `since`)."""
        e = schema.exchanges
        served = func.max(case((e.c.route.like("specialist:%"), 1), else_=0))
        q = (
            select(e.c.session, func.max(e.c.outcome), served)
            .where(e.c.session.is_not(None), e.c.outcome.is_not(None))
            .group_by(e.c.session)
        )
        if agent is not None:
            q = q.where(e.c.agent == agent)
        if since is not None:
            q = q.where(e.c.created_at >= since)
        with self.engine.connect() as conn:
            return {row[0]: (float(row[1]), bool(row[2])) for row in conn.execute(q)}

    def route_decisions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    select(schema.route_decisions).order_by(schema.route_decisions.c.id)
                ).mappings()
            ]

    # -- specialists -----------------------------------------------------------------------------

    def add_specialist(self, sp: Specialist) -> int:
        values = {
            "name": sp.name,
            "task": sp.task,
            "base_model": sp.base_model,
            "adapter_path": home_relative(sp.adapter_path) if sp.adapter_path else sp.adapter_path,
            "config": sp.config,
            "data_hash": sp.data_hash,
            "status": sp.status,
            "threshold": sp.threshold,
            "metrics": sp.metrics,
            "created_at": sp.created_at or now_iso(),
        }
        with self.engine.begin() as conn:
            sp.id = _inserted_id(conn.execute(insert(schema.specialists).values(**values)))
        return sp.id

    @staticmethod
    def _specialist(row: Any) -> Specialist:
        data = dict(row)
        data["metrics"] = data["metrics"] or {}
        data["adapter_path"] = from_home(data["adapter_path"])  # stored relative to $DOWNSIZE_HOME
        return Specialist(**data)

    def specialists(self, status: str | None = None) -> list[Specialist]:
        q = select(schema.specialists).order_by(schema.specialists.c.id)
        if status:
            q = q.where(schema.specialists.c.status == status)
        with self.engine.connect() as conn:
            return [self._specialist(r) for r in conn.execute(q).mappings()]

    def specialist(self, ref: int | str | None = None) -> Specialist:
        """A specialist by id or name (the newest version of that name); None means the newest of all."""
        q = select(schema.specialists).order_by(schema.specialists.c.id.desc()).limit(1)
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            q = q.where(schema.specialists.c.id == int(ref))
        elif ref:
            q = q.where(schema.specialists.c.name == ref)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            what = f"no specialist {ref!r}" if ref else "no specialist"
            raise NoSpecialistError(
                f"{what} in the store: run `downsize train` first (`downsize specialists` lists them)"
            )
        return self._specialist(row)

    def update_specialist(self, specialist_id: int, **values: Any) -> None:
        allowed = {"status", "threshold", "metrics", "traffic"}
        bad = set(values) - allowed
        if bad:
            raise StoreError(f"cannot update specialist fields {sorted(bad)}")
        with self.engine.begin() as conn:
            conn.execute(
                update(schema.specialists).where(schema.specialists.c.id == specialist_id).values(**values)
            )

    def set_live(self, specialist_id: int) -> None:
        """Make one specialist live for its task; any other live version of the task is retired."""
        self.set_status(specialist_id, "live")

    def set_status(
        self,
        specialist_id: int,
        status: str,
        *,
        actor: str = "promote",
        reason: str = "",
        evidence: dict[str, Any] | None = None,
        traffic: float | None = None,
    ) -> None:
        """Move a specialist to a status, recording the change in `route_events` (who, why, the figures).

        A task has one version per routed status (shadow, canary, live): moving another version of the task to
        that status retires the previous one (a live v1 stays live while v2 is in shadow). `traffic` is a
        canary's share of its task's traffic (kept only for canaries).
        """
        if status not in SPECIALIST_STATUSES:
            raise StoreError(
                f"unknown specialist status {status!r}; use one of {', '.join(SPECIALIST_STATUSES)}"
            )
        sp = self.specialist(specialist_id)
        share = traffic if status == "canary" else None
        stamp = now_iso()
        with self.engine.begin() as conn:
            if status in ROUTED_STATUSES:
                previous = conn.execute(
                    select(schema.specialists.c.id, schema.specialists.c.status).where(
                        schema.specialists.c.task == sp.task,
                        schema.specialists.c.status == status,
                        schema.specialists.c.id != specialist_id,
                    )
                ).all()
                for other_id, other_status in previous:
                    conn.execute(
                        update(schema.specialists)
                        .where(schema.specialists.c.id == other_id)
                        .values(status="retired", traffic=None)
                    )
                    conn.execute(
                        insert(schema.route_events).values(
                            created_at=stamp,
                            specialist_id=other_id,
                            task=sp.task,
                            from_mode=other_status,
                            to_mode="retired",
                            actor=actor,
                            reason=f"replaced by version {specialist_id}",
                        )
                    )
            conn.execute(
                update(schema.specialists)
                .where(schema.specialists.c.id == specialist_id)
                .values(status=status, traffic=share)
            )
            if sp.status != status or sp.traffic != share or reason:
                conn.execute(
                    insert(schema.route_events).values(
                        created_at=stamp,
                        specialist_id=specialist_id,
                        task=sp.task,
                        from_mode=sp.status,
                        to_mode=status,
                        traffic=share,
                        actor=actor,
                        reason=reason or f"{actor}: {sp.status} -> {status}",
                        evidence=evidence,
                    )
                )

    def route_events(self, specialist_id: int | None = None, since_id: int = 0) -> list[dict[str, Any]]:
        """The history of routing-mode changes (promotions, operators' switches, rollbacks), oldest first."""
        q = select(schema.route_events).where(schema.route_events.c.id > since_id)
        if specialist_id is not None:
            q = q.where(schema.route_events.c.specialist_id == specialist_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(schema.route_events.c.id)).mappings()]

    def routing_version(self) -> tuple[int, int]:
        """Changes when any routing mode changes (a gateway polls it to reload its specialists): the newest
        route event and the newest specialist."""
        with self.engine.connect() as conn:
            events = conn.execute(select(func.max(schema.route_events.c.id))).scalar() or 0
            newest = conn.execute(select(func.max(schema.specialists.c.id))).scalar() or 0
        return int(events), int(newest)


SPECIALIST_STATUSES = ("candidate", "off", "shadow", "canary", "live", "retired")
ROUTED_STATUSES = ("shadow", "canary", "live")  # the modes in which a gateway loads a specialist


def _inserted_id(result: Any) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise StoreError("the database did not return the id of the inserted row")
    return int(key[0])
