"""Fuzzing the gateway's endpoints with hypothesis, the app in-process (Starlette's TestClient).

Invariant for every request, however malformed: the status is below 500, and a 4xx carries an
OpenAI-shaped error (`{"error": {"message", "type", "param", "code"}}` with a non-empty message), so that
every OpenAI client surfaces it; at the end the gateway still answers, and no exchange failed to store.

Inputs: raw bytes, arbitrary JSON, near-valid chat requests with any field swapped for any JSON value,
truncated and deeply nested JSON, odd metadata headers, and the admin endpoints with random keys, limits
and bodies, plus unknown paths and methods. About 200 cases here; `benchmarks/fuzz_gateway.py` reuses these
strategies for 10,000+.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette import testclient
from starlette.testclient import TestClient

from downsize.config import GatewayConfig
from downsize.gateway.app import create_app
from downsize.store.store import Store
from fault_upstream import FaultUpstream

AGENT_KEY = "agent-key-0123456789abcdef"
READER_KEY = "reader-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
KEY_ENV = {"FUZZ_AGENT_KEY": AGENT_KEY, "FUZZ_READER_KEY": READER_KEY, "FUZZ_ADMIN_KEY": ADMIN_KEY}
MAX_BODY = 256 * 1024

# -- strategies ------------------------------------------------------------------------------------------

# st.text() leaves out lone surrogates, which JSON can carry ("\\ud800") and UTF-8 cannot encode
odd_text = st.text(max_size=20) | st.text(
    alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), min_size=1, max_size=4
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "function", "", "USER"])
tool = st.fixed_dictionaries(
    {"type": st.just("function") | json_values},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.text(max_size=12) | json_values},
            optional={"parameters": json_values, "description": st.text(max_size=20)},
        )
        | json_values
    },
)
message = st.fixed_dictionaries(
    {"role": roles | json_values},
    optional={
        "content": st.text(max_size=40) | odd_text | json_values,
        "tool_calls": st.lists(json_values, max_size=2),
        "tool_call_id": st.text(max_size=8),
        "name": st.text(max_size=8),
    },
)
near_valid = st.fixed_dictionaries(
    {"messages": st.lists(message | json_values, max_size=4) | json_values},
    optional={
        "model": st.sampled_from(["gpt-4o-mini", ""]) | json_values,
        "stream": st.booleans() | json_values,
        "tools": st.lists(tool, max_size=3) | json_values,
        "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
        "n": st.integers(-2, 5) | json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
        "user": st.text(max_size=20) | json_values,
        "temperature": json_values,
    },
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _truncated(data: tuple[bytes, int]) -> bytes:
    body, cut = data
    return body[: cut % (len(body) + 1)]


chat_bodies = st.one_of(
    near_valid.map(_dumps),
    json_values.map(_dumps),
    st.binary(max_size=120),
    st.tuples(near_valid.map(_dumps), st.integers(0, 10_000)).map(_truncated),
    st.integers(1, 50_000).map(lambda depth: b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"),
    st.integers(1, 3_000).map(  # a valid request nested deep inside: parsed, forwarded, and stored
        lambda depth: b'{"messages": [{"role": "user", "content": ' + b"[" * depth + b"]" * depth + b"}]}"
    ),
    st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
header_values = st.binary(max_size=300).map(
    lambda raw: bytes(b for b in raw if 32 <= b < 127 or b >= 160) or b"x"
)
meta_headers = st.dictionaries(
    st.sampled_from(
        [
            "X-Downsize-Agent",
            "X-Downsize-Session",
            "X-Downsize-Task",
            "Content-Type",
            "X-Upstream-Authorization",
        ]
    ),
    header_values,
    max_size=3,
)
any_authorization = st.one_of(
    st.none(),
    st.sampled_from([f"Bearer {k}" for k in (AGENT_KEY, READER_KEY, ADMIN_KEY)]),
    header_values.map(lambda v: b"Bearer " + v),
    header_values,
)
limits = st.one_of(
    st.integers(-5, 2000).map(str), st.text(max_size=8), st.sampled_from(["²", "١٠", "0x10", "1e3", " 5"])
)
paths = st.one_of(
    st.sampled_from(
        [
            "/v1/chat/completions",
            "/v1/models",
            "/health",
            "/metrics",
            "/v1/downsize/outcomes",
            "/v1/downsize/exchanges",
            "/v1/downsize/specialists",
            "/v1/embeddings",
            "/",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), max_size=30).map(
        lambda s: "/" + s
    ),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


# -- the invariant ---------------------------------------------------------------------------------------


@dataclass
class FuzzStats:
    """Cases run per endpoint family, and the statuses seen (so that a run shows what it exercised)."""

    cases: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    def note(self, family: str, status: int) -> None:
        self.cases[family] = self.cases.get(family, 0) + 1
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def check(response: httpx.Response, what: str) -> None:
    """No 5xx; a 4xx is an OpenAI-shaped error with a message."""
    status = response.status_code
    assert status < 500, f"{what}: {status} {response.text[:300]}"
    if status >= 400 and response.request.method != "HEAD":
        payload = response.json()
        assert isinstance(payload, dict) and set(payload) == {"error"}, f"{what}: {payload}"
        error = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}, f"{what}: {error}"
        assert isinstance(error["message"], str) and error["message"], f"{what}: {error}"
        assert isinstance(error["type"], str) and error["type"], f"{what}: {error}"


class FuzzTarget:
    """Two gateways in-process over one ok-upstream: one open (no keys), one with agent/reader/admin keys."""

    def __init__(self, upstream_url: str, db_dir: Path) -> None:
        self.stats = FuzzStats()
        self.stores: list[Store] = []
        self.clients: list[TestClient] = []
        for name, keys in (
            ("open", []),
            ("keyed", [{"role": e.split("_")[1].lower(), "env": e} for e in KEY_ENV]),
        ):
            store = Store.open(f"sqlite:///{db_dir / f'fuzz-{name}.db'}")
            config = GatewayConfig(
                upstream=upstream_url,
                upstream_retries=0,
                upstream_timeout_s=10,
                max_body_bytes=MAX_BODY,
                gateway_keys=keys,
            )
            client = TestClient(create_app(config, store), raise_server_exceptions=False)
            client.__enter__()
            self.stores.append(store)
            self.clients.append(client)
        self.open, self.keyed = self.clients

    def close(self) -> None:
        for client in self.clients:
            client.__exit__(None, None, None)
        for store in self.stores:
            store.close()

    def chat(self, body: bytes, headers: dict[str, bytes]) -> None:
        response = self.open.post("/v1/chat/completions", content=body, headers=headers)
        check(response, f"POST /v1/chat/completions {body[:200]!r} {headers}")
        if response.status_code == 200:
            kind = response.headers["content-type"]
            assert kind.startswith(("application/json", "text/event-stream")), kind
        self.stats.note("chat", response.status_code)

    def admin(self, path: str, authorization: bytes | str | None, limit: str, body: bytes) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        if path == "/v1/downsize/outcomes":
            response = self.keyed.post(path, content=body, headers=headers)
        elif path == "/v1/downsize/exchanges":
            response = self.keyed.get(path, params={"limit": limit}, headers=headers)
        else:
            response = self.keyed.get(path, headers=headers)
        check(response, f"{path} limit={limit!r} auth={authorization!r} body={body[:100]!r}")
        self.stats.note("admin", response.status_code)

    def anywhere(self, method: str, path: str, body: bytes, keyed: bool) -> None:
        client = self.keyed if keyed else self.open
        try:
            response = client.request(method, path, content=body if method not in ("GET", "HEAD") else None)
        except testclient.httpx.InvalidURL:  # the HTTP client the TestClient is built on refuses it
            return  # nothing reached the gateway
        check(response, f"{method} {path!r}")
        self.stats.note("paths", response.status_code)

    def check_healthy(self) -> None:
        """The gateways still answer, and nothing they accepted failed to reach the store."""
        for client in self.clients:
            health = client.get("/health")
            assert health.status_code == 200
            app = client.app
            writer = app.state.writer  # type: ignore[attr-defined]
            assert writer.flush(30)
            assert (writer.failed, writer.dropped) == (0, 0), "exchanges failed to store"


admin_paths = st.sampled_from(
    ["/v1/downsize/outcomes", "/v1/downsize/exchanges", "/v1/downsize/specialists", "/metrics", "/health"]
)
outcome_bodies = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"session": st.text(max_size=300) | odd_text | json_values, "success": json_values}
    ).map(_dumps),
    st.binary(max_size=80),
    json_values.map(_dumps),
)


# -- the tests -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    mp = pytest.MonkeyPatch()
    for name, value in KEY_ENV.items():
        mp.setenv(name, value)
    upstream = FaultUpstream(record=False).start()
    fuzz = FuzzTarget(upstream.base_url, tmp_path_factory.mktemp("fuzz"))
    yield fuzz
    fuzz.close()
    upstream.stop()
    mp.undo()


FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@FUZZ
@given(body=chat_bodies, headers=meta_headers)
def test_fuzz_chat_completions(target: FuzzTarget, body: bytes, headers: dict[str, bytes]) -> None:
    target.chat(body, headers)


@settings(FUZZ, max_examples=50)
@given(path=admin_paths, authorization=any_authorization, limit=limits, body=outcome_bodies)
# found by fuzzing: "²".isdigit() is true but int("²") fails; a lone surrogate cannot be stored (both were 500)
@example(path="/v1/downsize/exchanges", authorization=f"Bearer {READER_KEY}", limit="²", body=b"")
@example(
    path="/v1/downsize/outcomes",
    authorization=f"Bearer {AGENT_KEY}",
    limit="1",
    body=b'{"session": "\\ud800", "success": true}',
)
def test_fuzz_admin_endpoints(
    target: FuzzTarget, path: str, authorization: bytes | None, limit: str, body: bytes
) -> None:
    target.admin(path, authorization, limit, body)


@settings(FUZZ, max_examples=30)
@given(method=methods, path=paths, body=st.binary(max_size=40), keyed=st.booleans())
def test_fuzz_paths_and_methods(target: FuzzTarget, method: str, path: str, body: bytes, keyed: bool) -> None:
    target.anywhere(method, path, body, keyed)


def test_gateway_healthy_after_fuzzing(target: FuzzTarget) -> None:
    target.chat(_dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}), {})
    target.check_healthy()
    assert target.stats.total >= 1
