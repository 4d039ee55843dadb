"""A misbehaving OpenAI-compatible upstream for fault-injection tests, written on raw sockets.

aiohttp's test server cannot reset a connection or stop half-way through a chunked body on purpose, so
this one speaks HTTP/1.1 by hand (keep-alive, Content-Length requests, chunked SSE answers) and fails
exactly as told. Each `POST /v1/chat/completions` takes the next mode from `script`, then `default`:

- `ok`: the stub's answer (`upstream_stub.completion` / `stream_chunks`), streamed when the body asks;
  any body is accepted, so fuzzing never trips the upstream;
- `hang`: read the request, never answer;
- `status500`: an OpenAI-shaped 500 error;
- `reset`: read the request, then reset the connection (RST, no answer);
- `close`: read the request, then close the connection cleanly (FIN, no answer);
- `cut`: start the answer and reset the connection mid-way (a stream after `cut_after` events; a JSON
  body after half its bytes);
- `slow`: stream each event `pause_s` after the previous one (a JSON answer comes after `pause_s`);
- `stall`: stream `cut_after` events, then go silent;
- `garbage`: 200 with an HTML body.

`GET /v1/models` always answers. `python tests/fault_upstream.py [PORT]` serves the `ok` mode in its own
process (uvloop when installed) and prints `listening on PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream_stub import MODEL, completion, stream_chunks  # noqa: E402

MODES = ("ok", "hang", "status500", "reset", "close", "cut", "slow", "stall", "garbage")
ERROR_500 = {
    "error": {
        "message": "the upstream failed on purpose",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "fault"}]}


def _reason(status: int) -> str:
    return {200: "OK", 404: "Not Found", 500: "Internal Server Error"}.get(status, "Status")


def _json_head(status: int, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse_events(body: dict[str, Any]) -> list[bytes]:
    """The SSE events of the stub's answer to `body`, `[DONE]` last."""
    out = [b"data: " + json.dumps(event).encode() + b"\n\n" for event in stream_chunks(body)]
    out.append(b"data: [DONE]\n\n")
    return out


class FaultUpstream:
    """The server on its own event loop in a daemon thread. `seen` lists the mode each chat request got."""

    def __init__(
        self,
        script: Iterable[str] = (),
        default: str = "ok",
        pause_s: float = 0.05,
        cut_after: int = 2,
        record: bool = True,
    ) -> None:
        for mode in [*script, default]:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
        self.script: deque[str] = deque(script)
        self.default = default
        self.pause_s = pause_s
        self.cut_after = cut_after
        self.record = record
        self.seen: list[str] = []
        self.bodies: list[Any] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-upstream", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultUpstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(sock), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FaultUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._connection, sock=sock, backlog=1024)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _next_mode(self) -> str:
        return self.script.popleft() if self.script else self.default

    # -- one connection: requests until the client closes it or a fault ends it ------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length" and value.strip().isdigit():
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                if not await self._answer(method, path, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _answer(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must not be used again."""
        if method == "GET" and path.endswith("/models"):
            data = json.dumps(MODELS).encode()
            writer.write(_json_head(200, len(data)) + data)
            await writer.drain()
            return True
        if not (method == "POST" and path.endswith("/chat/completions")):
            data = json.dumps({"error": {"message": "not found", "type": "invalid_request_error"}}).encode()
            writer.write(_json_head(404, len(data)) + data)
            await writer.drain()
            return True
        mode = self._next_mode()
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        if self.record:
            self.seen.append(mode)
            self.bodies.append(payload)
        stream = payload.get("stream") is True
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "reset":
            self._reset(writer)
            return False
        if mode == "close":
            writer.close()
            return False
        if mode == "status500":
            data = json.dumps(ERROR_500).encode()
            writer.write(_json_head(500, len(data)) + data)
        elif mode == "garbage":
            data = b"<html><body>502 Bad Gateway (not JSON)</body></html>"
            writer.write(_json_head(200, len(data), "text/html") + data)
        elif stream:
            return await self._stream(mode, payload, writer)
        else:
            if mode == "slow":
                await asyncio.sleep(self.pause_s)
            data = json.dumps(completion(payload)).encode()
            if mode == "cut":
                writer.write(_json_head(200, len(data)) + data[: len(data) // 2])
                await writer.drain()
                self._reset(writer)
                return False
            writer.write(_json_head(200, len(data)) + data)
        await writer.drain()
        return True

    async def _stream(self, mode: str, payload: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        writer.write(_SSE_HEAD)
        for i, event in enumerate(sse_events(payload)):
            if mode in ("cut", "stall") and i == self.cut_after:
                await writer.drain()
                if mode == "cut":
                    self._reset(writer)
                    return False
                await asyncio.Event().wait()
            writer.write(_chunk(event))
            await writer.drain()
            if mode == "slow":
                await asyncio.sleep(self.pause_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        """Close with RST, not FIN: SO_LINGER with a zero timeout discards the socket at once."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


def main() -> None:
    """Serve the `ok` mode in this process until killed (benchmarks use it when nginx is missing)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    upstream = FaultUpstream(record=False)
    print(f"listening on {sock.getsockname()[1]}", flush=True)

    async def run() -> None:
        await asyncio.start_server(upstream._connection, sock=sock, backlog=4096)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
