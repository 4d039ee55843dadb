"""Training throughput and specialist latency on this machine (the walking skeleton's figures).

Trains the default student for a fixed budget on the tau-airline dev split, then times batch-1
generation of tool calls for test-split requests through the same runtime the gateway uses.
Writes bench-results/train_serve.json and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--serve-calls", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DOWNSIZE_HOME"] = tempfile.mkdtemp(prefix="downsize-bench-")

    from downsize.config import TrainConfig
    from downsize.importers.tau_airline import default_path as default_tau_airline
    from downsize.importers.tau_airline import import_tau_airline
    from downsize.prompting import PromptBudget
    from downsize.store import Store
    from downsize.train.lora import train_specialist

    store = Store.open()
    import_tau_airline(store, default_tau_airline())
    result = train_specialist(store, TrainConfig(max_minutes=args.train_minutes))
    test = list(store.exchanges(source="tau-airline", split="test", response_kind="tool_call"))[
        : args.serve_calls
    ]
    from bench_serving import measure_serving  # the one timing loop, shared with make bench-serving

    specialist = store.specialist(result.specialist_id)
    served = measure_serving(
        specialist.base_model,
        specialist.adapter_path,
        [(ex.request["messages"], ex.request["tools"]) for ex in test],
        PromptBudget(specialist.config["max_prompt_tokens"], specialist.config["max_message_tokens"]),
        threads=os.cpu_count() or 2,
        engines=("transformers",),
    )["transformers"]
    figures = {
        "machine_cores": os.cpu_count(),
        "train_minutes": round(result.seconds / 60, 2),
        "train_tokens": result.tokens,
        "train_tokens_per_s": round(result.tokens_per_s, 1),
        "train_steps": result.steps,
        "serve_calls": len(test),
        "serve_ms_p50": served["ms_p50"],
        "serve_ms_p90": served["ms_p90"],
        "serve_tokens_p50": served["tokens_p50"],
        "serve_path": "transformers (merged LoRA), batch 1, grammar-constrained, no early stop",
    }
    out = ROOT / "bench-results" / "train_serve.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        print(f"{key:>22}  {value}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
