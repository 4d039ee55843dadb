from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from downsize.errors import NoSpecialistError
from downsize.store import Store
from downsize.store.migrations import MIGRATIONS
from downsize.types import Exchange, RouteDecision, Specialist


def _exchange(key: str | None = None) -> Exchange:
    return Exchange(
        request={"model": "m", "messages": [{"role": "user", "content": "hi ünïcode"}]},
        response={"choices": [{"message": {"role": "assistant", "content": "hello"}}]},
        source="test",
        source_key=key,
        session="s#1",
        response_kind="text",
        tool_names=["a", "b"],
        latency_ms=12.5,
        is_hci=True,
        outcome=1.0,
        split="dev",
    )


def test_round_trip_default_home_in_wal_mode(downsize_home: Path) -> None:
    store = Store.open()
    assert store.add_exchanges([_exchange("k1"), _exchange("k2")]) == 2
    got = list(store.exchanges())
    assert [g.source_key for g in got] == ["k1", "k2"]
    first = got[0]
    assert first.request["messages"][0]["content"] == "hi ünïcode"
    assert first.response == _exchange().response
    assert first.tool_names == ["a", "b"] and first.is_hci is True and first.latency_ms == 12.5
    assert first.created_at and first.id is not None
    db = downsize_home / "downsize.db"
    assert db.is_file()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_source_key_makes_imports_idempotent() -> None:
    store = Store.open()
    assert store.add_exchanges([_exchange("same")]) == 1
    assert store.add_exchanges([_exchange("same"), _exchange("other")]) == 1
    assert store.count_exchanges() == 2


def test_reopen_keeps_data_and_does_not_rerun_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    Store.open(url).add_exchanges([_exchange("k")])
    again = Store.open(url)
    assert again.count_exchanges() == 1
    with again.engine.connect() as conn:
        names = [r[0] for r in conn.exec_driver_sql("select name from _migrations order by id")]
    assert names == [name for name, _ in MIGRATIONS]  # each applied exactly once, in order


def test_record_stores_route_decision_with_exchange() -> None:
    store = Store.open()
    sp_id = store.add_specialist(Specialist("s", "t", "smollm2-135m", "/a", {"x": 1}, "h"))
    decision = RouteDecision(
        served=False, reason="low_confidence", specialist=str(sp_id), confidence=-3.2, threshold=-1.0
    )
    ex = _exchange()
    ex.route = decision.route
    ex_id = store.record(ex, decision, sp_id)
    (row,) = store.route_decisions()
    assert row["exchange_id"] == ex_id and row["reason"] == "low_confidence" and row["served"] is False
    assert next(store.exchanges()).route == "fallback:low_confidence"


def test_specialists_versions_and_single_live_per_task() -> None:
    store = Store.open()
    with pytest.raises(NoSpecialistError, match="downsize train"):
        store.specialist()
    a = store.add_specialist(Specialist("s", "t", "b", "/a", {}, "h1"))
    b = store.add_specialist(Specialist("s", "t", "b", "/b", {}, "h2"))
    assert store.specialist("s").id == b and store.specialist(str(a)).id == a
    store.set_live(a)
    store.set_live(b)
    assert [s.status for s in store.specialists()] == ["retired", "live"]
