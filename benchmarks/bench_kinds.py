"""Specialists for narrow calls that are not tool calls, through the real CLI, on stand-in logs at volume:

    label  CLINC150 intents (labelled by people: a stand-in teacher), 8 intents x 100 utterances of CLINC's train
    react  tau-airline's gpt-4o tool calls written as ReAct steps, dev tasks (0-34) only, trials 0-1

Each is imported (`import openai-jsonl`: hash split by workflow), trained for --minutes on its call site
(`train --site`), and evaluated (`eval`): exact (strict, what calibration uses) and equivalent agreement on the
held-out test calls, the teacher's ceiling, served share and agreement at targets 0.80 / 0.90 / 0.95 (thresholds
from validation), and `promote --rule parity`. Writes bench-results/kinds.json. crewAI's and tau-airline's own
call sites are in `make bench-conversion`; this bench adds the kinds they hold too few calls of.
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

from standin_logs import intent_log, react_log

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
INTENTS = [
    "balance",
    "transfer",
    "freeze_account",
    "pay_bill",
    "transactions",
    "card_declined",
    "bill_due",
    "credit_limit",
]


def cli(*args: str) -> str:
    exe = Path(sys.executable).with_name("downsize")
    print(f"$ downsize {' '.join(args)}", flush=True)
    done = subprocess.run([str(exe), *args], stdout=subprocess.PIPE, text=True, check=False)
    print(done.stdout[-3000:], flush=True)
    if done.returncode != 0:
        raise SystemExit(f"`downsize {' '.join(args)}` failed ({done.returncode})")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="Training minutes per specialist.")
    parser.add_argument("--home", type=Path, help="DOWNSIZE_HOME (default: a fresh temporary one).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = args.home or Path(tempfile.mkdtemp(prefix="downsize-kinds-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DOWNSIZE_HOME"] = str(home)
    started = time.perf_counter()
    logs = {
        "label": (home / "intents.jsonl", intent_log(home / "intents.jsonl", INTENTS, per_intent=100)),
        "react": (home / "react.jsonl", react_log(home / "react.jsonl", tasks=range(35), trials=2)),
    }
    for path, _ in logs.values():
        cli("import", "openai-jsonl", str(path))
    sites = json.loads(cli("sites", "--json"))
    from downsize.artifacts import EvalReport
    from downsize.evaluate.promotion import promotion_gate
    from downsize.store import Store

    rows: dict[str, Any] = {}
    for kind, (_, lines) in logs.items():
        site = next(r for r in sites if r["kind"] == kind)
        out = cli(
            "train",
            "--site",
            site["site"],
            "--max-minutes",
            str(args.minutes),
            "--specialist",
            f"bench-{kind}",
        )
        sp_id = int(out.split("(id ", 1)[1].split(")", 1)[0])
        cli("eval", str(sp_id))
        sp = Store.open().specialist(str(sp_id))
        report = EvalReport.of(sp)
        assert report is not None
        t = report.test_tool_calls
        parity = promotion_gate(sp, "live", rule="parity")
        rows[kind] = {
            "log_lines": lines,
            "site": site["site"],
            "calls": {"train": site["train"], "validation": site["validation"], "test": site["test"]},
            "test_calls_of_kind": t.calls,
            "exact_agreement": t.exact_agreement,
            "exact_agreement_lower95": t.exact_agreement_lower95,
            "equivalent_agreement": t.equivalent_agreement,
            "graded_score": t.graded_score,
            "valid_share": t.valid_share,
            "teacher_ceiling": report.teacher_ceiling,
            "threshold_at_0.95": report.threshold,
            "by_target": {
                f"{r.target:.2f}": {
                    "threshold": r.threshold,
                    "test_served": r.test.served,
                    "test_served_share": r.test.served_share,
                    "test_agreement": r.test.agreement if r.test.served else None,
                    "test_agreement_lower95": r.test.agreement_lower95,
                }
                for r in report.by_target
            },
            "parity": {"promoted": parity.allowed, "reason": parity.reason, "threshold": parity.threshold},
            "train_minutes": args.minutes,
        }
    figures = {
        "machine_cores": os.cpu_count(),
        "kinds": rows,
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
        "home": str(home),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kinds.json").write_text(json.dumps(figures, indent=2))
    print("\nper kind (held-out test calls; thresholds from validation):")
    for kind, r in rows.items():
        served = {k: (v["test_served"], v["test_agreement"]) for k, v in r["by_target"].items()}
        print(
            f"  {kind:<6} exact {r['exact_agreement']:.3f} (lower95 {r['exact_agreement_lower95']:.3f}), equivalent "
            f"{r['equivalent_agreement']}, on {r['test_calls_of_kind']} test calls; served (calls, agreement) by "
            f"target {served}; parity: {r['parity']['reason']}"
        )
    print(f"wrote {RESULTS / 'kinds.json'} ({figures['wall_minutes']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
