"""The whole loop through the CLI on two agents in one store: tau-airline (gpt-4o's logged calls) and crewAI
(its recorded test traffic), each a small real slice. Import both, split, discover, train a specialist per
agent (tau-airline: discovered tasks; crewAI: its one tool call site), say plainly where a task is too small
to evaluate, then one gateway serves both and routes each agent's held-out requests to its own specialist.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from downsize.cli.main import main
from downsize.store import Store
from upstream_stub import StubUpstream, free_socket

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CREWAI = [  # one crewAI call site (the counting_tool agent), three recorded scenarios, plus another site
    "agents/TestMaxUsageCountWithNativeToolCalling.test_max_usage_count_limit_enforced_in_native_tool_calling",
    "agents/TestMaxUsageCountWithNativeToolCalling.test_max_usage_count_tracked_in_native_tool_calling",
    "agents/TestMaxUsageCountWithNativeToolCalling.test_tool_usage_increments_after_successful_execution",
]
OTHER_SITE = "agents/test_disabling_cache_for_agent"  # the multiplier tool: no specialist is trained for it
TRAIN = [
    "--max-tokens",
    "600",
    "--batch-size",
    "4",
    "--max-prompt-tokens",
    "96",
]


def cli(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, f"downsize {' '.join(args)}:\n{result.output}"
    return result.output


@pytest.fixture
def slices(tmp_path: Path) -> tuple[Path, Path]:
    tau = tmp_path / "tau"
    tau.mkdir()
    runs = json.loads((DATA / "tau-airline" / "trajectories-gpt-4o.json").read_text())
    keep = [r for r in runs if r["task_id"] in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 35, 36)]  # 8, 9: validation
    (tau / "trajectories-gpt-4o.json").write_text(json.dumps(keep))
    for name in ("tools.json", "policy.md"):
        shutil.copy(DATA / "tau-airline" / name, tau / name)
    crew = tmp_path / "crewai"
    for name in [*CREWAI, OTHER_SITE]:
        (crew / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "crewai-cassettes" / f"{name}.yaml", crew / f"{name}.yaml")
    return tau, crew


AGENT_KEY, ADMIN_KEY = "ds-agent-key-for-the-test", "ds-admin-key-for-the-test"


def _post(url: str, body: dict[str, Any], agent: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "X-Downsize-Agent": agent,
            "Authorization": f"Bearer {AGENT_KEY}",
        },
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return dict(json.loads(response.read()))


def test_two_agents_one_store_one_gateway(slices: tuple[Path, Path], tmp_path: Path) -> None:
    tau, crew = slices
    db = f"sqlite:///{tmp_path / 'two.db'}"
    os.environ["DOWNSIZE_DB"] = db
    try:
        _run(tau, crew, db, tmp_path)
    finally:
        os.environ.pop("DOWNSIZE_DB", None)


def _run(tau: Path, crew: Path, db: str, tmp_path: Path) -> None:
    # import: both sources get splits (tau-airline its own, crewAI by workflow hash, then the newest held out)
    assert "splits (source)" in ok("import", "tau-airline", str(tau))
    assert "splits (hash)" in ok("import", "cassettes", str(crew), "--agent", "crewai")
    assert "in test" in ok("splits", "by-time", "cassettes", "--test-fraction", "0.34")
    table = ok("splits")
    assert "cassettes" in table and "tau-airline" in table

    # discovery over both agents (LSA embeddings: no torch needed for this step)
    (tmp_path / "discover.yaml").write_text("embedder: lsa\nmap: false\n")
    ok("discover", "--config", str(tmp_path / "discover.yaml"))
    store = Store.open(db)
    from downsize.discover.suitability import assess_tasks

    fits = assess_tasks(store)
    assert any(f.suitable for f in fits) and any("too few" in f.reason for f in fits)
    tasks_out = ok("tasks", "--limit", "0")
    assert "too few" in tasks_out  # the task table says why a task cannot get a specialist

    # training without a scope on a store of two agents is refused with what to do
    refused = cli("train", *TRAIN)
    assert refused.exit_code == 1 and "call sites" in refused.output and "--agent" in refused.output

    tau_task = next(f for f in fits if f.suitable and f.output_kind == "tool_call")
    out = ok("train", "--task", tau_task.task_key, *TRAIN)
    tau_id = int(out.split("(id ", 1)[1].split(")", 1)[0])
    mixed = cli("train", "--agent", "crewai", *TRAIN)  # crewAI's slice has two call sites: name one
    assert mixed.exit_code == 1 and "--tools" in mixed.output
    out = ok("train", "--agent", "crewai", "--tools", "counting_tool", *TRAIN)
    crew_id = int(out.split("(id ", 1)[1].split(")", 1)[0])
    tau_sp, crew_sp = store.specialist(tau_id), store.specialist(crew_id)
    # named for what they answer: the task (or tool unit) and the agent's call site
    assert (
        tau_sp.name == tau_task.task_key.replace("tool:", "tool-") and crew_sp.name == "crewai-counting_tool"
    )
    assert crew_sp.config["agent"] == "crewai" and crew_sp.config["task_tools"] == ["counting_tool"]

    # crewAI's call site is too small to calibrate a threshold: the CLI says so in one line
    small = cli("eval", str(crew_id), "--limit", "4")
    assert small.exit_code == 1 and "no threshold can be calibrated" in small.output
    assert "Traceback" not in small.output

    listed = ok("specialists")
    assert "crewai: call site of 1 tools" in listed and tau_sp.name[:28] in listed

    # one gateway, both specialists (named: neither is promoted), every valid call served (threshold -1e9)
    upstream = StubUpstream().start()
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    command = [sys.executable, "-m", "downsize.cli.main", "serve", "--upstream", upstream.base_url]
    command += ["--specialist", str(tau_id), "--specialist", str(crew_id), "--threshold", "-1e9"]
    command += ["--port", str(port), "--capture-mode", "sync", "--specialist-timeout", "240", "--db", db]
    command += ["--gateway-key", "agent=DS_TEST_AGENT_KEY", "--gateway-key", "admin=DS_TEST_ADMIN_KEY"]
    env = {**os.environ, "DS_TEST_AGENT_KEY": AGENT_KEY, "DS_TEST_ADMIN_KEY": ADMIN_KEY}
    gateway = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, gateway)
        held_out = {
            "tau-airline": [ex for ex in store.exchanges(source="tau-airline", split="test")][:3],
            "crewai": [
                ex
                for ex in store.exchanges(source="cassettes", split="test")
                if ex.tool_names == ["counting_tool"]
                or "counting_tool" in json.dumps(ex.request.get("tools"))
            ][:2],
        }
        assert held_out["tau-airline"] and held_out["crewai"]
        for agent, exchanges in held_out.items():
            for ex in exchanges:
                _post(url, {k: v for k, v in ex.request.items() if k != "stream"}, agent)
        other = next(
            ex
            for ex in store.exchanges(source="cassettes")
            if "multiplier" in json.dumps(ex.request.get("tools"))
        )
        _post(url, {k: v for k, v in other.request.items() if k != "stream"}, "crewai")
        admin = urllib.request.Request(
            f"{url}/v1/downsize/specialists", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        with urllib.request.urlopen(admin, timeout=10) as response:
            listing = json.loads(response.read())
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=60)
        except subprocess.TimeoutExpired:
            gateway.kill()
        upstream.stop()

    # every held-out request reached its own agent's specialist (served, or fallen back with its reason)
    decisions = {d["exchange_id"]: d for d in Store.open(db).route_decisions()}
    logged = [ex for ex in Store.open(db).exchanges(source="gateway")]
    by_agent: dict[str, set[int]] = {}
    for ex in logged:
        if ex.id in decisions:
            by_agent.setdefault(ex.agent or "", set()).add(decisions[ex.id]["specialist_id"])
    assert by_agent == {"tau-airline": {tau_id}, "crewai": {crew_id}}
    # the multiplier request matched no specialist's call site: plain upstream, no decision
    routes = [ex.route for ex in logged]
    assert routes.count("upstream") == 1 and len(logged) == 6
    assert any(r.startswith("specialist:") for r in routes)  # at least one call answered by a specialist
    assert {row["id"] for row in listing["data"] if row["routing"]} == {tau_id, crew_id}


def _wait(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited: {process.stderr.read() if process.stderr else ''}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the gateway did not start within 60 s")
