"""Serving latency per tool call of both specialist engines, and how often they agree.

transformers + peft (the reference path, the adapter merged into fp32 weights) against llama.cpp (the
shipped Q4_1 GGUF with the adapter converted to a GGUF LoRA), on real tau-airline test-split requests,
batch 1, the same thread count, grammar-constrained, no early stop (every call generated to its end, as
`bench_train_serve.py` does). Agreement: the share of requests where both engines wrote the same text.

With `--adapter PATH` it measures that PEFT adapter (its `downsize.json` gives the prompt budget);
otherwise it trains one first for `--train-minutes`. Writes bench-results/serving.json and prints the
figures. `measure_serving(...)` is the library entry point for a larger benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("transformers", "llamacpp")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def measure_serving(
    student: str,
    adapter_path: str | Path | None,
    requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    budget: Any = None,
    threads: int = 2,
    max_new_tokens: int = 64,
    warmup: int = 2,
    engines: tuple[str, ...] = ENGINES,
) -> dict[str, Any]:
    """Per-call latency (ms p50/p90, batch 1) of each engine on `requests`, and their agreement.

    Returns {engine: {"ms_p50", "ms_p90", "tokens_p50", "load_s"}, "agreement": share of identical texts,
    "call_agreement": share of identical parsed calls, "confidence_diff_p50"/"_max": |min log-prob| gaps,
    "calls", "threads"}; agreement figures are present when both engines ran.
    """
    import torch

    from downsize.backends.llamacpp_runtime import LlamaCppRuntime
    from downsize.backends.transformers_runtime import TransformersRuntime
    from downsize.prompting import PromptBudget

    torch.set_num_threads(threads)
    budget = budget or PromptBudget()
    figures: dict[str, Any] = {"calls": len(requests), "threads": threads}
    outputs: dict[str, list[Any]] = {}
    for engine in engines:
        started = time.perf_counter()
        runtime: Any
        if engine == "transformers":
            runtime = TransformersRuntime(student, adapter_path, budget, max_new_tokens=max_new_tokens)
        else:
            runtime = LlamaCppRuntime(
                student, adapter_path, budget, max_new_tokens=max_new_tokens, threads=threads
            )
        load_s = time.perf_counter() - started
        for messages, tools in requests[:warmup]:
            runtime.generate(messages, tools)
        times, gens = [], []
        for messages, tools in requests:
            started = time.perf_counter()
            gens.append(runtime.generate(messages, tools))
            times.append((time.perf_counter() - started) * 1000)
        outputs[engine] = gens
        figures[engine] = {
            "ms_p50": round(statistics.median(times), 1),
            "ms_p90": round(_percentile(times, 0.9), 1),
            "tokens_p50": statistics.median(g.tokens for g in gens),
            "load_s": round(load_s, 1),
        }
        del runtime
    if all(e in outputs for e in ENGINES):
        pairs = list(zip(outputs["transformers"], outputs["llamacpp"], strict=True))
        figures["agreement"] = round(sum(a.text == b.text for a, b in pairs) / len(pairs), 4)
        figures["call_agreement"] = round(sum(a.call == b.call for a, b in pairs) / len(pairs), 4)
        gaps = [
            abs(a.min_logprob - b.min_logprob)
            for a, b in pairs
            if a.text == b.text and a.min_logprob > -1e9 and b.min_logprob > -1e9
        ]
        if gaps:
            figures["confidence_diff_p50"] = round(statistics.median(gaps), 4)
            figures["confidence_diff_max"] = round(max(gaps), 4)
        figures["speedup_p50"] = round(figures["transformers"]["ms_p50"] / figures["llamacpp"]["ms_p50"], 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", type=Path, help="A PEFT adapter folder (default: train one first).")
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--calls", type=int, default=40, help="Test-split tool calls to time per engine.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DOWNSIZE_HOME"] = tempfile.mkdtemp(prefix="downsize-bench-")

    from downsize.config import TrainConfig, resolve
    from downsize.importers.tau_airline import default_path as default_tau_airline
    from downsize.importers.tau_airline import import_tau_airline
    from downsize.prompting import PromptBudget
    from downsize.store import Store

    store = Store.open()
    import_tau_airline(store, default_tau_airline())
    adapter = args.adapter
    config: dict[str, Any] = {}
    if adapter is None:
        from downsize.train.lora import train_specialist

        result = train_specialist(store, TrainConfig(student=args.student, max_minutes=args.train_minutes))
        adapter = Path(result.adapter_path)
    manifest = adapter / "downsize.json"
    if manifest.is_file():
        config = json.loads(manifest.read_text()).get("config") or {}
    known = {k: v for k, v in config.items() if k in TrainConfig.__dataclass_fields__}
    train_cfg = resolve(TrainConfig, known)
    budget = PromptBudget(train_cfg.max_prompt_tokens, train_cfg.max_message_tokens)
    test = list(store.exchanges(source="tau-airline", split="test", response_kind="tool_call"))[: args.calls]
    requests = [(ex.request["messages"], ex.request["tools"]) for ex in test]
    figures = measure_serving(
        args.student,
        adapter,
        requests,
        budget,
        threads=args.threads,
        engines=tuple(args.engines.split(",")),
    )
    figures["machine_cores"] = os.cpu_count()
    figures["setup"] = (
        f"{args.student} + LoRA ({adapter.name}), batch 1, {args.threads} threads, grammar-constrained "
        "(tool schemas), no early stop; transformers: merged fp32; llamacpp: Q4_1 GGUF + GGUF LoRA"
    )
    out = ROOT / "bench-results" / "serving.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        print(f"{key:>22}  {value}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
