"""Reading OpenAI chat-completion shapes: what kind of answer a response is, and its tool calls."""

from __future__ import annotations

import json
from typing import Any

from downsize.types import ResponseKind, ToolCall


def response_message(response: dict[str, Any] | None) -> dict[str, Any] | None:
    """The first choice's message of a chat.completion, or None."""
    if not isinstance(response, dict):
        return None
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    return message if isinstance(message, dict) else None


def tool_calls(message: dict[str, Any] | None) -> list[ToolCall]:
    """Parsed tool calls of an assistant message; arguments that are not a JSON object become {}."""
    out = []
    for call in (message or {}).get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except (TypeError, json.JSONDecodeError):
            args = None
        out.append(ToolCall(name=str(fn.get("name", "")), arguments=args if isinstance(args, dict) else {}))
    return out


def describe_response(
    response: dict[str, Any] | None, status: int | None = 200
) -> tuple[ResponseKind, list[str]]:
    """Classify a response as tool_call / json / text / empty / error, with the names of tools called."""
    if status is not None and status >= 400:
        return "error", []
    message = response_message(response)
    if message is None:
        return ("error" if isinstance(response, dict) and "error" in response else "empty"), []
    calls = tool_calls(message)
    if calls:
        return "tool_call", [c.name for c in calls]
    content = message.get("content")
    if not content:
        return "empty", []
    if isinstance(content, str) and content.lstrip()[:1] in ("{", "["):
        try:
            json.loads(content)
            return "json", []
        except json.JSONDecodeError:
            pass
    return "text", []


def tool_names(request: dict[str, Any]) -> list[str]:
    """Names of the function tools a request offers."""
    names = []
    for tool in request.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict) and tool["function"].get("name"):
            names.append(str(tool["function"]["name"]))
    return names


def completion(message: dict[str, Any], model: str, created: int, completion_id: str) -> dict[str, Any]:
    """Wrap an assistant message as a chat.completion object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
    }
