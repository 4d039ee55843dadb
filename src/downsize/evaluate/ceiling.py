"""The teacher's ceiling: how often the teacher agrees with itself when the same situation recurs in the logs.

A specialist is judged by its agreement with one logged teacher answer; but the teacher, sampled again in the
same situation, does not always answer the same way, so no student can be expected to agree with it more often
than it agrees with itself. A situation is the last `recent` turns of the conversation (role, text, tool calls and
tool results, system prompt left out): where it recurs in different workflows (another session, another run of
the same task), the teacher's answers there are compared pairwise by the contract's strict rule.

For a tool-call contract a text reply is an answer too (`<text>`): a pair counts when at least one side called a
tool, since those are the answers the router would serve. The interval is Wilson's over pairs; pairs from one
situation are not independent, so it is narrower than the truth when a few situations hold many answers
(`situations` and `answers` are reported beside it).

The gateway's consistency probe (`probe.py`) adds the teacher sampled again on the very same call: a probe's
answer pairs with the first answer (and with the situation's other workflows) as if from another workflow;
`probe_pairs` counts those pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from downsize.contracts import OutputContract, answer_of, canonical_json, normalise_text
from downsize.evaluate.metrics import wilson_lower
from downsize.types import PROBE_ROUTE, Exchange

RECENT_TURNS = 3


@dataclass
class CeilingFigures:
    """The teacher's self-agreement over recurring situations (of one task, or all)."""

    situations: int = 0  # situations seen in at least two workflows
    answers: int = 0  # teacher answers in those situations
    pairs: int = 0  # answer pairs from different workflows that count (see the module doc)
    agreed: int = 0
    probe_pairs: int = (
        0  # of them, pairs with a consistency probe's answer (the gateway re-asked the teacher)
    )
    agreement: float | None = None  # None when no situation recurs
    agreement_lower95: float | None = None
    agreement_upper95: float | None = None


@dataclass
class TeacherCeiling:
    """Overall and per task; `recent_turns` says what a situation is."""

    overall: CeilingFigures
    by_task: dict[str, CeilingFigures] = field(default_factory=dict)
    recent_turns: int = RECENT_TURNS
    rule: str = "strict"


def situation_key(messages: list[dict[str, Any]], recent: int = RECENT_TURNS) -> str:
    """A hash of the last `recent` non-system turns: roles, text, tool calls (name, parsed arguments), results."""
    turns = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") in ("system", "developer"):
            continue
        calls = []
        for c in m.get("tool_calls") or []:
            fn = (c.get("function") or {}) if isinstance(c, dict) else {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except (TypeError, ValueError):
                args = fn.get("arguments")
            calls.append([fn.get("name"), args])
        content = m.get("content")
        turns.append([m.get("role"), content if isinstance(content, str) else json.dumps(content), calls])
    return hashlib.sha1(canonical_json(turns[-recent:]).encode()).hexdigest()


def _answer_text(contract: OutputContract, response: dict[str, Any] | None) -> str | None:
    """The teacher's answer in a comparable form: the contract's strict form, `<text>` for a text reply at a
    tool-call site, None when there is nothing to compare."""
    value = answer_of(contract.kind, response)
    if value is None:
        return "<text>" if contract.kind == "tool_call" and answer_of("text", response) else None
    if contract.kind == "tool_call" or contract.kind == "react":
        return str(value.canonical())
    if contract.kind == "json":
        return canonical_json(value)
    if contract.kind == "text":
        return normalise_text(str(value))
    return str(value)


def teacher_ceiling(
    exchanges: Iterable[Exchange],
    contract: OutputContract,
    task_of: Callable[[Exchange], str | None] | None = None,
    recent: int = RECENT_TURNS,
) -> TeacherCeiling:
    """The teacher's agreement with itself over the situations that recur in these exchanges' workflows."""
    groups: dict[tuple[str | None, str], list[tuple[str, str]]] = defaultdict(list)
    for ex in exchanges:
        answer = _answer_text(contract, ex.response)
        if answer is None:
            continue
        task = task_of(ex) if task_of is not None else None
        key = situation_key(list(ex.request.get("messages") or []), recent)
        # a probe's answer is the teacher sampled again on the very same call: its own "workflow" to pair with
        origin = f"probe:{ex.id}" if ex.route == PROBE_ROUTE else (ex.workflow or ex.session or str(ex.id))
        groups[(task, key)].append((origin, answer))
    per_task: dict[str, CeilingFigures] = defaultdict(CeilingFigures)
    overall = CeilingFigures()
    for (task, _), answers in groups.items():
        if len({w for w, _ in answers}) < 2:
            continue
        pairs = agreed = probed = 0
        for i, (wi, ai) in enumerate(answers):
            for wj, aj in answers[i + 1 :]:
                if wi == wj or (ai == "<text>" and aj == "<text>"):
                    continue
                pairs += 1
                agreed += ai == aj
                probed += wi.startswith("probe:") or wj.startswith("probe:")
        if not pairs:
            continue
        for figures in (overall, per_task[task or "all"]):
            figures.situations += 1
            figures.answers += len(answers)
            figures.pairs += pairs
            figures.agreed += agreed
            figures.probe_pairs += probed
    for figures in (overall, *per_task.values()):
        if figures.pairs:
            figures.agreement = figures.agreed / figures.pairs
            figures.agreement_lower95 = wilson_lower(figures.agreed, figures.pairs)
            figures.agreement_upper95 = 1 - wilson_lower(figures.pairs - figures.agreed, figures.pairs)
    return TeacherCeiling(overall, dict(per_task) if task_of is not None else {}, recent)
