"""Evaluate a specialist on held-out calls against the teacher (gpt-4o's logged calls), and calibrate its threshold.

The threshold is calibrated on the validation slice of the dev split (workflows never trained on),
over every call there, text replies included: at run time the router cannot know that the teacher
would have answered in text, so a call served there counts against it. The test split is only
reported on, never tuned on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from downsize.backends.transformers_runtime import resolve_engine, runtime_for
from downsize.config import EvalConfig, TrainConfig, home, resolve
from downsize.errors import ConfigError
from downsize.evaluate.metrics import (
    TARGETS,
    Scored,
    at_threshold,
    by_target,
    calibrate,
    curve,
    exact_match,
    wilson_lower,
)
from downsize.prompting import TEXT_REPLY
from downsize.route.gate import GateDecision, TaskGate
from downsize.route.router import Generation
from downsize.route.validate import validate_call
from downsize.shapes import response_message, tool_calls
from downsize.splits import dev_role
from downsize.store import Store
from downsize.store.store import now_iso
from downsize.types import Exchange, Specialist


def teacher_call(ex: Exchange) -> Any:
    calls = tool_calls(response_message(ex.response))
    return calls[0] if calls else None


def score(ex: Exchange, gen: Generation, gate_logp: float = 0.0) -> Scored:
    reference = teacher_call(ex)
    valid = gen.call is not None and validate_call(gen.call, ex.request.get("tools") or []) is None
    return Scored(
        confidence=min(gen.min_logprob, gate_logp),
        valid=valid,
        agrees=valid and exact_match(gen.call, reference),
        teacher_called=reference is not None,
    )


def task_scope(store: Store, specialist: Specialist) -> Callable[[Exchange], bool] | None:
    """For a specialist of discovered tasks: whether the task assigner maps an exchange to one of them."""
    tasks = set(specialist.config.get("tasks") or [])
    if not tasks:
        return None
    from downsize.discover.discovery import load_assigner

    assigner = load_assigner(store, specialist.config.get("discovery_run"))

    def covered(ex: Exchange) -> bool:
        return assigner.assign(ex.request, ex.agent, ex.task_hint).task in tasks

    return covered


def generate_all(
    runtime: Any,
    exchanges: list[Exchange],
    batch_size: int,
    label: str,
    progress: bool,
    gate: TaskGate | None = None,
) -> list[tuple[Generation, float]]:
    """(generation, gate log-probability) per exchange; with a gate, only its chosen tool's arguments are generated."""
    decisions: list[GateDecision | None] = [None] * len(exchanges)
    if gate is not None:
        decisions = list(gate.decide_many([ex.request.get("messages") or [] for ex in exchanges]))
    results: dict[int, Generation] = {}
    todo = []
    for i, d in enumerate(decisions):
        if d is not None and d.label == TEXT_REPLY:
            results[i] = Generation(
                text="", call=None, min_logprob=-math.inf, mean_logprob=-math.inf, tokens=0
            )
        else:
            todo.append(i)
    # similar lengths together: less padding per batch
    todo.sort(key=lambda i: len(json.dumps(exchanges[i].request.get("messages", [])[-3:])))
    with tqdm(total=len(todo), desc=label, unit="call", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            batch = [(exchanges[i].request["messages"], exchanges[i].request.get("tools") or []) for i in idx]
            chosen = [decisions[i].label if decisions[i] is not None else None for i in idx]  # type: ignore[union-attr]
            for i, gen in zip(idx, runtime.generate_batch(batch, tools_chosen=chosen), strict=True):
                results[i] = gen
            bar.update(len(idx))
    return [(results[i], d.log_probability if d else 0.0) for i, d in enumerate(decisions)]


def evaluate_specialist(
    store: Store,
    specialist: Specialist,
    config: EvalConfig,
    runtime: Any = None,
    progress: bool = True,
    engine: str = "auto",
) -> dict[str, Any]:
    """Run the specialist on validation and test calls; calibrate, report, and store the threshold and metrics.

    Both splits are scored over every call, text replies included, as the router meets them; the test
    tool calls also get the teacher-relative figures (tool-name accuracy, exact agreement). `engine` (or
    the given `runtime`) is recorded: the threshold holds for the engine it was calibrated on.
    """
    started = time.perf_counter()
    train_cfg = resolve(TrainConfig, {k: v for k, v in specialist.config.items() if k != "task_tools"})
    engine = getattr(runtime, "engine", None) or resolve_engine(engine, specialist)
    runtime = runtime or runtime_for(specialist, config.max_new_tokens, engine=engine)
    validation = [
        ex
        for ex in store.exchanges(split="dev")
        if ex.response_kind in ("tool_call", "text")
        and dev_role(ex, train_cfg.validation_fraction) == "validation"
    ][: config.limit]
    test = list(store.exchanges(split="test", response_kind="tool_call"))[: config.limit]
    test_text = list(store.exchanges(split="test", response_kind="text"))[: config.limit]
    test_all = sorted(test + test_text, key=lambda ex: ex.id or 0)
    covered = task_scope(store, specialist)
    if covered is not None:  # a specialist of discovered tasks is judged on the calls the router sends it
        offered = len(validation)
        validation = [ex for ex in validation if covered(ex)]
        test_all = [ex for ex in test_all if covered(ex)]
        test = [ex for ex in test_all if ex.response_kind == "tool_call"]
        if not validation:
            raise ConfigError(
                f"the task assigner sends none of the {offered} validation calls to this specialist's tasks "
                f"({', '.join(sorted(specialist.config.get('tasks') or []))}), so no threshold can be "
                "calibrated: those tasks occur only in training workflows. Train on broader tasks (every "
                "`--task` key of a tool, see `downsize tasks`) or run `downsize discover` with a larger "
                "--min-cluster-size"
            )
    gate = TaskGate.load(specialist.adapter_path)
    val_out = generate_all(runtime, validation, config.batch_size, "eval validation", progress, gate)
    all_out = generate_all(runtime, test_all, config.batch_size, "eval test", progress, gate)
    val_scored = [score(ex, g, lp) for ex, (g, lp) in zip(validation, val_out, strict=True)]
    all_scored = [score(ex, g, lp) for ex, (g, lp) in zip(test_all, all_out, strict=True)]
    is_call = [ex.response_kind == "tool_call" for ex in test_all]
    test_scored = [s for s, call in zip(all_scored, is_call, strict=True) if call]
    test_gens = [g for (g, _), call in zip(all_out, is_call, strict=True) if call]
    threshold = calibrate(val_scored, config.target_agreement)
    targets = by_target(val_scored, all_scored, sorted({*TARGETS, config.target_agreement}))

    names_right = sum(
        1
        for ex, g in zip(test, test_gens, strict=True)
        if g.text.split(" ", 1)[0] == (teacher_call(ex).name if teacher_call(ex) else None)
    )
    exact = sum(s.agrees for s in test_scored)
    n = len(test)
    report: dict[str, Any] = {
        "specialist": {"id": specialist.id, "name": specialist.name, "student": specialist.base_model},
        "config": asdict(config),
        "evaluated_at": now_iso(),
        "engine": engine,
        "target_agreement": config.target_agreement,
        "threshold": threshold,
        "validation": {
            "calls": len(validation),
            "at_threshold": at_threshold(val_scored, threshold),
            "curve": [asdict(p) for p in curve(val_scored)],
        },
        "test_tool_calls": {
            "calls": n,
            "tool_name_accuracy": names_right / n if n else 0.0,
            "exact_agreement": exact / n if n else 0.0,
            "exact_agreement_lower95": wilson_lower(exact, n),
            "valid_share": sum(s.valid for s in test_scored) / n if n else 0.0,
            "at_threshold": at_threshold(test_scored, threshold),
            "curve": [asdict(p) for p in curve(test_scored)],
        },
        # every test call, text replies included: what the router would serve, as in the replay
        "test": {"calls": len(test_all), "at_threshold": at_threshold(all_scored, threshold)},
        "by_target": targets,
        "seconds": time.perf_counter() - started,
        "examples": [
            {
                "teacher": teacher_call(ex).canonical() if teacher_call(ex) else None,
                "student": g.text,
                "confidence": g.min_logprob,
            }
            for ex, g in list(zip(test, test_gens, strict=True))[:20]
        ],
    }
    metrics = dict(specialist.metrics)
    metrics["eval"] = {k: v for k, v in report.items() if k not in ("examples",)}
    assert specialist.id is not None
    store.update_specialist(specialist.id, threshold=threshold, metrics=metrics)
    path = home() / "reports" / f"eval-{specialist.name}-{specialist.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    report["path"] = str(path)
    from downsize.evaluate.curves import write_curve_html

    report["curve_path"] = str(write_curve_html(report, path.with_suffix(".html")))
    return report


def report_path(specialist: Specialist) -> Path:
    return home() / "reports" / f"eval-{specialist.name}-{specialist.id}.json"
