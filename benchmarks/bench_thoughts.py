"""Does the teacher's next step depend on its written thought? (ReAct specialists drop the thought.)

A text-format tool-use specialist (`contracts.py`, kind `react`) is trained on the `Action:` / `Action Input:`
lines only: the free-text thought is dropped, because a small student would spend most of its tokens on it and
the router serves only the action. That is right only where the teacher's next action does not depend on its
thought. gpt-4o on the tau-airline agent writes its thoughts down (the `think` tool, 101 times in the dev
split), so the dependence can be measured on data written by others: predict the next action (the tool called,
or a text reply) from the conversation with the thoughts kept, and with every thought removed, and compare on
the unseen test tasks, overall and on the actions that directly follow a thought.

The predictor is the task gate (`decide/gate.py`: TF-IDF and logistic regression over the last turns, fit in
seconds): a proxy for the student that isolates what the thought's text adds. Writes
bench-results/thoughts.json.

    python benchmarks/bench_thoughts.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-airline"
RESULTS = Path(__file__).resolve().parents[1] / "bench-results"
THINK = "think"
TEST_TASKS = range(35, 50)  # the data set's own test split


def _is_think(message: dict[str, Any]) -> bool:
    calls = message.get("tool_calls") or []
    return message.get("role") == "assistant" and bool(calls) and calls[0]["function"]["name"] == THINK


def _without_thoughts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with every `think` call and its tool result removed."""
    think_ids = {c["id"] for m in messages if _is_think(m) for c in m["tool_calls"]}
    return [
        m
        for m in messages
        if not _is_think(m) and not (m.get("role") == "tool" and m.get("tool_call_id") in think_ids)
    ]


def examples(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every next action of gpt-4o that is not itself a thought: its context kept and without thoughts."""
    out = []
    for run in runs:
        traj = run["traj"]
        for i, message in enumerate(traj):
            if message.get("role") != "assistant" or _is_think(message) or i == 0:
                continue
            calls = message.get("tool_calls") or []
            label = calls[0]["function"]["name"] if calls else "text"
            context = traj[:i]
            after_thought = next((m for m in reversed(context) if m.get("role") == "assistant"), None)
            out.append(
                {
                    "test": run["task_id"] in TEST_TASKS,
                    "task": run["task_id"],
                    "label": label,
                    "kept": context,
                    "dropped": _without_thoughts(context),
                    "after_thought": after_thought is not None and _is_think(after_thought),
                }
            )
    return out


def main() -> int:
    from downsize.decide.gate import TaskGate
    from downsize.evaluate.metrics import wilson_lower
    from downsize.prompting import gate_input

    runs = json.loads((DATA / "trajectories-gpt-4o.json").read_text())
    rows = examples(runs)
    train = [r for r in rows if not r["test"]]
    test = [r for r in rows if r["test"]]
    figures: dict[str, Any] = {
        "actions": {"train": len(train), "test": len(test)},
        "thoughts_in_train": sum(
            1 for run in runs if run["task_id"] not in TEST_TASKS for m in run["traj"] if _is_think(m)
        ),
        "after_thought_test": sum(r["after_thought"] for r in test),
    }

    def scored(fit_on: list[dict[str, Any]], judged: list[dict[str, Any]], view: str) -> list[bool]:
        gate = TaskGate.fit([gate_input(r[view]) for r in fit_on], [r["label"] for r in fit_on])
        decided = gate.decide_texts([gate_input(r[view]) for r in judged])
        return [d.label == r["label"] for d, r in zip(decided, judged, strict=True)]

    def summary(right: list[bool], judged: list[dict[str, Any]]) -> dict[str, Any]:
        after = [ok for ok, r in zip(right, judged, strict=True) if r["after_thought"]]
        return {
            "accuracy": round(sum(right) / len(right), 4),
            "accuracy_lower95": round(wilson_lower(sum(right), len(right)), 4),
            "after_thought_accuracy": round(sum(after) / len(after), 4) if after else None,
            "after_thought_right": sum(after),
            "after_thought": len(after),
        }

    # the test split has few thoughts: the dev tasks, cross-fitted in 5 folds by task, show more of them
    by_fold = [[r for r in train if r["task"] % 5 == k] for k in range(5)]
    for view in ("kept", "dropped"):
        figures[view] = summary(scored(train, test, view), test)
        judged = [r for fold in by_fold for r in fold]
        right = [
            ok
            for k, fold in enumerate(by_fold)
            for ok in scored([r for j, f in enumerate(by_fold) if j != k for r in f], fold, view)
        ]
        figures[f"{view}_dev_cross_fitted"] = summary(right, judged)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "thoughts.json").write_text(json.dumps(figures, indent=2))
    print(
        f"next action of gpt-4o on tau-airline's test tasks ({len(test)} actions, "
        f"{figures['after_thought_test']} right after a thought; {figures['thoughts_in_train']} thoughts in training)"
    )
    for name in ("kept", "dropped", "kept_dev_cross_fitted", "dropped_dev_cross_fitted"):
        f = figures[name]
        print(
            f"  thoughts {name:<24}: accuracy {f['accuracy']:.3f} (lower95 {f['accuracy_lower95']:.3f}); "
            f"right after a thought {f['after_thought_right']}/{f['after_thought']}"
        )
    print(f"wrote {RESULTS / 'thoughts.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
