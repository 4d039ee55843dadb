"""The LLM-to-SLM conversion on two agents in one store, through the real CLI, as a user would run it:

    downsize import tau-airline                                   # gpt-4o's logged calls (its own test split)
    downsize import cassettes ../shared/data/crewai-cassettes --agent crewai   # crewAI's recorded traffic
    downsize splits                                               # every source split by workflow
    downsize discover && downsize tasks                           # tasks of both agents, suitable or why not
    downsize train --suitable --budget-minutes B                  # a specialist per suitable task, one budget
    downsize eval ID                                              # each: calibrated on validation, scored on test

Writes bench-results/conversion.json: per source and per task (fine tasks, tool units and call-site units),
the calls in each split role, the output kind (tool call, JSON, label, text-format tool use, short or long
text), whether a specialist was trained (else why not), its exact agreement with the teacher on the held-out
test calls of its kind in its scope (the strict rule, with the graded score beside it), and the served share
and agreement of the test calls at the thresholds calibrated on validation for targets 0.80 / 0.90 / 0.95;
per source, the share of all test calls, and of the non-conversational ones (every call but the text replies
at call sites that offer tools: an agent's turns in its dialogue with a person), that specialists would serve. The figures are offline (the
router's own decision function over the held-out calls); `tests/test_two_agents.py` proves the one gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
CASSETTES = ROOT.parent / "shared" / "data" / "crewai-cassettes"
TARGETS = (0.80, 0.90, 0.95)
# the airline agent's tools carry no MCP annotations: their risk tiers, as its user would state them (the demo
# states the same); crewAI's recorded tool calls are left strict
RISK = (
    "--read-only",
    "get_*,search_*,list_*,calculate,think",
    "--destructive",
    "book_*,cancel_*,update_*,send_certificate",
)


def cli(*args: str, check: bool = True) -> tuple[int, str]:
    """Run `downsize ARGS`; its stderr (progress) passes through, stdout is echoed and returned."""
    exe = Path(sys.executable).with_name("downsize")
    print(f"$ downsize {' '.join(args)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run([str(exe), *args], stdout=subprocess.PIPE, text=True, check=False)
    shown = done.stdout if len(done.stdout) < 4000 else done.stdout[:4000] + "\n...\n"
    if not args[-1] == "--json":
        sys.stdout.write(shown)
    print(f"  ({time.perf_counter() - started:.1f} s, exit {done.returncode})", flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"`downsize {' '.join(args)}` failed with exit status {done.returncode}")
    return done.returncode, done.stdout


def parity_row(specialist: Any, report: Any) -> dict[str, Any]:
    """`promote --rule parity` on this specialist, and what its threshold serves of the test calls of its kind."""
    from downsize.evaluate.promotion import promotion_gate, served_on_test

    gate = promotion_gate(specialist, "live", rule="parity")
    row: dict[str, Any] = {
        "promoted": gate.allowed,
        "reason": gate.reason,
        "threshold": gate.threshold,
        "tier_thresholds": gate.evidence.get("tier_thresholds"),
    }
    measured = served_on_test(report, gate)
    if measured is not None:
        served, agreed, calls = measured
        row["test_served"] = served
        row["test_agreed"] = agreed
        row["test_served_share"] = round(served / calls, 4) if calls else 0.0
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="Total training budget.")
    parser.add_argument("--home", type=Path, help="DOWNSIZE_HOME (default: a fresh temporary one).")
    parser.add_argument(
        "--cross-fit",
        type=int,
        default=2,
        help="Folds of cross-fitted calibration (train K models per task within the budget; 0: validation only).",
    )
    parser.add_argument(
        "--skip-train",
        action="store_true",
        help="Reuse the specialists already in --home (and their evaluations, evaluating only the others).",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DOWNSIZE_HOME"] = str(args.home or tempfile.mkdtemp(prefix="downsize-conversion-"))
    wall = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(stage: str, *cmd: str, check: bool = True) -> tuple[int, str]:
        started = time.perf_counter()
        out = cli(*cmd, check=check)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        return out

    if not args.skip_train:
        timed("import", "import", "tau-airline")
        timed("import", "import", "cassettes", str(CASSETTES), "--agent", "crewai")
        timed("splits", "splits")
        timed("discover", "discover")
        timed("tasks", "tasks", "--limit", "15")
        folds = ["--cross-fit", str(args.cross_fit)] if args.cross_fit else []
        timed("train", "train", "--suitable", "--budget-minutes", str(args.budget_minutes), *folds)

    from downsize.artifacts import EvalReport
    from downsize.discover import runs
    from downsize.discover.suitability import assess_tasks
    from downsize.store import Store

    store = Store.open()
    fits = assess_tasks(store)
    run_id = runs.require_run(store)
    assigned = runs.exchange_tasks(store, run_id)
    source_of = {ex.id: ex.source for ex in store.exchanges()}
    task_rows = {t["task_key"]: t for t in runs.run_tasks(store, run_id)}
    sources_of_task: dict[str, Counter[str]] = defaultdict(Counter)
    for ex_id, (key, _) in assigned.items():
        if key is not None:
            sources_of_task[key][source_of.get(ex_id, "?")] += 1
            tool = task_rows[key]["dominant_tool"]
            if task_rows[key]["output_kind"] == "tool_call" and tool:
                sources_of_task[f"tool:{tool}"][source_of.get(ex_id, "?")] += 1

    from downsize.sites import site_key

    for ex in store.exchanges():
        site = site_key(ex.request)
        if ex.response_kind in ("json", "text") and not site.startswith("tools:"):
            sources_of_task[f"site:{site}"][ex.source] += 1

    specialists = {}
    for sp in store.specialists():
        keys = sp.config.get("tasks") or []
        if sp.config.get("site"):
            unit = f"site:{sp.config['site']}"
        elif sp.name.startswith("tool-"):
            unit = sp.name.replace("tool-", "tool:", 1)
        else:
            unit = keys[0] if keys else sp.name
        specialists[unit] = sp
    evaluated: dict[str, Any] = {}
    for unit, sp in specialists.items():
        report = EvalReport.of(sp) if args.skip_train else None  # a rerun keeps the evaluations it has
        if report is None:
            code, out = timed("eval", "eval", str(sp.id), *RISK, check=False)
            report = EvalReport.of(store.specialist(sp.id)) if code == 0 else None
            evaluated[unit] = report if report is not None else out.strip().splitlines()[-1:] or [""]
        else:
            evaluated[unit] = report

    rows = []
    for f in fits:
        sources = sources_of_task.get(f.task_key, Counter())
        row: dict[str, Any] = {
            "task": f.task_key,
            "source": sources.most_common(1)[0][0] if sources else None,
            "label": f.label,
            "output_kind": f.output_kind,
            "calls": {"train": f.train, "validation": f.validation, "test": f.test},
            "suitable": f.suitable,
            "why_not": None if f.suitable else f.reason,
            "trained": f.task_key in specialists,
        }
        result = evaluated.get(f.task_key)
        if isinstance(result, EvalReport):
            t = result.test_tool_calls
            row["specialist"] = specialists[f.task_key].id
            row["kind"] = result.kind
            row["test_tool_calls"] = t.calls  # the test calls the teacher answered in this kind
            row["exact_agreement"] = round(t.exact_agreement, 4)
            row["graded_score"] = round(t.graded_score, 4) if t.graded_score is not None else None
            row["equivalent_agreement"] = t.equivalent_agreement  # beside the strict rule, never instead
            row["teacher_ceiling"] = result.teacher_ceiling  # gpt-4o against itself where a situation recurs
            row["parity"] = parity_row(store.specialist(specialists[f.task_key].id), result)
            row["exact_agreement_lower95"] = round(t.exact_agreement_lower95, 4)
            cal = result.calibration or {}
            row["calibration"] = {
                k: cal.get(k) for k in ("method", "folds", "calls", "fold_calls", "rule", "delta", "gap")
            } | {
                "signal": (cal.get("signal") or {}).get("name"),
                "auroc": (cal.get("signal") or {}).get("auroc"),
            }
            row["validation_calls"] = result.validation.calls
            row["test_calls_in_scope"] = result.test.calls
            row["by_target"] = {
                f"{r.target:.2f}": {
                    "threshold": r.threshold,
                    "served": r.test.served,
                    "served_share_of_tool_calls": round(r.test.served_share, 4),
                    "agreement": round(r.test.agreement, 4) if r.test.served else None,
                    "agreement_lower95": round(r.test.agreement_lower95, 4),
                }
                for r in result.by_target
                if any(abs(r.target - t) < 1e-9 for t in TARGETS)
            }
        elif result is not None:
            row["eval_said"] = result[0] if result else ""
        rows.append(row)

    per_source: dict[str, Any] = {}
    for source in sorted({ex.source for ex in store.exchanges()}):
        test = [ex for ex in store.exchanges(source=source, split="test")]
        kinds = Counter(ex.response_kind for ex in test)
        conversational = sum(
            1 for ex in test if ex.response_kind == "text" and site_key(ex.request).startswith("tools:")
        )
        machine = len(test) - conversational
        served = {
            f"{t:.2f}": sum(
                (r.get("by_target") or {}).get(f"{t:.2f}", {}).get("served", 0)
                for r in rows
                if r["source"] == source
            )
            for t in TARGETS
        }
        per_source[source] = {
            "test_calls": len(test),
            "test_calls_by_kind": dict(kinds),
            "tasks": sum(1 for r in rows if r["source"] == source and not r["task"].startswith("tool:")),
            "suitable_units": [r["task"] for r in rows if r["source"] == source and r["suitable"]],
            "trained": [r["task"] for r in rows if r["source"] == source and r["trained"]],
            "served_at_target": served,
            "served_share_of_tool_calls": {
                k: round(v / kinds["tool_call"], 4) if kinds["tool_call"] else 0.0 for k, v in served.items()
            },
            "served_share_of_all_calls": {
                k: round(v / len(test), 4) if test else 0.0 for k, v in served.items()
            },
            "served_at_parity": sum(
                (r.get("parity") or {}).get("test_served", 0) for r in rows if r["source"] == source
            ),
            "non_conversational_test_calls": machine,
            "served_share_of_non_conversational_calls": {
                k: round(v / machine, 4) if machine else 0.0 for k, v in served.items()
            },
        }

    figures = {
        "machine_cores": os.cpu_count(),
        "budget_minutes": args.budget_minutes,
        "discovery_run": run_id,
        "sources": per_source,
        "tasks": rows,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "wall_minutes": round((time.perf_counter() - wall) / 60, 2),
        "home": os.environ["DOWNSIZE_HOME"],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "conversion.json"
    if args.skip_train and out.is_file():  # a report-only rerun keeps the timings of the run that trained
        before = json.loads(out.read_text())
        figures["training_run"] = before.get("training_run") or {
            "seconds": before.get("seconds"),
            "wall_minutes": before.get("wall_minutes"),
        }
    out.write_text(json.dumps(figures, indent=2))
    print("\nper source (test split; offline, at thresholds calibrated on validation):")
    for source, s in per_source.items():
        print(
            f"  {source}: {s['test_calls']} test calls {s['test_calls_by_kind']}; {s['tasks']} tasks; "
            f"suitable {s['suitable_units'] or 'none'}; trained {s['trained'] or 'none'}; served share at "
            f"0.80/0.90/0.95 of tool calls {s['served_share_of_tool_calls']}, of non-conversational calls "
            f"({s['non_conversational_test_calls']}) {s['served_share_of_non_conversational_calls']}, of all calls "
            f"{s['served_share_of_all_calls']}"
        )
    print("trained units:")
    for r in rows:
        if r["trained"]:
            print(
                f"  {r['task']:<34} {r['source']:<12} {r.get('kind', r['output_kind']):<9} exact "
                f"{r.get('exact_agreement')} (graded {r.get('graded_score')}) on {r.get('test_tool_calls')} test "
                f"calls of its kind; by target {json.dumps(r.get('by_target') or r.get('eval_said'))}; "
                f"ceiling {json.dumps((r.get('teacher_ceiling') or {}).get('agreement'))}; "
                f"parity {json.dumps(r.get('parity'))}"
            )
    print(f"wrote {out} ({figures['wall_minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
