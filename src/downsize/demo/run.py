"""`make demo`: import -> train within a CPU budget -> eval -> gateway in front of a recorded gpt-4o -> replay.

The replay sends every call of the test split (tau-airline task ids 35-49), text replies included, through
the gateway with the official `openai` client, each with the exact messages gpt-4o saw. The router cannot
know in advance that gpt-4o answered some of them in text; serving a tool call there is a disagreement.
Each call is replayed on its logged history, so a specialist's answer never changes later calls.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from downsize.config import EvalConfig, GatewayConfig, TrainConfig, home
from downsize.demo.recorded_upstream import create_recorded_upstream, recordings
from downsize.demo.servers import BackgroundServer
from downsize.evaluate.metrics import exact_match, wilson_lower
from downsize.evaluate.promotion import promotion_gate, record_promotion, served_at, served_on_test
from downsize.importers.tau_airline import import_tau_airline
from downsize.prompting import parse_target
from downsize.route.loading import load_router
from downsize.shapes import response_message, tool_calls
from downsize.store import Store

# The airline agent's tools carry no MCP annotations (readOnlyHint, destructiveHint), so the demo states their
# risk tiers as a user would under `risk:` in a config file or with `downsize eval --read-only/--destructive`:
# lookups only read; bookings, cancellations, updates and certificates change the world for good. Every other
# tool (a transfer to a human) is strict.
DEMO_RISK = {
    "read_only": ["get_*", "search_*", "list_*", "calculate", "think"],
    "destructive": ["book_*", "cancel_*", "update_*", "send_certificate"],
}


def _say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def replay(store: Store, gateway_url: str, run_id: str) -> list[dict[str, Any]]:
    """Replay the test split through the gateway with the openai client; one record per call."""
    import openai
    from tqdm import tqdm

    client = openai.OpenAI(
        base_url=f"{gateway_url}/v1", api_key="sk-demo-not-a-real-key", max_retries=0, timeout=120
    )
    records = []
    for ex in tqdm(
        list(store.exchanges(source="tau-airline", split="test")),
        desc="replay test split",
        unit="call",
        dynamic_ncols=True,
    ):
        started = time.perf_counter()
        response = client.chat.completions.create(
            model="gpt-4o",
            messages=ex.request["messages"],
            tools=ex.request["tools"],
            extra_headers={
                "X-Downsize-Session": f"{run_id}/{ex.id}",
                "X-Downsize-Agent": "tau-airline",  # the call site the logs were captured at
            },
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        message = response.choices[0].message
        calls = tool_calls({"tool_calls": [c.model_dump() for c in message.tool_calls or []]})
        teacher = tool_calls(response_message(ex.response))
        records.append(
            {
                "exchange": ex,
                "by_specialist": response.model.startswith("downsize/"),
                "agrees": exact_match(calls[0] if calls else None, teacher[0] if teacher else None),
                "teacher_called": bool(teacher),
                "elapsed_ms": elapsed_ms,
            }
        )
    return records


def run_demo(
    data: Path,
    train_minutes: float = 8.0,
    store: Store | None = None,
    student: str = "smollm2-135m",
    engine: str = "auto",
    epochs: float = 1.0,
    cross_fit: int = 0,
) -> dict[str, Any]:
    """The whole loop on the embedded default; writes $DOWNSIZE_HOME/reports/demo-summary.json.

    `engine` serves (and evaluates, so the threshold is calibrated on the same numbers) through transformers
    or llama.cpp; `auto` takes llama.cpp where it is installed. With `cross_fit` K >= 2 the budget covers the
    specialist and its K - 1 fold models (each gets `train_minutes / K`), and the threshold is calibrated on
    every dev call, cross-fitted (`evaluate/crossfit.py`).
    """
    from downsize.train.lora import train_specialist

    wall = time.perf_counter()
    store = store or Store.open()
    _say(f"home {home()}; importing {data}")
    read, added = import_tau_airline(store, data)
    _say(f"imported {read} exchanges ({added} new)")

    folds = f", cross-fitted over {cross_fit} folds" if cross_fit else ""
    _say(f"training the specialist (budget {train_minutes} min on {_cores()} cores{folds})")
    per_model = train_minutes / max(1, cross_fit)
    result = train_specialist(
        store, TrainConfig(student=student, max_minutes=per_model, epochs=epochs, cross_fit=cross_fit)
    )
    _say(
        f"trained: {result.tokens} tokens in {result.seconds / 60:.1f} min = {result.tokens_per_s:.0f} tokens/s"
    )
    assert result.specialist_id is not None
    summary = prove_specialist(store, result.specialist_id, engine=engine, risk=DEMO_RISK)
    summary["train"] = {
        "minutes": round(result.seconds / 60, 2),
        "tokens": result.tokens,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "examples": result.examples,
        "epochs": round(result.epochs, 3),
        "final_loss": round(result.final_loss, 4),
        "cross_fit": cross_fit or None,
    }
    summary["wall_minutes"] = round((time.perf_counter() - wall) / 60, 2)
    summary_path = home() / "reports" / "demo-summary.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2))
    _say(
        f"served {summary['served']}/{summary['tool_calls']} tool calls ({summary['served_share']:.1%}), "
        f"agreement with gpt-4o {summary['agreement'] if summary['served'] else 'n/a'} "
        f"(lower95 {summary['agreement_lower95']}); rule {summary['rule_served']}, evidence counted by "
        f"{summary['count']} (counting calls as independent would serve "
        f"{summary['parity_by_calls']['served_share']:.1%} at parity); fallbacks {summary['fallbacks']}; "
        f"wall {summary['wall_minutes']} min; summary: {summary_path}"
    )
    return summary


def prove_specialist(
    store: Store, specialist_id: int, engine: str = "auto", risk: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """Evaluate a trained specialist, apply the promotion gate, and replay the test split through the gateway.

    The router is built by `load_router`, the same code `downsize serve` uses, so a specialist trained on
    discovered tasks (`downsize train --task`) routes through its task assigner here as it would in
    production. Returns the replay's figures (served share, agreement, fallbacks by reason, latency).
    """
    from downsize.backends.engines import runtime_for
    from downsize.evaluate.tool_calls import evaluate_specialist
    from downsize.gateway.app import create_app

    specialist = store.specialist(specialist_id)
    runtime = runtime_for(specialist, engine=engine)
    engine = runtime.engine
    _say("evaluating on validation (calibration) and test tool calls")
    report = evaluate_specialist(store, specialist, EvalConfig(risk=risk or {}), runtime=runtime)
    threshold = report.threshold
    specialist = store.specialist(specialist_id)  # with the threshold and metrics the evaluation stored
    # the product's own rule: live only through the promotion gate (strict, else at parity with the teacher's
    # own agreement, read-only tools only); otherwise shadow (log, never serve)
    gate_live = promotion_gate(specialist, "live")
    gate_parity = promotion_gate(specialist, "live", rule="parity")
    # the laxer count (calls as independent), measured beside and never served on
    by_calls = promotion_gate(specialist, "live", rule="parity", count="calls")
    rule = "strict" if gate_live.allowed else "parity" if gate_parity.allowed else "none"
    if rule == "parity":
        gate_live = gate_parity
    status = (
        "live"
        if gate_live.allowed
        else "shadow"
        if promotion_gate(specialist, "shadow").allowed
        else "candidate"
    )
    if status == "live":
        record_promotion(
            store, specialist, "live", gate_live
        )  # the threshold per risk tier, as `promote` does
        threshold = gate_live.threshold
        specialist = store.specialist(specialist_id)
    elif status == "shadow":
        store.set_status(specialist_id, status)
    if threshold is None:
        _say(
            "no threshold reached the target on validation: the specialist serves nothing (every call falls back)"
        )
    else:
        _say(f"threshold {threshold:.4f}; promotion: {status} ({gate_live.reason})")
    router = load_router(
        store,
        [str(specialist_id)],
        threshold=threshold if threshold is not None else math.inf,
        runtime_factory=lambda _sp: runtime,
    )
    assert router is not None
    slot = router.slots[0]
    slot.shadow = status == "shadow"
    specialist = slot.specialist

    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    upstream_app = create_recorded_upstream(recordings(store))
    with BackgroundServer(upstream_app) as upstream_url:
        app = create_app(GatewayConfig(upstream=f"{upstream_url}/v1"), store, router)
        with BackgroundServer(app) as gateway_url:
            _say(f"recorded gpt-4o at {upstream_url}, gateway at {gateway_url}; replaying the test split")
            replayed = replay(store, gateway_url, run_id)
            app.state.writer.flush(30)

    # the route each call took, as the gateway stored it, and what a shadow specialist would have answered
    logged = {
        ex.session: ex
        for ex in store.exchanges(source="gateway")
        if (ex.session or "").startswith(run_id + "/")
    }
    candidates = {
        d["exchange_id"]: d["candidate"] for d in store.route_decisions() if d["reason"] == "shadow"
    }
    fallbacks: Counter[str] = Counter()
    latency: dict[str, list[float]] = {"specialist": [], "fallback": [], "upstream": []}
    shadow_served = shadow_agreed = 0
    in_tasks = 0  # teacher tool calls the router considered (not refused as another or a novel task)
    for rec in replayed:
        row = logged.get(f"{run_id}/{rec['exchange'].id}")
        route = (row.route if row else None) or "missing"
        path = route.split(":", 1)[0] if route.startswith(("specialist:", "fallback:")) else "upstream"
        latency[path].append(rec["elapsed_ms"])
        reason = route.removeprefix("fallback:") if path == "fallback" else ""
        if path == "fallback":
            fallbacks[reason.split(":", 1)[0] if reason.startswith(_TASK_REASONS) else reason] += 1
        if rec["teacher_called"] and path != "upstream" and not reason.startswith(_TASK_REASONS):
            in_tasks += 1
        if row is not None and row.id in candidates:
            shadow_served += 1
            teacher = tool_calls(response_message(rec["exchange"].response))
            shadow_agreed += exact_match(
                parse_target(candidates[row.id] or ""), teacher[0] if teacher else None
            )
    served_recs = [r for r in replayed if r["by_specialist"]]
    served, agreed = len(served_recs), sum(r["agrees"] for r in served_recs)
    tool_call_count = sum(1 for r in replayed if r["teacher_called"])
    summary = {
        "calls": len(replayed),
        "tool_calls": tool_call_count,
        "served": served,
        "served_share": round(served / tool_call_count, 4) if tool_call_count else 0.0,
        "agreement": round(agreed / served, 4) if served else None,
        "agreement_lower95": round(wilson_lower(agreed, served), 4),
        "agreed": agreed,
        "served_where_gpt4o_replied_in_text": sum(1 for r in served_recs if not r["teacher_called"]),
        "stored_routes": len(logged),
        "fallbacks": dict(sorted(fallbacks.items())),
        "latency_ms_p50": {path: _p50(values) for path, values in latency.items()},  # as the agent sees it
        "threshold": threshold,
        "status": status,
        "promotion": gate_live.reason,
        "shadow_would_serve": shadow_served,
        "shadow_agreed": shadow_agreed,
        "shadow_agreement": round(shadow_agreed / shadow_served, 4) if shadow_served else None,
        "shadow_agreement_lower95": round(wilson_lower(shadow_agreed, shadow_served), 4),
        "specialist": {
            "id": specialist.id,
            "student": specialist.base_model,
            "adapter": specialist.adapter_path,
            "tasks": sorted(slot.scope.tasks),
        },
        "eval_test_tool_calls": {k: v for k, v in asdict(report.test_tool_calls).items() if k != "curve"},
        "validation_at_threshold": asdict(report.validation.at_threshold),
        # gpt-4o against itself where a situation recurs in another trial (evaluate/ceiling.py)
        "teacher_ceiling": report.teacher_ceiling,
        # how the threshold was calibrated: cross-fitted or on validation, Learn-then-Test, the signal, the gap
        "calibration": report.calibration,
        "rule_served": rule,  # strict (the 95% target's bound), parity (non-inferiority), none
        "served_share_strict": report.test.at_threshold.served_share if report.threshold is not None else 0.0,
        **_at_parity(report, gate_parity, rule, served, agreed, tool_call_count),
        "count": gate_parity.evidence.get("count"),  # how the gates counted evidence: workflows, or calls
        "parity_by_calls": _offline(report, by_calls),
        "tier_thresholds": gate_live.evidence.get("tier_thresholds") if status == "live" else None,
        "served_by_tier": _by_tier(replayed, logged, run_id, risk),
        "test_curve": report.test_tool_calls.curve,
        "eval_test_at_threshold": asdict(report.test.at_threshold),  # every test call, offline
        "by_target": [
            {
                "target": r.target,
                "threshold": r.threshold,
                **{f"test_{k}": v for k, v in asdict(r.test).items()},
            }
            for r in report.by_target
        ],
        "copied_arguments": runtime.copied,
        "engine": engine,
        "run_id": run_id,
    }
    if slot.scope.tasks:
        summary["tool_calls_in_tasks"] = in_tasks  # the assigner sent these to the specialist's tasks
    return summary


_TASK_REASONS = ("other_task", "novel_task")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _at_parity(
    report: Any, gate: Any, rule: str, served: int, agreed: int, tool_calls: int
) -> dict[str, Any]:
    """What the parity rule serves of the test split: the replay's own figures when the demo served at parity,
    else the report's test curves at its thresholds (offline)."""

    parity = {
        "allowed": gate.allowed,
        "reason": gate.reason,
        "threshold": gate.threshold,
        "tier_thresholds": gate.evidence.get("tier_thresholds"),
    }
    on_calibration = served_at(report, gate, "calibration")
    if on_calibration and on_calibration[0]:  # what calibration promised at these thresholds
        parity["calibration_served"], parity["calibration_agreed"] = on_calibration[:2]
        parity["calibration_agreement"] = round(on_calibration[1] / on_calibration[0], 4)
    if rule == "parity":
        if served and "calibration_agreement" in parity:  # how far calibration overstated the replay
            parity["gap"] = round(parity["calibration_agreement"] - agreed / served, 4)
        return {
            "parity": parity,
            "served_share_parity": round(served / tool_calls, 4) if tool_calls else 0.0,
            "agreement_parity": round(agreed / served, 4) if served else None,
            "agreement_parity_lower95": round(wilson_lower(agreed, served), 4),
        }
    offline = _offline(report, gate)
    return {
        "parity": parity,
        "served_share_parity": offline["served_share"],
        "agreement_parity": offline["agreement"],
        "agreement_parity_lower95": offline["agreement_lower95"],
    }


def _offline(report: Any, gate: Any) -> dict[str, Any]:
    """What a gate's thresholds serve of the test split, from the report's test curves (per risk tier)."""
    n, k, calls = served_on_test(report, gate) or (0, 0, 0)
    return {
        "allowed": gate.allowed,
        "tier_thresholds": gate.evidence.get("tier_thresholds"),
        "served": n,
        "served_share": round(n / calls, 4) if calls else 0.0,
        "agreement": round(k / n, 4) if n else None,
        "agreement_lower95": round(wilson_lower(k, n), 4),
    }


def _by_tier(
    replayed: list[dict[str, Any]],
    logged: dict[str | None, Any],
    run_id: str,
    risk: dict[str, list[str]] | None,
) -> dict[str, dict[str, int]]:
    """Per risk tier of the teacher's tool: test tool calls, how many the specialist served, how many agreed."""
    from downsize.decide.risk import RiskPolicy, tier_of

    policy = RiskPolicy.from_dict(risk or {})
    out: dict[str, dict[str, int]] = {}
    for rec in replayed:
        if not rec["teacher_called"]:
            continue
        ex = rec["exchange"]
        teacher = tool_calls(response_message(ex.response))
        tier = tier_of(teacher[0].name if teacher else None, ex.request, policy)
        row = out.setdefault(tier, {"tool_calls": 0, "served": 0, "agreed": 0})
        row["tool_calls"] += 1
        row["served"] += int(rec["by_specialist"])
        row["agreed"] += int(rec["by_specialist"] and rec["agrees"])
    return dict(sorted(out.items()))
