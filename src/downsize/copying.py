"""Copied arguments: parameters whose value the teacher always copies from the conversation.

On the airline agent's logs every `reservation_id` and `user_id` gpt-4o ever passed appears verbatim earlier in the
conversation (377 of 377 and 120 of 120 calls), yet a 135M student writes ids that were never there
(`FQ8QW` for `FQ8APE`). Such parameters are learned from the training calls (`learn_copied`): a string
parameter qualifies when the teacher's value is an identifier-like token (`token_shape`) found in the
conversation in at least `min_rate` of at least `min_calls` calls. At generation the grammar then allows
only the identifier tokens of that shape which the request's conversation contains (`restrict_schemas`),
so the student chooses among real ids instead of spelling one, and its confidence is a choice among them.
The prompt also lists those candidates, marking the ones already used (`options_line`): the pruned prompt
has lost the lookup result that listed them.

Spans go further (`learn_spans`): a string parameter, at any depth (`flights[].date`), whose value is a
word-aligned span of the conversation in at least `min_rate` of the training calls (names, places, flight
numbers and dates as written) may only take such a span at generation (`restrict_schemas` marks its schema
with `SPAN_KEY` and the conversation's text; `backends/grammar.py` enforces it). A small student otherwise
rewrites what it should copy ("Tel Aviv, CA" for the user's "Tel Aviv, Israel"). A top-level parameter
name that is a span across at least two tools (`location`, `city`, `company_name`) is also learned under the
key `ANY_TOOL`: it then applies to any tool with a plain string parameter of that name, tools never seen in
training included (an agent whose tools each appear a few times, as in BFCL), unless the tool's own calls
showed it is not a span (a `!`-prefixed path under the tool).

Standard library only; the result is saved beside the adapter as `copied.json`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from downsize.prompting import token_shape
from downsize.types import ToolCall

COPIED_FILE = "copied.json"
_WORD = re.compile(r"[A-Za-z0-9_]+")

# {tool: {parameter: sorted shapes of the values the teacher copied}}
Copied = dict[str, dict[str, list[str]]]
# {tool: sorted parameter paths whose value the teacher takes as a span of the conversation}; a path names
# nested values with `.` and array items with `[]`: `flights[].flight_number`
Spans = dict[str, list[str]]
# a string schema carrying this key may only take a word-aligned span of its text (the grammar's `span` node)
SPAN_KEY = "x-downsize-span-of"
ANY_TOOL = "*"  # Spans key of top-level parameter names learned across tools: they apply to any tool
NOT_SPAN = "!"  # prefix of a tool's own path its calls showed is no span (ANY_TOOL then does not apply)
_UNSPANNABLE = re.compile(r'["\\\x00-\x1f]+')  # a span never needs a JSON escape: cut the text there


def conversation_parts(messages: Iterable[dict[str, Any]]) -> Iterable[str]:
    """The texts of every non-system message (content, then earlier tool-call arguments), in order."""
    for message in messages:
        if message.get("role") in ("system", "developer"):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if isinstance(content, str):
            yield content
        for call in message.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str):
                yield arguments


def conversation_tokens(messages: Iterable[dict[str, Any]]) -> list[str]:
    """Word tokens of every non-system message (content and earlier tool-call arguments), in order."""
    return [token for part in conversation_parts(messages) for token in _WORD.findall(part)]


def conversation_text(messages: Iterable[dict[str, Any]]) -> str:
    """The non-system messages' text and earlier tool-call arguments, cut into escape-free pieces joined by a
    newline (which no span may cross): the text a span parameter's value must come from."""
    parts = conversation_parts(messages)
    pieces = (piece for part in parts for piece in _UNSPANNABLE.split(part))
    return "\n".join(piece for piece in pieces if piece.strip())


def _string_leaves(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    """(path, string) of every string inside a JSON value: `a.b`, `a[].b`."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _string_leaves(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for inner in value:
            yield from _string_leaves(inner, f"{path}[]")


def is_span(text: str, corpus: str) -> bool:
    """`text` occurs in `corpus` word-aligned at both ends (the grammar's own rule, `grammar.span_ends`)."""
    if not text or _UNSPANNABLE.search(text):
        return False
    word = re.compile(r"\w")
    pattern = (
        (r"(?<!\w)" if word.match(text[0]) else "")
        + re.escape(text)
        + (r"(?!\w)" if word.match(text[-1]) else "")
    )
    return re.search(pattern, corpus) is not None


def learn_spans(
    calls: Iterable[tuple[list[dict[str, Any]], ToolCall]],
    copied: Copied | None = None,
    min_calls: int = 8,
    min_rate: float = 0.95,
    min_tools: int = 2,
) -> Spans:
    """The string parameters whose value the teacher takes as a span of the conversation (identifiers already
    in `copied` are left to their stricter rule): per tool, and by top-level name across at least `min_tools`
    tools (`ANY_TOOL`), each on at least `min_calls` calls at `min_rate`."""
    seen: dict[tuple[str, str], list[bool]] = defaultdict(list)
    by_name: dict[str, list[bool]] = defaultdict(list)
    tools_of: dict[str, set[str]] = defaultdict(set)
    for messages, call in calls:
        corpus: str | None = None
        for path, value in _string_leaves(call.arguments):
            if path in (copied or {}).get(call.name, {}):
                continue
            if corpus is None:
                corpus = conversation_text(messages)
            hit = is_span(value, corpus)
            seen[(call.name, path)].append(hit)
            if "." not in path and "[]" not in path:
                by_name[path].append(hit)
                tools_of[path].add(call.name)

    def holds(hits: list[bool]) -> bool:
        return len(hits) >= min_calls and sum(hits) / len(hits) >= min_rate

    pooled = [n for n, hits in sorted(by_name.items()) if len(tools_of[n]) >= min_tools and holds(hits)]
    spans: Spans = {}
    for (tool, path), hits in sorted(seen.items()):
        if holds(hits):
            spans.setdefault(tool, []).append(path)
        elif path in pooled and len(hits) >= min_calls:  # its own calls overrule the cross-tool name
            spans.setdefault(tool, []).append(NOT_SPAN + path)
    if pooled:
        spans[ANY_TOOL] = pooled
    return spans


def span_paths(spans: Spans, tool: str, schema: Mapping[str, Any]) -> list[str]:
    """The paths of `tool` (parameters `schema`) taken as spans: its own, then the cross-tool names it has."""
    own = spans.get(tool, [])
    refused = {p[len(NOT_SPAN) :] for p in own if p.startswith(NOT_SPAN)}
    paths = [p for p in own if not p.startswith(NOT_SPAN)]
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if isinstance(props, Mapping):
        paths += [n for n in spans.get(ANY_TOOL, []) if n in props and n not in refused and n not in paths]
    return paths


def _mark_span(schema: Any, path: list[str], corpus: str) -> Any:
    """The schema with the string at `path` (keys, `[]` for array items) marked as a span of `corpus`."""
    if not isinstance(schema, dict):
        return schema
    if not path:
        plain = schema.get("type") == "string" and "enum" not in schema and "const" not in schema
        return {**schema, SPAN_KEY: corpus} if plain else schema
    head, rest = path[0], path[1:]
    if head == "[]":
        items = schema.get("items")
        return {**schema, "items": _mark_span(items, rest, corpus)} if isinstance(items, dict) else schema
    props = schema.get("properties")
    if not isinstance(props, dict) or head not in props:
        return schema
    return {**schema, "properties": {**props, head: _mark_span(props[head], rest, corpus)}}


def _path_parts(path: str) -> list[str]:
    """`flights[].date` -> ["flights", "[]", "date"]."""
    parts: list[str] = []
    for key in path.split("."):
        name, _, arrays = key.partition("[]")
        parts.append(name)
        parts += ["[]"] * (1 + arrays.count("[]")) if key.endswith("[]") else []
    return parts


def learn_copied(
    calls: Iterable[tuple[list[dict[str, Any]], ToolCall]], min_calls: int = 8, min_rate: float = 0.98
) -> Copied:
    """The parameters the teacher copies: from (conversation before the call, the teacher's call) pairs."""
    seen: dict[tuple[str, str], list[bool]] = defaultdict(list)
    shapes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for messages, call in calls:
        tokens: set[str] | None = None
        for param, value in call.arguments.items():
            if not isinstance(value, str):
                continue
            shape = token_shape(value)
            if shape is None or _WORD.fullmatch(value) is None:
                seen[(call.name, param)].append(False)
                continue
            if tokens is None:
                tokens = set(conversation_tokens(messages))
            seen[(call.name, param)].append(value in tokens)
            shapes[(call.name, param)].add(shape)
    copied: Copied = {}
    for (tool, param), hits in sorted(seen.items()):
        if len(hits) >= min_calls and sum(hits) / len(hits) >= min_rate:
            copied.setdefault(tool, {})[param] = sorted(shapes[(tool, param)])
    return copied


def restrict_schemas(
    schemas: Mapping[str, dict[str, Any]],
    copied: Copied,
    messages: list[dict[str, Any]],
    spans: Spans | None = None,
) -> dict[str, dict[str, Any]]:
    """The tools' schemas with each copied parameter narrowed to the matching tokens of this conversation,
    and each span parameter marked with the conversation's text.

    A parameter keeps its schema when the conversation holds no token of its shapes (nothing to copy), or
    when the schema is not a plain string property.
    """
    if spans:
        corpus = conversation_text(messages)
        if corpus:
            marked = dict(schemas)
            for tool, schema in schemas.items():
                for path in span_paths(spans, tool, schema):
                    marked[tool] = _mark_span(marked[tool], _path_parts(path), corpus)
            schemas = marked
    if not copied:
        return dict(schemas)
    tokens: list[str] | None = None
    out: dict[str, dict[str, Any]] = {}
    for tool, schema in schemas.items():
        params = copied.get(tool)
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not params or not isinstance(props, dict):
            out[tool] = schema
            continue
        if tokens is None:
            tokens = conversation_tokens(messages)
        new_props = dict(props)
        for param, param_shapes in params.items():
            prop = props.get(param)
            if not isinstance(prop, dict) or prop.get("type") != "string" or "enum" in prop:
                continue
            allowed = set(param_shapes)
            candidates = sorted({t for t in tokens if token_shape(t) in allowed})
            if candidates:
                new_props[param] = {**prop, "enum": candidates}
        out[tool] = {**schema, "properties": new_props}
    return out


def options_line(messages: list[dict[str, Any]], copied: Copied, max_options: int = 8) -> str:
    """One prompt line naming, per copied parameter, the conversation's candidate values in order of first
    appearance, `*` marking those an earlier call already used: `reservation_id: ZFA04Y* 8JX2WO H8Q05L`.

    A pruned prompt keeps only the last few turns, so the student no longer sees the list of reservations a
    lookup returned, nor which of them it already fetched; gpt-4o fetches the first one not yet fetched in
    94% of such calls (docs/log.md, 2026-12-02). "" when there is nothing to list.
    """
    shapes: dict[str, set[str]] = defaultdict(set)
    for params in copied.values():
        for param, param_shapes in params.items():
            shapes[param].update(param_shapes)
    if not shapes:
        return ""
    tokens = conversation_tokens(messages)
    used = set()
    for message in messages:
        for call in message.get("tool_calls") or []:
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str):
                used.update(_WORD.findall(arguments))
    parts = []
    for param in sorted(shapes):
        options = list(dict.fromkeys(t for t in tokens if token_shape(t) in shapes[param]))[:max_options]
        if options:
            parts.append(f"{param}: " + " ".join(o + ("*" if o in used else "") for o in options))
    return "; ".join(parts)


def save_copied(
    folder: str | Path, copied: Copied, in_prompt: bool = True, spans: Spans | None = None
) -> Path:
    """`in_prompt`: the student was trained with `options_line` in its prompt (so it must be served with it)."""
    path = Path(folder) / COPIED_FILE
    data = {"parameters": copied, "in_prompt": in_prompt, "spans": spans or {}}
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


def load_spans(folder: str | Path | None) -> Spans:
    """The span parameters saved beside an adapter ({} for specialists trained before spans were learned)."""
    path = Path(folder) / COPIED_FILE if folder else None
    if path is None or not path.is_file():
        return {}
    spans = json.loads(path.read_text()).get("spans") or {}
    return {str(tool): sorted(str(p) for p in paths) for tool, paths in spans.items()}


def load_copied(folder: str | Path | None) -> tuple[Copied, bool]:
    """(copied parameters, whether the prompt lists their options) saved beside an adapter; ({}, False) for
    specialists trained before them."""
    path = Path(folder) / COPIED_FILE if folder else None
    if path is None or not path.is_file():
        return {}, False
    data = json.loads(path.read_text())
    copied = {
        str(tool): {str(p): [str(s) for s in shapes] for p, shapes in params.items()}
        for tool, params in (data.get("parameters") or {}).items()
    }
    return copied, bool(data.get("in_prompt"))
