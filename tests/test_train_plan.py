"""`train --suitable`: the budget shared by training calls, overhead measured and subtracted, skips explained."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import downsize.train.plan as plan
from downsize.config import TrainConfig
from downsize.discover.suitability import TaskFit
from downsize.errors import TrainingError
from downsize.store import Store
from downsize.types import Specialist


def fit(key: str, train: int, suitable: bool = True, reason: str = "suitable") -> TaskFit:
    return TaskFit(key, f"label of {key}", "tool_call", 1.0, train, 10, 5, suitable, reason)


@dataclass
class Result:
    specialist_id: int


def test_the_budget_goes_by_training_calls_and_every_skip_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'plan.db'}")
    fits = [fit("tool:a", 300), fit("tool:b", 100), fit("tool:c", 100), fit("t9", 4, False, "too few calls")]
    monkeypatch.setattr(plan, "assess_tasks", lambda *_: fits)
    monkeypatch.setattr(plan, "OVERHEAD_MINUTES", 0.0)
    shares: dict[str, float] = {}

    def train(store: Store, config: TrainConfig, progress: bool = True) -> Any:
        key = config.tasks[0]
        shares[key] = float(config.max_minutes or 0)
        if key == "tool:c":
            raise TrainingError("no training data")
        time.sleep(0.05)  # overhead: what a task takes beyond its minutes counts against the ones after it
        name = key.replace(":", "-")
        return Result(store.add_specialist(Specialist(name, key, "m", str(tmp_path / name), {}, "h")))

    runs = {
        r.fit.task_key: r for r in plan.train_suitable(store, TrainConfig(), budget_minutes=10, train=train)
    }
    assert shares["tool:a"] == pytest.approx(6.0, abs=0.05)  # 300 of 500 calls: 6 of 10 minutes
    # tool:a finished early and handed its time on: tool:b gets half of nearly all ten minutes
    assert shares["tool:b"] == pytest.approx(5.0, abs=0.1)
    assert runs["tool:a"].trained and runs["tool:a"].name == "tool-a"
    assert runs["tool:c"].reason == "training failed: no training data" and not runs["tool:c"].trained
    assert runs["t9"].reason == "too few calls" and not runs["t9"].trained
    # a budget too small for anything: every suitable task is skipped, with the minutes left said
    runs = {
        r.fit.task_key: r for r in plan.train_suitable(store, TrainConfig(), budget_minutes=0.4, train=train)
    }
    assert all(r.reason.startswith("budget:") for k, r in runs.items() if k.startswith("tool:"))


def test_a_short_budget_trains_the_largest_tasks_and_the_smallest_wait() -> None:
    # 5 minutes, 1.5 of overhead per task: two tasks can each get half a minute, not five
    assert plan.training_share(5.0, [100, 80, 50, 30, 20], 1.5, 0.5) == pytest.approx(2.0 * 100 / 180)
    assert plan.training_share(20.0, [100, 80, 50, 30, 20], 1.5, 0.5) == pytest.approx(12.5 * 100 / 280)
    assert plan.training_share(5.0, [10], 1.5, 0.5) == pytest.approx(3.5)
    assert plan.training_share(1.0, [10], 1.5, 0.5) is None
