"""Curate -> discover -> train per task -> eval -> serve, on the tau-airline logs, through the real CLI.

The issue-4 loop end to end, each stage the command a user would type, in a fresh $DOWNSIZE_HOME:

    downsize import tau-airline
    downsize curate --pii --source tau-airline            # scrubbed, deduplicated training view
    downsize discover --source tau-airline --split dev    # tasks from the training traffic only
    downsize tasks --json
    downsize train --curated --task tool:get_reservation_details --task tool:get_user_details --max-minutes M

then, in-process, the demo's `prove_specialist`: evaluate on the tasks' validation and test calls (the
assigner scopes both), apply the promotion gate, and replay **every** test-split call through the gateway,
where the router asks the task assigner before anything else. The tasks chosen are every tool-call task
whose dominant tool is one of `--tools` (default: the two lookups that copy an id from the conversation,
about 60% of the test split's tool calls), or with `--tools ""` the `--tasks` most suitable tool-call tasks.

Writes bench-results/tasks.json: curation counts, discovery summary, the chosen tasks, training figures,
how many test tool calls the assigner put in those tasks, and served share / agreement as in
bench-results/specialists.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"


def cli(*args: str) -> str:
    """Run `downsize ARGS` as a user would; its stderr (progress) passes through, stdout is returned."""
    exe = Path(sys.executable).with_name("downsize")
    print(f"$ downsize {' '.join(args)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run([str(exe), *args], stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.stdout.write(done.stdout)
        raise SystemExit(f"`downsize {' '.join(args)}` failed with exit status {done.returncode}")
    print(f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-minutes", type=float, default=15.0)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument(
        "--tools",
        default="get_reservation_details,get_user_details",
        help="Train on every tool-call task whose dominant tool is one of these (comma-separated).",
    )
    parser.add_argument("--tasks", type=int, default=2, help="Without --tools: the N most suitable tasks.")
    parser.add_argument("--engine", choices=["auto", "transformers", "llamacpp"], default="auto")
    parser.add_argument("--home", type=Path, help="DOWNSIZE_HOME to use (default: a fresh temporary one).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DOWNSIZE_HOME"] = str(args.home or tempfile.mkdtemp(prefix="downsize-tasks-"))
    wall = time.perf_counter()

    cli("import", "tau-airline")
    curation = json.loads(cli("curate", "--pii", "--source", "tau-airline", "--json"))
    discovery = json.loads(cli("discover", "--source", "tau-airline", "--split", "dev", "--json"))
    tasks = json.loads(cli("tasks", "--limit", "0", "--json"))
    tool_tasks = [t for t in tasks if t["output_kind"] == "tool_call"]
    wanted = {name.strip() for name in args.tools.split(",") if name.strip()}
    chosen = [t for t in tool_tasks if t["dominant_tool"] in wanted] if wanted else tool_tasks[: args.tasks]
    if not chosen:
        raise SystemExit(f"discovery found no tool-call task to train on (dominant tool in {sorted(wanted)})")
    for t in chosen:
        print(
            f"  task {t['task_key']}: {t['label']} ({t['volume']} calls, suitability {t['suitability']:.2f})"
        )
    keys = [f"tool:{name}" for name in sorted(wanted)] if wanted else [t["task_key"] for t in chosen]
    task_flags = [flag for key in keys for flag in ("--task", key)]
    cli(
        "train",
        "--curated",
        *task_flags,
        "--max-minutes",
        str(args.train_minutes),
        "--epochs",
        str(args.epochs),
    )

    from downsize.demo.run import prove_specialist
    from downsize.store import Store

    store = Store.open()
    specialist = store.specialist()
    assert specialist.id is not None
    from downsize.errors import DownsizeError

    try:
        summary = prove_specialist(store, specialist.id, engine=args.engine)
    except DownsizeError as exc:
        raise SystemExit(f"cannot prove the specialist: {exc}") from None
    stats = (specialist.metrics or {}).get("train", {}) if isinstance(specialist.metrics, dict) else {}
    figures: dict[str, Any] = {
        "machine_cores": os.cpu_count(),
        "curation": {
            k: curation.get(k) for k in ("run_id", "exchanges", "kept", "removed", "hci_flagged", "pii")
        },
        "discovery": {
            "run_id": discovery.get("run_id"),
            "calls": discovery.get("calls"),
            "tasks": discovery.get("tasks"),
            "outliers": discovery.get("outliers"),
            "tool_call_tasks": len(tool_tasks),
        },
        "chosen_by": f"dominant tool in {sorted(wanted)}" if wanted else f"top {args.tasks} by suitability",
        "chosen_tasks": [
            {k: t[k] for k in ("task_key", "label", "volume", "suitability", "dominant_tool") if k in t}
            for t in chosen
        ],
        "train": stats,
        "engine": args.engine,
        **{
            k: summary[k]
            for k in (
                "calls",
                "tool_calls",
                "tool_calls_in_tasks",
                "served",
                "agreed",
                "served_share",
                "agreement",
                "agreement_lower95",
                "status",
                "promotion",
                "threshold",
                "fallbacks",
                "shadow_would_serve",
                "shadow_agreed",
                "shadow_agreement_lower95",
                "latency_ms_p50",
                "eval_test_tool_calls",
            )
            if k in summary
        },
        "wall_minutes": round((time.perf_counter() - wall) / 60, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "tasks.json"
    out.write_text(json.dumps(figures, indent=2))
    in_tasks = figures.get("tool_calls_in_tasks")
    print(
        f"\ncurate -> discover -> train -> serve on tau-airline: {figures['discovery']['tasks']} tasks discovered "
        f"over {figures['discovery']['calls']} dev calls; trained on {[t['task_key'] for t in chosen]}\n"
        f"test tool calls {figures['tool_calls']}, assigned to those tasks {in_tasks}; served "
        f"{figures['served']} ({figures['served_share']:.1%}), agreement {figures['agreement']} "
        f"(lower95 {figures['agreement_lower95']}); shadow would serve {figures.get('shadow_would_serve')} "
        f"with {figures.get('shadow_agreed')} agreeing; fallbacks {figures['fallbacks']}\nwrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
