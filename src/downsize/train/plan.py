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


def train_suitable(
    store: Store,
    config: TrainConfig,
    budget_minutes: float,
    say: Callable[[str], None] = lambda _: None,
    progress: bool = True,
    train: Callable[..., Any] | None = None,
) -> list[TaskRun]:
    """Train every suitable task of the newest (or the config's) discovery run, most suitable first.

    The budget is shared by what is left of it, less each remaining task's overhead (model load, gate, save:
    measured on the tasks done so far), in proportion to each remaining task's training calls, so a big task
    gets more minutes and an early finish hands its time on. A task whose share falls under half
    a minute is skipped (budget), as is one whose training fails (the reason is kept). `train` is
    `train_specialist` unless given.
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
        weight = sum(r.fit.train for r in todo[i:])
        share = (left - overhead * (len(todo) - i)) * run.fit.train / weight if weight else 0.0
        if share < MIN_MINUTES:
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
