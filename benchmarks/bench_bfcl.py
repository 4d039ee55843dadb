"""BFCL AST accuracy of the base student zero-shot, few-shot, and LoRA-fine-tuned, on held-out questions.

For each category (simple_python, multiple, parallel) the questions are split in halves by a hash of their id
(`downsize.evaluate.bfcl.split_halves`). On the test half the student answers

1. zero-shot: a short instruction, the question's tools rendered compactly, the question;
2. few-shot: the same after the k training-half questions nearest by MiniLM embedding (k=3), as chat turns;
3. fine-tuned: zero-shot again, after LoRA fine-tuning on the training half (`train.loop.fit_adapter`, loss on
   the target only) for a fixed budget of minutes per category.

With `--spans` (single-call categories), the fine-tuned student also answers under the gateway's own grammar,
each argument under its tool's schema (`fine_tuned_schema`), and under the same grammar with the string
parameters learned as spans of the conversation narrowed to them (`fine_tuned_spans`; `copying.learn_spans`
on the training half). Every test tool is new, so only the parameter names learned across tools apply
(`copying.ANY_TOOL`). The teacher's value is BFCL's set of acceptable answers: a parameter counts as a span
in a training call when one of its acceptable values is. `--no-base` skips the base student's two modes.

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
    spans: bool = False,
    with_base: bool = True,
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
        shots = select_shots(test, train, k) if with_base else []
        select_s = time.perf_counter() - began
        rows = {}
        base_modes = (("base_zero_shot", [[] for _ in test]), ("base_few_shot", shots)) if with_base else ()
        for mode, chosen in base_modes:
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
        learned = None
        if spans and not any(c.many for c in test):
            from downsize.copying import learn_spans

            learned = learn_spans([(c.messages, _span_view(c)) for c in train])
            arms = [("fine_tuned_schema", None), ("fine_tuned_spans", learned)] if learned else []
            for mode, chosen_spans in arms:  # no span rule learned: both arms would be the same
                began = time.perf_counter()
                answers = answer_cases(
                    tuned,
                    test,
                    prompts,
                    batch_size,
                    progress=progress,
                    label=f"{category} {mode}",
                    grammar_of=lambda c, sp=chosen_spans: _schema_grammar(c, sp),
                )
                rows[mode] = summarise(student, mode, answers, time.perf_counter() - began, prompts)
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
        if learned is not None:
            entry["span_arguments"] = learned
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


def _span_view(case: Any) -> Any:
    """The case's gold call with each string argument replaced by its first acceptable value (BFCL's possible
    answers) that is a span of the conversation, where one is: the teacher's answer is that set."""
    from downsize.copying import conversation_text, is_span
    from downsize.types import ToolCall

    gold = case.gold[0]
    answers = case.possible_answers or []
    accepted = next(  # BFCL's names keep their dots; the tools' (and the gold call's) have underscores
        (v for a in answers if isinstance(a, dict) for k, v in a.items() if k.replace(".", "_") == gold.name),
        {},
    )
    corpus = conversation_text(case.messages)
    arguments = dict(gold.arguments)
    for name, value in gold.arguments.items():
        options = [v for v in accepted.get(name, []) if isinstance(v, str) and v]
        spanned = next((v for v in options if is_span(v, corpus)), None)
        if isinstance(value, str) and spanned is not None:
            arguments[name] = spanned
    return ToolCall(gold.name, arguments)


def _schema_grammar(case: Any, spans: Any) -> Any:
    """The gateway's grammar for one call: a tool of the case, arguments under its schema, span parameters
    narrowed to the conversation (`copying.restrict_schemas`)."""
    from downsize.backends.grammar import ToolCallGrammar, tool_schemas
    from downsize.copying import restrict_schemas

    schemas = restrict_schemas(tool_schemas(case.tools), {}, case.messages, spans)
    return ToolCallGrammar(list(schemas), 160, schemas)


def _run_info(**fixed: Any) -> Callable[[float], dict[str, Any]]:
    return lambda seconds: {**fixed, "minutes": round(seconds / 60, 2)}


MODES = (
    ("base_zero_shot", "base zero-shot"),
    ("base_few_shot", "base few-shot"),
    ("fine_tuned", "fine-tuned"),
    ("fine_tuned_schema", "tuned, schema grammar"),
    ("fine_tuned_spans", "tuned, schema + spans"),
)


def render_table(results: dict[str, Any]) -> str:
    entries = {c: e for c, e in results.items() if not c.startswith("_")}
    modes = [(m, title) for m, title in MODES if any(m in e for e in entries.values())]
    header = ("category", "n_test", *(title for _, title in modes), "train min")
    rows = [header]
    for category, entry in entries.items():

        def cell(mode: str, e: dict[str, Any] = entry) -> str:
            if mode not in e:
                return "-"
            low, high = e[f"{mode}_ci95"]
            return f"{e[mode]:.3f} [{low:.2f}, {high:.2f}]"

        rows.append(
            (
                category,
                str(entry["n_test"]),
                *(cell(m) for m, _ in modes),
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
    parser.add_argument(
        "--spans", action="store_true", help="also the schema grammar with and without learned spans"
    )
    parser.add_argument("--no-base", action="store_true", help="skip the base student's modes")
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
            spans=args.spans,
            with_base=not args.no_base,
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
