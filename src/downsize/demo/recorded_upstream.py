"""A recorded stand-in for gpt-4o: an OpenAI-compatible server that answers each request with the response
gpt-4o gave to exactly those messages in the logs. gpt-4o itself cannot be reached here (and costs money);
replaying its logged answers is the honest substitute. A request it has no recording for gets a 404 error.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from downsize.store import Store


def messages_key(messages: list[dict[str, Any]]) -> str:
    """Key of a conversation: its messages as canonical JSON, hashed (tool-call ids and all)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def recordings(store: Store, source: str = "tau-airline") -> dict[str, dict[str, Any]]:
    """messages key -> the logged chat.completion, for every exchange of a source."""
    return {
        messages_key(ex.request.get("messages") or []): ex.response
        for ex in store.exchanges(source=source)
        if ex.response
    }


def create_recorded_upstream(
    recorded: dict[str, dict[str, Any]], model: str = "gpt-4o", behaviour: dict[str, Any] | None = None
) -> Starlette:
    """The recorded gpt-4o. `behaviour["alter"]`, when set (it is read on every request), changes each answer
    before it is sent: the scenario's drifted teacher."""
    behaviour = behaviour if behaviour is not None else {}

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("stream"):
            return JSONResponse(
                {
                    "error": {
                        "message": "the recorded upstream does not stream",
                        "type": "invalid_request_error",
                    }
                },
                400,
            )
        response = recorded.get(messages_key(body.get("messages") or []))
        if response is None:
            return JSONResponse(
                {"error": {"message": "no recorded response for these messages", "type": "not_found"}}, 404
            )
        alter = behaviour.get("alter")
        return JSONResponse({**(alter(response) if alter else response), "created": int(time.time())})

    async def models(_: Request) -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "recorded"}]}
        )

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    )
