"""Evaluate a specialist on held-out calls against the teacher (gpt-4o's logged calls), and calibrate its threshold.

The threshold is calibrated on the validation slice of the dev split (workflows never trained on),
over every call there, text replies included: at run time the router cannot know that the teacher
would have answered in text, so a call served there counts against it. The test split is only
reported on, never tuned on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from downsize.backends.transformers_runtime import runtime_for
from downsize.config import EvalConfig, TrainConfig, home, resolve
from downsize.evaluate.metrics import Scored, at_threshold, calibrate, curve, exact_match, wilson_lower
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


def score(ex: Exchange, gen: Generation) -> Scored:
    reference = teacher_call(ex)
    valid = gen.call is not None and validate_call(gen.call, ex.request.get("tools") or []) is None
    return Scored(
        confidence=gen.min_logprob,
        valid=valid,
        agrees=valid and exact_match(gen.call, reference),
        teacher_called=reference is not None,
    )


def generate_all(
    runtime: Any, exchanges: list[Exchange], batch_size: int, label: str, progress: bool
) -> list[Generation]:
    out: list[Generation] = []
    ordered = sorted(
        range(len(exchanges)), key=lambda i: len(json.dumps(exchanges[i].request.get("messages", [])[-3:]))
    )
    results: dict[int, Generation] = {}
    with tqdm(total=len(exchanges), desc=label, unit="call", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(ordered), batch_size):
            idx = ordered[start : start + batch_size]
            batch = [(exchanges[i].request["messages"], exchanges[i].request.get("tools") or []) for i in idx]
            for i, gen in zip(idx, runtime.generate_batch(batch), strict=True):
                results[i] = gen
            bar.update(len(idx))
    out = [results[i] for i in range(len(exchanges))]
    return out


def evaluate_specialist(
    store: Store, specialist: Specialist, config: EvalConfig, runtime: Any = None, progress: bool = True
) -> dict[str, Any]:
    """Run the specialist on validation and test calls; calibrate, report, and store the threshold and metrics."""
    started = time.perf_counter()
    train_cfg = resolve(TrainConfig, {k: v for k, v in specialist.config.items() if k != "task_tools"})
    runtime = runtime or runtime_for(specialist, config.max_new_tokens)
    validation = [
        ex
        for ex in store.exchanges(split="dev")
        if ex.response_kind in ("tool_call", "text")
        and dev_role(ex, train_cfg.validation_fraction) == "validation"
    ][: config.limit]
    test = list(store.exchanges(split="test", response_kind="tool_call"))[: config.limit]
    val_gens = generate_all(runtime, validation, config.batch_size, "eval validation", progress)
    test_gens = generate_all(runtime, test, config.batch_size, "eval test", progress)
    val_scored = [score(ex, g) for ex, g in zip(validation, val_gens, strict=True)]
    test_scored = [score(ex, g) for ex, g in zip(test, test_gens, strict=True)]
    threshold = calibrate(val_scored, config.target_agreement)

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
    return report


def report_path(specialist: Specialist) -> Path:
    return home() / "reports" / f"eval-{specialist.name}-{specialist.id}.json"
