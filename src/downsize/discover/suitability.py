"""Which discovered tasks a specialist can be trained and proven on, and why not for the others.

A task is suitable when its answers follow a contract a specialist can answer (`contracts.py`: tool calls,
JSON, labels, text-format tool use, short text; not long free text), it has enough training calls to learn
from, and enough validation calls (in workflows never trained on) to calibrate a threshold. Every other task
is listed with the reason (too few calls, long free text, outputs that vary too much: JSON answers sharing no
key), so a user knows what to expect before training.

Discovered tasks are fine-grained (one tool's calls fall in many of them; a classifier's calls split by what
is asked), so larger units are assessed too: the tasks of one tool form `tool:NAME`, and every answer given
at one call site that offers no tools forms `site:KEY` (`sites.site_key`: its system prompt's template and
response schema). `downsize train --task` takes either. A unit that is suitable takes its tasks' place.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from downsize.contracts import OutputContract, detect_contract
from downsize.discover import runs
from downsize.sites import site_example, site_key
from downsize.splits import role
from downsize.store import Store
from downsize.types import Exchange

MIN_TRAIN_CALLS = 20
MIN_VALIDATION_CALLS = 5


def verdict(
    contract: OutputContract,
    train: int,
    validation: int,
    min_train: int = MIN_TRAIN_CALLS,
    min_validation: int = MIN_VALIDATION_CALLS,
) -> str:
    """`suitable`, or why a specialist cannot be trained and proven for these calls."""
    if contract.kind == "long_text":
        return f"{contract.reason} (train it anyway with --kind text)"
    if contract.kind == "json" and contract.schema_source == "learned" and not _shared_shape(contract.schema):
        return "outputs vary too much: the teacher's JSON answers share no key or type to constrain"
    if train < min_train:
        return f"too few calls to train on ({train} < {min_train})"
    if validation < min_validation:
        return f"too few validation calls to calibrate a threshold ({validation} < {min_validation})"
    return "suitable"


def _shared_shape(schema: dict[str, Any] | None) -> bool:
    """Whether a learned schema constrains anything: a type, and for objects a key every answer has."""
    if not schema or "type" not in schema:
        return False
    if schema["type"] == "object":
        return bool(schema.get("required"))
    if schema["type"] == "array":
        return _shared_shape(schema.get("items"))
    return True


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
    site_counts: dict[str, Counter[str]] = {}
    answers: dict[str, list[Exchange]] = {}  # training answers per task and per site unit: their contract
    task_sites: dict[str, Counter[str]] = {}
    site_examples: dict[str, str] = {}
    assigner = None
    for ex in store.exchanges():
        where = role(ex, validation_fraction)
        site = site_key(ex.request)
        if ex.response_kind in ("json", "text") and not site.startswith("tools:"):
            site_unit = f"site:{site}"
            site_counts.setdefault(site_unit, Counter())[where] += 1
            site_examples.setdefault(site_unit, site_example(ex.request, 40))
            if where == "train":
                answers.setdefault(site_unit, []).append(ex)
        if ex.id in assigned:
            key = assigned[ex.id][0]
        else:  # outside the run (the test split): where the assigner, from the request alone, would send it
            if assigner is None:
                from downsize.discover.discovery import load_assigner

                assigner = load_assigner(store, run_id)
            key = assigner.assign(ex.request, ex.agent, ex.task_hint).task
        if key is not None:
            counts.setdefault(key, Counter())[where] += 1
            task_sites.setdefault(key, Counter())[site] += 1
            if where == "train" and ex.response_kind in ("json", "text"):
                answers.setdefault(key, []).append(ex)

    def kind_of(key: str, discovered: str) -> OutputContract:
        if discovered == "tool_call":
            return OutputContract("tool_call")
        return detect_contract(answers.get(key, []))

    def fit(key: str, label: str, discovered: str, suitability: float, c: Counter[str]) -> TaskFit:
        contract = kind_of(key, discovered)
        reason = verdict(contract, c["train"], c["validation"], min_train, min_validation)
        return TaskFit(
            key,
            label,
            contract.kind,
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
    for unit_key, c in site_counts.items():
        units[unit_key] = fit(
            unit_key, f"every answer at the call site of: {site_examples[unit_key]}", "text", 0.0, c
        )
    out = []
    for task in tasks:
        counted = counts.get(task["task_key"], Counter())
        one = fit(task["task_key"], task["label"], task["output_kind"], float(task["suitability"]), counted)
        if task["output_kind"] == "tool_call":
            unit = units.get(f"tool:{task['dominant_tool']}")
        else:
            sites = task_sites.get(task["task_key"])
            unit = units.get(f"site:{sites.most_common(1)[0][0]}") if sites else None
        if unit is not None and unit.suitable:
            one.suitable = False  # trained as part of its unit: one specialist per tool or call site
            one.reason = f"trained within {unit.task_key} (a specialist per tool or call site)"
        out.append(one)
    return sorted(units.values(), key=lambda f: (not f.suitable, -f.train)) + out
