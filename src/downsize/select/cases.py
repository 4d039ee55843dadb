"""The calls the screen asks about (validation) and shows as examples (training), and the few-shot selection.

Few-shot examples come from the training split only, and that is checked rather than assumed: a validation
call must never see itself, or another run of its workflow, as an example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from downsize.prompting import gate_text
from downsize.shapes import response_message, tool_calls
from downsize.splits import dev_role
from downsize.types import ToolCall


@dataclass
class CallCase:
    """One call to answer, or to show as an example: the conversation, the tools, the gold calls, its split role.

    `category` picks the AST rule (simple, multiple, parallel) and whether several calls are expected;
    `possible_answers` is BFCL's ground truth where there is one, else the gold calls are the only answers.
    """

    key: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    gold: list[ToolCall]
    role: str  # train | validation | test
    category: str = "multiple"
    possible_answers: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None  # for the AST check; default: the tools

    @property
    def many(self) -> bool:
        """Whether the answer may hold several calls (BFCL's parallel categories)."""
        return "parallel" in self.category

    @property
    def query_text(self) -> str:
        """What is embedded to find few-shot neighbours: the last two turns, cut short (MiniLM time grows with length)."""
        return gate_text(self.messages, max_messages=2, max_chars=240)

    def answers(self) -> list[dict[str, Any]]:
        if self.possible_answers is not None:
            return self.possible_answers
        return [{c.name: {k: [v] for k, v in c.arguments.items()}} for c in self.gold]


def screen_cases(
    store: Any,
    validation_fraction: float = 0.25,
    limit: int | None = None,
    source: str | None = None,
    agent: str | None = None,
) -> tuple[list[CallCase], list[CallCase]]:
    """(validation cases, training pool) from the store's dev split: machine-facing tool calls, first call only.

    The calls come through `calls.select_calls`, as every stage's do; the test split is never screened on.
    `limit` keeps that many validation calls, evenly spread over the validation workflows rather than the first
    few. Each case's answer is the teacher's first call (the router serves one call), checked with BFCL's
    "multiple" rule (one call chosen among the task's tools).
    """
    from downsize.calls import CallSelection, select_calls

    selected = select_calls(
        store, CallSelection(source=source, agent=agent, role="dev", kinds=("tool_call",))
    )
    cases: list[CallCase] = []
    pool: list[CallCase] = []
    for ex in selected.exchanges:
        calls = tool_calls(response_message(ex.response))
        if not calls:
            continue
        role = dev_role(ex, validation_fraction)
        case = CallCase(
            key=f"exchange:{ex.id}",
            messages=list(ex.request.get("messages") or []),
            tools=list(ex.request.get("tools") or []),
            gold=[calls[0]],
            role=role,
            category="multiple",
        )
        (cases if role == "validation" else pool).append(case)
    if limit is not None and len(cases) > limit:
        step = len(cases) / limit
        cases = [cases[int(i * step)] for i in range(limit)]
    return cases, pool


# --- few-shot selection --------------------------------------------------------------------------------

Embed = Callable[[list[str]], np.ndarray]


def _default_embed(texts: list[str]) -> np.ndarray:
    from downsize.discover.embed import embed_texts

    return embed_texts(texts, "minilm")


def select_shots(
    cases: Sequence[CallCase], pool: Sequence[CallCase], k: int, embed: Embed | None = None
) -> list[list[CallCase]]:
    """For each case, the k pool calls nearest by embedding of the conversation (cosine), nearest first.

    Raises ValueError when the pool holds anything but training calls: examples drawn from validation or test
    would leak the answers being screened.
    """
    leaked = [p.key for p in pool if p.role != "train"]
    if leaked:
        raise ValueError(
            f"few-shot examples must come from the training split only; {len(leaked)} do not (e.g. {leaked[0]})"
        )
    if k <= 0 or not pool or not cases:
        return [[] for _ in cases]
    embed = embed or _default_embed
    queries = np.asarray(embed([c.query_text for c in cases]), dtype=np.float32)
    keys = np.asarray(embed([p.query_text for p in pool]), dtype=np.float32)
    similarity = queries @ keys.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [[pool[int(j)] for j in row] for row in order]
