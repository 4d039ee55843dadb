"""The specialist runs out of the gateway's process: worker app, HTTP client, and no torch in the gateway."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from downsize.backends.specialist_worker import RemoteRuntime, create_worker_app
from downsize.demo.servers import BackgroundServer, free_port
from downsize.errors import UpstreamError
from downsize.route.router import Router
from downsize.types import Generation, Specialist, ToolCall

TOOLS = [{"type": "function", "function": {"name": "get_user_details", "parameters": {"type": "object"}}}]


class Scripted:
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def generate(
        self, messages: Any, tools: Any, stop_below: float | None = None, tool: str | None = None
    ) -> Generation:
        self.seen.append((messages, tools, stop_below, tool))
        if stop_below is not None and stop_below > 0:
            return Generation("get_", None, -math.inf, -math.inf, 1, stopped_early=True)
        return Generation(
            'get_user_details {"user_id":"u1"}',
            ToolCall("get_user_details", {"user_id": "u1"}),
            -0.1,
            -0.05,
            9,
        )


def test_generations_round_trip_through_the_worker() -> None:
    runtime = Scripted()
    with BackgroundServer(create_worker_app(runtime)) as url:
        remote = RemoteRuntime(url)
        gen = remote.generate(
            [{"role": "user", "content": "id u1"}], TOOLS, stop_below=-0.5, tool="get_user_details"
        )
        assert gen == runtime.generate([], [], -0.5)
        assert runtime.seen[0][2:] == (-0.5, "get_user_details")
        cut = remote.generate([{"role": "user", "content": "x"}], TOOLS, stop_below=1.0)
        assert cut.stopped_early and cut.min_logprob == -math.inf and cut.call is None
        bad = urllib.request.Request(
            f"{url}/generate", data=b'{"messages": []}', headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(bad, timeout=5)
        assert info.value.code == 400 and "messages and tools" in json.loads(info.value.read())["error"]


def test_a_dead_worker_makes_the_router_fall_back() -> None:
    remote = RemoteRuntime(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(UpstreamError, match="specialist worker"):
        remote.generate([{"role": "user", "content": "x"}], TOOLS)
    sp = Specialist("tau", "tau", "smollm2-135m", "/x", {}, "h", id=1)
    outcome = Router.single(specialist=sp, runtime=remote, threshold=-1.0).route(
        {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    )
    assert (
        outcome.decision is not None
        and outcome.decision.reason == "specialist_error"
        and outcome.response is None
    )


def test_the_gateway_process_never_imports_torch() -> None:
    code = (
        "import sys, downsize.cli.main, downsize.gateway.app, downsize.gateway.server, downsize.route.loading, "
        "downsize.decide.gate, downsize.backends.specialist_worker; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
