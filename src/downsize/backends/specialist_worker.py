"""The specialist out of the gateway's process: a small HTTP worker that owns the model (torch lives here),
and the client the gateway's router uses to reach it. The gateway process never imports torch.

Worker: `POST /generate` `{messages, tools, stop_below, tool, response_format}` -> a Generation as JSON; `GET /health`.
Client: `RemoteRuntime(url)` implements the router's `SpecialistRuntime` over loopback HTTP (stdlib only:
the router calls it from its own thread, one request at a time).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from downsize.errors import DownsizeError, UpstreamError
from downsize.types import Generation, ToolCall


def _float(value: float) -> float | str:
    return value if math.isfinite(value) else ("-inf" if value < 0 else "inf")


def generation_to_json(gen: Generation) -> dict[str, Any]:
    return {
        "text": gen.text,
        "call": {"name": gen.call.name, "arguments": gen.call.arguments} if gen.call else None,
        "min_logprob": _float(gen.min_logprob),
        "mean_logprob": _float(gen.mean_logprob),
        "tokens": gen.tokens,
        "stopped_early": gen.stopped_early,
        "complete": gen.complete,
    }


def generation_from_json(data: dict[str, Any]) -> Generation:
    """A worker's generation; its `value` is read again from the text by the caller's contract (`complete`)."""
    call = data.get("call")
    parsed = ToolCall(call["name"], call["arguments"]) if call else None
    return Generation(
        text=str(data["text"]),
        call=parsed,
        min_logprob=float(data["min_logprob"]),
        mean_logprob=float(data["mean_logprob"]),
        tokens=int(data["tokens"]),
        stopped_early=bool(data.get("stopped_early")),
        complete=bool(data.get("complete")),
    )


def create_worker_app(runtime: Any) -> Any:
    """The worker's ASGI app (one generation at a time, in a thread).

    `runtime` is one loaded runtime, or a function from a specialist id to its runtime: a worker then hosts
    several specialists, each made on its first request.
    """
    import asyncio
    from functools import partial

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    lock = asyncio.Lock()

    async def generate(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            messages, tools = body["messages"], body["tools"]
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"expected JSON with messages and tools ({exc})"}, status_code=400)
        async with lock:
            try:
                chosen = runtime
                if callable(runtime):
                    chosen = await asyncio.to_thread(runtime, body.get("specialist"))
                fmt = body.get("response_format")  # only JSON specialists read it
                extra = {"response_format": fmt} if fmt else {}
                gen = await asyncio.to_thread(
                    partial(
                        chosen.generate, messages, tools, body.get("stop_below"), body.get("tool"), **extra
                    )
                )
            except (ValueError, DownsizeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(generation_to_json(gen))

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/generate", generate, methods=["POST"]), Route("/health", health)])


class RemoteRuntime:
    """A SpecialistRuntime served by a worker process over loopback HTTP."""

    def __init__(self, url: str, timeout_s: float = 30.0, specialist: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.specialist = specialist  # which of the worker's specialists (None: a one-specialist worker)

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop_below: float | None = None,
        tool: str | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Generation:
        payload = {
            "messages": messages,
            "tools": tools,
            "stop_below": stop_below,
            "tool": tool,
            "response_format": response_format,
            "specialist": self.specialist,
        }
        request = urllib.request.Request(
            f"{self.url}/generate",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return generation_from_json(json.loads(response.read()))
        except (urllib.error.URLError, TimeoutError, ValueError, KeyError) as exc:
            raise UpstreamError(f"the specialist worker at {self.url} failed: {exc}") from exc


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the gateway dies, however it dies.

    uvicorn re-raises SIGTERM after its graceful shutdown, so the gateway's own clean-up may never run.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def start_worker(
    specialists: list[str], db: str | None, port: int, wait_s: float = 180.0, engine: str = "auto"
) -> subprocess.Popen[bytes]:
    """Start `downsize specialist-worker` for these specialists as a child process; wait until it answers
    /health (each specialist's model loads on its first request).

    `engine`: transformers (reference), llamacpp (GGUF + GGUF LoRA), or auto (each specialist's own).
    """
    command = [
        sys.executable,
        "-m",
        "downsize.cli.main",
        "specialist-worker",
        *specialists,
        "--port",
        str(port),
        "--engine",
        engine,
    ]
    if db:
        command += ["--db", db]
    proc = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UpstreamError(
                f"the specialist worker exited with code {proc.returncode} before it was ready"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            time.sleep(0.5)
    proc.terminate()
    raise UpstreamError(f"the specialist worker did not answer within {wait_s:.0f} s")
