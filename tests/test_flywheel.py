"""The flywheel on real tau-airline calls at tiny size: a `downsize flywheel --once` process killed during
training and resumed without repeating a finished step, one pass end to end, retraining when a unit's data
changes (with its task keys kept), the live version kept when the new one fails its gate, and the rule for
which logged answers may be training targets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from downsize.calls import CallSelection, select_calls
from downsize.config import EvalConfig, TrainConfig
from downsize.curate.config import CurateConfig
from downsize.discover.config import DiscoverConfig
from downsize.discover.runs import discovery_runs
from downsize.flywheel import FlywheelBusy, FlywheelConfig, due, run_flywheel
from downsize.flywheel.runs import flywheel_runs
from downsize.importers.tau_airline import import_tau_airline
from downsize.route.modes import set_mode
from downsize.store import Store
from downsize.store.runs import all_runs
from downsize.store.schema import curation_runs
from downsize.types import PROBE_ROUTE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-airline"
FIRST = (*range(0, 10), 35, 36)  # dev task ids 0-9, test 35-36
MORE = tuple(range(10, 16))  # six more dev tasks arrive before the second run

SETTINGS: dict[str, Any] = {
    "max_minutes": 5,
    "curate": {"pii": False},
    "discover": {"embedder": "lsa", "map": False},
    "train": {
        "curated": True,
        "max_tokens": 200,
        "batch_size": 4,
        "max_prompt_tokens": 96,
        "max_message_tokens": 48,
    },
    "eval": {"limit": 5},
}


def tiny_config() -> FlywheelConfig:
    return FlywheelConfig(
        max_minutes=SETTINGS["max_minutes"],
        curate=CurateConfig(**SETTINGS["curate"]),
        discover=DiscoverConfig(**SETTINGS["discover"]),
        train=TrainConfig(**SETTINGS["train"]),
        eval=EvalConfig(**SETTINGS["eval"]),
    )


def tau_slice(folder: Path, task_ids: tuple[int, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    runs = json.loads((DATA / "trajectories-gpt-4o.json").read_text())
    (folder / "trajectories-gpt-4o.json").write_text(
        json.dumps([r for r in runs if r["task_id"] in task_ids])
    )
    for name in ("tools.json", "policy.md"):
        shutil.copy(DATA / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The student's GGUF is converted once for the module (20-40 s), not per process."""
    path = tmp_path_factory.getbasetemp() / "models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def shared_models(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNSIZE_MODELS", str(models_dir))


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


# -- the training-data rule ----------------------------------------------------------------------------


def test_fallbacks_and_shadow_calls_train_served_answers_and_probes_never(tmp_path: Path) -> None:
    """A call the LLM answered after a fallback or beside a shadow specialist holds the LLM's answer: a
    training target. A call a specialist served holds the student's own answer, and a probe repeats a call:
    neither is ever selected."""
    store = Store.open(f"sqlite:///{tmp_path / 'rule.db'}")
    import_tau_airline(store, tau_slice(tmp_path / "tau", (0, 1)))
    logged = [ex for ex in store.exchanges(source="tau-airline") if ex.response_kind == "tool_call"][:5]
    routes = ["fallback:low_confidence", "fallback:shadow", "specialist:7", PROBE_ROUTE, "upstream"]
    for ex, route in zip(logged, routes, strict=True):
        ex.id, ex.source, ex.source_key, ex.route = None, "gateway", None, route
        ex.session = f"gw-{route}"
    store.add_exchanges(logged)
    chosen = select_calls(store, CallSelection(source="gateway"))
    assert sorted(ex.route for ex in chosen.exchanges if ex.route) == [
        "fallback:low_confidence",
        "fallback:shadow",
        "upstream",
    ]
    assert chosen.counts["specialist_answer"] == 1  # the probe is left out by the store itself
    from downsize.train.data import training_exchanges

    trained = training_exchanges(store, TrainConfig(source="gateway"), role="dev")
    assert {ex.route for ex in trained} <= {"fallback:low_confidence", "fallback:shadow", "upstream"}


# -- the plan: what is retrained, and with how many minutes ---------------------------------------------


def test_a_rolled_back_unit_is_retrained_until_a_version_passes(tmp_path: Path) -> None:
    """Rollback puts a live specialist in shadow (route_events: actor `rollback`): its unit is retrained even
    when its data did not change, and again on new calls while no version of it is live."""
    from downsize.flywheel.cycle import retrain_reason, rolled_back, unit_versions
    from downsize.types import Specialist

    store = Store.open(f"sqlite:///{tmp_path / 'rollback.db'}")
    flywheel = {"unit": "tool:get_user_details", "calls_hash": "abc"}

    def version() -> Specialist:
        sp = Specialist(
            name="tool-get_user_details",
            task="t001,t004",
            base_model="smollm2-135m",
            adapter_path=str(tmp_path / "adapter"),
            config={"tasks": ["t001", "t004"]},
            data_hash="d",
            metrics={"flywheel": flywheel},
        )
        store.add_specialist(sp)
        return sp

    assert retrain_reason(store, [], "abc") == "new"
    v1 = version()
    store.set_status(v1.id or 0, "live", actor="flywheel")
    assert retrain_reason(store, unit_versions(store, v1.name), "abc") is None  # same calls: nothing to do
    assert retrain_reason(store, unit_versions(store, v1.name), "abd") == "data changed"
    store.set_status(v1.id or 0, "shadow", actor="rollback", reason="disagreement above the limit")
    assert rolled_back(store, store.specialist(v1.id))
    assert retrain_reason(store, unit_versions(store, v1.name), "abc") == "rolled back"
    v2 = (
        version()
    )  # retrained on the same calls, it failed its gate: wait for new calls, do not train it again
    assert retrain_reason(store, unit_versions(store, v1.name), "abc") is None
    assert retrain_reason(store, unit_versions(store, v1.name), "abd") == "rolled back"  # new calls arrived
    store.set_status(v2.id or 0, "live", actor="flywheel")  # a version that passed
    assert retrain_reason(store, unit_versions(store, v1.name), "abc") is None


def test_a_unit_that_fails_to_train_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    """Every unit's training fails here (the student folder does not exist): each failure is recorded with
    its error, every unit is tried, and the run itself ends done."""
    store = Store.open(f"sqlite:///{tmp_path / 'fails.db'}")
    import_tau_airline(store, tau_slice(tmp_path / "tau", (*range(0, 14), 35)))
    config = tiny_config()
    config = replace(config, train=replace(config.train, student=str(tmp_path / "no-such-student")))
    report = run_flywheel(store, config)
    assert report.status == "done" and len(report.units) >= 2
    for record in report.units.values():
        assert record["outcome"] == "failed" and record["error"], record
    assert flywheel_runs(store)[0]["report"]["units"] == report.units


# -- the flywheel ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flywheel_resumes_after_a_kill_retrains_on_new_data_and_keeps_the_live_route(
    tmp_path: Path, downsize_home: Path, models_dir: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'flywheel.db'}"
    store = Store.open(url)
    import_tau_airline(store, tau_slice(tmp_path / "first", FIRST))
    assert due(store, tiny_config()) == "first"

    # 1. `downsize flywheel --once` in a process of its own, killed (SIGKILL) while it trains
    (tmp_path / "flywheel.yaml").write_text(yaml.safe_dump(SETTINGS))
    env = {**os.environ, "DOWNSIZE_HOME": str(downsize_home), "DOWNSIZE_MODELS": str(models_dir)}
    command = [sys.executable, "-m", "downsize.cli.main", "flywheel", "--once"]
    command += ["--config", str(tmp_path / "flywheel.yaml"), "--db", url]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:

        def training() -> str | None:
            runs = flywheel_runs(store)
            current = (runs[0]["state"] or {}).get("current") if runs else None
            return current if current and current.startswith("train:") else None

        step = _wait_for(training, 600, "the flywheel to start training")
        with pytest.raises(FlywheelBusy, match="is running"):  # a second flywheel waits for a live one
            run_flywheel(store, tiny_config())
        time.sleep(2)
    finally:
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, err
    crashed = flywheel_runs(store)[0]
    assert crashed["status"] == "running" and crashed["state"]["done"] == ["curate", "discover", "plan"]
    assert store.specialists() == []  # killed before the specialist was registered
    assert due(store, tiny_config()) == "resume"

    # 2. the next run resumes it: curation and discovery are not repeated, the unit is trained once
    lines: list[str] = []
    report = run_flywheel(store, tiny_config(), say=lines.append)
    assert report.status == "done" and report.trigger == f"resume:{crashed['id']}"
    assert report.resumed_from == crashed["id"]
    first, second = flywheel_runs(store)[1], flywheel_runs(store)[0]
    assert first["status"] == "failed" and "resumed as run" in first["report"]["error"]
    assert second["status"] == "done" and second["finished_at"]
    assert len(all_runs(store, curation_runs)) == 1 and len(discovery_runs(store)) == 1
    assert report.steps["curate"] == crashed["state"]["steps"]["curate"]
    unit = step.removeprefix("train:")
    assert [f"{name}:{unit}" in report.steps for name in ("train", "evaluate", "promote")] == [True] * 3
    assert any(line.startswith("  train ") and unit in line for line in lines)  # one line per step
    assert any(line.startswith("  curate ") and "before the restart" in line for line in lines)
    v1 = store.specialists()
    assert len(v1) == 1 and v1[0].metrics["flywheel"]["unit"] == unit
    assert report.units[unit]["outcome"] in ("candidate", "shadow", "live")

    # 3. nothing changed: a run retrains nothing
    again = run_flywheel(store, replace(tiny_config(), units=[unit]))
    plan = again.steps["plan"]["units"]
    assert [u["why"] for u in plan if u["unit"] == unit] == ["unchanged"] and not again.units

    # 4. the first version is live (forced: a 200-token student passes no gate); more calls arrive; the
    # next run keeps the task keys of the tasks that persist, retrains the unit, and its new version fails
    # the gate: the live version keeps the route
    set_mode(store, v1[0], "live", force=True, actor="test", reason="the test routes it")
    import_tau_airline(store, tau_slice(tmp_path / "more", FIRST + MORE))
    assert (
        due(store, replace(tiny_config(), every_exchanges=100))
        == f"exchanges:{store.count_exchanges() - 641}"
    )
    third = run_flywheel(store, replace(tiny_config(), units=[unit]), trigger="exchanges")
    keys = third.steps["discover"]["keys"]
    assert keys["previous_run"] is not None and keys["kept"] > 0
    assert third.units[unit]["why"] == "data changed"
    outcome = third.units[unit]["outcome"]
    assert outcome == f"kept live version {v1[0].id}", third.units[unit]
    versions = {sp.id: sp.status for sp in store.specialists()}
    assert versions[v1[0].id] == "live" and len(versions) == 2
    new_id = max(versions)
    assert versions[new_id] == "candidate"
    events = store.route_events()
    assert not [e for e in events if e["specialist_id"] == v1[0].id and e["to_mode"] == "retired"]


# -- the command -----------------------------------------------------------------------------------------


def test_the_command_waits_for_new_exchanges_and_for_a_live_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from downsize.cli.main import main
    from downsize.errors import ConfigError
    from downsize.flywheel import flywheel_config
    from downsize.flywheel import runs as fw_runs

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store.open(url)
    import_tau_airline(store, tau_slice(tmp_path / "tau", (0,)))
    help_text = CliRunner().invoke(main, ["flywheel", "--help"]).output
    assert "--once" in help_text and "--every-exchanges" in help_text and "--max-minutes" in help_text
    # a finished run that saw every stored exchange: --once with --every-exchanges has nothing to do
    done = fw_runs.start(store, {}, "once", {"exchanges_upto": fw_runs.newest_exchange_id(store), "done": []})
    fw_runs.finish(store, done, "done", {})
    out = CliRunner().invoke(main, ["flywheel", "--once", "--every-exchanges", "10", "--db", url])
    assert out.exit_code == 0 and "nothing to do" in out.output
    # a run whose process is alive (this one): a second flywheel refuses in one line
    fw_runs.start(store, {}, "once", {"process": fw_runs.this_process(), "done": []})
    out = CliRunner().invoke(main, ["flywheel", "--once", "--db", url])
    assert (
        out.exit_code == 1 and out.output.startswith("error: flywheel run") and "Traceback" not in out.output
    )
    # the loop: a run is due (new exchanges), the live run makes it wait, and it goes on polling
    from downsize.flywheel import run_loop

    said: list[str] = []
    stops = iter([False, False, True])
    loop_config = replace(tiny_config(), poll_s=0.01, every_exchanges=10)
    run_loop(store, loop_config, say=said.append, stop=lambda: next(stops))
    assert len(said) == 2 and all(line.startswith("error: flywheel run") for line in said)
    # settings: stages as nested mappings, unknown keys named
    config = flywheel_config({"rule": "parity", "train": {"max_tokens": 100}}, max_minutes=3.0)
    assert (config.rule, config.max_minutes, config.train.max_tokens, config.train.curated) == (
        "parity",
        3.0,
        100,
        True,
    )
    with pytest.raises(ConfigError, match="unknown TrainConfig setting"):
        flywheel_config({"train": {"no_such": 1}})
