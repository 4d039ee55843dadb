"""Tool schemas rendered compactly for a screen prompt, and the keys the call grammar lets each tool's arguments hold.

An untrained student has not learned the tools, so the screen's prompt carries them: a few lines a tool
(descriptions cut at a word boundary, enums shortened), or a one-line signature beside a few-shot example
whose tools differ from the question's. Accepts OpenAI `tools` entries and BFCL's bare function docs alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SchemaStyle:
    """How much of a tool schema the prompt keeps: descriptions are cut, enums shortened."""

    description_chars: int = 120
    param_description_chars: int = 80
    max_enum: int = 8


def shorten(text: Any, max_chars: int) -> str:
    """One line of at most about `max_chars`, cut at a word boundary with an ellipsis."""
    line = " ".join(str(text or "").split())
    if len(line) <= max_chars:
        return line
    cut = line[:max_chars].rsplit(" ", 1)[0] or line[:max_chars]
    return cut.rstrip(" ,.;:") + "…"


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The function of an OpenAI tool, or a bare function doc (BFCL's) as it is."""
    fn = tool.get("function")
    return fn if tool.get("type") == "function" and isinstance(fn, Mapping) else tool


def _parameters(fn: Mapping[str, Any]) -> Mapping[str, Any]:
    params = fn.get("parameters")
    return params if isinstance(params, Mapping) else {}


def _type_text(schema: Any, style: SchemaStyle, depth: int = 0) -> str:
    if not isinstance(schema, Mapping):
        return "any"
    if isinstance(schema.get("enum"), list):
        values = schema["enum"]
        shown = "|".join(json.dumps(v, ensure_ascii=False) for v in values[: style.max_enum])
        return shown + ("|…" if len(values) > style.max_enum else "")
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = "|".join(str(k) for k in kind)
    if kind == "array":
        items = schema.get("items")
        return f"array of {_type_text(items, style, depth + 1)}" if isinstance(items, Mapping) else "array"
    properties = schema.get("properties")
    if kind in ("object", "dict") and isinstance(properties, Mapping) and properties and depth < 2:
        required = set(schema.get("required") or [])
        inner = ", ".join(
            f"{name}{'*' if name in required else ''}: {_type_text(sub, style, depth + 1)}"
            for name, sub in properties.items()
        )
        return "{" + inner + "}"
    return str(kind or "any")


def render_tool(tool: Mapping[str, Any], style: SchemaStyle = SchemaStyle()) -> str:
    """A tool as a few lines: `name: description`, then `  param*: type = default - description` per parameter."""
    fn = _function(tool)
    description = shorten(fn.get("description"), style.description_chars)
    lines = [f"{fn.get('name', '')}: {description}" if description else str(fn.get("name", ""))]
    params = _parameters(fn)
    required = set(params.get("required") or [])
    for name, schema in (params.get("properties") or {}).items():
        line = f"  {name}{'*' if name in required else ''}: {_type_text(schema, style)}"
        if isinstance(schema, Mapping):
            if "default" in schema:
                line += f" = {json.dumps(schema['default'], ensure_ascii=False)}"
            text = shorten(schema.get("description"), style.param_description_chars)
            if text:
                line += f" - {text}"
        lines.append(line)
    return "\n".join(lines)


def render_tools(tools: Iterable[Mapping[str, Any]], style: SchemaStyle = SchemaStyle()) -> str:
    return "\n".join(render_tool(t, style) for t in tools)


def tool_signature(tool: Mapping[str, Any]) -> str:
    """`name(required*, optional)`: the one-line form shown with few-shot examples whose tools differ."""
    fn = _function(tool)
    params = _parameters(fn)
    required = set(params.get("required") or [])
    names = [f"{p}{'*' if p in required else ''}" for p in (params.get("properties") or {})]
    return f"{fn.get('name', '')}({', '.join(names)})"


def tool_name_set(tools: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(str(_function(t).get("name", "")) for t in tools)


def tool_params(tools: Iterable[Mapping[str, Any]]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{tool name: (property names, required names)}: what the grammar lets each tool's arguments hold."""
    out = {}
    for tool in tools:
        fn = _function(tool)
        params = _parameters(fn)
        known = tuple(str(k) for k in (params.get("properties") or {}))
        required = tuple(str(r) for r in (params.get("required") or []) if r in known)
        out[str(fn.get("name", ""))] = (known, required)
    return out
