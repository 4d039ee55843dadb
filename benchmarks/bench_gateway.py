"""Gateway overhead: direct to an instant upstream vs through downsize vs through LiteLLM proxy.

Run: `python benchmarks/bench_gateway.py` (`make bench-gateway` installs nginx, wrk, hypothesis and LiteLLM
first). Writes bench-results/gateway.json and prints a table. Loopback only; every load loop is bounded in
requests and time.

Setup, all on this machine:
- upstream: nginx (Debian) answering every POST /v1/chat/completions at once with a fixed chat.completion
  (`return 200 '...'`, one worker, no access log); without nginx, `tests/fault_upstream.py` in its own
  process (raw asyncio sockets, uvloop).
- downsize: `downsize serve --no-route` in its own process, one worker, default capture (async, every
  exchange written to a SQLite store in WAL mode). After the run the gateway is stopped (SIGTERM drains the
  queue) and the stored rows are counted against the requests sent to it and the requests it answered.
- LiteLLM: `litellm --config ... --num_workers 1` from its own virtualenv, an `openai/` model pointing at
  the same upstream (skipped, with a message, when it is not installed).

Load, in separate processes:
- fixed rates (open loop): an aiohttp client (uvloop) sends request i at t0 + i/rate whatever happened to
  the previous ones, and measures latency from that intended time (so a stall counts against the target,
  no coordinated omission). Latency added by a proxy = its percentile minus the direct percentile of the
  run just before or after it.
- highest rate (closed loop): `--connections` (16) keep-alive connections sending back to back for
  `--max-duration` seconds: wrk (C, one thread, a Lua script that counts the requests it sends) when
  installed, else an aiohttp client. The rate a target "sustains" is this throughput when no request
  failed; after errors the run is repeated at half the connections until one is error-free.

The targets run interleaved: per repetition, each phase (every rate, then max) runs direct, downsize and
LiteLLM back to back, in an order that rotates between repetitions; the figures are medians over
repetitions. Load on the machine before and after is recorded. Finally `benchmarks/fuzz_gateway.py` runs
its 10,000+ fuzz cases and its counts go into the same JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench-results" / "gateway.json"
VENV_BIN = Path(sys.executable).parent
LITELLM_CANDIDATES = ("/tmp/litellm-venv/bin/litellm",)
LITELLM_INSTALL = "python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'"

MODEL = "bench-model"
REQUEST = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are an airline customer service agent."},
        {"role": "user", "content": "Hi, I am sara_doe_496 and I want to change my flight."},
    ],
}
RESPONSE = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I help you with your reservation today?",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 42, "completion_tokens": 12, "total_tokens": 54},
    "system_fingerprint": "fp_bench",
}
# One key for every target: LiteLLM's master key (it refuses to start without one), forwarded by downsize.
API_KEY = "sk-bench-5f1c0e9a7b3d42c88e6a1f0b9d2c4e7a"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}


# -- small helpers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0-100) of unsorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total > 0 else 0.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(float(parts[i]) for i in (11, 12, 13, 14)) / ticks


def post_once(url: str, timeout: float = 5.0) -> float:
    """One chat completion; its latency in seconds (raises on failure)."""
    request = urllib.request.Request(
        f"{url}/chat/completions", data=json.dumps(REQUEST).encode(), headers=HEADERS, method="POST"
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
        if response.status != 200 or b"choices" not in body:
            raise RuntimeError(f"unexpected answer {response.status}: {body[:200]!r}")
    return time.perf_counter() - started


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before answering")
        try:
            post_once(url, timeout=5)
            return
        except (OSError, RuntimeError, urllib.error.URLError) as exc:
            last = exc
            time.sleep(0.25)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s ({last})")


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM the process group this script started for `proc` (a graceful stop), SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def launch(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(ROOT)
        )


# -- the processes under test ----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str  # base URL ending in /v1
    proc: subprocess.Popen[bytes] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def start_upstream(tmp: Path) -> Target:
    """nginx answering the fixed completion; the Python fault upstream when nginx is not installed."""
    port = free_port()
    nginx = nginx_binary()
    if nginx is not None:
        body = json.dumps(RESPONSE, separators=(",", ":"))
        models = json.dumps(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        )
        assert "'" not in body + models and "$" not in body + models  # nginx quoting and variables
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / "nginx" / sub).mkdir(parents=True, exist_ok=True)
        conf = tmp / "nginx" / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
daemon off;
pid {tmp}/nginx/nginx.pid;
error_log {tmp}/nginx/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx/body;
  proxy_temp_path {tmp}/nginx/proxy;
  fastcgi_temp_path {tmp}/nginx/fastcgi;
  uwsgi_temp_path {tmp}/nginx/uwsgi;
  scgi_temp_path {tmp}/nginx/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_max_body_size 16m;
  server {{
    listen 127.0.0.1:{port};
    location = /v1/chat/completions {{ default_type application/json; return 200 '{body}'; }}
    location = /v1/models {{ default_type application/json; return 200 '{models}'; }}
  }}
}}
"""
        )
        proc = launch([nginx, "-p", str(tmp / "nginx"), "-c", str(conf)], tmp / "nginx.log")
        kind = f"nginx ({subprocess.run([nginx, '-v'], capture_output=True, text=True).stderr.strip()})"
    else:
        proc = launch(
            [sys.executable, str(ROOT / "tests" / "fault_upstream.py"), str(port)], tmp / "upstream.log"
        )
        kind = "tests/fault_upstream.py (nginx not installed: `apt-get install -y nginx`)"
    target = Target("direct", f"http://127.0.0.1:{port}/v1", proc, {"upstream": kind})
    wait_ready(target.url, proc, 30, "the upstream")
    return target


def start_downsize(tmp: Path, upstream: Target) -> Target:
    port = free_port()
    db = tmp / "downsize-bench.db"
    env = {**os.environ, "DOWNSIZE_HOME": str(tmp / "home")}
    cmd = [
        str(VENV_BIN / "downsize"),
        "serve",
        "--upstream",
        upstream.url,
        "--no-route",
        "--db",
        f"sqlite:///{db}",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = launch(cmd, tmp / "downsize.log", env)
    target = Target(
        "downsize", f"http://127.0.0.1:{port}/v1", proc, {"db": str(db), "command": " ".join(cmd)}
    )
    wait_ready(target.url, proc, 60, "downsize")
    return target


def litellm_binary(given: str | None) -> str | None:
    for candidate in (given, os.environ.get("LITELLM_BIN"), *LITELLM_CANDIDATES, shutil.which("litellm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def start_litellm(tmp: Path, upstream: Target, binary: str) -> Target:
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream.url}
      api_key: {API_KEY}
general_settings:
  master_key: {API_KEY}
"""
    )
    # The model cost map is fetched from the internet at start-up unless told to use the bundled copy.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    cmd = [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = launch(cmd, tmp / "litellm.log", env)
    version = subprocess.run(
        [
            str(Path(binary).parent / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = Target(
        "litellm", f"http://127.0.0.1:{port}/v1", proc, {"version": version, "command": " ".join(cmd)}
    )
    wait_ready(target.url, proc, 180, "LiteLLM proxy")
    return target


# -- load ------------------------------------------------------------------------------------------------


def run_client(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the aiohttp load client (this file with --load) in its own process; its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--load", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load client failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  sent = 0
  wrk.method = "POST"
  wrk.body = BODY
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer sk-bench-5f1c0e9a7b3d42c88e6a1f0b9d2c4e7a"
  req = wrk.format()
end
function request()
  sent = sent + 1
  return req
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("sent") end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"sent": %d, "completed": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    total, summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def run_wrk(url: str, connections: int, duration: float, tmp: Path) -> dict[str, Any]:
    script = tmp / "post.lua"
    script.write_text(f"BODY = {json.dumps(json.dumps(REQUEST))}\n" + WRK_SCRIPT)
    wrk = shutil.which("wrk")
    assert wrk is not None
    done = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{url}/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    raw = json.loads(line[len("WRK_JSON ") :])
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    seconds = raw["duration_us"] / 1e6
    ok = raw["completed"] - raw["status"]
    return {
        "client": "wrk",
        "sent": raw["sent"],
        "completed": raw["completed"],
        "ok": ok,
        "errors": errors,
        "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
        "rps": round(ok / seconds, 1) if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "seconds": round(seconds, 3),
    }


def closed_loop(url: str, connections: int, duration: float, client: str, tmp: Path) -> dict[str, Any]:
    if client == "wrk":
        return run_wrk(url, connections, duration, tmp)
    spec = {"mode": "closed", "url": url, "connections": connections, "duration": duration}
    return run_client(spec, duration + 120)


def open_loop(url: str, rate: float, duration: float, request_timeout: float) -> dict[str, Any]:
    spec = {"mode": "open", "url": url, "rate": rate, "duration": duration, "timeout": request_timeout}
    return run_client(spec, duration + request_timeout + 120)


# -- the load client (runs in its own process: `--load SPEC`) -------------------------------------------


async def _client_main(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url = spec["url"] + "/chat/completions"
    body = json.dumps(REQUEST).encode()
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 10)))
    connector = aiohttp.TCPConnector(limit=int(spec.get("limit", 256)), force_close=False)
    latencies: list[float] = []
    kinds: dict[str, int] = {}
    sent = ok = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(intended: float) -> None:
            nonlocal sent, ok
            sent += 1
            try:
                async with session.post(url, data=body, headers=HEADERS) as response:
                    data = await response.read()
                    good = response.status == 200 and b'"choices"' in data
                    if not good:
                        kinds[f"status_{response.status}"] = kinds.get(f"status_{response.status}", 0) + 1
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                good = False
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
            latencies.append((time.perf_counter() - intended) * 1000)
            if good:
                ok += 1

        # Warm-up: open the connections and let both ends settle (counted in `sent`, not in the figures).
        warm = int(spec.get("warmup", 100))
        for _ in range(max(1, warm // 4)):
            await asyncio.gather(*(one(time.perf_counter()) for _ in range(4)))
        warm_sent, sent, ok = sent, 0, 0
        latencies.clear()
        kinds.clear()
        duration = float(spec["duration"])
        started = time.perf_counter()
        late = 0
        if spec["mode"] == "open":
            rate = float(spec["rate"])
            count = int(rate * duration)
            tasks = []
            for i in range(count):
                intended = started + i / rate
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.005:
                    late += 1
                tasks.append(asyncio.ensure_future(one(intended)))
            await asyncio.gather(*tasks)
        else:
            deadline = started + duration

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    await one(time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(int(spec["connections"]))))
        elapsed = time.perf_counter() - started
    return {
        "client": "aiohttp",
        "sent": sent + warm_sent,
        "completed": sent + warm_sent,  # every request is awaited to its answer or its timeout
        "measured": sent,
        "ok": ok,
        "errors": sent - ok,
        "error_kinds": kinds,
        "rps": round(ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "late_sends": late,
        "seconds": round(elapsed, 3),
    }


def client_entry(spec_json: str) -> None:
    spec = json.loads(spec_json)
    try:
        import uvloop

        result = uvloop.run(_client_main(spec))
    except ImportError:
        result = asyncio.run(_client_main(spec))
    print(json.dumps(result))


# -- the benchmark ---------------------------------------------------------------------------------------


@contextmanager
def targets(tmp: Path, litellm: str | None) -> Iterator[list[Target]]:
    started: list[Target] = []
    try:
        upstream = start_upstream(tmp)
        started.append(upstream)
        started.append(start_downsize(tmp, upstream))
        if litellm is not None:
            started.append(start_litellm(tmp, upstream, litellm))
        yield started
    except (RuntimeError, OSError, subprocess.SubprocessError):
        for log in sorted(tmp.glob("*.log")):  # the temporary folder goes away: show why here
            print(f"--- {log.name} (last lines)\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        for target in reversed(started):
            if target.proc is not None:
                stop(target.proc)


def cool_down(target: Target, limit_s: float = 60.0) -> None:
    """After an overload, wait until the target answers a single request within a second again."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if post_once(target.url, timeout=10) < 1.0:
                return
        except (OSError, RuntimeError, urllib.error.URLError):
            time.sleep(0.5)


def max_rate(target: Target, args: argparse.Namespace, client: str, tmp: Path) -> dict[str, Any]:
    """Closed loop at --connections; after errors, again at half the connections until error-free."""
    connections = args.connections
    tries = []
    while True:
        result = closed_loop(target.url, connections, args.max_duration, client, tmp)
        result["connections"] = connections
        tries.append(result)
        if result["errors"] == 0 or connections == 1:
            break
        cool_down(target)
        connections //= 2
    best = tries[-1]
    return {**best, "sustained_rps": best["rps"] if best["errors"] == 0 else None, "tries": tries[:-1]}


def metric_total(url: str, name: str) -> float:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    litellm = None if args.no_litellm else litellm_binary(args.litellm)
    if litellm is None and not args.no_litellm:
        print(f"LiteLLM proxy not found: skipping it. Install it with:\n  {LITELLM_INSTALL}", file=sys.stderr)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    load_before = os.getloadavg()
    idle_before = cpu_times()
    time.sleep(3)
    baseline_busy = busy_share(idle_before, cpu_times())
    runs: list[dict[str, Any]] = []
    sent_to_downsize = completed_by_downsize = 0
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as name,
        targets(Path(name), litellm) as started,
    ):
        tmp = Path(name)
        downsize = started[1]
        order = list(started)
        phases: list[tuple[str, float | None]] = [(f"rate_{r:g}", r) for r in args.rates] + [("max", None)]
        comparison: dict[str, Any] = {}
        if args.compare_clients and shutil.which("wrk"):
            # Which closed-loop client leaves the most of the 2 cores to the server? Measured, not assumed.
            for target in (started[0], downsize):
                for name_ in ("wrk", "aiohttp"):
                    result = closed_loop(target.url, args.connections, args.max_duration, name_, tmp)
                    comparison[f"{target.name}/{name_}"] = {
                        k: result[k] for k in ("rps", "errors", "p50_ms", "p99_ms")
                    }
                    if target is downsize:
                        sent_to_downsize += result["sent"]
                        completed_by_downsize += result["completed"]
                    print(
                        f"client comparison: {target.name} with {name_}: {result['rps']:.0f} req/s",
                        flush=True,
                    )
        for rep in range(args.reps):
            rotated = order[rep % len(order) :] + order[: rep % len(order)]
            for phase, rate in phases:
                for target in rotated:
                    cpu_before = process_cpu_s(target.proc.pid) if target.proc else 0.0
                    machine_before = cpu_times()
                    if rate is None:
                        result = max_rate(target, args, client, tmp)
                    else:
                        result = open_loop(target.url, rate, args.duration, args.request_timeout)
                    result["cpu_busy_share"] = busy_share(machine_before, cpu_times())
                    if target.proc is not None and target.name != "direct":
                        spent = process_cpu_s(target.proc.pid) - cpu_before
                        total = result["sent"] + sum(t["sent"] for t in result.get("tries", []))
                        result["server_cpu_ms_per_request"] = (
                            round(1000 * spent / total, 3) if total else None
                        )
                    if target is downsize:
                        for part in [result, *result.get("tries", [])]:
                            sent_to_downsize += part["sent"]
                            completed_by_downsize += part["completed"]
                    runs.append({"rep": rep, "phase": phase, "target": target.name, **result})
                    print(_run_line(runs[-1]), flush=True)
                    if target.name == "litellm" and result["errors"]:
                        cool_down(target)
        # Capture check: what the gateway answered, then (after a draining stop) what it stored.
        sent_to_downsize += 1  # wait_ready's probe
        completed_by_downsize += 1
        answered = metric_total(downsize.url, "downsize_requests_total")
        assert downsize.proc is not None
        stop(downsize.proc)
        rows = _count_rows(Path(downsize.notes["db"]))
        capture = {
            "requests_sent": sent_to_downsize,
            "requests_completed": completed_by_downsize,
            "requests_answered": answered,
            "rows_stored": rows,
            # wrk stops hard: a request it wrote in its last instant may never be read by the gateway
            "every_exchange_stored": rows == answered
            and completed_by_downsize <= answered <= sent_to_downsize,
        }
        notes = {t.name: t.notes for t in started}
    figures = summarize(runs, [t.name for t in order if t.name != "direct"], args)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "busy_share_before_start": baseline_busy,
            "python": sys.version.split()[0],
        },
        "method": {
            "reps": args.reps,
            "rates": args.rates,
            "duration_s": args.duration,
            "max_duration_s": args.max_duration,
            "connections": args.connections,
            "closed_loop_client": client,
            "open_loop_client": "aiohttp (uvloop), latency from the intended send time",
            "request_timeout_s": args.request_timeout,
            "targets": notes,
            "closed_loop_client_comparison": comparison,
        },
        **figures,
        "capture": capture,
        "runs": runs,
    }


def _count_rows(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM exchanges").fetchone()[0])


def _run_line(run: dict[str, Any]) -> str:
    p50, p99 = run.get("p50_ms"), run.get("p99_ms")
    lat = f"p50 {p50:8.2f} ms  p99 {p99:8.2f} ms" if p50 is not None and p99 is not None else "no latency"
    return (
        f"rep {run['rep']}  {run['phase']:<9} {run['target']:<9} {run['rps']:9.1f} req/s  {lat}  "
        f"errors {run['errors']}  cpu {run['cpu_busy_share']:.0%}"
    )


def summarize(runs: list[dict[str, Any]], proxies: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Medians over repetitions; added latency = proxy percentile - direct percentile of the same repetition."""
    out: dict[str, Any] = {"by_phase": {}}
    by = {(r["rep"], r["phase"], r["target"]): r for r in runs}
    for rate in args.rates:
        phase = f"rate_{rate:g}"
        entry: dict[str, Any] = {}
        for name in ["direct", *proxies]:
            mine = [by[(rep, phase, name)] for rep in range(args.reps) if (rep, phase, name) in by]
            entry[name] = {
                "p50_ms": median([r["p50_ms"] for r in mine]),
                "p99_ms": median([r["p99_ms"] for r in mine]),
                "errors": sum(r["errors"] for r in mine),
                "achieved_rps": median([r["rps"] for r in mine]),
                "server_cpu_ms_per_request": median([r.get("server_cpu_ms_per_request") for r in mine]),
            }
            if name != "direct":
                for q in ("p50", "p99"):
                    added = [
                        by[(rep, phase, name)][f"{q}_ms"] - by[(rep, phase, "direct")][f"{q}_ms"]
                        for rep in range(args.reps)
                        if (rep, phase, name) in by and (rep, phase, "direct") in by
                    ]
                    entry[name][f"added_{q}_ms"] = median(added)
        out["by_phase"][phase] = entry
    maxes: dict[str, Any] = {}
    for name in ["direct", *proxies]:
        mine = [by[(rep, "max", name)] for rep in range(args.reps) if (rep, "max", name) in by]
        sustained = [r["sustained_rps"] for r in mine]
        maxes[name] = {
            "sustained_rps": median(sustained),
            "error_free_runs": sum(1 for s in sustained if s is not None),
            "runs": len(mine),
            "rps": [r["rps"] for r in mine],
            "connections": [r["connections"] for r in mine],
            "server_cpu_ms_per_request": median([r.get("server_cpu_ms_per_request") for r in mine]),
        }
    out["by_phase"]["max"] = maxes
    at500 = out["by_phase"].get("rate_500", {})
    for name in ("downsize", "litellm"):  # always present in the JSON; None when not measured
        out[f"{name}_added_ms_p50"] = out[f"{name}_added_ms_p99"] = out[f"{name}_max_rps"] = None
    for name in proxies:
        out[f"{name}_added_ms_p50"] = _round(at500.get(name, {}).get("added_p50_ms"))
        out[f"{name}_added_ms_p99"] = _round(at500.get(name, {}).get("added_p99_ms"))
        out[f"{name}_max_rps"] = _round(maxes[name]["sustained_rps"])
    out["direct_max_rps"] = _round(maxes["direct"]["sustained_rps"])
    d50, d99, dmax = (
        out.get("downsize_added_ms_p50"),
        out.get("downsize_added_ms_p99"),
        out.get("downsize_max_rps"),
    )
    lmax = out.get("litellm_max_rps")
    out["targets"] = {
        "downsize_added_p50_le_1ms_at_500": d50 is not None and d50 <= 1.0,
        "downsize_added_p99_le_5ms_at_500": d99 is not None and d99 <= 5.0,
        "downsize_ge_2000_rps_0_errors": dmax is not None and dmax >= 2000,
        "downsize_ge_10x_litellm": (dmax is not None and lmax is not None and lmax > 0 and dmax >= 10 * lmax)
        if lmax is not None
        else None,
    }
    return out


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def print_table(result: dict[str, Any]) -> None:
    phases = result["by_phase"]
    names = [n for n in ("direct", "downsize", "litellm") if n in phases["max"]]
    print()
    print(f"{'phase':<14}" + "".join(f"{n:>34}" for n in names))
    for phase, entry in phases.items():
        if phase == "max":
            continue
        cells = []
        for name in names:
            e = entry[name]
            cell = f"{_ms(e['p50_ms'])}/{_ms(e['p99_ms'])}"
            if name != "direct":
                cell += f" (+{_ms(e['added_p50_ms'])}/+{_ms(e['added_p99_ms'])})"
            if e["errors"]:
                cell += f" {e['errors']}err"
            cells.append(f"{cell:>34}")
        print(f"{phase.replace('rate_', '') + ' req/s':<14}" + "".join(cells) + "   p50/p99 ms (added)")
    cells = []
    for name in names:
        m = phases["max"][name]
        rps = m["sustained_rps"]
        cells.append(f"{(f'{rps:.0f} req/s' if rps is not None else 'errors'):>34}")
    print(f"{'max, 0 errors':<14}" + "".join(cells))
    print()
    for key, ok in result["targets"].items():
        print(f"  {key:<40} {'skipped' if ok is None else 'met' if ok else 'MISSED'}")
    c = result["capture"]
    print(
        f"  capture: {c['requests_sent']} sent to downsize, {c['requests_completed']} completed, "
        f"{c['requests_answered']:.0f} answered, "
        f"{c['rows_stored']} stored -> {'ok' if c['every_exchange_stored'] else 'MISMATCH'}"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_fuzz(cases: int) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(prefix="fuzz-", suffix=".json")[1])
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "fuzz_gateway.py"),
                "--cases",
                str(cases),
                "--json",
                str(out),
            ],
            cwd=str(ROOT),
            timeout=1800,
        )
        result = json.loads(out.read_text()) if out.stat().st_size else {}
        result["exit_code"] = done.returncode
        return result
    finally:
        out.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[100.0, 500.0])
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per fixed-rate run.")
    parser.add_argument("--max-duration", type=float, default=8.0, help="Seconds per closed-loop run.")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument("--client", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument(
        "--no-compare-clients",
        dest="compare_clients",
        action="store_false",
        help="Skip the closed-loop comparison of wrk and the aiohttp client at the start.",
    )
    parser.add_argument("--litellm", help="Path of the `litellm` executable (default: /tmp/litellm-venv).")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--fuzz-cases", type=int, default=10_000, help="0: skip the fuzz run.")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.load:
        client_entry(args.load)
        return
    started = time.time()
    result = run(args)
    if args.fuzz_cases:
        result["fuzz"] = run_fuzz(args.fuzz_cases)
    result["wall_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    if "fuzz" in result:
        f = result["fuzz"]
        print(
            f"  fuzz: {f.get('cases', 0)} cases, failures {f.get('failures', '?')}, exit {f.get('exit_code')}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
