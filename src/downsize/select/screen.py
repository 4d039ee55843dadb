"""The zero-shot and few-shot screen: how each candidate student does on a task's validation calls, untrained.

After the hard filters (`filters.py`), every surviving student that loads here answers the task's validation
calls twice: zero-shot (a short instruction, the tools rendered compactly, the pruned conversation) and k-shot
(the same, after the k training calls whose conversations are nearest by MiniLM embedding, shown as earlier
chat turns). This module runs the screen and ranks its report; its parts live beside it: the compact tool
schemas (`tool_schemas.py`), the grammar and text of a sequence of calls (`call_sequence.py`), the cases and
the few-shot selection (`cases.py`), the prompt (`prompts.py`), and answering and scoring (`answers.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from downsize.errors import DownsizeError
from downsize.evaluate.metrics import wilson_lower
from downsize.select.answers import Answer, answer_cases
from downsize.select.cases import CallCase, Embed, select_shots
from downsize.select.prompts import PromptConfig, build_screen_prompt

MODES = ("zero_shot", "few_shot")


def wilson_bounds(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval (its upper end is one less the failures' lower end); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    return wilson_lower(successes, n), 1.0 - wilson_lower(n - successes, n)


@dataclass
class ScreenRow:
    """One student in one mode over the screened cases."""

    student: str
    mode: str
    n: int
    name_accuracy: float
    exact_match: float
    ast_accuracy: float
    ast_lower95: float
    ast_upper95: float
    seconds: float
    seconds_per_call: float
    prompt_chars_mean: float
    answers: list[Answer] = field(default_factory=list, repr=False)

    def as_dict(self, with_answers: int = 0) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k != "answers"}
        if with_answers:
            row["examples"] = [
                {"key": a.key, "text": a.text, "ast": a.ast, "error": a.ast_error}
                for a in self.answers[:with_answers]
            ]
        return row


def summarise(
    student: str, mode: str, answers: Sequence[Answer], seconds: float, prompts: Sequence[str]
) -> ScreenRow:
    n = len(answers)
    ast_hits = sum(a.ast for a in answers)
    low, high = wilson_bounds(ast_hits, n)
    return ScreenRow(
        student=student,
        mode=mode,
        n=n,
        name_accuracy=sum(a.name_ok for a in answers) / n if n else 0.0,
        exact_match=sum(a.exact for a in answers) / n if n else 0.0,
        ast_accuracy=ast_hits / n if n else 0.0,
        ast_lower95=low,
        ast_upper95=high,
        seconds=seconds,
        seconds_per_call=seconds / n if n else 0.0,
        prompt_chars_mean=sum(map(len, prompts)) / len(prompts) if prompts else 0.0,
        answers=list(answers),
    )


@dataclass
class ScreenReport:
    """The ranked screen: best first (AST accuracy, then exact match, name accuracy, speed)."""

    rows: list[ScreenRow]
    k: int
    cases: int
    failed: dict[str, str] = field(default_factory=dict)  # student -> why it could not be screened
    load_seconds: dict[str, float] = field(default_factory=dict)
    select_seconds: float = 0.0

    @property
    def best(self) -> ScreenRow | None:
        return self.rows[0] if self.rows else None

    def table(self) -> str:
        return render_screen_table(self.rows)

    def as_dict(self, with_answers: int = 0) -> dict[str, Any]:
        return {
            "k": self.k,
            "cases": self.cases,
            "ranking": [r.as_dict(with_answers) for r in self.rows],
            "failed": self.failed,
            "load_seconds": self.load_seconds,
            "select_seconds": self.select_seconds,
        }


def rank(rows: Iterable[ScreenRow]) -> list[ScreenRow]:
    return sorted(rows, key=lambda r: (-r.ast_accuracy, -r.exact_match, -r.name_accuracy, r.seconds_per_call))


def render_screen_table(rows: Sequence[ScreenRow]) -> str:
    """The screen as an aligned text table."""
    header = ("rank", "student", "mode", "n", "name", "exact", "AST", "AST 95% CI", "s/call")
    table = [header]
    for i, r in enumerate(rows, 1):
        table.append(
            (
                str(i),
                r.student,
                r.mode,
                str(r.n),
                f"{r.name_accuracy:.2f}",
                f"{r.exact_match:.2f}",
                f"{r.ast_accuracy:.2f}",
                f"[{r.ast_lower95:.2f}, {r.ast_upper95:.2f}]",
                f"{r.seconds_per_call:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {0, 3, 4, 5, 6, 8}
    lines = []
    for row in table:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def load_runtime(student: str, max_new_tokens: int = 96) -> Any:
    """The student's TransformersRuntime (torch loads here, not at import)."""
    from downsize.backends.transformers_runtime import TransformersRuntime

    return TransformersRuntime(student, max_new_tokens=max_new_tokens)


def screen_students(
    cases: Sequence[CallCase],
    pool: Sequence[CallCase],
    students: Sequence[str],
    k: int = 3,
    modes: Sequence[str] = MODES,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    prompt: PromptConfig = PromptConfig(),  # noqa: B008 (frozen; ruff cannot see that across modules)
    loader: Callable[[str, int], Any] = load_runtime,
    embed: Embed | None = None,
    progress: bool = False,
) -> ScreenReport:
    """Zero-shot and k-shot answers of each student on `cases`, scored and ranked.

    `pool` must hold training calls only (checked). A student that cannot be loaded here (weights not
    installed, no training extras) is listed in `failed` with the reason instead of stopping the screen.
    """
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown screen modes {sorted(unknown)}: use {', '.join(MODES)}")
    started = time.perf_counter()
    shots = select_shots(cases, pool, k, embed) if "few_shot" in modes else [[] for _ in cases]
    report = ScreenReport(rows=[], k=k, cases=len(cases), select_seconds=time.perf_counter() - started)
    for student in students:
        began = time.perf_counter()
        try:
            runtime = loader(student, max_new_tokens)
        except DownsizeError as exc:
            report.failed[student] = str(exc)
            continue
        report.load_seconds[student] = time.perf_counter() - began
        for mode in modes:
            chosen = shots if mode == "few_shot" else [[] for _ in cases]
            prompts = [
                build_screen_prompt(runtime.tokenizer, c, s, prompt)
                for c, s in zip(cases, chosen, strict=True)
            ]
            began = time.perf_counter()
            answers = answer_cases(
                runtime, cases, prompts, batch_size, progress=progress, label=f"{student} {mode}"
            )
            report.rows.append(summarise(student, mode, answers, time.perf_counter() - began, prompts))
        del runtime
    report.rows = rank(report.rows)
    return report
