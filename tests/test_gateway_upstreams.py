"""Several upstreams in fallback order, retries with backoff, per-attempt timeouts, upstream keys, the
specialist timeout, and the gateway's config file."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from downsize.backends.upstream import UpstreamPool, retry_after_s
from downsize.config import GatewayConfig, load_gateway_config
from downsize.errors import ConfigError
from downsize.route.router import Router
from downsize.store.store import Store
from downsize.types import Generation, Specialist, ToolCall
from upstream_stub import MODEL, TEXT, TOOL_NAME, StubUpstream, free_socket, serve_gateway

AGENT_KEY = "sk-agent-7f3a9c1e5b2d4f6a8c0e"
MESSAGES: Any = [{"role": "user", "content": "Hi, I am sara_doe_496 and I want to change my flight."}]
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "parameters": {
                "type": "object",
                "properties": {"user_id": {"type": "string"}},
                "required": ["user_id"],
            },
        },
    }
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'downsize.db'}")
    yield store
    store.close()


@pytest.fixture
def stubs() -> Iterator[list[StubUpstream]]:
    """Started stubs, stopped after the test: `stubs.append(StubUpstream(...).start())`."""
    started: list[StubUpstream] = []
    yield started
    for stub in started:
        stub.stop()


def _config(primary: str, *fallbacks: Any, **values: Any) -> GatewayConfig:
    values.setdefault("upstream_timeout_s", 5)
    values.setdefault("backoff_base_s", 0.01)
    return GatewayConfig(upstream=primary, fallback_upstreams=list(fallbacks), **values)


def _client(url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=AGENT_KEY, max_retries=0, timeout=10, **kwargs)


def _dead_url() -> str:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_5xx_falls_back_to_the_next_upstream(stubs: list[StubUpstream], store: Store) -> None:
    failing = StubUpstream(fail_status=503).start()
    healthy = StubUpstream().start()
    stubs += [failing, healthy]
    with serve_gateway(_config(failing.base_url, healthy.base_url, upstream_retries=0), store) as (url, app):
        client = _client(url)
        assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == TEXT
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
        assert (len(failing.requests), len(healthy.requests)) == (2, 2)
        assert app.state.writer.flush(5)
        assert [(ex.upstream_status, ex.response_kind) for ex in store.exchanges()] == [(200, "text")] * 2
        text = _metrics(url)
        assert (
            f'downsize_upstream_attempts_total{{upstream="{failing.base_url}",outcome="status_503"}} 2'
            in text
        )
        assert f'downsize_upstream_attempts_total{{upstream="{healthy.base_url}",outcome="ok"}} 2' in text


def test_connect_error_and_timeout_fall_back(stubs: list[StubUpstream], store: Store) -> None:
    slow = StubUpstream(delay_s=2.0).start()
    healthy = StubUpstream().start()
    stubs += [slow, healthy]
    config = _config(_dead_url(), slow.base_url, healthy.base_url, upstream_retries=0, upstream_timeout_s=0.3)
    with serve_gateway(config, store) as (url, _):
        started = time.perf_counter()
        reply = _client(url).chat.completions.create(model="m", messages=MESSAGES)
        assert reply.choices[0].message.content == TEXT
        assert time.perf_counter() - started < 1.5, "the slow upstream was given up after its timeout"
        assert (len(slow.requests), len(healthy.requests)) == (1, 1)
        text = _metrics(url)
        assert 'outcome="error"} 1' in text and 'outcome="timeout"} 1' in text


def test_429_is_retried_with_backoff_on_the_same_upstream(stubs: list[StubUpstream], store: Store) -> None:
    limited = StubUpstream(fail_status=429, fail_times=2).start()
    stubs.append(limited)
    config = _config(limited.base_url, upstream_retries=2, backoff_base_s=0.1, backoff_max_s=1.0)
    with serve_gateway(config, store) as (url, _):
        started = time.perf_counter()
        reply = _client(url).chat.completions.create(model="m", messages=MESSAGES)
        elapsed = time.perf_counter() - started
        assert reply.choices[0].message.content == TEXT and len(limited.requests) == 3
        assert elapsed >= 0.05 + 0.1, "two jittered pauses of at least half of 0.1 s and 0.2 s"


def test_when_every_attempt_fails_the_last_answer_passes_through(
    stubs: list[StubUpstream], store: Store
) -> None:
    down = StubUpstream(fail_status=503).start()
    stubs.append(down)
    with serve_gateway(_config(down.base_url, upstream_retries=1), store) as (url, app):
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as caught:
                _client(url).chat.completions.create(model="m", messages=MESSAGES, stream=stream)
            assert caught.value.status_code == 503 and "failing on purpose" in caught.value.message
        assert len(down.requests) == 4
        assert app.state.writer.flush(5)
        assert [(ex.upstream_status, ex.response_kind) for ex in store.exchanges()] == [(503, "error")] * 2
    with serve_gateway(_config(_dead_url(), _dead_url(), upstream_retries=1), store) as (url, _):
        with pytest.raises(openai.APIStatusError) as unreachable:
            _client(url).chat.completions.create(model="m", messages=MESSAGES)
        assert unreachable.value.status_code == 502 and "could not be reached" in unreachable.value.message


def test_upstream_keys(stubs: list[StubUpstream], store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's key goes to upstreams without a key of their own; a fallback's own key replaces it there;
    the configured upstream key is used when the agent sends none."""
    failing = StubUpstream(fail_status=500).start()
    other = StubUpstream().start()
    stubs += [failing, other]
    monkeypatch.setenv("OTHER_PROVIDER_KEY", "sk-other-provider-0123456789")
    monkeypatch.setenv("DEFAULT_UPSTREAM_KEY", "sk-default-0123456789abcdef")
    config = _config(
        failing.base_url,
        {"url": other.base_url, "api_key_env": "OTHER_PROVIDER_KEY"},
        upstream_retries=0,
        upstream_api_key_env="DEFAULT_UPSTREAM_KEY",
    )
    with serve_gateway(config, store) as (url, _):
        _client(url).chat.completions.create(model="m", messages=MESSAGES)
        assert failing.requests[-1]["headers"]["Authorization"] == f"Bearer {AGENT_KEY}"
        assert other.requests[-1]["headers"]["Authorization"] == "Bearer sk-other-provider-0123456789"
        body = json.dumps({"model": "m", "messages": MESSAGES}).encode()
        request = urllib.request.Request(
            f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert failing.requests[-1]["headers"]["Authorization"] == "Bearer sk-default-0123456789abcdef"


def test_missing_key_variable_is_a_config_error(store: Store) -> None:
    from downsize.gateway.app import create_app

    with pytest.raises(ConfigError, match=r"\$NOT_SET_ANYWHERE"):
        create_app(_config("http://127.0.0.1:1/v1", upstream_api_key_env="NOT_SET_ANYWHERE"), store)


# -- the specialist timeout --------------------------------------------------------------------------------


class SlowRuntime:
    """A specialist that takes `seconds` to answer (a stuck model)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self.release = threading.Event()

    def generate(
        self, messages: Any, tools: Any, stop_below: float | None = None, tool: str | None = None
    ) -> Generation:
        self.calls += 1
        self.release.wait(self.seconds)
        return Generation(
            text="", call=ToolCall(TOOL_NAME, {"user_id": "x"}), min_logprob=-0.1, mean_logprob=-0.1, tokens=3
        )


def test_a_slow_specialist_falls_back_upstream(stubs: list[StubUpstream], store: Store) -> None:
    stub = StubUpstream().start()
    stubs.append(stub)
    specialist = Specialist("slow", "get_user_details", "smollm2-135m", "/none", {}, "0" * 64, status="live")
    store.add_specialist(specialist)
    runtime = SlowRuntime(5.0)
    router = Router.single(specialist, runtime, threshold=-1.0, task_tools=frozenset({TOOL_NAME}))
    config = _config(stub.base_url, specialist_timeout_s=0.2)
    with serve_gateway(config, store, router) as (url, app):
        client = _client(url)
        started = time.perf_counter()
        reply = client.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
        assert reply.model == MODEL and time.perf_counter() - started < 1.5
        started = time.perf_counter()  # the specialist is still busy: no second wait
        client.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
        assert time.perf_counter() - started < 0.2 and runtime.calls == 1
        runtime.release.set()
        assert app.state.writer.flush(5)
        assert [ex.route for ex in store.exchanges()] == ["fallback:specialist_timeout"] * 2
        decisions = store.route_decisions()
        assert [(d["reason"], d["served"], d["specialist_id"]) for d in decisions] == [
            ("specialist_timeout", False, specialist.id)
        ] * 2
        assert 'downsize_fallbacks_total{reason="specialist_timeout"} 2' in _metrics(url)


# -- config --------------------------------------------------------------------------------------------------


def test_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "upstream:\n"
        "  - https://primary.example/v1/\n"
        "  - url: https://secondary.example/v1\n"
        "    api_key_env: SECONDARY_KEY\n"
        "capture_mode: sync\n"
        "queue_policy: shed\n"
        "gateway_keys:\n"
        "  - {role: agent, env: AGENT_KEY}\n"
        "  - {role: reader, sha256: '" + "ab" * 32 + "'}\n"
        "route: {threshold: -2.5}\n"
    )
    config = load_gateway_config(path, port=9000, queue_policy=None)
    assert [(t.url, t.api_key_env) for t in config.upstreams] == [
        ("https://primary.example/v1", None),
        ("https://secondary.example/v1", "SECONDARY_KEY"),
    ]
    assert (config.capture_mode, config.queue_policy, config.port, config.route.threshold) == (
        "sync",
        "shed",
        9000,
        -2.5,
    )
    assert [k.role for k in config.gateway_keys] == ["agent", "reader"]
    flagged = load_gateway_config(
        path, upstream=["http://a.local/v1", "http://b.local/v1"], capture_mode="async"
    )
    assert [t.url for t in flagged.upstreams] == ["http://a.local/v1", "http://b.local/v1"]
    assert flagged.capture_mode == "async"


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"capture_mode": "eventually"}, "capture_mode must be one of"),
        ({"queue_policy": "drop"}, "queue_policy must be one of"),
        ({"upstream": "api.openai.com"}, "http(s) URLs"),
        ({"gateway_keys": [{"role": "root", "env": "X"}]}, "role must be one of"),
        ({"gateway_keys": [{"role": "agent"}]}, "exactly one of env"),
        ({"upstreem": "http://x/v1"}, "unknown GatewayConfig setting 'upstreem'"),
    ],
)
def test_bad_config_says_what_to_fix(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_gateway_config(None, **values)


def test_backoff_and_retry_after() -> None:
    pool = UpstreamPool([object()], backoff_base_s=0.2, backoff_max_s=1.0)  # type: ignore[list-item]
    for round_, cap in ((1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)):
        delays = [pool.backoff_s(round_) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays) and len(set(delays)) > 1
    assert pool.backoff_s(1, retry_after=0.7) >= 0.7
    assert pool.backoff_s(1, retry_after=30) <= 0.2, "a Retry-After beyond the cap is not waited for"
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"Retry-After": "2"}) == 2.0
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None


def test_serve_flags_are_checked_before_serving(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from downsize.cli.main import main

    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    for args, fragment in (
        ([], "give --upstream URL"),
        (["--upstream", "api.openai.com"], "http(s) URLs"),
        (
            ["--upstream", "http://127.0.0.1:1/v1", "--gateway-key", "agent"],
            "--gateway-key takes ROLE=ENV_VAR",
        ),
        (["--upstream", "http://127.0.0.1:1/v1", "--gateway-key", "agent=UNSET_VAR_XYZ"], "$UNSET_VAR_XYZ"),
    ):
        result = runner.invoke(main, ["serve", "--no-route", "--db", db, *args])
        assert result.exit_code == 1 and fragment in result.output, result.output
