from __future__ import annotations

from pathlib import Path

import pytest

from downsize.errors import ImportDataError
from downsize.importers.tau_airline import import_tau_airline
from downsize.store import Store


def test_counts_on_the_real_file(imported_db: str) -> None:
    store = Store.open(imported_db)
    assert store.count_exchanges(source="tau-airline") == 2454
    assert store.count_exchanges(response_kind="tool_call") == 1164
    assert store.count_exchanges(is_hci=True) == 2454 - 1164
    assert store.count_exchanges(split="test") == 431
    assert store.count_exchanges(split="test", response_kind="tool_call") == 163


def test_exchange_shape(imported_db: str) -> None:
    store = Store.open(imported_db)
    ex = next(e for e in store.exchanges(response_kind="tool_call"))
    assert len(ex.request["tools"]) == 14
    assert ex.request["messages"][0]["role"] == "system"
    message = ex.response["choices"][0]["message"]
    assert message["role"] == "assistant" and message["tool_calls"]
    assert ex.tool_names == [message["tool_calls"][0]["function"]["name"]]
    task_id, trial = ex.session.split("#")
    assert ex.split == ("test" if int(task_id) >= 35 else "dev")
    assert ex.outcome in (0.0, 1.0) and ex.is_hci is False


def test_importing_twice_adds_nothing(tau_path: Path) -> None:
    store = Store.open()
    assert import_tau_airline(store, tau_path) == (2454, 2454)
    assert import_tau_airline(store, tau_path) == (2454, 0)
    assert store.count_exchanges() == 2454


def test_bad_paths_say_what_to_fix(tmp_path: Path) -> None:
    store = Store.open()
    with pytest.raises(ImportDataError, match="not a folder"):
        import_tau_airline(store, tmp_path / "nope")
    (tmp_path / "trajectories-gpt-4o.json").write_text("{not json")
    (tmp_path / "tools.json").write_text("[]")
    with pytest.raises(ImportDataError, match="not valid JSON"):
        import_tau_airline(store, tmp_path)
