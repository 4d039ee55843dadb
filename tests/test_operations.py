"""Routing modes in operation: `downsize route` and the admin API change a task's mode behind its gate, a running
gateway reloads without dropping a request, a canary takes its share of sessions, and automatic rollback sends
a live task back to shadow on evidence (never on one call).

The specialist's model is a scripted runtime (as in test_gateway.py): these tests are about routing, not a
model; the upstream is the local stub, a real HTTP server.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from downsize.cli.main import main
from downsize.config import GatewayConfig, RollbackConfig
from downsize.evaluate.metrics import wilson_lower
from downsize.gateway.app import create_app
from downsize.route.loading import load_router
from downsize.route.modes import RouteModeError, routes_table, set_mode
from downsize.route.rollback import check, check_all
from downsize.route.router import Router
from downsize.store import Store
from downsize.types import Exchange, Generation, RouteDecision, Specialist, ToolCall
from upstream_stub import TOOL_ARGS, TOOL_NAME, RunningServer, StubUpstream

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "parameters": {
                "type": "object",
                "properties": {"user_id": {"type": "string"}},
                "required": ["user_id"],
            },
        },
    }
]
MESSAGES: Any = [
    {"role": "system", "content": "You are an airline agent."},
    {"role": "user", "content": "Hi, I am sara_doe_496 and I want to change my flight."},
]
AGREEING = json.loads(TOOL_ARGS)  # what the stub upstream (the LLM) answers
DISAGREEING = {"user_id": "mia_li_3668"}
ADMIN_KEY = "gw-admin-test-operations-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


class Scripted:
    """Stands in for the specialist model: one fixed call at a fixed confidence."""

    def __init__(self, arguments: dict[str, Any], min_logprob: float = -0.1) -> None:
        self.generation = Generation(
            text=json.dumps({"name": TOOL_NAME, "arguments": arguments}),
            call=ToolCall(TOOL_NAME, arguments),
            min_logprob=min_logprob,
            mean_logprob=min_logprob,
            tokens=9,
        )

    def generate(self, messages: Any, tools: Any, stop_below: Any = None, tool: Any = None) -> Generation:
        return self.generation


def _evaluated(served: int, agreed: int) -> dict[str, Any]:
    at = {"served": served, "agreement": agreed / served, "agreement_lower95": wilson_lower(agreed, served)}
    return {"eval": {"target_agreement": 0.95, "validation": {"at_threshold": at}}}


def _specialist(store: Store, name: str = "lookup", served: int = 200, agreed: int = 198) -> Specialist:
    sp = Specialist(
        name=name,
        task=f"{name}-task",
        base_model="smollm2-135m",
        adapter_path="/nonexistent/adapter",
        config={"task_tools": [TOOL_NAME]},
        data_hash="0" * 64,
        threshold=-1.0,
        metrics=_evaluated(served, agreed),
    )
    store.add_specialist(sp)
    return sp


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    server = StubUpstream().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS_TEST_ADMIN_KEY", ADMIN_KEY)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'downsize.db'}")
    yield store
    store.close()


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any, str]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **AUTH, **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read()), response.headers.get("X-Downsize-Route", "")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get("X-Downsize-Route", "")


def _chat(url: str, session: str | None = None) -> tuple[int, dict[str, Any], str]:
    headers = {"X-Downsize-Session": session} if session else {}
    return _post(
        f"{url}/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, "tools": TOOLS}, headers
    )


def _gateway(
    stub: StubUpstream, store: Store, runtime: Scripted, **overrides: Any
) -> tuple[GatewayConfig, Any]:
    config = GatewayConfig(
        gateway_keys=[{"role": "admin", "env": "DS_TEST_ADMIN_KEY"}],  # type: ignore[list-item]
        upstream=stub.base_url,
        upstream_timeout_s=5,
        capture_mode="sync",
        route={"reload_s": 0.1},
        rollback=overrides.pop("rollback", {"interval_s": 3600}),
        **overrides,
    )

    def reload() -> Router | None:
        return load_router(store, runtime_factory=lambda sp: runtime)

    return config, create_app(config, store, reload(), reload=reload)


def _wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- modes and their gates -------------------------------------------------------------------------------


def test_modes_are_gated_and_every_change_is_recorded(store: Store) -> None:
    weak = _specialist(store, "weak", served=30, agreed=29)  # lower bound 0.833: not live at 0.90
    uncalibrated = _specialist(store, "raw")
    store.update_specialist(uncalibrated.id or 0, threshold=None)
    with pytest.raises(RouteModeError, match="downsize eval|threshold"):
        set_mode(store, "raw", "shadow")
    with pytest.raises(RouteModeError, match="0.833"):
        set_mode(store, "weak-task", "live")
    with pytest.raises(RouteModeError, match="between 0 and 1"):
        set_mode(store, "weak", "canary", traffic=1.5)
    assert set_mode(store, "weak", "canary", traffic=0.2).to_mode == "canary"
    forced = set_mode(store, str(weak.id), "live", force=True, reason="operator's call")
    assert forced.evidence.get("forced") is True and store.specialist(weak.id).traffic is None
    back = set_mode(store, "weak", "off")  # going back is never gated
    assert (back.from_mode, back.to_mode) == ("live", "off")
    events = store.route_events(weak.id)
    assert [(e["from_mode"], e["to_mode"], e["actor"]) for e in events] == [
        ("candidate", "canary", "cli"),
        ("canary", "live", "cli"),
        ("live", "off", "cli"),
    ]
    assert events[0]["traffic"] == 0.2 and events[1]["reason"] == "operator's call"
    table = {row["specialist"]: row for row in routes_table(store)}
    assert table["weak"]["mode"] == "off" and table["raw"]["mode"] == "off"


def test_cli_route_shows_sets_and_explains(store: Store, tmp_path: Path) -> None:
    sp = _specialist(store)
    db = f"sqlite:///{tmp_path / 'downsize.db'}"
    runner = CliRunner()
    out = runner.invoke(main, ["route", sp.task, "live", "--db", db])
    assert out.exit_code == 0, out.output
    assert "lookup-task: off -> live" in out.output and "clears 0.90" in out.output
    listed = runner.invoke(main, ["route", "--db", db])
    assert "lookup-task" in listed.output and " live " in listed.output
    bad = runner.invoke(main, ["route", "nobody", "live", "--db", db])
    assert (
        bad.exit_code == 1
        and "no specialist answers 'nobody'" in bad.output
        and "Traceback" not in bad.output
    )
    missing = runner.invoke(main, ["route", sp.task, "--db", db])
    assert missing.exit_code == 1 and "give the mode too" in missing.output


# -- the gateway reloads ---------------------------------------------------------------------------------


def test_gateway_follows_mode_changes_without_dropping_requests(stub: StubUpstream, store: Store) -> None:
    sp = _specialist(store)
    config, app = _gateway(stub, store, Scripted(DISAGREEING))
    with RunningServer(config, app) as url:
        status, reply, route = _chat(url)
        assert status == 200 and route == "upstream"  # no routed specialist yet: logging only

        set_mode(store, sp.task, "shadow")  # as `downsize route` from another process: the gateway polls
        _wait_for(lambda: app.state.gateway.router is not None)
        status, reply, route = _chat(url)
        assert (
            route == "fallback:shadow"
            and reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == TOOL_ARGS
        )  # the LLM answered; the specialist's answer is only logged

        status, change, _ = _post(f"{url}/v1/downsize/routes", {"task": sp.task, "mode": "live"})
        assert (
            status == 200
            and change["reloaded"] is True
            and (change["from"], change["to"]) == ("shadow", "live")
        )
        status, reply, route = _chat(url)
        assert route == f"specialist:{sp.id}" and reply["model"] == "downsize/lookup"

        status, refused, _ = _post(f"{url}/v1/downsize/routes", {"task": sp.task, "mode": "sideways"})
        assert status == 409 and "unknown routing mode" in refused["error"]["message"]
        status, refused, _ = _post(f"{url}/v1/downsize/routes", {"task": "nobody", "mode": "live"})
        assert status == 404

        # requests keep flowing while the mode flips back and forth: every one is answered
        results: list[int] = []

        def agent() -> None:
            for _ in range(8):
                results.append(_chat(url)[0])

        threads = [threading.Thread(target=agent) for _ in range(4)]
        for thread in threads:
            thread.start()
        for i in range(10):
            _post(f"{url}/v1/downsize/routes", {"task": sp.task, "mode": "shadow" if i % 2 else "live"})
        for thread in threads:
            thread.join(60)
        assert results == [200] * 32
        status, listing, _ = _post(f"{url}/v1/downsize/routes", {"task": sp.task, "mode": "live"})
        listing_request = urllib.request.Request(f"{url}/v1/downsize/routes", headers=AUTH)
        with urllib.request.urlopen(listing_request, timeout=10) as response:
            table = json.loads(response.read())
        row = next(r for r in table["data"] if r["specialist_id"] == sp.id)
        assert row["mode"] == "live" and row["in_gateway"] == "live" and len(table["events"]) >= 12


def test_canary_takes_its_share_by_session(stub: StubUpstream, store: Store) -> None:
    sp = _specialist(store)
    set_mode(store, sp.task, "canary", traffic=0.5)
    config, app = _gateway(stub, store, Scripted(AGREEING))
    routes: dict[str, set[str]] = {}
    with RunningServer(config, app) as url:
        for i in range(30):
            for _ in range(2):
                routes.setdefault(f"s{i}", set()).add(_chat(url, session=f"s{i}")[2])
    assert all(len(seen) == 1 for seen in routes.values()), "a session's calls all go one way"
    served = sum(seen == {f"specialist:{sp.id}"} for seen in routes.values())
    held = sum(seen == {"fallback:canary_holdout"} for seen in routes.values())
    assert served + held == 30 and 6 <= served <= 24


# -- automatic rollback ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "rolled_back"), [(DISAGREEING, True), (AGREEING, False)])
def test_live_task_rolls_back_when_the_llm_disagrees(
    stub: StubUpstream, store: Store, arguments: dict[str, Any], rolled_back: bool
) -> None:
    sp = _specialist(store)
    set_mode(store, sp.task, "live")
    rollback = {"check_fraction": 1.0, "min_calls": 8, "max_disagreement": 0.25, "interval_s": 0.3}
    config, app = _gateway(stub, store, Scripted(arguments), rollback=rollback)
    with RunningServer(config, app) as url:
        for i in range(12):
            assert _chat(url, session=f"w{i}")[2] == f"specialist:{sp.id}"
        _wait_for(
            lambda: store.count_exchanges(route="probe") == 12
        )  # the LLM was asked too, in the background
        verdict = check(store, store.specialist(sp.id), RollbackConfig(**rollback))
        assert verdict.evidence["checked"] == 12
        assert verdict.evidence["disagreed"] == (12 if rolled_back else 0)
        if rolled_back:  # the gateway's own check rolls it back and reloads
            _wait_for(lambda: app.state.gateway.router.slots[0].mode == "shadow")
        else:
            time.sleep(1.0)  # three checks pass
        after = _chat(url)[2]
    status = store.specialist(sp.id).status
    events = store.route_events(sp.id)
    if rolled_back:
        assert status == "shadow" and after == "fallback:shadow"
        assert events[-1]["actor"] == "rollback" and "disagreement with the LLM 12/12" in events[-1]["reason"]
        assert events[-1]["evidence"]["disagreement_lower"] > 0.25
    else:
        assert status == "live" and after == f"specialist:{sp.id}" and events[-1]["actor"] == "cli"


def _record(store: Store, sp: Specialist, n: int, reason: str, session: str | None = None) -> None:
    for i in range(n):
        ex = Exchange(
            source="gateway",
            request={"model": "gpt-4o", "messages": MESSAGES, "tools": TOOLS},
            response=None,
            session=session or f"{reason}-{i}",
            agent="airline",
        )
        decision = RouteDecision(served=reason == "served", reason=reason, specialist=str(sp.id))
        ex.route = decision.route  # as the gateway's capture stores it
        store.record(ex, decision, sp.id)


def test_invalid_answers_need_enough_calls_and_a_bound_past_the_limit(store: Store, tmp_path: Path) -> None:
    sp = _specialist(store)
    set_mode(store, sp.task, "live")
    limits = RollbackConfig(min_calls=20, max_failure_rate=0.2)
    _record(store, sp, 5, "invalid_output:unknown_tool")  # 5 of 5 failed: too few calls to judge
    assert not check(store, store.specialist(sp.id), limits).roll_back
    _record(store, sp, 30, "gate_text")  # abstaining where the teacher would reply in text is the design
    _record(store, sp, 10, "canary_holdout")  # a canary's hold-out share is not the task's call to judge
    _record(store, sp, 10, "served")
    _record(store, sp, 10, "specialist_error")  # 15 of 25 answers failed: lower bound 0.45 > 0.2
    verdict = check(store, store.specialist(sp.id), limits)
    assert verdict.evidence["answered"] == 25 and verdict.evidence["decided"] == 55
    assert verdict.roll_back and "invalid answers or errors 15/25" in verdict.reason
    config = tmp_path / "gateway.yaml"
    config.write_text("rollback:\n  min_calls: 20\n  max_failure_rate: 0.2\n")
    db = ["--db", f"sqlite:///{tmp_path / 'downsize.db'}", "--config", str(config)]
    dry = CliRunner().invoke(main, ["route", "--check", "--dry-run", *db])
    assert "would roll back" in dry.output and store.specialist(sp.id).status == "live"
    done = CliRunner().invoke(main, ["route", "--check", *db])
    assert done.exit_code == 0 and "rolled back to shadow: invalid answers or errors 15/25" in done.output
    assert store.specialist(sp.id).status == "shadow" and store.route_events(sp.id)[-1]["actor"] == "rollback"
    assert check_all(store, limits) == []  # nothing canary or live is left to check


@pytest.mark.parametrize(("served", "rolled_back"), [(2, True), (9, False)])
def test_served_share_is_judged_against_its_calibration(store: Store, served: int, rolled_back: bool) -> None:
    sp = _specialist(store)
    at = sp.metrics["eval"]["validation"]["at_threshold"]
    at.update(calls=100, served=40, served_share=0.40)  # serving at its threshold took 40% on validation
    store.update_specialist(sp.id or 0, metrics=sp.metrics)
    set_mode(store, sp.task, "live")
    _record(store, sp, served, "served")
    _record(store, sp, 45 - served, "low_confidence")
    verdict = check(store, store.specialist(sp.id), RollbackConfig(min_calls=20, max_served_drop=0.5))
    assert verdict.evidence["served_share_calibrated"] == 0.4
    # 2/45 (upper bound 0.12) is below the floor 0.20; 9/45 (upper bound 0.31) is not
    assert verdict.roll_back is rolled_back
    if rolled_back:
        assert f"served {served}/45 of its calls" in verdict.reason


def test_workflow_outcomes_roll_back_only_against_the_llm_only_baseline(store: Store) -> None:
    sp = _specialist(store)
    set_mode(store, sp.task, "live")
    limits = RollbackConfig(min_workflows=10, max_success_drop=0.15)
    for i in range(12):
        _record(store, sp, 1, "served", session=f"served-{i}")
        store.set_outcome(f"served-{i}", 1.0 if i < 3 else 0.0)  # 3 of 12 succeed
    assert "success_served" not in check(store, store.specialist(sp.id), limits).evidence  # no baseline yet
    for i in range(12):
        _record(store, sp, 1, "low_confidence", session=f"llm-{i}")  # the LLM answered these
        store.set_outcome(f"llm-{i}", 1.0 if i < 11 else 0.0)  # 11 of 12 succeed
    verdict = check(store, store.specialist(sp.id), limits)
    assert verdict.evidence["success_llm_only"] == round(11 / 12, 4)
    assert verdict.roll_back and "workflow success 3/12" in verdict.reason


def test_savings_endpoint_counts_served_calls(stub: StubUpstream, store: Store) -> None:
    sp = _specialist(store)
    set_mode(store, sp.task, "live")
    config, app = _gateway(stub, store, Scripted(AGREEING))
    with RunningServer(config, app) as url:
        for _ in range(3):
            _post(f"{url}/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES})  # text: upstream
        for i in range(5):
            assert _chat(url, session=f"s{i}")[2] == f"specialist:{sp.id}"

        def get(path: str) -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url + path, headers=AUTH), timeout=10
                ) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, figures = get("/v1/downsize/savings")
        assert status == 200 and figures["overall"]["calls_served"] == 5
        assert (
            figures["overall"]["calls_upstream"] == 3 and figures["overall"]["upstream_cost_avoided_usd"] > 0
        )
        assert figures["by_task"][sp.task]["calls_served"] == 5
        status, later = get("/v1/downsize/savings?since=2999-01-01T00:00:00%2B00:00")
        assert status == 200 and later["overall"]["calls_served"] == 0
        status, refused = get("/v1/downsize/savings?since=yesterday")
        assert status == 400 and "ISO time" in refused["error"]["message"]


def test_a_newer_shadow_version_never_comes_before_an_older_live_one(store: Store) -> None:
    """The flywheel keeps a new version in shadow while an older one is live; when its tasks differ (discovery
    moved a cluster), the live version must still come first, or the shadow slot (which only logs) would take
    the live one's requests."""
    from downsize.route.loading import routed_specialists

    ids = {}
    for name, tasks, status in (("v1", ["k1"], "live"), ("v2", ["k1", "k2"], "shadow")):
        sp = Specialist(
            name=f"lookup-{name}",
            task="lookup-task",
            base_model="smollm2-135m",
            adapter_path="/nonexistent/adapter",
            config={"task_tools": [TOOL_NAME], "tasks": tasks},
            data_hash="0" * 64,
            threshold=-1.0,
            metrics=_evaluated(200, 198),
        )
        ids[name] = store.add_specialist(sp)
        store.set_status(ids[name], status, actor="test")
    assert [sp.name for sp in routed_specialists(store)] == ["lookup-v1", "lookup-v2"]
    store.set_status(ids["v2"], "live", actor="test")  # promoted: the new version replaces the old
    assert [sp.name for sp in routed_specialists(store)] == ["lookup-v2"]
