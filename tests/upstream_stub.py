"""A local OpenAI-compatible upstream for tests: fixed answers, real SSE streaming, on a loopback port.

It answers a tool call when the request offers tools (and `tool_choice` is not "none"), text otherwise,
and a 404 model_not_found error for the model "missing-model". Streams are written as real SSE chunks
with small pauses between writes, the tool call's arguments split across several deltas (one event even
split across two writes), so the gateway has to relay and reassemble what really goes over the wire.

Failure knobs for the fallback tests: `fail_status` answers that status (with an OpenAI-shaped error) to
the first `fail_times` chat requests (all of them when None); `delay_s` waits before answering.
`python tests/upstream_stub.py [PORT]` serves it in its own process and prints `listening on PORT`.

Also here, for every gateway test module: `free_socket()` and `RunningServer` (uvicorn in a thread).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

MODEL = "gpt-4o-mini-2024-07-18"
TEXT = "Hello! How can I help you with your reservation today?"
TOOL_NAME = "get_user_details"
TOOL_ARGS = '{"user_id": "sara_doe_496"}'
USAGE = {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
MISSING_MODEL = "missing-model"


def _wants_tool(body: dict[str, Any]) -> bool:
    return bool(body.get("tools")) and body.get("tool_choice") != "none"


def completion(body: dict[str, Any]) -> dict[str, Any]:
    if _wants_tool(body):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_stub_1",
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": TOOL_ARGS},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message, finish = {"role": "assistant", "content": TEXT}, "stop"
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": USAGE,
        "system_fingerprint": "fp_stub",
    }


def stream_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat.completion.chunk events of the answer to `body`."""
    base = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    if _wants_tool(body):
        pieces = [TOOL_ARGS[:5], TOOL_ARGS[5:14], TOOL_ARGS[14:]]
        events = [
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_stub_1",
                            "type": "function",
                            "function": {"name": TOOL_NAME, "arguments": ""},
                        }
                    ],
                }
            )
        ]
        events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
        events.append(chunk({}, "tool_calls"))
    else:
        words = TEXT.split(" ")
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        events.append(chunk({}, "stop"))
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        events.append({**base, "choices": [], "usage": USAGE})
    return events


def free_socket() -> socket.socket:
    """A loopback socket bound to a free port (pass it to the server, so no other process can take the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class RunningServer:
    """uvicorn serving `app` from a daemon thread, with the gateway's own uvicorn settings."""

    def __init__(self, config: Any, app: Any) -> None:
        import uvicorn

        from downsize.gateway.server import uvicorn_config

        self.sock = free_socket()
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn_config(config, app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.005)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@contextmanager
def serve_gateway(config: Any, store: Any, router: Any = None) -> Iterator[tuple[str, Any]]:
    """The gateway app for `config` on a loopback port: yields (base URL, app)."""
    from downsize.gateway.app import create_app

    app = create_app(config, store, router)
    with RunningServer(config, app) as url:
        yield url, app


class StubUpstream:
    """The stub server, run on its own event loop in a daemon thread. `requests` records what it received."""

    def __init__(
        self, fail_status: int | None = None, fail_times: int | None = None, delay_s: float = 0.0
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_status = fail_status
        self.fail_times = fail_times
        self.delay_s = delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="stub-upstream", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubUpstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(sock), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status is not None and (self.fail_times is None or self.fail_times > 0):
            if self.fail_times is not None:
                self.fail_times -= 1
            error = {
                "message": "the stub is failing on purpose",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            return web.json_response({"error": error}, status=self.fail_status, headers={"Retry-After": "0"})
        if body.get("model") == MISSING_MODEL:
            error = {
                "message": f"The model `{MISSING_MODEL}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
            return web.json_response({"error": error}, status=404)
        if not body.get("stream"):
            return web.json_response(completion(body))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for i, event in enumerate(stream_chunks(body)):
            data = b"data: " + json.dumps(event).encode() + b"\n\n"
            if i == 1:  # one event split across two writes: framing must survive TCP boundaries
                await response.write(data[:20])
                await asyncio.sleep(0.002)
                data = data[20:]
            await response.write(data)
            await asyncio.sleep(0.002)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append({"headers": dict(request.headers), "body": None})
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "stub"}]}
        )


def main() -> None:
    """Serve the stub in this process until killed (the gateway's subprocess tests and benchmarks)."""
    stub = StubUpstream()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    stub.port = sock.getsockname()[1]
    stub.requests = _Forgetful()
    print(f"listening on {stub.port}", flush=True)

    async def run() -> None:
        await stub._serve(sock)
        await asyncio.Event().wait()

    asyncio.run(run())


class _Forgetful(list[Any]):
    """A long-running stub must not keep every request it saw."""

    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()
