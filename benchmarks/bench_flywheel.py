"""The heterogeneous agent in operation, in full (issue 15's scenario; `demo/scenario.py` says what each phase does):

    dev conversations through the gateway (logging only) -> the flywheel turns once -> promoted tasks go live ->
    test conversations replayed (served share, agreement) -> the teacher drifts -> rollback (calls and seconds
    to it) -> savings and the report

Writes bench-results/flywheel.json and the report page ($DOWNSIZE_HOME/reports/flywheel-report.html).
The promotion rule defaults to parity (the teacher's own agreement, read-only tools; see the judging issue):
under the strict 0.90 bound nothing on tau-airline goes live within a CPU budget, which the closing notes of
the specialists issue measured.
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
DATA = ROOT.parent / "shared" / "data" / "tau-airline"
RISK = {
    "read_only": ["get_*", "search_*", "list_*", "calculate", "think"],
    "destructive": ["book_*", "cancel_*", "update_*", "send_certificate"],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-minutes", type=float, default=20.0, help="the flywheel's training budget")
    parser.add_argument("--rule", choices=["strict", "parity"], default="parity")
    parser.add_argument("--dev-workflows", type=int, default=None, help="dev conversations (default: all)")
    parser.add_argument("--test-workflows", type=int, default=None, help="test conversations (default: all)")
    parser.add_argument("--max-units", type=int, default=2, help="units the flywheel trains at most")
    parser.add_argument(
        "--cross-fit", type=int, default=2, help="folds: calibrate on every dev call (0: on validation only)"
    )
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs at most, within the budget")
    parser.add_argument("--home", help="DOWNSIZE_HOME to use (default: a new temporary folder)")
    args = parser.parse_args()
    os.environ["DOWNSIZE_HOME"] = args.home or tempfile.mkdtemp(prefix="downsize-flywheel-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from downsize.config import EvalConfig
    from downsize.demo.scenario import ScenarioConfig, run_scenario
    from downsize.flywheel.config import flywheel_config
    from downsize.store import Store

    flywheel = flywheel_config(
        {"train": {"cross_fit": args.cross_fit, "epochs": args.epochs}},
        max_minutes=args.max_minutes,
        rule=args.rule,
        max_units=args.max_units,
        every_exchanges=None,
    )
    flywheel.eval = EvalConfig(risk=RISK)
    config = ScenarioConfig(
        dev_workflows=args.dev_workflows, test_workflows=args.test_workflows, flywheel=flywheel
    )
    store = Store.open()
    started = time.perf_counter()
    figures = run_scenario(
        DATA, store, config, say=lambda m: print(f"[flywheel {time.strftime('%H:%M:%S')}] {m}", flush=True)
    )
    report = Path(os.environ["DOWNSIZE_HOME"]) / "reports" / "flywheel-report.html"
    exe = Path(sys.executable).with_name("downsize")
    done = subprocess.run([str(exe), "report", "--out", str(report)], check=False)
    figures["report"] = str(report) if done.returncode == 0 else None
    figures["settings"] = {**vars(args), "wall_minutes": round((time.perf_counter() - started) / 60, 2)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flywheel.json").write_text(json.dumps(figures, indent=2, default=str))
    before, after, drift = figures["before"], figures["after"], figures["drift"]
    print(
        f"served share of tool calls: before the flywheel {before['served_share_of_tool_calls']:.1%}, after "
        f"{after['served_share_of_tool_calls']:.1%} ({after['served']}/{after['tool_calls']}; agreement "
        f"{after['agreement']} lower95 {after['agreement_lower95']}); live: {figures['live_after_flywheel']}"
    )
    print(
        f"drift: rolled back {[r['task'] for r in drift['rolled_back']]} after {drift['calls_until_rollback']} "
        f"calls / {drift['seconds_until_rollback']} s; savings: {json.dumps(figures['savings'])}"
    )
    print(f"wrote {RESULTS / 'flywheel.json'}")


if __name__ == "__main__":
    main()
