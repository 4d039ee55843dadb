"""The gateway end to end: a real uvicorn server on a loopback port, a real local upstream, the official
`openai` client, and the exchanges read back from a real SQLite store."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette

from downsize.backends.upstream import reassemble_stream
from downsize.config import GatewayConfig
from downsize.errors import StoreError
from downsize.gateway.app import create_app
from downsize.gateway.writer import ExchangeWriter, Record
from downsize.route.router import Router
from downsize.store.store import Store
from downsize.types import Exchange, Generation, Specialist, ToolCall
from upstream_stub import (
    MISSING_MODEL,
    MODEL,
    TEXT,
    TOOL_ARGS,
    TOOL_NAME,
    USAGE,
    RunningServer,
    StubUpstream,
    free_socket,
)

API_KEY = "sk-test-PLANTED-7f3a9c1e5b2d4f6a8c0e"
MAX_BODY = 64 * 1024
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Get the details of a user, including their reservations.",
            "parameters": {
                "type": "object",
                "properties": {"user_id": {"type": "string"}},
                "required": ["user_id"],
            },
        },
    }
]
MESSAGES: Any = [
    {"role": "system", "content": "You are an airline agent."},
    {"role": "user", "content": "Hi, I am sara_doe_496 and I want to change my flight."},
]


_free_socket = free_socket


@dataclass
class Gateway:
    url: str
    app: Starlette
    store: Store
    db_path: Path

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=10, **kwargs)

    def exchanges(self) -> list[Exchange]:
        assert self.app.state.writer.flush(10)
        return list(self.store.exchanges())


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNSIZE_HOME", str(tmp_path))


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    server = StubUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'downsize.db'}")
    yield store
    store.close()


def _run(
    stub_url: str, store: Store, tmp_path: Path, router: Router | None = None, **config: Any
) -> Iterator[Gateway]:
    cfg = GatewayConfig(upstream=stub_url, max_body_bytes=MAX_BODY, upstream_timeout_s=5, **config)
    app = create_app(cfg, store, router)
    with RunningServer(cfg, app) as url:
        yield Gateway(url, app, store, tmp_path / "downsize.db")


@pytest.fixture
def gateway(stub: StubUpstream, store: Store, tmp_path: Path) -> Iterator[Gateway]:
    yield from _run(stub.base_url, store, tmp_path)


def _raw(url: str, method: str = "POST", body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _first_call(reply: Any) -> Any:
    """The first tool call of a ChatCompletion (typed loosely: the SDK's union types need no narrowing here)."""
    return reply.choices[0].message.tool_calls[0]


def _assert_openai_error(payload: dict[str, Any], *fragments: str) -> dict[str, Any]:
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


# -- the upstream path -------------------------------------------------------------------------------------


def test_text_not_streaming(gateway: Gateway, stub: StubUpstream) -> None:
    reply = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == TEXT
    assert stub.requests[-1]["body"] == {"model": "gpt-4o-mini", "messages": MESSAGES}
    [ex] = gateway.exchanges()
    assert (ex.source, ex.route, ex.response_kind, ex.tool_names, ex.is_hci) == (
        "gateway",
        "upstream",
        "text",
        [],
        True,
    )
    assert ex.request == {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert ex.response is not None and ex.response["choices"][0]["message"]["content"] == TEXT
    assert (ex.model, ex.upstream_status, ex.prompt_tokens, ex.completion_tokens) == (MODEL, 200, 42, 7)
    assert ex.latency_ms is not None and ex.latency_ms > 0
    assert ex.created_at is not None


def test_tool_call_not_streaming(gateway: Gateway) -> None:
    reply = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    call = _first_call(reply)
    assert (call.function.name, call.function.arguments) == (TOOL_NAME, TOOL_ARGS)
    [ex] = gateway.exchanges()
    assert (ex.route, ex.response_kind, ex.tool_names, ex.is_hci) == (
        "upstream",
        "tool_call",
        [TOOL_NAME],
        False,
    )


def test_text_streaming(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 5 and "".join(pieces) == TEXT
    [ex] = gateway.exchanges()
    assert ex.response is not None
    assert ex.response["object"] == "chat.completion"
    assert ex.response["choices"][0]["message"] == {"role": "assistant", "content": TEXT}
    assert ex.response["choices"][0]["finish_reason"] == "stop"
    assert (ex.route, ex.response_kind, ex.upstream_status, ex.request["stream"]) == (
        "upstream",
        "text",
        200,
        True,
    )


def test_tool_call_streaming(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    name, fragments, finish, usage = "", [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                name += (call.function and call.function.name) or ""
                if call.function and call.function.arguments:
                    fragments.append(call.function.arguments)
    assert len(fragments) == 3, "the stub splits the arguments over three deltas"
    assert (name, "".join(fragments), finish) == (TOOL_NAME, TOOL_ARGS, "tool_calls")
    assert usage is not None and usage.prompt_tokens == 42
    [ex] = gateway.exchanges()
    assert ex.response is not None and ex.response["object"] == "chat.completion"
    [choice] = ex.response["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_stub_1", "type": "function", "function": {"name": TOOL_NAME, "arguments": TOOL_ARGS}}
    ]
    assert ex.response["usage"] == USAGE
    assert (ex.response_kind, ex.tool_names, ex.prompt_tokens, ex.completion_tokens) == (
        "tool_call",
        [TOOL_NAME],
        42,
        7,
    )


def test_models_pass_through(gateway: Gateway) -> None:
    assert [m.id for m in gateway.client().models.list()] == [MODEL]


def test_upstream_errors_pass_through(gateway: Gateway) -> None:
    client = gateway.client()
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model=MISSING_MODEL, messages=MESSAGES, stream=stream)
        assert "does not exist" in caught.value.message
        assert caught.value.code == "model_not_found"
    exchanges = gateway.exchanges()
    assert [(ex.response_kind, ex.upstream_status, ex.route) for ex in exchanges] == [
        ("error", 404, "upstream")
    ] * 2
    assert exchanges[0].response is not None and exchanges[0].response["error"]["code"] == "model_not_found"


def test_api_key_forwarded_and_never_stored(gateway: Gateway, stub: StubUpstream) -> None:
    client = gateway.client(
        default_headers={
            "X-Downsize-Agent": "airline",
            "X-Downsize-Session": "s-1",
            "X-Downsize-Task": "lookup",
        }
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    client.models.list()
    assert [r["headers"].get("Authorization") for r in stub.requests[-3:]] == [f"Bearer {API_KEY}"] * 3
    assert all("X-Downsize-Agent" not in r["headers"] for r in stub.requests[-3:])
    exchanges = gateway.exchanges()
    assert [(ex.agent, ex.session, ex.task_hint) for ex in exchanges] == [("airline", "s-1", "lookup")] * 2
    gateway.store.close()  # checkpoint the WAL; then look at every byte the store wrote
    files = [p for p in gateway.db_path.parent.iterdir() if p.name.startswith("downsize.db")]
    assert files
    for path in files:
        assert API_KEY.encode() not in path.read_bytes(), path
        assert b"PLANTED" not in path.read_bytes(), path


# -- bad requests ----------------------------------------------------------------------------------------

OK_MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b'{"model": "gpt-4o", "messages": [', None, "not valid JSON"),
        (b"\xff\xfe\x00garbage", None, "not valid JSON"),
        (b'[{"role": "user"}]', None, "must be a JSON object, not an array"),
        (b'{"model": "gpt-4o"}', "messages", "'messages' is missing"),
        (
            b'{"messages": "hello"}',
            "messages",
            "'messages' must be an array of message objects, not a string",
        ),
        (b'{"messages": []}', "messages", "'messages' is an empty array"),
        (b'{"messages": ["hello"]}', "messages[0]", "messages[0] must be an object"),
        (
            b'{"messages": [{"role": "user"}, {"content": "x"}]}',
            "messages[1].role",
            "messages[1] has no 'role'",
        ),
        (b'{"messages": [{"role": 7}]}', "messages[0].role", "'role' that is a number"),
        (json.dumps({"messages": OK_MESSAGES, "model": 4}).encode(), "model", "'model' must be a string"),
        (
            json.dumps({"messages": OK_MESSAGES, "stream": "yes"}).encode(),
            "stream",
            "'stream' must be true or false",
        ),
        (
            json.dumps({"messages": OK_MESSAGES, "tools": {"a": 1}}).encode(),
            "tools",
            "'tools' must be an array",
        ),
    ],
)
def test_bad_requests_are_400(gateway: Gateway, body: bytes, param: str | None, fragment: str) -> None:
    status, payload = _raw(f"{gateway.url}/v1/chat/completions", body=body)
    assert status == 400
    error = _assert_openai_error(payload, fragment)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert gateway.exchanges() == []


def test_bad_request_through_openai_client(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model="gpt-4o-mini", messages=[])
    assert "'messages' is an empty array" in caught.value.message


def test_oversized_body_is_413(gateway: Gateway) -> None:
    big = json.dumps({"messages": [{"role": "user", "content": "x" * MAX_BODY}]}).encode()
    status, payload = _raw(f"{gateway.url}/v1/chat/completions", body=big)
    assert status == 413
    _assert_openai_error(payload, f"limit of {MAX_BODY} bytes")
    # Without a Content-Length (chunked), the limit holds while reading.
    conn = http.client.HTTPConnection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]), timeout=10)
    conn.request("POST", "/v1/chat/completions", body=iter([big[:1000], big[1000:]]), encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    _assert_openai_error(json.loads(response.read()), "larger than the gateway's limit")
    conn.close()
    assert gateway.exchanges() == []


def test_wrong_method_and_unknown_path(gateway: Gateway) -> None:
    status, payload = _raw(f"{gateway.url}/v1/chat/completions", method="GET")
    assert status == 405
    assert _assert_openai_error(payload, "GET is not allowed on /v1/chat/completions", "POST")["code"] == (
        "method_not_allowed"
    )
    status, payload = _raw(f"{gateway.url}/v1/embeddings", body=b"{}")
    assert status == 404
    _assert_openai_error(payload, "unknown path POST /v1/embeddings", "/v1/chat/completions")


def test_health(gateway: Gateway) -> None:
    status, payload = _raw(f"{gateway.url}/health", method="GET")
    assert status == 200
    assert payload["status"] == "ok" and payload["queue_depth"] == 0 and payload["specialists"] == []


def test_upstream_down_is_502(store: Store, tmp_path: Path) -> None:
    dead = _free_socket()
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    for gateway in _run(f"http://127.0.0.1:{port}/v1", store, tmp_path):
        client = gateway.client()
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=stream)
            assert caught.value.status_code == 502
            assert f"127.0.0.1:{port}/v1 could not be reached" in caught.value.message
        status, payload = _raw(f"{gateway.url}/v1/models", method="GET")
        assert status == 502
        assert _assert_openai_error(payload, "could not be reached")["code"] == "upstream_unreachable"
        exchanges = gateway.exchanges()
        assert [(ex.response_kind, ex.upstream_status, ex.route) for ex in exchanges] == [
            ("error", None, "upstream")
        ] * 2


# -- the writer ------------------------------------------------------------------------------------------


class _SlowStore(Store):
    def record_many(self, items: list[Record]) -> list[int]:
        time.sleep(0.5)
        return super().record_many(items)


def test_logging_does_not_hold_the_response(stub: StubUpstream, store: Store, tmp_path: Path) -> None:
    cfg = GatewayConfig(upstream=stub.base_url)
    app = create_app(cfg, _SlowStore(store.engine))
    with RunningServer(cfg, app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=10)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # warm the connections
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert time.perf_counter() - started < 0.3
    # Shutting down drained the queue into the store.
    assert store.count_exchanges() == 2


class _BrokenStore:
    def __init__(self) -> None:
        self.calls = 0

    def record_many(self, items: list[Record]) -> list[int]:
        self.calls += 1
        raise StoreError("disk full")


def _buggy_record() -> Record:
    raise RuntimeError("a bug while building a record")


def _record(i: int) -> Record:
    return Exchange(request={"messages": [{"role": "user", "content": str(i)}]}, response=None), None, None


def test_writer_counts_store_failures_and_never_raises() -> None:
    broken = _BrokenStore()
    writer = ExchangeWriter(broken)
    writer.start()
    assert writer.put(_record(1)) and writer.put(_record(2))
    assert writer.flush(5)
    assert (writer.failed, writer.written) == (2, 0)
    writer.put(_buggy_record)
    writer.close()
    assert writer.failed == 3 and not writer.running


def test_writer_batches_drops_when_full_and_drains_on_close(store: Store) -> None:
    writer = ExchangeWriter(store, max_queue=3)
    assert [writer.put(_record(i)) for i in range(5)] == [True, True, True, False, False]
    assert writer.dropped == 2 and writer.depth == 3
    writer.start()
    writer.put(lambda: _record(99))
    writer.close()
    assert store.count_exchanges() == 4 and writer.written == 4 and writer.depth == 0


# -- the router's served path ----------------------------------------------------------------------------

SPECIALIST_ARGS = {"user_id": "mia_li_3668"}


class FakeRuntime:
    """Stands in for the specialist model: a fixed generation, and which thread asked for it."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.threads: list[str] = []

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop_below: float | None = None,
        tool: str | None = None,
    ) -> Generation:
        self.threads.append(threading.current_thread().name)
        return self.generation


def _threads(router: Router) -> list[str]:
    runtime = router.slots[0].runtime
    assert isinstance(runtime, FakeRuntime)
    return runtime.threads


def _router(store: Store, min_logprob: float) -> Router:
    specialist = Specialist(
        name="airline-lookup",
        task="get_user_details",
        base_model="smollm2-135m",
        adapter_path="/nonexistent/adapter",
        config={},
        data_hash="0" * 64,
        status="live",
        threshold=-1.0,
    )
    store.add_specialist(specialist)
    text = json.dumps({"name": TOOL_NAME, "arguments": SPECIALIST_ARGS})
    generation = Generation(
        text=text,
        call=ToolCall(TOOL_NAME, SPECIALIST_ARGS),
        min_logprob=min_logprob,
        mean_logprob=min_logprob / 2,
        tokens=12,
    )
    return Router.single(
        specialist=specialist,
        runtime=FakeRuntime(generation),
        threshold=-1.0,
        task_tools=frozenset({TOOL_NAME}),
    )


@pytest.fixture
def confident(stub: StubUpstream, store: Store, tmp_path: Path) -> Iterator[tuple[Gateway, Router]]:
    router = _router(store, min_logprob=-0.2)
    for gateway in _run(stub.base_url, store, tmp_path, router=router):
        yield gateway, router


def test_served_by_the_specialist(confident: tuple[Gateway, Router], stub: StubUpstream) -> None:
    gateway, router = confident
    sent = len(stub.requests)
    client = gateway.client()
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    assert reply.model == "downsize/airline-lookup"
    call = _first_call(reply)
    assert (call.function.name, json.loads(call.function.arguments)) == (TOOL_NAME, SPECIALIST_ARGS)
    assert reply.choices[0].finish_reason == "tool_calls"

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls: list[Any] = [tc for c in chunks for ch in c.choices for tc in ch.delta.tool_calls or []]
    assert [(tc.index, tc.function.name) for tc in calls] == [(0, TOOL_NAME)]
    assert json.loads(calls[0].function.arguments) == SPECIALIST_ARGS
    assert [ch.finish_reason for c in chunks for ch in c.choices] == [None, "tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12

    assert len(stub.requests) == sent, "a served request never reaches the upstream"
    assert set(_threads(router)) == {"downsize-router_0"}
    exchanges = gateway.exchanges()
    sid = router.slots[0].specialist.id
    assert [(ex.route, ex.response_kind, ex.tool_names, ex.upstream_status) for ex in exchanges] == [
        (f"specialist:{sid}", "tool_call", [TOOL_NAME], None)
    ] * 2
    assert exchanges[1].response is not None and exchanges[1].response["object"] == "chat.completion"
    decisions = gateway.store.route_decisions()
    assert [(d["exchange_id"], d["specialist_id"], d["served"], d["reason"]) for d in decisions] == [
        (ex.id, sid, True, "served") for ex in exchanges
    ]


def test_request_outside_the_task_goes_upstream(confident: tuple[Gateway, Router]) -> None:
    gateway, router = confident
    reply = gateway.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == TEXT
    [ex] = gateway.exchanges()
    assert ex.route == "upstream" and gateway.store.route_decisions() == []
    assert _threads(router) == []


def test_specialist_models_and_health(confident: tuple[Gateway, Router]) -> None:
    gateway, _ = confident
    ids = [m.id for m in gateway.client().models.list()]
    assert ids == [MODEL, "downsize/airline-lookup"]
    status, payload = _raw(f"{gateway.url}/health", method="GET")
    assert status == 200 and payload["specialists"] == ["airline-lookup"]


def test_models_listed_locally_when_upstream_is_down(store: Store, tmp_path: Path) -> None:
    dead = _free_socket()
    port = dead.getsockname()[1]
    dead.close()
    for gateway in _run(f"http://127.0.0.1:{port}/v1", store, tmp_path, router=_router(store, -0.2)):
        assert [m.id for m in gateway.client().models.list()] == ["downsize/airline-lookup"]


def test_low_confidence_falls_back_upstream(stub: StubUpstream, store: Store, tmp_path: Path) -> None:
    router = _router(store, min_logprob=-3.0)
    for gateway in _run(stub.base_url, store, tmp_path, router=router):
        client = gateway.client()
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
        assert reply.model == MODEL
        assert json.loads(_first_call(reply).function.arguments) == {"user_id": "sara_doe_496"}
        list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, stream=True))
        exchanges = gateway.exchanges()
        assert [(ex.route, ex.response_kind, ex.upstream_status) for ex in exchanges] == [
            ("fallback:low_confidence", "tool_call", 200)
        ] * 2
        decisions = gateway.store.route_decisions()
        assert [(d["served"], d["reason"], d["confidence"]) for d in decisions] == [
            (False, "low_confidence", -3.0)
        ] * 2


# -- reassembly ------------------------------------------------------------------------------------------


def test_reassemble_stream_merges_deltas_by_index() -> None:
    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": "c",
            "model": "m",
            "created": 1,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"

    raw = [
        event(
            {
                "role": "assistant",
                "tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}],
            }
        ),
        event({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"x"'}}]}),
        event({"tool_calls": [{"index": 0, "function": {"arguments": '{"y": 2}'}}]}),
        event({"tool_calls": [{"index": 1, "function": {"arguments": ": 1}"}}]}),
        event({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]
    joined = b"".join(raw)
    out = reassemble_stream([joined[:37], joined[37:]])
    assert out is not None
    [choice] = out["choices"]
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in choice["message"]["tool_calls"]
    ] == [
        ("a", "f", '{"y": 2}'),
        ("b", "g", '{"x": 1}'),
    ]
    assert (out["object"], choice["finish_reason"], choice["message"]["content"]) == (
        "chat.completion",
        "tool_calls",
        None,
    )
    assert reassemble_stream(b"") is None
    assert reassemble_stream(b'data: {"error": {"message": "boom"}}\n\n') == {"error": {"message": "boom"}}
