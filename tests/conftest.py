"""Shared fixtures: every test gets its own $DOWNSIZE_HOME; the real data sets sit in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TAU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-airline"


@pytest.fixture(autouse=True)
def downsize_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DOWNSIZE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tau_path() -> Path:
    if not (TAU / "trajectories-gpt-4o.json").is_file():
        pytest.fail(f"the tau-airline data set is expected at {TAU} (../shared/data beside the project)")
    return TAU


@pytest.fixture(scope="session")
def imported_db(tmp_path_factory: pytest.TempPathFactory, tau_path: Path) -> str:
    """A store with the whole tau-airline log imported once per session; tests copy nothing, only read."""
    from downsize.importers.tau_airline import import_tau_airline
    from downsize.store import Store

    url = f"sqlite:///{tmp_path_factory.mktemp('tau') / 'downsize.db'}"
    store = Store.open(url)
    import_tau_airline(store, tau_path)
    store.close()
    return url
