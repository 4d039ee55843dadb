"""Train a specialist for every suitable discovered task within one total time budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from downsize.config import TrainConfig
from downsize.discover.suitability import TaskFit, assess_tasks
from downsize.errors import DownsizeError
from downsize.store import Store

MIN_MINUTES = 0.5  # below this a task's share is not worth a model load: the task is skipped
# what a task costs beyond its training minutes until one has been measured: loading the student, fitting the
# gate, saving (on 2 busy cores, 2026-12-03: 0.4-3.4 min; bench-results/conversion.json)
OVERHEAD_MINUTES = 1.5


@dataclass
class TaskRun:
    """What `train_suitable` did with one task."""

    fit: TaskFit
    trained: bool
    reason: str
    specialist_id: int | None = None
    name: str | None = None
    minutes: float = 0.0


def training_share(left: float, calls: list[int], overhead: float, least: float) -> float | None:
    """The training minutes of the first of the tasks still to train (`calls`: their training calls, this one
    first, largest first), or None when the budget cannot give it `least`.

    What is left is shared in proportion to training calls, less each task's overhead (`overhead` minutes),
    among as many of the tasks as can each get `least`: when the budget is short the largest tasks train and
    the smallest wait, instead of the overhead of all of them eating the share of the first (which skipped
    the largest tasks and trained the small ones: docs/log.md, 2026-12-03).
    """
    weights = [max(1, c) for c in calls]
    for k in range(len(weights), 0, -1):
        usable = left - overhead * k
        shares = [usable * w / sum(weights[:k]) for w in weights[:k]]
        if min(shares) >= least:
            return shares[0]
    return None


def train_suitable(
    store: Store,
    config: TrainConfig,
    budget_minutes: float,
    say: Callable[[str], None] = lambda _: None,
    progress: bool = True,
    train: Callable[..., Any] | None = None,
) -> list[TaskRun]:
    """Train every suitable task of the newest (or the config's) discovery run, most suitable first.

    The budget is shared by what is left of it (`training_share`), less each remaining task's overhead (model
    load, gate, save: measured on the tasks done so far), in proportion to each remaining task's training calls,
    so a big task gets more minutes and an early finish hands its time on. When it cannot give every remaining
    task half a minute, the smallest wait (skipped: budget); a task whose training fails is skipped too (the
    reason is kept). `train` is `train_specialist` unless given.
    """
    from downsize.train.lora import train_specialist

    trainer = train or train_specialist

    fits = assess_tasks(store, config.discovery_run, config.validation_fraction)
    runs = [TaskRun(f, False, f.reason) for f in fits]
    todo = [r for r in runs if r.fit.suitable]
    deadline = time.monotonic() + budget_minutes * 60
    overheads: list[float] = []  # minutes each finished task took beyond its training (load, gate, save)
    for i, run in enumerate(todo):
        left = (deadline - time.monotonic()) / 60
        overhead = sum(overheads) / len(overheads) if overheads else OVERHEAD_MINUTES
        share = training_share(left, [r.fit.train for r in todo[i:]], overhead, MIN_MINUTES)
        if share is None:
            run.reason = f"budget: {max(left, 0):.1f} min left for {len(todo) - i} tasks"
            continue
        say(f"training {run.fit.task_key} ({run.fit.label[:50]}): {run.fit.train} calls, {share:.1f} min")
        started = time.monotonic()
        # cross-fitting trains the specialist and K - 1 fold models for the same tokens: the share covers all K
        minutes = share / max(1, config.cross_fit)
        task_config = replace(config, tasks=[run.fit.task_key], specialist=None, max_minutes=minutes)
        try:
            result = trainer(store, task_config, progress=progress)
        except DownsizeError as exc:
            run.reason = f"training failed: {exc}"
            continue
        run.trained, run.reason = True, "trained"
        run.specialist_id = result.specialist_id
        run.name = store.specialist(result.specialist_id).name if result.specialist_id else None
        run.minutes = (time.monotonic() - started) / 60
        overheads.append(max(0.0, run.minutes - share))
    return runs
