"""Which discovered tasks a specialist can be trained and proven on, and why not for the others.

A task is suitable when its output kind is one a specialist can answer today (tool calls), it has enough
training calls to learn from, and enough validation calls (in workflows never trained on) to calibrate a
threshold. Every other task is listed with the reason, so a user knows what to expect before training.

Discovered tasks are fine-grained (one tool's calls fall in many of them), so the tasks of one tool also form
a unit, `tool:NAME` (as `downsize train --task tool:NAME` takes it): a tool whose tasks are each too small can
still be suitable as a whole, and its tasks then say so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from downsize.discover import runs
from downsize.splits import role
from downsize.store import Store

SPECIALISABLE_KINDS = ("tool_call",)
MIN_TRAIN_CALLS = 20
MIN_VALIDATION_CALLS = 5


@dataclass
class TaskFit:
    """One discovered task: its calls in each split role, and whether a specialist can be made for it."""

    task_key: str
    label: str
    output_kind: str
    suitability: float
    train: int
    validation: int
    test: int
    suitable: bool
    reason: str


def assess_tasks(
    store: Store,
    run_id: int | None = None,
    validation_fraction: float = 0.25,
    min_train: int = MIN_TRAIN_CALLS,
    min_validation: int = MIN_VALIDATION_CALLS,
) -> list[TaskFit]:
    """Every task of a discovery run (default: the newest), most suitable first, with its verdict."""
    run_id = runs.require_run(store, run_id)
    store.assign_splits()
    assigned = runs.exchange_tasks(store, run_id)
    counts: dict[str, Counter[str]] = {}
    assigner = None
    for ex in store.exchanges():
        if ex.id in assigned:
            key = assigned[ex.id][0]
        else:  # outside the run (the test split): where the assigner, from the request alone, would send it
            if assigner is None:
                from downsize.discover.discovery import load_assigner

                assigner = load_assigner(store, run_id)
            key = assigner.assign(ex.request, ex.agent, ex.task_hint).task
        if key is not None:
            counts.setdefault(key, Counter())[role(ex, validation_fraction)] += 1

    def verdict(kind: str, c: Counter[str]) -> str:
        if kind not in SPECIALISABLE_KINDS:
            return f"output kind {kind}: specialists answer {', '.join(SPECIALISABLE_KINDS)} today"
        if c["train"] < min_train:
            return f"too few calls to train on ({c['train']} < {min_train})"
        if c["validation"] < min_validation:
            return f"too few validation calls to calibrate a threshold ({c['validation']} < {min_validation})"
        return "suitable"

    def fit(key: str, label: str, kind: str, suitability: float, c: Counter[str]) -> TaskFit:
        reason = verdict(kind, c)
        return TaskFit(
            key,
            label,
            kind,
            suitability,
            c["train"],
            c["validation"],
            c["test"],
            reason == "suitable",
            reason,
        )

    tasks = runs.run_tasks(store, run_id)
    groups: dict[str, Counter[str]] = {}
    best: dict[str, float] = {}
    for task in tasks:
        if task["output_kind"] == "tool_call" and task["dominant_tool"]:
            group = f"tool:{task['dominant_tool']}"
            groups.setdefault(group, Counter()).update(counts.get(task["task_key"], Counter()))
            best[group] = max(best.get(group, 0.0), float(task["suitability"]))
    units = {
        g: fit(g, f"every task whose calls are mostly {g[5:]}", "tool_call", best[g], c)
        for g, c in groups.items()
    }
    out = []
    for task in tasks:
        counted = counts.get(task["task_key"], Counter())
        one = fit(task["task_key"], task["label"], task["output_kind"], float(task["suitability"]), counted)
        unit = units.get(f"tool:{task['dominant_tool']}") if task["output_kind"] == "tool_call" else None
        if unit is not None and unit.suitable:
            one.suitable = False  # trained as part of its tool's unit: one specialist per tool
            one.reason = f"trained within {unit.task_key} (a specialist per tool)"
        out.append(one)
    return sorted(units.values(), key=lambda f: -f.train) + out
