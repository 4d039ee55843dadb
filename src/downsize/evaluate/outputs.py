"""Scoring an output against a reference by output kind: tool calls, JSON, text. One shape for all three.

The student and the teacher go through this same code: whatever produced `predicted` (a specialist, the
upstream LLM, a zero-shot candidate), it is scored against `reference` (the teacher's logged answer, or a
gold answer) by the rules of the output's kind. Every score has a strict `agrees` (what the router's
agreement means) and a graded `score` in [0, 1], plus the kind's own metrics:

- **tool_call**: `name_match` (the same tool names), `exact` (the same names and arguments after JSON
  normalisation, `ToolCall.canonical()`), `argument_f1` (leaf-level field F1 of the arguments, for partial
  credit), and, when the offered tools are given, `schema_valid` (each call names an offered tool and its
  arguments satisfy that tool's schema) and `ast` (BFCL's AST rule, `ast_match.py`: strings compared
  case- and punctuation-insensitively, 2 equals 2.0, an optional parameter may be left out). `agrees` is
  `exact`; `score` is `argument_f1`. Several calls in one reply are compared in any order.
- **json**: `parses`, `schema_valid` (when a schema is given), `exact`, `field_precision`, `field_recall`,
  `field_f1` (see `json_metrics.py`). `agrees` is `exact`; `score` is `field_f1`.
- **text**: `exact` (normalised: case, punctuation and spacing ignored), `similarity` (cosine of
  all-MiniLM-L6-v2 embeddings) and, with a judge, `judge_equivalent`. `agrees` is `exact`, or the judge's
  verdict when one was asked; `score` is `similarity` (1 for equal text).

A metric that cannot be computed (no schema given, nothing to judge) is None and is left out of the means
of `summarize`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from downsize.contracts import response_format_schema
from downsize.evaluate.ast_match import ast_match, find_description, normalise_calls, normalise_functions
from downsize.evaluate.json_metrics import (
    FieldMatch,
    field_match,
    flatten,
    json_exact,
    parse_json,
    schema_error,
)
from downsize.evaluate.metrics import exact_match, wilson_lower
from downsize.evaluate.text_metrics import Embed, cosine_similarities, text_exact
from downsize.prompting import parse_target
from downsize.shapes import response_message, tool_calls
from downsize.types import Exchange, ToolCall

if TYPE_CHECKING:
    from downsize.evaluate.judge import Judge

OutputKind = Literal["tool_call", "json", "text"]
KINDS: tuple[str, ...] = get_args(OutputKind)
Metric = float | bool | None


@dataclass(frozen=True)
class OutputScore:
    """One output scored against its reference.

    `agrees` is the strict agreement of the kind, `score` a graded agreement in [0, 1], `metrics` every
    metric of the kind (None where it cannot be computed), `reason` why it does not fully agree (empty when
    it does), `error` set when the reference itself cannot be scored against (then nothing agrees).
    """

    kind: OutputKind
    agrees: bool
    score: float
    metrics: dict[str, Metric] = field(default_factory=dict)
    reason: str = ""
    error: str = ""


# -- reading outputs -------------------------------------------------------------------------------------


def _message_of(value: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The assistant message inside a chat.completion, or the value itself when it is a message."""
    if isinstance(value.get("choices"), list):
        return response_message(dict(value))
    return value if value.get("role") == "assistant" else None


def _unwrap(value: Any) -> Any:
    """The content of a chat.completion or assistant message; any other value as it is."""
    return as_text(value) if isinstance(value, Mapping) and _message_of(value) is not None else value


def as_tool_calls(value: Any) -> list[ToolCall] | None:
    """Tool calls from any of the shapes calls travel in; [] for "no call"; None when the value is unreadable.

    Reads a ToolCall, the specialist's target text (`name {json}`), a chat.completion or assistant message,
    an OpenAI `tool_calls` entry, `{name, arguments}` (arguments as an object or JSON text), BFCL's
    `{name: arguments}`, or a list of these.
    """
    if value is None:
        return []
    if isinstance(value, ToolCall):
        return [value]
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        call = parse_target(text)
        if call is not None:
            return [call]
        parsed, why = parse_json(text)
        return None if why or parsed is None else as_tool_calls(parsed)
    if isinstance(value, Mapping):
        message = _message_of(value)
        if message is None and "tool_calls" in value and "name" not in value:
            message = value  # an assistant message without its role
        if message is not None:
            return tool_calls(dict(message))
        value = [value]
    if isinstance(value, list | tuple):
        out: list[ToolCall] = []
        for item in value:
            if isinstance(item, ToolCall):
                out.append(item)
                continue
            try:
                out.extend(ToolCall(name, args) for name, args in normalise_calls([item]))
            except (TypeError, AttributeError, ValueError):
                return None
        return out
    return None


def as_text(value: Any) -> str:
    """The text of an output: a string, a chat.completion's or message's content (content parts joined)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        message = _message_of(value)
        if message is None:
            return json.dumps(value, ensure_ascii=False, sort_keys=True)
        content = message.get("content")
        if isinstance(content, list):
            return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        return content if isinstance(content, str) else ""
    return str(value)


def reference_output(exchange: Exchange) -> Any:
    """What the teacher answered in a logged exchange, in the form its kind is scored in."""
    message = response_message(exchange.response)
    if exchange.response_kind == "tool_call":
        return tool_calls(message)
    return as_text(message)


def schema_for(exchange: Exchange) -> Any:
    """The schema an exchange's output is checked against: its offered tools, or its response_format schema."""
    if exchange.response_kind == "tool_call":
        return exchange.request.get("tools") or None
    if exchange.response_kind == "json":
        return response_format_schema(exchange.request)
    return None


# -- tool calls ------------------------------------------------------------------------------------------


def _leaves(calls: Sequence[ToolCall]) -> int:
    return sum(1 for c in calls for _ in flatten(c.arguments))


def calls_field_match(predicted: Sequence[ToolCall], reference: Sequence[ToolCall]) -> FieldMatch:
    """Leaf-level match of the arguments of several calls: each predicted call paired with at most one reference
    call of the same name, the pairs that share the most leaves first; a call of the wrong tool matches nothing."""
    matched = 0
    for name in {c.name for c in predicted} & {c.name for c in reference}:
        preds = [c for c in predicted if c.name == name]
        refs = [c for c in reference if c.name == name]
        pairs = sorted(
            (
                (field_match(p.arguments, r.arguments).matched, i, j)
                for i, p in enumerate(preds)
                for j, r in enumerate(refs)
            ),
            key=lambda t: -t[0],
        )
        used_p: set[int] = set()
        used_r: set[int] = set()
        for count, i, j in pairs:
            if i not in used_p and j not in used_r:
                matched += count
                used_p.add(i)
                used_r.add(j)
    return FieldMatch(matched=matched, predicted=_leaves(predicted), reference=_leaves(reference))


def _possible(value: Any) -> Any:
    """A reference value in BFCL's answer form: inside a dict (or a list of dicts) each value is a list of options."""
    if isinstance(value, Mapping):
        return {k: [v] for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return [{k: [vv] for k, vv in v.items()} for v in value]
    return value


def possible_answer(call: ToolCall, function: Mapping[str, Any] | None) -> dict[str, Any]:
    """A reference call as a BFCL possible answer: its values, and the schema's other parameters optional."""
    answer: dict[str, list[Any]] = {k: [_possible(v)] for k, v in call.arguments.items()}
    properties = ((function or {}).get("parameters") or {}).get("properties") or {}
    for name, spec in properties.items():
        if name not in answer:
            default = spec.get("default", "") if isinstance(spec, Mapping) else ""
            answer[name] = [default, ""] if default != "" else [""]
    return {call.name: answer}


def call_schema_error(call: ToolCall, functions: Sequence[Mapping[str, Any]]) -> str | None:
    """None when the call names an offered function and its arguments satisfy its parameter schema."""
    function = find_description(functions, call.name)
    if function is None:
        return f"unknown tool {call.name!r}"
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    missing = [p for p in parameters.get("required") or [] if p not in call.arguments]
    if missing:
        return f"{call.name}: missing required {', '.join(missing)}"
    why = schema_error(call.arguments, parameters)
    return None if why is None or why.startswith("the schema itself") else f"{call.name}: {why}"


def score_tool_call(
    predicted: Any, reference: Any, tools: Sequence[Mapping[str, Any]] | None = None
) -> OutputScore:
    """A predicted reply's tool calls against the reference's; `tools` (OpenAI tools or BFCL docs) enable AST and schema checks."""
    ref = as_tool_calls(reference)
    if ref is None:
        return OutputScore(
            "tool_call", False, 0.0, error=f"the reference is not a tool call: {reference!r:.120}"
        )
    pred = as_tool_calls(predicted)
    functions = normalise_functions(tools) if tools else None
    if pred is None:
        metrics: dict[str, Metric] = {"name_match": False, "exact": False, "argument_f1": 0.0}
        if functions is not None:
            metrics |= {"schema_valid": False, "ast": False}
        return OutputScore(
            "tool_call", False, 0.0, metrics, reason=f"unreadable tool call: {predicted!r:.120}"
        )
    if len(pred) == 1 and len(ref) == 1:
        exact = exact_match(pred[0], ref[0])
    else:
        exact = sorted(c.canonical() for c in pred) == sorted(c.canonical() for c in ref)
    names = sorted(c.name for c in pred) == sorted(c.name for c in ref)
    fields = calls_field_match(pred, ref)
    metrics = {"name_match": names, "exact": exact, "argument_f1": fields.f1}
    reasons = []
    if not names:
        reasons.append(f"tools {[c.name for c in pred]} instead of {[c.name for c in ref]}")
    elif not exact:
        reasons.append("different arguments")
    if functions is not None:
        invalid = [why for why in (call_schema_error(c, functions) for c in pred) if why]
        answers = [possible_answer(c, find_description(functions, c.name)) for c in ref]
        result = ast_match(functions, pred, answers, category="parallel" if len(ref) > 1 else "multiple")
        metrics |= {"schema_valid": not invalid, "ast": result.valid}
        if invalid:
            reasons.append("invalid: " + "; ".join(invalid))
        if not result.valid and names:
            reasons.append(f"AST: {result.error}")
    return OutputScore("tool_call", exact, fields.f1, metrics, reason="; ".join(reasons)[:300])


# -- JSON ------------------------------------------------------------------------------------------------


def score_json(predicted: Any, reference: Any, schema: Mapping[str, Any] | None = None) -> OutputScore:
    """A JSON output (text or parsed value) against the reference: parses, schema, exact and field match."""
    ref, ref_error = parse_json(_unwrap(reference))
    if ref_error:
        return OutputScore("json", False, 0.0, error=f"the reference is not JSON ({ref_error})")
    pred, why = parse_json(_unwrap(predicted))
    metrics: dict[str, Metric] = {"parses": not why}
    if why:
        metrics |= {"schema_valid": False if schema is not None else None, "exact": False}
        metrics |= {"field_precision": 0.0, "field_recall": 0.0, "field_f1": 0.0}
        return OutputScore("json", False, 0.0, metrics, reason=why)
    invalid = schema_error(pred, schema) if schema is not None else None
    exact = json_exact(pred, ref)
    fields = field_match(pred, ref)
    metrics |= {
        "schema_valid": None if schema is None else invalid is None,
        "exact": exact,
        "field_precision": fields.precision,
        "field_recall": fields.recall,
        "field_f1": fields.f1,
    }
    reasons = [] if exact else [f"{fields.matched} of {fields.reference} reference fields matched"]
    if invalid:
        reasons.append(f"schema: {invalid}")
    return OutputScore("json", exact, fields.f1, metrics, reason="; ".join(reasons))


# -- text ------------------------------------------------------------------------------------------------


def score_texts(
    predicted: Sequence[Any],
    reference: Sequence[Any],
    embed: Embed | None = None,
    judge: Judge | None = None,
    conversations: Sequence[Sequence[Mapping[str, Any]]] | None = None,
) -> list[OutputScore]:
    """Text outputs against references, embedded in one batch; with a judge, the pairs not equal as text are judged.

    Exact matches are not sent to the judge (they are equivalent by definition): that saves its calls.
    """
    preds = [as_text(p) for p in predicted]
    refs = [as_text(r) for r in reference]
    sims = cosine_similarities(preds, refs, embed)
    exact = [text_exact(p, r) for p, r in zip(preds, refs, strict=True)]
    verdicts: dict[int, Any] = {}
    if judge is not None:
        from downsize.evaluate.judge import JudgeItem

        todo = [i for i, same in enumerate(exact) if not same]
        items = [
            JudgeItem([dict(m) for m in conversations[i]] if conversations else [], preds[i], refs[i])
            for i in todo
        ]
        verdicts = dict(zip(todo, judge.judge_many(items), strict=True))
    out = []
    for i, (same, sim) in enumerate(zip(exact, sims, strict=True)):
        metrics: dict[str, Metric] = {"exact": same, "similarity": sim}
        agrees, reason = same, "" if same else f"different text (similarity {sim:.2f})"
        if judge is not None:
            verdict = verdicts.get(i)
            equivalent = True if same else (verdict.equivalent if verdict is not None else None)
            metrics["judge_equivalent"] = equivalent
            agrees = bool(equivalent)
            if verdict is not None and not same:
                reason = f"judge: {verdict.reason}" if verdict.reason else reason
        score = 1.0 if same else max(0.0, sim)  # equal text is full agreement, whatever the embedder says
        out.append(OutputScore("text", agrees, score, metrics, reason=reason[:300]))
    return out


# -- any kind --------------------------------------------------------------------------------------------


def _check_kind(kind: str) -> OutputKind:
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


def score_output(
    kind: str, predicted: Any, reference: Any, schema: Any = None, embed: Embed | None = None
) -> OutputScore:
    """One output against its reference. `schema`: the offered tools (tool_call) or a JSON schema (json)."""
    return score_outputs(kind, [predicted], [reference], [schema], embed=embed)[0]


def score_outputs(
    kind: str,
    predicted: Sequence[Any],
    reference: Sequence[Any],
    schemas: Sequence[Any] | None = None,
    embed: Embed | None = None,
    judge: Judge | None = None,
    conversations: Sequence[Sequence[Mapping[str, Any]]] | None = None,
) -> list[OutputScore]:
    """Many outputs of one kind against their references (text is embedded in one batch)."""
    checked = _check_kind(kind)
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} outputs for {len(reference)} references")
    if checked == "text":
        return score_texts(predicted, reference, embed, judge, conversations)
    per_item = list(schemas) if schemas is not None else [None] * len(predicted)
    if checked == "tool_call":
        return [score_tool_call(p, r, s) for p, r, s in zip(predicted, reference, per_item, strict=True)]
    return [score_json(p, r, s) for p, r, s in zip(predicted, reference, per_item, strict=True)]


def score_exchanges(
    exchanges: Sequence[Exchange],
    predicted: Sequence[Any],
    embed: Embed | None = None,
    judge: Judge | None = None,
) -> list[OutputScore]:
    """Outputs for logged exchanges against what the teacher answered there, each by its exchange's kind.

    The exchange gives the kind (`response_kind`), the reference, the schema (offered tools or
    `response_format`) and, for the judge, the conversation. Exchanges of kind error or empty have no
    reference to score against: leave them out.
    """
    if len(exchanges) != len(predicted):
        raise ValueError(f"{len(predicted)} outputs for {len(exchanges)} exchanges")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(exchanges):
        if ex.response_kind not in KINDS:
            raise ValueError(
                f"exchange {ex.id} has response kind {ex.response_kind!r}: only {', '.join(KINDS)} can be scored"
            )
        groups[str(ex.response_kind)].append(i)
    out: dict[int, OutputScore] = {}
    for kind, idx in groups.items():
        scores = score_outputs(
            kind,
            [predicted[i] for i in idx],
            [reference_output(exchanges[i]) for i in idx],
            [schema_for(exchanges[i]) for i in idx],
            embed=embed,
            judge=judge,
            conversations=[exchanges[i].request.get("messages") or [] for i in idx],
        )
        out.update(zip(idx, scores, strict=True))
    return [out[i] for i in range(len(exchanges))]


def summarize(scores: Sequence[OutputScore]) -> dict[str, Any]:
    """Per kind: calls, agreement with its 95% Wilson lower bound, mean score, and the mean of each metric.

    Boolean metrics average to rates. A metric's mean leaves out the calls where it is None; `<metric>_n`
    says over how many calls it was taken when that is fewer than all of them.
    """
    by_kind: dict[str, list[OutputScore]] = defaultdict(list)
    for s in scores:
        by_kind[s.kind].append(s)
    kinds: dict[str, Any] = {}
    for kind in sorted(by_kind, key=KINDS.index):
        group = by_kind[kind]
        n, agreed = len(group), sum(s.agrees for s in group)
        entry: dict[str, Any] = {
            "calls": n,
            "agreed": agreed,
            "agreement": agreed / n,
            "agreement_lower95": wilson_lower(agreed, n),
            "score_mean": sum(s.score for s in group) / n,
            "errors": sum(1 for s in group if s.error),
        }
        names = list(dict.fromkeys(k for s in group for k in s.metrics))
        for name in names:
            values = [float(v) for s in group if (v := s.metrics.get(name)) is not None]
            entry[name] = sum(values) / len(values) if values else None
            if len(values) < n:
                entry[f"{name}_n"] = len(values)
        kinds[kind] = entry
    agreed_all = sum(s.agrees for s in scores)
    return {
        "calls": len(scores),
        "agreement": agreed_all / len(scores) if scores else 0.0,
        "agreement_lower95": wilson_lower(agreed_all, len(scores)),
        "by_kind": kinds,
    }
