"""The heterogeneous agent in operation, end to end (issue 15's scenario; `make bench-flywheel`, and a reduced
run in the tests).

1. The tau-airline agent's dev conversations are replayed through the gateway in front of a recorded gpt-4o:
   nothing is routed yet, every call is logged (the shadow phase of a new deployment).
2. The flywheel turns once: curate -> discover -> train -> evaluate -> promote behind the gate.
3. The gateway picks the promoted specialists up by itself (it polls the store) and the test conversations are
   replayed: the served share and agreement with gpt-4o are measured per call.
4. A drift is injected: the teacher changes behaviour (its tool calls now write string arguments with the letter
   case inverted, `mia_li_3668` -> `MIA_LI_3668`, `ABC123` -> `abc123`, as a new model version or a changed
   backend convention might format ids), and the test conversations are replayed again while the gateway checks
   a share of served calls against the LLM. The rollback sends the drifted tasks back to shadow; the calls and
   seconds it took are measured. A specialist that disagrees with the LLM before the drift is rolled back
   then, and the figures say so (`after.rolled_back`).
5. Savings (`evaluate/costs.py`) and the store's routing history are read back.

Each call is sent with the exact messages gpt-4o saw (its logged history), so a specialist's answer never
changes later calls, as in the demo. The recorded upstream stands in for gpt-4o, which cannot be reached here.
"""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from downsize.config import GatewayConfig
from downsize.demo.recorded_upstream import create_recorded_upstream, recordings
from downsize.demo.servers import BackgroundServer
from downsize.evaluate.metrics import exact_match, wilson_lower
from downsize.flywheel.config import FlywheelConfig
from downsize.flywheel.cycle import run_flywheel
from downsize.importers.tau_airline import import_tau_airline
from downsize.shapes import response_message, tool_calls
from downsize.store import Store
from downsize.types import Exchange

Say = Callable[[str], None]
AGENT = "tau-airline"


@dataclass
class ScenarioConfig:
    dev_workflows: int | None = None  # dev conversations replayed before the flywheel (None: all)
    test_workflows: int | None = None  # test conversations replayed after it (None: all)
    drift_calls: int | None = None  # test calls replayed after the drift at most (None: the test replay's)
    # the test conversations are replayed after the drift up to this many times, until the rollback fires (a
    # specialist that serves few calls gives the checks little to go on in one pass)
    drift_rounds: int = 3
    engine: str = "auto"
    check_fraction: float = 0.5  # served calls also asked of the LLM (the rollback's evidence)
    min_calls: int = 10  # checks a rollback needs
    max_disagreement: float = 0.25  # the rollback's limit (lower bound of disagreement with the LLM)
    rollback_before_drift: bool = True  # False: the rollback checks start with the drift
    flywheel: FlywheelConfig = field(default_factory=FlywheelConfig)


def swap_case_arguments(response: dict[str, Any]) -> dict[str, Any]:
    """The drifted teacher: the same answer, with every string argument of its tool calls in inverted case."""
    drifted = copy.deepcopy(response)
    for choice in drifted.get("choices") or []:
        for call in (choice.get("message") or {}).get("tool_calls") or []:
            function = call.get("function") or {}
            try:
                args = json.loads(function.get("arguments") or "{}")
            except ValueError:
                continue
            if isinstance(args, dict):
                swapped = {k: v.swapcase() if isinstance(v, str) else v for k, v in args.items()}
                function["arguments"] = json.dumps(swapped)
    return drifted


def _workflows(scratch: Store, split: str, limit: int | None) -> list[list[Exchange]]:
    by_workflow: dict[str, list[Exchange]] = defaultdict(list)
    for ex in scratch.exchanges(source="tau-airline", split=split):
        by_workflow[ex.workflow or ex.session or str(ex.id)].append(ex)
    chosen = sorted(by_workflow)[:limit] if limit is not None else sorted(by_workflow)
    return [by_workflow[w] for w in chosen]


def _replay(
    gateway_url: str,
    workflows: list[list[Exchange]],
    phase: str,
    limit: int | None = None,
    stop: Callable[[], bool] | None = None,
    teacher: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Send each logged call with its logged history; one record per call (served by whom, agreeing or not
    with the teacher's answer: the logged one, or as `teacher` alters it)."""
    import openai

    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="sk-scenario-not-a-real-key", max_retries=0)
    records: list[dict[str, Any]] = []
    for calls in workflows:
        for ex in calls:
            if (limit is not None and len(records) >= limit) or (stop is not None and stop()):
                return records
            started = time.perf_counter()
            response = client.chat.completions.create(
                model="gpt-4o",
                messages=ex.request["messages"],
                tools=ex.request.get("tools") or [],
                extra_headers={"X-Downsize-Session": f"{phase}/{ex.workflow}", "X-Downsize-Agent": AGENT},
            )
            message = response.choices[0].message
            calls_made = tool_calls({"tool_calls": [c.model_dump() for c in message.tool_calls or []]})
            logged = ex.response or {}
            expected = tool_calls(response_message(teacher(logged) if teacher else logged))
            records.append(
                {
                    "by_specialist": response.model.startswith("downsize/"),
                    "agrees": exact_match(
                        calls_made[0] if calls_made else None, expected[0] if expected else None
                    ),
                    "teacher_called": bool(expected),
                    "elapsed_ms": (time.perf_counter() - started) * 1000,
                }
            )
    return records


def _figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    served = [r for r in records if r["by_specialist"]]
    agreed = sum(r["agrees"] for r in served)
    tool_calls_made = sum(r["teacher_called"] for r in records)
    return {
        "calls": len(records),
        "tool_calls": tool_calls_made,
        "served": len(served),
        "served_share_of_calls": round(len(served) / len(records), 4) if records else 0.0,
        "served_share_of_tool_calls": round(len(served) / tool_calls_made, 4) if tool_calls_made else 0.0,
        "agreed": agreed,
        "agreement": round(agreed / len(served), 4) if served else None,
        "agreement_lower95": round(wilson_lower(agreed, len(served)), 4),
    }


def _rollbacks(store: Store, events_before: int) -> list[dict[str, Any]]:
    return [
        {"task": e["task"], "reason": e["reason"]}
        for e in store.route_events()[events_before:]
        if e["actor"] == "rollback"
    ]


def run_scenario(data: Path, store: Store, config: ScenarioConfig, say: Say | None = None) -> dict[str, Any]:
    """Run the scenario on an empty store (the gateway's); returns its figures (see the module docstring)."""
    from downsize.backends.engines import runtime_for
    from downsize.evaluate.costs import savings
    from downsize.gateway.app import create_app
    from downsize.route.loading import load_router

    say = say or (lambda _msg: None)
    wall = time.perf_counter()
    scratch = Store.open("sqlite://")  # the logs the recorded gpt-4o answers from, and the calls to replay
    import_tau_airline(scratch, data)
    behaviour: dict[str, Any] = {"alter": None}
    upstream_app = create_recorded_upstream(recordings(scratch), behaviour=behaviour)
    dev = _workflows(scratch, "dev", config.dev_workflows)
    test = _workflows(scratch, "test", config.test_workflows)
    runtimes: dict[int, Any] = {}

    def runtime(sp: Any) -> Any:  # in-process, one per specialist, kept across reloads
        if sp.id not in runtimes:
            runtimes[sp.id] = runtime_for(sp, engine=config.engine)
        return runtimes[sp.id]

    def reload() -> Any:
        return load_router(store, runtime_factory=runtime)

    gateway_config = GatewayConfig(
        capture_mode="sync",
        specialist_timeout_s=None,
        route={"reload_s": 0.5},  # type: ignore[arg-type]
        rollback={  # type: ignore[arg-type]
            "check_fraction": config.check_fraction,
            "min_calls": config.min_calls,
            "max_disagreement": config.max_disagreement,
            "interval_s": 1.0,
            "enabled": config.rollback_before_drift,
        },
    )
    out: dict[str, Any] = {"dev_workflows": len(dev), "test_workflows": len(test)}
    with BackgroundServer(upstream_app) as upstream_url:
        gateway_config.upstream = f"{upstream_url}/v1"
        app = create_app(gateway_config, store, reload(), reload=reload)
        gateway = app.state.gateway
        with BackgroundServer(app) as gateway_url:
            say(f"1/5 replaying {len(dev)} dev conversations through the gateway (logging only)")
            phase = time.perf_counter()
            out["before"] = _figures(_replay(gateway_url, dev, "dev"))
            out["seconds"] = {"before": round(time.perf_counter() - phase, 1)}

            say("2/5 the flywheel turns once: curate, discover, train, evaluate, promote")
            turn = run_flywheel(store, config.flywheel, trigger="scenario", say=say)
            out["flywheel"] = {
                "run_id": turn.run_id,
                "seconds": turn.seconds,
                "units": {k: v.get("outcome") for k, v in turn.units.items()},
            }
            live = [sp for sp in store.specialists() if sp.status in ("live", "canary")]
            out["live_after_flywheel"] = [sp.task for sp in live]
            deadline = time.monotonic() + 30
            while {s.specialist.id for s in (gateway.router.slots if gateway.router else [])} < {
                sp.id for sp in live
            }:
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not load the promoted specialists within 30 s")
                time.sleep(0.2)
            say(f"3/5 {len(live)} task(s) live; replaying {len(test)} test conversations")
            phase = time.perf_counter()
            events_before = len(store.route_events())
            out["after"] = _figures(_replay(gateway_url, test, "test"))
            out["after"]["rolled_back"] = _rollbacks(store, events_before)
            out["seconds"]["after"] = round(time.perf_counter() - phase, 1)

            say("4/5 drift: the teacher now writes string arguments in inverted case; replaying again")
            behaviour["alter"] = swap_case_arguments
            gateway.config.rollback.enabled = True
            drift_started = time.perf_counter()
            events_before = len(store.route_events())
            still_live = [sp for sp in store.specialists() if sp.status in ("live", "canary")]

            def rolled_back() -> bool:
                return bool(_rollbacks(store, events_before))

            drifted: list[dict[str, Any]] = []
            rounds = 0
            for round_ in range(max(1, config.drift_rounds)):
                left = None if config.drift_calls is None else config.drift_calls - len(drifted)
                if rolled_back() or (left is not None and left <= 0):
                    break
                rounds += 1
                drifted += _replay(
                    gateway_url, test, f"drift{round_}", left, stop=rolled_back, teacher=swap_case_arguments
                )
            deadline = time.monotonic() + 20  # the last checks may still be on their way
            while not rolled_back() and time.monotonic() < deadline and still_live:
                time.sleep(0.5)
            rollbacks = _rollbacks(store, events_before)
            out["drift"] = {
                **_figures(drifted),
                "live_at_start": [sp.task for sp in still_live],
                "rolled_back": rollbacks,
                "calls_until_rollback": len(drifted) if rollbacks else None,
                "rounds": rounds,  # replays of the test conversations after the drift (at most drift_rounds)
                "seconds_until_rollback": round(time.perf_counter() - drift_started, 1)
                if rollbacks
                else None,
            }
            out["seconds"]["drift"] = round(time.perf_counter() - drift_started, 1)
            app.state.writer.flush(30)
    say("5/5 savings and the routing history")
    out["savings"] = savings(store)["overall"]
    out["route_events"] = len(store.route_events())
    out["wall_minutes"] = round((time.perf_counter() - wall) / 60, 2)
    scratch.close()
    return out
