"""What a task's answers look like (its output contract), detected from the teacher's logged answers.

A specialist answers one contract, and every stage reads it from here: training renders each teacher answer
as the contract's target text, the runtime constrains decoding by it (`backends/grammar.py: grammar_for`),
the decision function validates a generated answer against it, evaluation scores by its kind, and the router
serves the answer in the shape the agent expects. Kinds:

- `tool_call`: a native tool call (the request's `tools`), target `name {arguments}`;
- `json`: a JSON object, under the request's own `response_format` schema when it carries one (`schema_source`
  "request"), else under a schema learned from the training answers (keys, types, small enums: "learned"); a
  teacher that writes JSON arrays gets an array-rooted learned schema;
- `label`: one of a closed set of short answers seen in training (`labels`);
- `react`: text-format tool use, "Action: NAME / Action Input: {...}" (ReAct, crewAI, LangChain, MetaGPT):
  the action names and each action's input shape learned from training; the free-text thought before it is
  kept, cut to its first `thought_words` words, when the teacher thinks before most of its actions (its next
  step leans on the thought: `make bench-thoughts`), else dropped;
- `text`: short free text (the longest training answer under `SHORT_TEXT_TOKENS`), served only under a
  calibrated confidence;
- `long_text`: longer free text, which stays with the LLM (a specialist is not trained for it).

Stdlib only (and jsonschema for validation), so every layer can read a contract.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from downsize.prompting import SYSTEM, compact_json, parse_target, render_target
from downsize.shapes import response_message, tool_calls
from downsize.types import Exchange, ToolCall

KINDS = ("tool_call", "json", "label", "react", "text", "long_text")
SPECIALISABLE = ("tool_call", "json", "label", "react", "text")
SHORT_TEXT_TOKENS = 200  # free text longer than this (approx. 4 characters a token) stays with the LLM
MAX_LABELS = 30
MAX_LABEL_CHARS = 48
MAX_ENUM_VALUES = 8
KEEP_THOUGHT_SHARE = 0.5  # react: keep a short thought when the teacher thinks before at least this share
MAX_THOUGHT_WORDS = 32  # react: a kept thought's words at most (the teacher's 3rd quartile below that)
_SPACES = re.compile(r"\s+")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"})

_REACT = re.compile(
    r"^\s*(?:Thought\s*:(?P<thought>.*?))?\s*Action\s*:\s*(?P<action>[^\n]+?)\s*\n\s*Action Input\s*:\s*(?P<input>.*?)"
    r"\s*(?:Observation\s*:.*)?$",
    re.DOTALL,
)
_FINAL = re.compile(r"^\s*(?:Thought\s*:.*?)?\s*Final Answer\s*:", re.DOTALL)

INSTRUCTIONS = {
    "tool_call": SYSTEM,
    "json": "You are a specialist. Reply with the JSON answer only.",
    "label": "You are a specialist. Reply with the label only.",
    "react": "You are a specialist. Reply with the next action as: Action: NAME / Action Input: {JSON}",
    "react_thought": "You are a specialist. Reply with a short thought and the next action as: Thought: ... / "
    "Action: NAME / Action Input: {JSON}",
    "text": "You are a specialist. Reply with the answer only.",
}


@dataclass(frozen=True)
class ReactStep:
    """One text-format tool use: the action and its input (a JSON value, or the raw text when not JSON), and
    the thought written before it (never part of agreement: two steps agree on what they do)."""

    action: str
    input: Any
    thought: str | None = field(default=None, compare=False)

    def canonical(self) -> str:
        return json.dumps({"action": self.action, "input": self.input}, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class OutputContract:
    """A task's answer shape; saved with the specialist (`to_dict`), read by every stage."""

    kind: str
    schema: dict[str, Any] | None = None  # json: the learned schema (the request's own, when it carries one)
    schema_source: str | None = None  # json: request | learned
    labels: tuple[str, ...] = ()  # label: the closed set, most frequent first
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)  # react: action -> input schema
    thought_words: int = 0  # react: keep the thought before the action, cut to this many words (0: dropped)
    max_tokens: int = 64  # the longest training answer's tokens, with room: the generation budget
    max_string: int = 160  # json/react: the longest string value seen, with room
    calls: int = 0  # training answers it was learned from
    conforming: int = 0  # of those, how many fit the contract (the rest are left out of training)
    reason: str = ""  # why this kind (shown in `downsize tasks`)

    @property
    def specialisable(self) -> bool:
        return self.kind in SPECIALISABLE

    @property
    def instruction(self) -> str:
        """The student's one-line system prompt for this kind (training and serving use the same)."""
        if self.kind == "react" and self.thought_words:
            return INSTRUCTIONS["react_thought"]
        return INSTRUCTIONS.get(self.kind, INSTRUCTIONS["text"])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> OutputContract:
        """A saved contract; a specialist saved before contracts existed answered tool calls."""
        if not data:
            return cls("tool_call")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["labels"] = tuple(values.get("labels") or ())
        return cls(**values)

    # -- the answer as text, both ways -------------------------------------------------------------------

    def target(self, response: dict[str, Any] | None) -> str | None:
        """The training target for a teacher's logged response; None when it does not fit the contract."""
        value = answer_of(self.kind, response)
        if value is None:
            return None
        return self.render(value)

    def render(self, value: Any) -> str | None:
        if self.kind == "tool_call":
            return render_target(value) if isinstance(value, ToolCall) else None
        if self.kind == "json":
            return compact_json(value)
        if self.kind == "label":
            return value if value in self.labels else None
        if self.kind == "react":
            assert isinstance(value, ReactStep)
            if self.actions and value.action not in self.actions:
                return None
            text = value.input if isinstance(value.input, str) else compact_json(value.input)
            thought = short_thought(value.thought, self.thought_words)
            return (
                f"Thought: {thought}\n" if thought else ""
            ) + f"Action: {value.action}\nAction Input: {text}"
        return str(value)

    def parse(self, text: str) -> Any:
        """The value a generated text stands for (ToolCall, JSON value, label, ReactStep, text); None if none."""
        if self.kind == "tool_call":
            return parse_target(text)
        if self.kind == "json":
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return None
        if self.kind == "label":
            return text.strip() if text.strip() in self.labels else None
        if self.kind == "react":
            return parse_react(text)
        return text.strip() or None

    # -- validation and serving --------------------------------------------------------------------------

    def validate(self, value: Any, request: dict[str, Any]) -> str | None:
        """None when a generated value may be served for this request; else why not (tool calls: decide/)."""
        if value is None:
            return "incomplete"
        if self.kind == "json":
            return _schema_problem(value, self.schema_for(request))
        if self.kind == "label":
            return None if value in self.labels else "unknown_label"
        if self.kind == "react":
            if value.action not in self.actions:
                return "unknown_action"
            if value.action not in request_text(request):
                return "action_not_offered"  # the agent's prompt no longer lists this tool
            return _schema_problem(value.input, self.actions[value.action])
        if self.kind == "text":
            return "empty" if not str(value).strip() else None
        return None

    def schema_for(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The JSON schema an answer to this request must follow: the request's own when it carries one."""
        if self.kind != "json":
            return None
        return response_format_schema(request) or self.schema

    def message(self, value: Any) -> dict[str, Any]:
        """The assistant message that serves a value (tool calls are wrapped by the router)."""
        text = self.render(value) if self.kind != "text" else str(value)
        return {"role": "assistant", "content": text, "refusal": None}

    def agrees(self, value: Any, response: dict[str, Any] | None) -> bool:
        """Strict agreement with the teacher's logged response (what calibration counts)."""
        reference = answer_of(self.kind, response)
        if value is None or reference is None:
            return False
        if self.kind == "tool_call":
            return bool(value.canonical() == reference.canonical())
        if self.kind == "json":
            return canonical_json(value) == canonical_json(reference)
        if self.kind == "react":
            return bool(value.canonical() == reference.canonical())
        if self.kind == "text":
            return normalise_text(str(value)) == normalise_text(str(reference))
        return bool(value == reference)


# -- reading a teacher's answer ----------------------------------------------------------------------------


def content_text(response: dict[str, Any] | None) -> str | None:
    """The text content of a logged response's first choice (None when it has none)."""
    message = response_message(response)
    content = message.get("content") if message else None
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) and content.strip() else None


def answer_of(kind: str, response: dict[str, Any] | None) -> Any:
    """The teacher's answer read as a kind's value; None when the response is not of that kind."""
    if kind == "tool_call":
        calls = tool_calls(response_message(response))
        return calls[0] if calls else None
    if tool_calls(response_message(response)):
        return None
    text = content_text(response)
    if text is None:
        return None
    if kind == "json":
        return parse_json_text(text)
    if kind == "react":
        return parse_react(text)
    return text.strip()


def parse_json_text(text: str) -> Any:
    """A JSON object or array written as the whole answer (a ```json fence allowed); None otherwise."""
    body = text.strip()
    if body.startswith("```"):
        body = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", body)
    if not body or body[0] not in "{[":
        return None
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def parse_react(text: str) -> ReactStep | None:
    """`Action: NAME` then `Action Input: ...` (a thought before it allowed); None for anything else."""
    found = _REACT.match(text)
    if found is None:
        return None
    raw = found.group("input").strip()
    if raw.startswith("```"):
        raw = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", raw)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    thought = _SPACES.sub(" ", found.group("thought") or "").strip() or None
    return ReactStep(found.group("action").strip().strip("`'\""), value, thought)


def short_thought(thought: str | None, words: int) -> str | None:
    """A thought cut to its first `words` words (None when none is kept)."""
    if not thought or words <= 0:
        return None
    return " ".join(thought.split()[:words]) or None


def response_format_schema(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a chat request asked for (`response_format` of type `json_schema`), if any."""
    fmt = request.get("response_format")
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return dict(schema) if isinstance(schema, Mapping) else None


def request_text(request: dict[str, Any]) -> str:
    """Every message's text content of a request, joined (to check an action is still offered)."""
    parts = []
    for m in request.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)


def canonical_json(value: Any) -> str:
    """JSON-normalised text: keys sorted, no spaces, integral floats written as integers (2.0 as 2)."""
    return json.dumps(_canonical_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_numbers(v) for v in value]
    return value


def normalise_text(text: str) -> str:
    """Text as compared by exact match: Unicode NFKC, case-folded, punctuation dropped, spaces collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_PUNCT)
    return _SPACES.sub(" ", folded).strip()


def _schema_problem(value: Any, schema: dict[str, Any] | None) -> str | None:
    if schema is None:
        return None
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"schema: {exc.message[:200]}"
    except jsonschema.SchemaError:
        return None  # the agent's own schema is malformed: nothing to hold the answer to
    return None


# -- learning a contract -----------------------------------------------------------------------------------


def learn_schema(values: Sequence[Any], max_enum: int = MAX_ENUM_VALUES) -> dict[str, Any]:
    """A JSON schema that every value fits: object keys (required when always present), types, small enums.

    A string field takes an enum only when its values repeat (at most `max_enum` distinct, each seen at least
    twice), so a field of names or summaries stays free text.
    """
    if not values:
        return {}
    types = {_json_type(v) for v in values}
    if types == {"integer", "number"}:
        types = {"number"}
    if len(types) > 1:
        return {}
    kind = types.pop()
    if kind == "object":
        keys = list(dict.fromkeys(k for v in values for k in v))
        props = {k: learn_schema([v[k] for v in values if k in v], max_enum) for k in keys}
        required = [k for k in keys if all(k in v for v in values)]
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    if kind == "array":
        return {"type": "array", "items": learn_schema([x for v in values for x in v], max_enum)}
    if kind == "string":
        counts = Counter(values)
        if len(counts) <= max_enum and len(values) >= 2 * len(counts) and min(counts.values()) >= 2:
            return {"type": "string", "enum": sorted(counts)}
        return {"type": "string"}
    return {"type": kind}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((_longest_string(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_longest_string(v) for v in value), default=0)
    return 0


def _thought_words(steps: Sequence[ReactStep]) -> tuple[int, int]:
    """(words a kept thought is cut to, steps with a thought): thoughts are kept when the teacher writes one
    before at least `KEEP_THOUGHT_SHARE` of its steps, cut to the third quartile of their lengths (at most
    `MAX_THOUGHT_WORDS`); 0 words: dropped."""
    lengths = sorted(len(s.thought.split()) for s in steps if s.thought)
    if not lengths or len(lengths) < KEEP_THOUGHT_SHARE * len(steps):
        return 0, len(lengths)
    third_quartile = lengths[min(len(lengths) - 1, (3 * len(lengths)) // 4)]
    return max(1, min(MAX_THOUGHT_WORDS, third_quartile)), len(lengths)


def _room(chars: int) -> int:
    """A generation budget in tokens for an answer of this many characters (about 3.5 a token), with room."""
    return max(16, int(math.ceil(chars / 3.5 * 1.25)) + 8)


def detect_contract(exchanges: Iterable[Exchange]) -> OutputContract:
    """The contract the teacher's answers follow, decided by the most specific kind most answers fit.

    Tool calls win when most answers are tool calls. Otherwise, on the text answers: JSON when nine in ten are
    a JSON value (or the requests ask for JSON), then text-format tool use when most are Action steps, then a
    label when the answers take few short values that repeat, then short text, else long text.
    """
    rows = [(ex.request, ex.response) for ex in exchanges]
    n = len(rows)
    if not n:
        return OutputContract("text", reason="no calls")
    called = sum(1 for _, r in rows if tool_calls(response_message(r)))
    if called * 2 > n:
        return OutputContract(
            "tool_call", calls=n, conforming=called, reason=f"{called} of {n} are tool calls"
        )
    texts = [(req, t) for req, r in rows if (t := content_text(r)) is not None]
    if not texts:
        return OutputContract("text", calls=n, reason="no text answers")
    asked = [
        req
        for req, _ in texts
        if (req.get("response_format") or {}).get("type") in ("json_schema", "json_object")
    ]
    # objects, or arrays (a teacher that writes a list); OpenAI's response_format asks for objects only
    parsed = [(req, v) for req, t in texts if isinstance(v := parse_json_text(t), dict | list)]
    if parsed and (len(parsed) * 10 >= len(texts) * 9 or len(asked) * 2 > len(texts)):
        values = [v for _, v in parsed]
        from_request = sum(1 for req, _ in parsed if response_format_schema(req) is not None)
        longest = max(len(compact_json(v)) for v in values)
        return OutputContract(
            "json",
            schema=learn_schema(values),
            schema_source="request" if from_request * 2 > len(parsed) else "learned",
            max_tokens=_room(longest),
            max_string=max(32, int(max(_longest_string(v) for v in values) * 1.5)),
            calls=n,
            conforming=len(parsed),
            reason=f"{len(parsed)} of {len(texts)} text answers are JSON"
            + (f", {from_request} under the request's schema" if from_request else ""),
        )
    steps = [s for _, t in texts if (s := parse_react(t)) is not None]
    finals = sum(1 for _, t in texts if _FINAL.match(t))
    if steps and len(steps) * 2 > len(texts):
        by_action: dict[str, list[Any]] = {}
        for s in steps:
            by_action.setdefault(s.action, []).append(s.input)
        words, thoughts = _thought_words(steps)
        contract = OutputContract(
            "react",
            actions={a: learn_schema(inputs) for a, inputs in by_action.items()},
            thought_words=words,
            max_string=max(32, int(max(_longest_string(s.input) for s in steps) * 1.5)),
            calls=n,
            conforming=len(steps),
            reason=f"{len(steps)} of {len(texts)} answers are Action steps"
            + (f" ({finals} final answers stay with the LLM)" if finals else "")
            + (
                f"; a thought before {thoughts} of them: "
                + (f"kept, cut to {words} words" if words else "dropped (too rare to lean on)")
                if thoughts
                else ""
            ),
        )
        longest = max(len(contract.render(s) or "") for s in steps)
        return replace(contract, max_tokens=_room(longest))
    answers = [t.strip() for _, t in texts]
    counts = Counter(answers)
    if (
        2 <= len(counts) <= MAX_LABELS
        and len(answers) >= 2 * len(counts)
        and max(len(a) for a in counts) <= MAX_LABEL_CHARS
    ):
        labels = tuple(a for a, _ in counts.most_common())
        return OutputContract(
            "label",
            labels=labels,
            max_tokens=_room(max(len(a) for a in labels)),
            calls=n,
            conforming=len(answers),
            reason=f"{len(answers)} answers take {len(labels)} distinct short values",
        )
    lengths = sorted(len(a) for a in answers)
    p90 = lengths[int(0.9 * (len(lengths) - 1))]
    if p90 / 4 <= SHORT_TEXT_TOKENS:
        return OutputContract(
            "text",
            max_tokens=_room(lengths[-1]),
            calls=n,
            conforming=len(answers),
            reason=f"free text, 90% under {p90} characters",
        )
    return OutputContract(
        "long_text",
        calls=n,
        conforming=len(answers),
        reason=f"long free text (90% under {p90} characters, over ~{SHORT_TEXT_TOKENS} tokens): stays with the LLM",
    )
