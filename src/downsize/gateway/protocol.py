"""The OpenAI wire format as the gateway needs it: errors, request parsing, and SSE rendering of a completion."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from downsize.errors import InvalidRequestError

_EXAMPLE = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'


# -- errors ----------------------------------------------------------------------------------------------


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error the way OpenAI's API shapes it, so every OpenAI client surfaces the message."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# -- request parsing -------------------------------------------------------------------------------------


async def read_body(request: Request, max_bytes: int, content_length: int | None = None) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    too_large = InvalidRequestError(
        f"the request body is larger than the gateway's limit of {max_bytes} bytes: "
        "send fewer or shorter messages, or raise max_body_bytes in the gateway config",
        status=413,
    )
    if content_length is not None and content_length > max_bytes:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise too_large
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_chat_request(body: bytes) -> dict[str, Any]:
    """Parse and minimally validate a chat-completion request; InvalidRequestError says what to fix.

    Only what the gateway itself relies on is checked (the upstream validates the rest): a JSON object,
    a non-empty `messages` array of objects with a string `role`, and the types of `model`, `tools`
    and `stream`. `null` counts as absent for the optional fields.
    """
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            f"send a JSON object such as {_EXAMPLE}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # bad UTF-8, or nesting too deep to parse
        raise InvalidRequestError(
            f"the request body is not valid JSON ({type(exc).__name__}): send UTF-8 JSON such as {_EXAMPLE}"
        ) from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError(
            f"the request body must be a JSON object, not {_json_type(payload)}: send e.g. {_EXAMPLE}"
        )
    messages = payload.get("messages")
    if messages is None:
        raise InvalidRequestError(
            "'messages' is missing: send a non-empty array of message objects, e.g. "
            '"messages": [{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    if not isinstance(messages, list):
        raise InvalidRequestError(
            f"'messages' must be an array of message objects, not {_json_type(messages)}: "
            'e.g. "messages": [{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    if not messages:
        raise InvalidRequestError(
            "'messages' is an empty array: send at least one message, e.g. "
            '[{"role": "user", "content": "Hello"}]',
            param="messages",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(
                f"messages[{i}] must be an object such as "
                f'{{"role": "user", "content": "Hello"}}, not {_json_type(message)}',
                param=f"messages[{i}]",
            )
        role = message.get("role")
        if not isinstance(role, str):
            what = "has no 'role'" if role is None else f"has a 'role' that is {_json_type(role)}"
            raise InvalidRequestError(
                f"messages[{i}] {what}: give every message a string role "
                '("system", "user", "assistant" or "tool")',
                param=f"messages[{i}].role",
            )
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError(
            f"'model' must be a string such as \"gpt-4o-mini\", not {_json_type(model)}", param="model"
        )
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequestError(
            f"'tools' must be an array of tool objects such as "
            f'[{{"type": "function", "function": {{"name": "...", "parameters": {{...}}}}}}], '
            f"not {_json_type(tools)}",
            param="tools",
        )
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError(
            f"'stream' must be true or false, not {_json_type(stream)} ({json.dumps(stream)[:40]})",
            param="stream",
        )
    return payload


# -- responses -------------------------------------------------------------------------------------------


def completion_events(response: dict[str, Any], include_usage: bool = False) -> bytes:
    """A chat.completion rendered as the SSE `chat.completion.chunk` stream OpenAI clients expect.

    Per choice: one chunk with the role, content and every tool call (each with its `index`), then one
    with the finish reason; then the usage chunk if asked for; then `[DONE]`.
    """
    base: dict[str, Any] = {
        "id": response.get("id"),
        "object": "chat.completion.chunk",
        "created": response.get("created"),
        "model": response.get("model"),
    }
    if response.get("system_fingerprint"):
        base["system_fingerprint"] = response["system_fingerprint"]
    events: list[dict[str, Any]] = []
    for choice in response.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        events.append(
            {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]}
        )
        finish = choice.get("finish_reason") or ("tool_calls" if message.get("tool_calls") else "stop")
        events.append(
            {**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}]}
        )
    if include_usage and response.get("usage") is not None:
        events.append({**base, "choices": [], "usage": response["usage"]})
    out = [b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n" for event in events]
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def parse_outcome(body: bytes) -> tuple[str, bool]:
    """`{"session": str, "success": bool}` from a POST /v1/downsize/outcomes body; InvalidRequestError if not."""
    example = '{"session": "order-1234#1", "success": true}'
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            f"the body is not valid JSON ({type(exc).__name__}): send {example}"
        ) from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError(f"the body must be a JSON object such as {example}")
    session, success = payload.get("session"), payload.get("success")
    if not isinstance(session, str) or not session:
        raise InvalidRequestError(
            f"'session' must be the non-empty X-Downsize-Session value of the workflow, e.g. {example}",
            param="session",
        )
    if not session.isascii():
        try:
            session.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON may carry a lone surrogate ("\ud800"); no store can keep it
            raise InvalidRequestError(
                "'session' must be valid Unicode text, without lone surrogates (\\ud800-\\udfff)",
                param="session",
            ) from exc
    if not isinstance(success, bool):
        raise InvalidRequestError(
            f"'success' must be true or false, not {_json_type(success)}", param="success"
        )
    return session, success
