"""Confidence signals compared, sample agreement included: which one ranks the student's right answers first?

`downsize eval` chooses among signals that cost one generation (the lowest token log-probability, the mean, the
gate, a learned mix). Agreement among several sampled answers is the other signal the field uses (self-
consistency); it costs K more generations per call, so it is measured here, on a trained specialist's own
held-out validation calls, before anything serves on it.

For each call: the greedy answer (what would be served), its lowest and mean token log-probability, and K
answers sampled among the grammatical top-k tokens at a temperature (`decoding.Sampling`); sample agreement is
the share of samples identical to the greedy answer. A call is right when the greedy answer agrees with the
teacher's logged one (the contract's strict rule). Prints each signal's AUROC with the seconds it costs, and
writes bench-results/signals.json.

    python benchmarks/bench_signals.py --home ~/.downsize          # the newest specialist there (after `make demo`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench-results"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--home", type=Path, help="DOWNSIZE_HOME holding a trained specialist (default: $DOWNSIZE_HOME)"
    )
    parser.add_argument("--specialist", help="Specialist id or name (default: the newest).")
    parser.add_argument("--calls", type=int, default=200, help="Validation calls to score (evenly spread).")
    parser.add_argument("--samples", type=int, default=4, help="Sampled answers per call.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--engine", default="auto", choices=["auto", "transformers", "llamacpp"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.home:
        os.environ["DOWNSIZE_HOME"] = str(args.home)

    from downsize.backends.decoding import Sampling
    from downsize.backends.engines import runtime_for
    from downsize.calls import CallSelection, select_calls
    from downsize.config import train_config_of
    from downsize.contracts import OutputContract, answer_of
    from downsize.decide.decision import scope_of
    from downsize.evaluate.metrics import auroc
    from downsize.store import Store

    store = Store.open()
    specialist = store.specialist(args.specialist)
    contract = OutputContract.from_dict(specialist.config.get("contract"))
    train_cfg = train_config_of(specialist.config)
    scope = scope_of(store, specialist)
    selection = CallSelection(
        source=specialist.config.get("source"),
        agent=specialist.config.get("agent"),
        role="validation",
        kinds=(contract.kind,),
        validation_fraction=train_cfg.validation_fraction,
        held_out_fold=0,
    )
    calls = [
        ex
        for ex in select_calls(store, selection).exchanges
        if scope.call_site(ex.request) is None
        and scope.task(ex.request, ex.agent, ex.task_hint) is None
        and answer_of(contract.kind, ex.response) is not None
    ]
    if not calls:
        print(f"specialist {specialist.name} has no validation calls of its kind in scope", file=sys.stderr)
        return 1
    step = max(1, len(calls) // args.calls)
    calls = calls[::step][: args.calls]
    runtime = runtime_for(specialist, engine=args.engine)
    print(
        f"{specialist.name} on {runtime.engine}: {len(calls)} validation calls, {args.samples} samples each"
    )

    rows = []
    greedy_s = sample_s = 0.0
    for i, ex in enumerate(calls):
        request = {
            "messages": ex.request.get("messages") or [],
            "tools": ex.request.get("tools") or [],
            "response_format": ex.request.get("response_format"),
        }
        t = time.perf_counter()
        greedy = runtime.generate_requests([request])[0]
        greedy_s += time.perf_counter() - t
        t = time.perf_counter()
        samples = [
            runtime.generate_requests([request], sampling=Sampling(args.temperature, seed=k))[0]
            for k in range(args.samples)
        ]
        sample_s += time.perf_counter() - t
        right = greedy.complete and contract.agrees(greedy.value, ex.response)
        same = sum(s.text == greedy.text for s in samples) / len(samples)
        rows.append(
            {"right": bool(right), "min": greedy.min_logprob, "mean": greedy.mean_logprob, "samples": same}
        )
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{len(calls)} calls", flush=True)

    labels = [r["right"] for r in rows]
    # ties broken by the lowest log-probability: the mix a served rule would use
    mixed = [r["samples"] + 1e-3 * max(r["min"], -50.0) / 50.0 for r in rows]
    figures = {
        "specialist": specialist.name,
        "engine": runtime.engine,
        "calls": len(rows),
        "right": sum(labels),
        "samples": args.samples,
        "temperature": args.temperature,
        "auroc": {
            "min": auroc([r["min"] for r in rows], labels),
            "mean": auroc([r["mean"] for r in rows], labels),
            "sample_agreement": auroc([r["samples"] for r in rows], labels),
            "sample_agreement_then_min": auroc(mixed, labels),
        },
        "seconds_per_call": {
            "greedy": round(greedy_s / len(rows), 3),
            "samples": round(sample_s / len(rows), 3),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "signals.json").write_text(json.dumps(figures, indent=2))
    print(f"{sum(labels)} of {len(rows)} greedy answers agree with the teacher")
    for name, value in figures["auroc"].items():
        print(f"  AUROC {name:<26} {value if value is None else round(value, 3)}")
    print(
        f"  seconds per call: greedy {figures['seconds_per_call']['greedy']}, {args.samples} samples "
        f"{figures['seconds_per_call']['samples']}"
    )
    print(f"wrote {RESULTS / 'signals.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
