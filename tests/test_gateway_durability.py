"""Durability of capture, proved on the real process: `python -m downsize.cli.main serve` in front of the
stub upstream (another process), concurrent load, then SIGTERM (everything queued is drained) or SIGKILL
mid-load (sync mode loses nothing acknowledged; async mode loses at most what arrived in the last flush
interval). Acknowledged = the client read a 200 for that request's X-Downsize-Session."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from downsize.store.store import Store

STUB = Path(__file__).with_name("upstream_stub.py")
PLANTED = "sk-durability-PLANTED-9e8d7c6b5a4f3e2d1c0b"
BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Where is my bag?"}]}
).encode()
INTERVAL_S = 0.05  # capture_interval_s in async mode (the default)
SLACK_S = 0.25  # one batch write plus scheduling jitter on a busy 2-core machine (measured: <= 40 ms)


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(STUB)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield f"http://127.0.0.1:{int(line.split()[-1])}/v1"
    finally:
        proc.kill()
        proc.wait(5)


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(tmp_path: Path, stub_url: str, mode: str, config: str = "") -> Gateway:
    port, db, log = _free_port(), tmp_path / f"{mode}.db", tmp_path / f"{mode}.log"
    config_file = tmp_path / f"{mode}.yaml"
    config_file.write_text(config or "{}\n")
    command = [
        sys.executable,
        "-m",
        "downsize.cli.main",
        "serve",
        "--config",
        str(config_file),
        "--upstream",
        stub_url,
        "--port",
        str(port),
        "--no-route",
        "--capture-mode",
        mode,
        "--db",
        f"sqlite:///{db}",
    ]
    env = {**os.environ, "DOWNSIZE_HOME": str(tmp_path)}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return Gateway(proc, url, db, log)
        except OSError:
            pass
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)


async def _load(
    url: str, workers: int, kill: Gateway | None, after_s: float
) -> tuple[dict[str, float], float]:
    """Send requests from `workers` loops, each with its own session id; SIGKILL `kill` after `after_s`.

    Returns {session: monotonic time its 200 was read} and the time of the kill (or of the end).
    """
    acked: dict[str, float] = {}
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        i = 0
        while not stop.is_set():
            sid = f"w{w}-{i}"
            i += 1
            headers = {
                "Content-Type": "application/json",
                "X-Downsize-Session": sid,
                "Authorization": f"Bearer {PLANTED}",
            }
            try:
                async with session.post(f"{url}/v1/chat/completions", data=BODY, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        acked[sid] = time.monotonic()
            except (aiohttp.ClientError, TimeoutError):
                return  # the gateway is gone

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=workers), timeout=timeout
    ) as session:
        tasks = [asyncio.create_task(worker(session, w)) for w in range(workers)]
        await asyncio.sleep(after_s)
        ended = time.monotonic()
        if kill is not None:
            kill.proc.send_signal(signal.SIGKILL)
            ended = time.monotonic()
        stop.set()
        await asyncio.gather(*tasks)
    return acked, ended


def _stored_sessions(db: Path) -> set[str]:
    store = Store.open(f"sqlite:///{db}")
    try:
        return {ex.session for ex in store.exchanges() if ex.session}
    finally:
        store.close()


def test_sigterm_drains_the_queue(tmp_path: Path, stub_url: str) -> None:
    # A 30 s flush interval: everything sent is still queued when the signal comes.
    gateway = _start(tmp_path, stub_url, "async", "capture_interval_s: 30\n")
    acked, _ = asyncio.run(_load(gateway.url, 8, None, 0.5))
    assert len(acked) > 20
    gateway.proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once shut down gracefully, so the exit status may say SIGTERM.
    assert gateway.proc.wait(15) in (0, -signal.SIGTERM)
    assert _stored_sessions(gateway.db) >= set(acked)
    log = gateway.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any("gateway stopped" in line["msg"] for line in lines), log
    assert PLANTED not in log and "PLANTED" not in log
    assert b"PLANTED" not in b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("async.db")
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_mid_load(tmp_path: Path, stub_url: str, mode: str) -> None:
    gateway = _start(tmp_path, stub_url, mode)
    acked, killed_at = asyncio.run(_load(gateway.url, 32, gateway, 1.2))
    gateway.proc.wait(5)
    assert len(acked) > 200, f"only {len(acked)} requests were acknowledged"
    lost = set(acked) - _stored_sessions(gateway.db)
    ages_ms = sorted((killed_at - acked[s]) * 1000 for s in lost)
    window = INTERVAL_S + SLACK_S
    recent = sum(1 for t in acked.values() if killed_at - t <= window)
    print(
        f"\n{mode}: {len(acked)} acknowledged, {len(lost)} lost"
        + (f", acknowledged {ages_ms[0]:.0f}-{ages_ms[-1]:.0f} ms before the kill" if lost else "")
        + f"; {recent} acknowledged in the last {window * 1000:.0f} ms"
    )
    if mode == "sync":
        assert not lost, f"sync mode lost {len(lost)} acknowledged exchanges"
    else:
        assert not ages_ms or ages_ms[-1] <= window * 1000, (
            "only the last flush interval's exchanges may be lost"
        )
        assert len(lost) <= recent


def test_the_serve_path_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from downsize.cli.main import main\n"
        "from downsize.config import GatewayConfig\n"
        "from downsize.gateway.app import create_app\n"
        "from downsize.gateway.server import uvicorn_config\n"
        "from downsize.route.loading import load_router\n"
        "from downsize.store.store import Store\n"
        "create_app(GatewayConfig(), Store.open('sqlite://'))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
