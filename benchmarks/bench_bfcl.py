"""BFCL AST accuracy of the base student zero-shot, few-shot, and LoRA-fine-tuned, on held-out questions.

For each category (simple_python, multiple, parallel) the questions are split in halves by a hash of their id
(`downsize.evaluate.bfcl.split_halves`). On the test half the student answers

1. zero-shot: a short instruction, the question's tools rendered compactly, the question;
2. few-shot: the same after the k training-half questions nearest by MiniLM embedding (k=3), as chat turns;
3. fine-tuned: zero-shot again, after LoRA fine-tuning on the training half (`train.loop.fit_adapter`, loss on
   the target only) for a fixed budget of minutes per category.

Decoding is greedy under the tool-call grammar (parallel: several calls joined by ` ; `, closed by the end of
turn); scoring is BFCL's AST match (`evaluate.ast_match`). Prints a table with Wilson 95% bounds and writes
bench-results/bfcl.json. The bfcl-eval wheel is only downloaded and read with zipfile:

    pip download --no-deps bfcl-eval==2026.3.23 -d ~/.downsize/cache/bfcl

The defaults (3 minutes of training per category, the whole test halves: 200 / 100 / 100 questions) took
43 minutes on 2 CPU cores (2026-12-02); `--limit` and `--train-minutes` shorten it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = {"simple_python": 96, "multiple": 96, "parallel": 192}


def _mode_figures(row: Any) -> dict[str, Any]:
    return {
        "ast_accuracy": round(row.ast_accuracy, 4),
        "ast_lower95": round(row.ast_lower95, 4),
        "ast_upper95": round(row.ast_upper95, 4),
        "exact_match": round(row.exact_match, 4),
        "name_accuracy": round(row.name_accuracy, 4),
        "seconds": round(row.seconds, 1),
        "seconds_per_question": round(row.seconds_per_call, 3),
        "prompt_chars_mean": round(row.prompt_chars_mean, 1),
    }


def run_bfcl_benchmark(
    categories: Sequence[str] | None = None,
    student: str = "smollm2-135m",
    k: int = 3,
    train_minutes: float = 3.0,
    train_epochs: float = 3.0,
    limit: int | None = None,
    batch_size: int = 8,
    wheel: str | Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    on_category: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """{category: {base_zero_shot, base_few_shot, fine_tuned (AST accuracies), their 95% bounds, n_test, ...}}.

    `limit` caps the test questions per category (the first of the hash order, so a shorter run is a
    subset of the full one); training always uses the whole training half, within `train_minutes`.
    `on_category` is called with the results so far after each category (to save partial runs).
    """
    import torch

    from downsize.backends.students import load_student
    from downsize.backends.transformers_runtime import TransformersRuntime
    from downsize.config import TrainConfig
    from downsize.evaluate.bfcl import CATEGORIES, load_bfcl
    from downsize.select.answers import answer_cases
    from downsize.select.cases import select_shots
    from downsize.select.prompts import PromptConfig, build_screen_prompt, target_text
    from downsize.select.screen import summarise
    from downsize.train.data import Example
    from downsize.train.loop import fit_adapter

    if threads:
        torch.set_num_threads(threads)
    categories = list(categories or CATEGORIES)
    run_info = _run_info(
        student=student,
        k=k,
        limit=limit,
        batch_size=batch_size,
        train_minutes_per_category=train_minutes,
        seed=seed,
        machine_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        split="questions ordered by SHA-256 of their id; first half trains, second half tests",
        scoring="BFCL AST match (downsize.evaluate.ast_match), greedy grammar-constrained decoding",
    )
    data = load_bfcl(categories, wheel)
    prompt_config = PromptConfig()
    results: dict[str, Any] = {}
    started = time.perf_counter()
    base_model, tokenizer = load_student(student)
    for category in categories:
        train = [q.to_case("train") for q in data[category]["train"]]
        test = [q.to_case("test") for q in data[category]["test"]][:limit]
        max_new = MAX_NEW_TOKENS.get(category, 128)
        base = TransformersRuntime(student, model=base_model, tokenizer=tokenizer, max_new_tokens=max_new)
        began = time.perf_counter()
        shots = select_shots(test, train, k)
        select_s = time.perf_counter() - began
        rows = {}
        for mode, chosen in (("base_zero_shot", [[] for _ in test]), ("base_few_shot", shots)):
            prompts = [
                build_screen_prompt(tokenizer, c, s, prompt_config) for c, s in zip(test, chosen, strict=True)
            ]
            began = time.perf_counter()
            answers = answer_cases(
                base, test, prompts, batch_size, progress=progress, label=f"{category} {mode}"
            )
            rows[mode] = summarise(student, mode, answers, time.perf_counter() - began, prompts)

        # fine-tune a fresh copy of the student on the training half, in the zero-shot prompt
        model, _ = load_student(student)
        examples = []
        for case in train:
            prompt_ids = list(
                tokenizer.encode(
                    build_screen_prompt(tokenizer, case, (), prompt_config), add_special_tokens=False
                )
            )
            target_ids = list(tokenizer.encode(target_text(case, tokenizer), add_special_tokens=False))
            examples.append(Example(None, prompt_ids, target_ids))
        config = TrainConfig(
            student=student,
            threads=threads,
            specialist=f"bfcl-{category}",
            epochs=train_epochs,
            max_minutes=train_minutes,
            seed=seed,
            gate=False,
        )
        model, stats = fit_adapter(model, tokenizer, examples, config, progress=progress)
        model = model.merge_and_unload()
        tuned = TransformersRuntime(student, model=model, tokenizer=tokenizer, max_new_tokens=max_new)
        prompts = [build_screen_prompt(tokenizer, c, (), prompt_config) for c in test]
        began = time.perf_counter()
        answers = answer_cases(
            tuned, test, prompts, batch_size, progress=progress, label=f"{category} fine_tuned"
        )
        rows["fine_tuned"] = summarise(student, "fine_tuned", answers, time.perf_counter() - began, prompts)
        del tuned, model

        entry: dict[str, Any] = {"n_test": len(test), "n_train": len(train)}
        for mode, row in rows.items():
            entry[mode] = round(row.ast_accuracy, 4)
            entry[f"{mode}_ci95"] = [round(row.ast_lower95, 4), round(row.ast_upper95, 4)]
        entry["details"] = {mode: _mode_figures(row) for mode, row in rows.items()}
        entry["training"] = {
            "examples": stats.examples,
            "steps": stats.steps,
            "epochs": round(stats.epochs, 2),
            "tokens": stats.tokens,
            "minutes": round(stats.seconds / 60, 2),
            "tokens_per_s": round(stats.tokens_per_s, 1),
            "final_loss": round(stats.final_loss, 4),
            "budget_minutes": train_minutes,
        }
        entry["few_shot_select_seconds"] = round(select_s, 2)
        entry["wrong_examples"] = [
            {"id": a.key, "output": a.text[:300], "error": a.ast_error}
            for a in rows["fine_tuned"].answers
            if not a.ast
        ][:5]
        results[category] = entry
        results["_run"] = run_info(time.perf_counter() - started)
        if on_category is not None:
            on_category(results)
    results["_run"] = run_info(time.perf_counter() - started)
    return results


def _run_info(**fixed: Any) -> Callable[[float], dict[str, Any]]:
    return lambda seconds: {**fixed, "minutes": round(seconds / 60, 2)}


def render_table(results: dict[str, Any]) -> str:
    header = ("category", "n_test", "base zero-shot", "base few-shot", "fine-tuned", "train min")
    rows = [header]
    for category, entry in results.items():
        if category.startswith("_"):
            continue

        def cell(mode: str, e: dict[str, Any] = entry) -> str:
            low, high = e[f"{mode}_ci95"]
            return f"{e[mode]:.3f} [{low:.2f}, {high:.2f}]"

        rows.append(
            (
                category,
                str(entry["n_test"]),
                cell("base_zero_shot"),
                cell("base_few_shot"),
                cell("fine_tuned"),
                f"{entry['training']['minutes']:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--categories", nargs="+", help="default: simple_python multiple parallel")
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=3, help="few-shot examples per question")
    parser.add_argument("--train-minutes", type=float, default=3.0, help="LoRA budget per category")
    parser.add_argument(
        "--train-epochs", type=float, default=3.0, help="upper bound; the minutes usually bind"
    )
    parser.add_argument(
        "--limit", type=int, help="test questions per category (default: the whole test half)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: every core; 1 on a shared, busy machine)"
    )
    parser.add_argument(
        "--wheel", help="the bfcl-eval wheel or its folder (default: $DOWNSIZE_BFCL_WHEEL, the cache)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "bfcl.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from downsize.errors import DownsizeError

    def save(results: dict[str, Any]) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))

    try:
        results = run_bfcl_benchmark(
            categories=args.categories,
            student=args.student,
            k=args.k,
            train_minutes=args.train_minutes,
            train_epochs=args.train_epochs,
            limit=args.limit,
            batch_size=args.batch_size,
            wheel=args.wheel,
            threads=args.threads,
            progress=not args.quiet,
            on_category=save,
        )
    except DownsizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    save(results)
    print(f"\nBFCL AST accuracy on the test halves, {results['_run']['student']} (95% Wilson bounds)")
    print(render_table(results))
    print(f"{results['_run']['minutes']:.1f} minutes; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
