"""Specialists against gpt-4o on a real agent: the issue's tau-airline, BFCL and speed figures in one file.

tau-airline: train on task ids 0-34 within a CPU budget, calibrate on the validation workflows of the dev
split, then replay **every** call of the test split (task ids 35-49, text replies included) through the
gateway in front of a recorded gpt-4o, exactly as `make demo` does. Figures:
- served_share = calls the specialist served / gpt-4o's tool calls;
- agreement = served calls whose tool call equals gpt-4o's exactly / served calls (serving where gpt-4o
  answered in text is a disagreement), with its 95% Wilson lower bound.
When the promotion gate keeps the specialist in shadow, what it *would* have served at its calibrated
threshold is measured from the gateway's shadow decisions (same requests, same router), and reported as the
served figures with `"mode": "shadow"`; the product itself then serves nothing.

Also gathered here: BFCL AST accuracy (bench-results/bfcl.json, from benchmarks/bench_bfcl.py), serving latency
per engine (bench-results/serving.json, from benchmarks/bench_serving.py), training throughput.
Writes bench-results/specialists.json and prints the figures against the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"

TARGETS = {
    "any": {"served_share": 0.60, "agreement_lower95": 0.95},
    "cpu_default_60min": {"served_share": 0.40, "agreement_lower95": 0.95},
    "train_tokens_per_s": 200,
    "serve_ms_p50": 1000,
}


def _gpu() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def tau_run(minutes: float, student: str, engine: str, epochs: float) -> dict[str, Any]:
    """One tau-airline run through the demo's loop; the figures the issue asks for."""
    from downsize.demo.run import run_demo
    from downsize.importers.tau_airline import default_path as default_tau_airline

    started = time.perf_counter()
    summary = run_demo(
        default_tau_airline(), train_minutes=minutes, student=student, engine=engine, epochs=epochs
    )
    live = summary["status"] == "live"
    served = summary["served"] if live else summary["shadow_would_serve"]
    agreed = summary["agreed"] if live else summary["shadow_agreed"]
    from downsize.evaluate.metrics import wilson_lower

    tool_calls = summary["tool_calls"]
    return {
        "student": student,
        "engine": summary["engine"],
        "mode": "live" if live else "shadow",
        "status": summary["status"],
        "promotion": summary["promotion"],
        "threshold": summary["threshold"],
        "calls": summary["calls"],
        "tool_calls": tool_calls,
        "served": served,
        "agreed": agreed,
        "served_share": round(served / tool_calls, 4) if tool_calls else 0.0,
        "agreement": round(agreed / served, 4) if served else None,
        "agreement_lower95": round(wilson_lower(agreed, served), 4),
        "train_minutes": summary["train"]["minutes"],
        "train_tokens_per_s": summary["train"]["tokens_per_s"],
        "train_epochs": summary["train"]["epochs"],
        "fallbacks": summary["fallbacks"],
        "latency_ms_p50": summary["latency_ms_p50"],
        "eval_test_tool_calls": summary["eval_test_tool_calls"],
        "test_curve": summary.get("test_curve"),
        "by_target": summary.get("by_target"),
        "copied_arguments": summary.get("copied_arguments"),
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
    }


def _read(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-minutes", type=float, default=30.0, help="CPU training budget (<= 60)")
    parser.add_argument("--epochs", type=float, default=4.0, help="upper bound; the minutes may stop earlier")
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--engine", default="auto", choices=["auto", "transformers", "llamacpp"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DOWNSIZE_HOME"] = tempfile.mkdtemp(prefix="downsize-bench-specialists-")

    gpu = _gpu()
    run = tau_run(args.train_minutes, args.student, args.engine, args.epochs)
    device = "gpu" if gpu else "cpu"
    tau: dict[str, Any] = {device: run}
    if not gpu:
        tau["gpu"] = None
        tau["gpu_note"] = "no GPU on this machine: run `make bench-specialists` where one is present"
    bfcl = _read("bfcl.json")
    serving = _read("serving.json")
    serve_p50 = None
    if serving:
        engines = [v for k, v in serving.items() if isinstance(v, dict) and "ms_p50" in v]
        serve_p50 = min((e["ms_p50"] for e in engines), default=None)
    figures = {
        "machine_cores": os.cpu_count(),
        "gpu": gpu,
        "tau_airline": tau,
        "bfcl": {k: v for k, v in (bfcl or {}).items() if k in ("simple_python", "multiple", "parallel")}
        or None,
        "train_tokens_per_s": run["train_tokens_per_s"],
        "serve_ms_p50": serve_p50,
        "serving": serving,
        "targets": TARGETS,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "specialists.json").write_text(json.dumps(figures, indent=2))

    print(
        f"\n== tau-airline ({device}, {args.student}, {run['train_minutes']} min training, {run['mode']}) =="
    )
    print(
        f"served {run['served']}/{run['tool_calls']} tool calls = {run['served_share']:.1%} "
        f"(target >= 40% CPU / 60% any); agreement {run['agreement']} lower95 {run['agreement_lower95']} "
        f"(target >= 0.95); status {run['status']}: {run['promotion']}"
    )
    print(f"fallbacks {run['fallbacks']}")
    print("by target agreement (threshold calibrated on validation; offline, every test call):")
    for row in run["by_target"] or []:
        if row["threshold"] is None:
            print(f"  {row['target']:.2f}: no threshold reaches it on validation, serves nothing")
        else:
            print(
                f"  {row['target']:.2f}: serves {row['test_served']}/{row['test_tool_calls']} "
                f"({row['test_served_share']:.1%}), agreement {row['test_agreement']:.3f} "
                f"(lower95 {row['test_agreement_lower95']:.3f})"
            )
    print(
        f"training {run['train_tokens_per_s']} tokens/s (target >= 200); serving p50 "
        f"{serve_p50} ms (target <= 1000)"
    )
    if figures["bfcl"]:
        print("\n== BFCL AST accuracy (test halves) ==")
        for cat, row in figures["bfcl"].items():
            print(
                f"{cat:14s} zero-shot {row.get('base_zero_shot')}  few-shot {row.get('base_few_shot')}  "
                f"fine-tuned {row.get('fine_tuned')}"
            )
    else:
        print(
            "\nBFCL: bench-results/bfcl.json missing: run benchmarks/bench_bfcl.py (make bench-specialists does)"
        )
    print(f"\nwrote {RESULTS / 'specialists.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
