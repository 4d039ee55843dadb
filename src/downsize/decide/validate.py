"""Validation of a generated tool call against the request's tool schemas."""

from __future__ import annotations

from typing import Any

import jsonschema

from downsize.types import ToolCall


def tool_schema(tools: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and fn.get("name") == name:
            params = fn.get("parameters")
            return params if isinstance(params, dict) else {"type": "object", "properties": {}}
    return None


def validate_call(call: ToolCall, tools: list[dict[str, Any]]) -> str | None:
    """None when the call names an offered tool and its arguments satisfy that tool's schema; else why not."""
    schema = tool_schema(tools, call.name)
    if schema is None:
        return "unknown_tool"
    missing = [p for p in schema.get("required", []) if p not in call.arguments]
    if missing:
        return f"missing_required: {', '.join(missing)}"
    try:
        jsonschema.validate(call.arguments, schema)
    except jsonschema.ValidationError as exc:
        return f"schema: {exc.message[:200]}"
    except jsonschema.SchemaError:
        pass  # the agent's own schema is malformed; the required-argument check above still held
    return None
