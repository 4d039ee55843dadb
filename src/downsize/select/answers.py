"""Answering the screen's cases: grammar-constrained generation, parsing, and scoring each answer.

Decoding is constrained to `name {json}` (or, for parallel calls, `name {json} ; name {json}` closed by the
end-of-turn token), so every answer parses and only offered tools are named; answers are scored by tool-name
accuracy, exact match (JSON-normalised) and BFCL-style AST match (`evaluate.ast_match`, pure Python, no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from downsize.evaluate.ast_match import ast_match
from downsize.prompting import parse_target
from downsize.select.call_sequence import CallSequenceGrammar, parse_calls
from downsize.select.cases import CallCase
from downsize.select.prompts import end_strings
from downsize.select.tool_schemas import tool_name_set, tool_params
from downsize.types import ToolCall


class Completer(Protocol):
    """What the screen needs of a runtime (TransformersRuntime.complete): prompts in, constrained texts out."""

    tokenizer: Any

    def complete(
        self, prompts: list[str], grammars: list[Any], stop_below: float | None = None
    ) -> list[Any]: ...


@dataclass
class Answer:
    """A student's answer to one case, parsed and scored."""

    key: str
    text: str
    calls: list[ToolCall] | None
    name_ok: bool
    exact: bool
    ast: bool
    ast_error: str = ""


def _name_key(name: str) -> str:
    return name.replace(".", "_")


def score_answer(case: CallCase, text: str, calls: list[ToolCall] | None) -> Answer:
    """Name accuracy (the same multiset of tool names), exact match (the same calls, any order) and AST match."""
    predicted = calls or []
    names_ok = bool(predicted) and sorted(_name_key(c.name) for c in predicted) == sorted(
        _name_key(c.name) for c in case.gold
    )

    def canonical(c: ToolCall) -> str:
        return ToolCall(_name_key(c.name), c.arguments).canonical()

    exact = bool(predicted) and sorted(map(canonical, predicted)) == sorted(map(canonical, case.gold))
    if calls is None:
        ast_ok, error = False, "no complete call"
    else:
        result = ast_match(case.functions or case.tools, predicted, case.answers(), case.category)
        ast_ok, error = result.valid, result.error_type or result.error
    return Answer(case.key, text, calls, names_ok, exact, ast_ok, error)


def grammar_for(
    case: CallCase, ends: Sequence[str], max_calls: int = 8, schema_keys: bool = True
) -> CallSequenceGrammar:
    """Several calls closed by the end of turn for a parallel case, else one call done at its `}`; with
    `schema_keys`, each call's top-level keys are its tool's parameters, the required ones all given."""
    params = tool_params(case.tools) if schema_keys else None
    return CallSequenceGrammar(tool_name_set(case.tools), ends if case.many else (), max_calls, params=params)


def answer_cases(
    runtime: Completer,
    cases: Sequence[CallCase],
    prompts: Sequence[str],
    batch_size: int = 8,
    max_calls: int = 8,
    progress: bool = False,
    label: str = "screen",
    grammar_of: Callable[[CallCase], Any] | None = None,
) -> list[Answer]:
    """Generate (batched, prompts of similar length together) and score an answer for every case; each under
    `grammar_of(case)` when given (a single call), else `grammar_for`."""
    from tqdm import tqdm

    ends = end_strings(runtime.tokenizer)
    order = sorted(range(len(cases)), key=lambda i: len(prompts[i]))
    answers: dict[int, Answer] = {}
    with tqdm(total=len(order), desc=label, unit="call", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            grammars = [
                grammar_of(cases[i]) if grammar_of else grammar_for(cases[i], ends, max_calls) for i in idx
            ]
            outs = runtime.complete([prompts[i] for i in idx], grammars)
            for i, out in zip(idx, outs, strict=True):
                text = str(out.text)
                done = bool(getattr(out, "done", True))
                if not done:
                    calls = None
                elif cases[i].many:
                    calls = parse_calls(text, ends)
                else:
                    single = parse_target(text)
                    calls = [single] if single is not None else None
                answers[i] = score_answer(cases[i], text, calls)
            bar.update(len(idx))
    return [answers[i] for i in range(len(cases))]
