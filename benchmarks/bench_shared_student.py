"""Memory of 1, 2 and 5 llama.cpp specialists in one process: one student each, or one student shared.

    python benchmarks/bench_shared_student.py [--counts 1 2 5] [--threads 1]

Each figure comes from a fresh child process that loads N specialists on SmolLM2-135M (random r=8 LoRAs on
every projection, shaped as `downsize train` makes them: memory does not depend on the values), generates
one call with each, and reads its own /proc/self/status. Three ways to hold them:

- `before`: a `llama_cpp.Llama(lora_path=..., n_ctx=4096)` per specialist, as the runtime did before the
  students were shared (llama-cpp-python turns mmap off when given a LoRA, so the weights are copied);
- `dedicated`: a `LlamaCppRuntime` per specialist (its own student, the weights mapped, the context sized
  by the prompt budget);
- `shared`: the runtimes made from one `StudentPool`, as the specialist worker makes them (one student,
  one context, an adapter per specialist); `shared_ctx4096` the same with the old 4096-token context.

Prints a table and writes bench-results/shared_student.json: per way and count, RSS, anonymous and
file-backed resident MB after loading and generating, their growth over the process before loading, and
the median ms of a generation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
WAYS = ("before", "dedicated", "shared", "shared_ctx4096")
NAMES = ("noah_muller", "anya_garcia", "mei_brown", "raj_sanchez", "lucas_kim", "sofia_rossi")


def messages(call: int) -> list[dict[str, str]]:
    """A different short conversation per call: consecutive prompts share only the template's head."""
    name = NAMES[call % len(NAMES)]
    return [
        {"role": "user", "content": f"Hi, I want to check my booking. My user id is {name}_{1000 + call}."}
    ]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_user_details",
            "description": "Get the details of a user.",
            "parameters": {
                "type": "object",
                "properties": {"user_id": {"type": "string"}},
                "required": ["user_id"],
            },
        },
    }
]
# SmolLM2-135M's projections (out, in): what `downsize train` puts a LoRA on by default
SHAPES = {
    "self_attn.q_proj": (576, 576),
    "self_attn.k_proj": (192, 576),
    "self_attn.v_proj": (192, 576),
    "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (1536, 576),
    "mlp.up_proj": (1536, 576),
    "mlp.down_proj": (576, 1536),
}


def make_adapters(folder: Path, count: int, rank: int = 8) -> list[Path]:
    """`count` PEFT LoRA folders for SmolLM2-135M with random weights (different per folder)."""
    import numpy as np
    from safetensors.numpy import save_file

    folders = []
    for n in range(count):
        rng = np.random.default_rng(n)
        weights = {}
        for layer in range(30):
            for module, (out_dim, in_dim) in SHAPES.items():
                key = f"base_model.model.model.layers.{layer}.{module}"
                weights[f"{key}.lora_A.weight"] = (rng.normal(size=(rank, in_dim)) * 0.02).astype(np.float32)
                weights[f"{key}.lora_B.weight"] = (rng.normal(size=(out_dim, rank)) * 0.02).astype(np.float32)
        target = folder / f"adapter-{n}"
        target.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(target / "adapter_model.safetensors"))
        (target / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank}))
        folders.append(target)
    return folders


def resident_mb() -> dict[str, float]:
    """This process's resident memory in MB: all, anonymous, file-backed."""
    fields = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


def child(way: str, adapters: list[Path], threads: int) -> dict[str, Any]:
    """Load the specialists one way, generate with each, and measure (run in a fresh process)."""
    import llama_cpp

    from downsize.backends.gguf_lora import gguf_lora_for
    from downsize.backends.llamacpp_runtime import LlamaCppRuntime, StudentPool, base_gguf

    model_path = base_gguf("smollm2-135m")
    loras = [gguf_lora_for(folder, model_path) for folder in adapters]  # written once, before measuring
    start = resident_mb()
    started = time.perf_counter()
    times = []
    keep: list[Any] = []
    if way == "before":
        for lora in loras:
            llm = llama_cpp.Llama(
                model_path=str(model_path),
                lora_path=str(lora),
                n_ctx=4096,
                n_batch=512,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
            llm.eval(llm.tokenize(json.dumps(messages(0)).encode(), add_bos=False))  # touch the buffers
            keep.append(llm)
    else:
        pool = StudentPool(threads=threads) if way.startswith("shared") else None
        n_ctx = 4096 if way == "shared_ctx4096" else None
        for lora in loras:
            runtime = LlamaCppRuntime("smollm2-135m", lora_path=lora, threads=threads, n_ctx=n_ctx, pool=pool)
            keep.append(runtime)
        for call, runtime in enumerate(keep * 2):  # each specialist twice, in turn
            began = time.perf_counter()
            runtime.generate(messages(call), TOOLS)
            times.append((time.perf_counter() - began) * 1000)
    load_s = time.perf_counter() - started
    end = resident_mb()
    return {
        **end,
        "added_mb": {key: round(end[key] - start[key], 1) for key in end},
        "n_ctx": int(keep[0].n_ctx() if way == "before" else keep[0].llm.n_ctx()),
        "models": len({id(k if way == "before" else k.llm) for k in keep}),
        "ms_p50": round(statistics.median(times), 1) if times else None,  # a generation (not for `before`)
        "seconds": round(load_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per process")
    parser.add_argument("--child", nargs=2, metavar=("WAY", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, count = args.child[0], int(args.child[1])
        folders = sorted(Path(args.adapters).glob("adapter-*"))[:count]
        print(json.dumps(child(way, folders, args.threads)))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("DOWNSIZE_HOME", str(Path(tmp) / "home"))
        make_adapters(Path(tmp), max(args.counts))
        for way in WAYS:
            counts = args.counts if way != "shared_ctx4096" else [min(args.counts), max(args.counts)]
            for count in counts:
                command = [sys.executable, __file__, "--child", way, str(count), "--adapters", tmp]
                command += ["--threads", str(args.threads)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault(way, {})[str(count)] = figures
                added = figures["added_mb"]
                print(
                    f"{way:>15} x{count}: RSS {figures['rss_mb']:7.1f} MB (+{added['rss_mb']:.1f}: anon "
                    f"+{added['anon_mb']:.1f}, file +{added['file_mb']:.1f}), {figures['models']} model(s), "
                    f"n_ctx {figures['n_ctx']}"
                    + (f", {figures['ms_p50']} ms/call" if figures["ms_p50"] else ""),
                    flush=True,
                )

    def per_extra(way: str) -> float | None:
        runs = results.get(way, {})
        low, high = min(args.counts), max(args.counts)
        if str(low) not in runs or str(high) not in runs or high == low:
            return None
        return round((runs[str(high)]["rss_mb"] - runs[str(low)]["rss_mb"]) / (high - low), 1)

    summary = {
        "student": "smollm2-135m (Q4_1 GGUF), LoRA r=8 on every projection",
        "threads": args.threads,
        "rss_mb_per_extra_specialist": {way: per_extra(way) for way in WAYS},
        "results": results,
        "date": time.strftime("%Y-%m-%d"),
    }
    top = str(max(args.counts))
    if "before" in results and "shared" in results and top in results["shared"]:
        ratio = results["before"][top]["added_mb"]["rss_mb"] / results["shared"][top]["added_mb"]["rss_mb"]
        summary[f"before_over_shared_added_rss_x{top}"] = round(ratio, 2)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shared_student.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS / 'shared_student.json'}")


if __name__ == "__main__":
    main()
