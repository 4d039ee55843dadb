"""Fault injection: the gateway against an upstream that hangs, fails, resets, cuts or dribbles its answers.

Each fault has one defined behaviour, asserted here on the wire and in the store:

| fault                         | the agent gets                                            | stored exchange        |
|-------------------------------|-----------------------------------------------------------|------------------------|
| hang (no answer)              | 504 `upstream_timeout` after `upstream_timeout_s`         | kind error, status -   |
| hang, then a fallback answers | the fallback's answer                                     | the answer             |
| 500                           | retried; the last 500 passed on as it is                  | kind error, status 500 |
| connection reset / closed     | retried; then 502 `upstream_unreachable`                  | kind error, status -   |
| JSON body cut mid-way         | 502 `upstream_unreachable`                                | kind error             |
| stream cut mid-way            | the events relayed so far, then an `upstream_stream` error | kind error, status 200 |
|                               | event and no `[DONE]`                                     |                        |
| stream stalls                 | same, once silent for `upstream_timeout_s`                | kind error             |
| slow stream (each gap short)  | every event as it comes, even past `upstream_timeout_s`    | the reassembled answer |
| non-JSON 200 body             | passed through as it is                                   | kind empty, status 200 |
| agent leaves mid-stream       | (nothing: it left); the gateway keeps serving              | what was relayed       |
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from downsize.config import GatewayConfig
from downsize.store.store import Store
from downsize.types import Exchange
from fault_upstream import ERROR_500, FaultUpstream
from upstream_stub import TEXT, serve_gateway

MESSAGES: Any = [{"role": "user", "content": "Hi, I am sara_doe_496 and I want to change my flight."}]
BODY = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
TIMEOUT_S = 0.3


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'downsize.db'}")
    yield store
    store.close()


def _config(*upstreams: str, **values: Any) -> GatewayConfig:
    values.setdefault("upstream_timeout_s", TIMEOUT_S)
    values.setdefault("upstream_retries", 0)
    values.setdefault("backoff_base_s", 0.01)
    return GatewayConfig(upstream=upstreams[0], fallback_upstreams=list(upstreams[1:]), **values)


def _post(url: str, body: bytes = BODY) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        timeout=10,
    )


def _stream(url: str) -> tuple[int, list[str], list[float]]:
    """Status, the SSE `data:` payloads in order, and when each arrived (seconds after the request)."""
    started = time.perf_counter()
    payloads: list[str] = []
    times: list[float] = []
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        content=STREAM_BODY,
        headers={"Content-Type": "application/json"},
        timeout=10,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                payloads.append(line[6:])
                times.append(time.perf_counter() - started)
        return response.status_code, payloads, times


def _stored(app: Any, store: Store) -> list[Exchange]:
    assert app.state.writer.flush(10)
    return list(store.exchanges())


def _error(response: httpx.Response) -> dict[str, Any]:
    payload = response.json()
    assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}
    return dict(payload["error"])


# -- no answer ---------------------------------------------------------------------------------------------


def test_hang_is_504_after_the_timeout(store: Store) -> None:
    with (
        FaultUpstream(default="hang") as upstream,
        serve_gateway(_config(upstream.base_url), store) as (
            url,
            app,
        ),
    ):
        started = time.perf_counter()
        response = _post(url)
        waited = time.perf_counter() - started
        assert response.status_code == 504
        error = _error(response)
        assert error["code"] == "upstream_timeout" and f"within {TIMEOUT_S:g} s" in error["message"]
        assert TIMEOUT_S <= waited < TIMEOUT_S + 1.5
        status, payloads, _ = _stream(url)  # a stream that never starts: the same 504, as JSON
        assert (status, payloads) == (504, [])
        [first, second] = _stored(app, store)
        for ex in (first, second):
            assert (ex.response_kind, ex.upstream_status, ex.route) == ("error", None, "upstream")
            assert ex.response is not None and ex.response["error"]["code"] == "upstream_timeout"
        assert upstream.seen == ["hang", "hang"]


def test_hang_then_the_fallback_answers(store: Store) -> None:
    with (
        FaultUpstream(default="hang") as primary,
        FaultUpstream() as fallback,
        serve_gateway(_config(primary.base_url, fallback.base_url), store) as (url, app),
    ):
        response = _post(url)
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == TEXT
        assert (primary.seen, fallback.seen) == (["hang"], ["ok"])
        [ex] = _stored(app, store)
        assert (ex.response_kind, ex.upstream_status) == ("text", 200)


# -- errors and broken connections ------------------------------------------------------------------------


def test_500_is_retried_then_passed_on_as_it_is(store: Store) -> None:
    with (
        FaultUpstream(script=["status500"]) as upstream,
        serve_gateway(_config(upstream.base_url, upstream_retries=1), store) as (url, app),
    ):
        assert _post(url).status_code == 200  # the retry succeeded
        upstream.default = "status500"
        response = _post(url)
        assert response.status_code == 500 and response.json() == ERROR_500
        assert upstream.seen == ["status500", "ok", "status500", "status500"]
        ok, failed = _stored(app, store)
        assert (ok.response_kind, ok.upstream_status) == ("text", 200)
        assert (failed.response_kind, failed.upstream_status, failed.response) == ("error", 500, ERROR_500)


@pytest.mark.parametrize("fault", ["reset", "close"])
def test_a_dropped_connection_is_retried_then_502(store: Store, fault: str) -> None:
    with (
        FaultUpstream(script=[fault]) as upstream,
        serve_gateway(_config(upstream.base_url, upstream_retries=1), store) as (url, app),
    ):
        assert _post(url).status_code == 200
        upstream.default = fault
        response = _post(url)
        assert response.status_code == 502
        assert _error(response)["code"] == "upstream_unreachable"
        status, payloads, _ = _stream(url)  # a stream is retried too, before its first byte
        assert status == 502 and payloads == []
        assert upstream.seen == [fault, "ok", fault, fault, fault, fault]
        stored = _stored(app, store)
        assert [(ex.response_kind, ex.upstream_status) for ex in stored] == [
            ("text", 200),
            ("error", None),
            ("error", None),
        ]


def test_a_json_answer_cut_mid_way_is_502(store: Store) -> None:
    with (
        FaultUpstream(default="cut") as upstream,
        serve_gateway(_config(upstream.base_url), store) as (
            url,
            app,
        ),
    ):
        response = _post(url)
        assert response.status_code == 502
        assert (
            "broke off" in _error(response)["message"]
            or "could not be reached" in _error(response)["message"]
        )
        [ex] = _stored(app, store)
        assert ex.response_kind == "error"


# -- streams ----------------------------------------------------------------------------------------------


def _events_before(payloads: list[str]) -> list[dict[str, Any]]:
    return [json.loads(p) for p in payloads if p != "[DONE]"]


def test_a_stream_cut_mid_way_ends_with_an_error_event(store: Store) -> None:
    with (
        FaultUpstream(default="cut", cut_after=2) as upstream,
        serve_gateway(_config(upstream.base_url), store) as (url, app),
    ):
        status, payloads, _ = _stream(url)
        assert status == 200
        events = _events_before(payloads)
        assert "[DONE]" not in payloads
        assert [e["object"] for e in events[:2]] == ["chat.completion.chunk"] * 2
        [error] = events[2:]
        assert error["error"]["code"] == "upstream_stream" and error["error"]["type"] == "upstream_error"
        assert "broke off the stream" in error["error"]["message"]
        [ex] = _stored(app, store)
        assert (ex.response_kind, ex.upstream_status) == ("error", 200)
        assert ex.response is not None and ex.response["error"]["code"] == "upstream_stream"
        upstream.default = "ok"
        assert _post(url).status_code == 200, "the gateway serves on after a broken stream"


def test_a_stalled_stream_ends_with_a_timeout_event(store: Store) -> None:
    with (
        FaultUpstream(default="stall", cut_after=2) as upstream,
        serve_gateway(_config(upstream.base_url), store) as (url, app),
    ):
        status, payloads, times = _stream(url)
        assert status == 200
        events = _events_before(payloads)
        assert len(events) == 3 and "[DONE]" not in payloads
        assert events[2]["error"]["code"] == "upstream_stream"
        assert f"stopped streaming within {TIMEOUT_S:g} s" in events[2]["error"]["message"]
        assert TIMEOUT_S * 0.9 <= times[-1] - times[1] < TIMEOUT_S + 1.5
        [ex] = _stored(app, store)
        assert ex.response_kind == "error"


def test_a_slow_stream_is_relayed_as_it_comes_past_the_timeout(store: Store) -> None:
    pause = 0.12  # each gap shorter than the 0.3 s timeout; the whole stream ~1.4 s, longer than it
    with (
        FaultUpstream(default="slow", pause_s=pause) as upstream,
        serve_gateway(_config(upstream.base_url), store) as (url, app),
    ):
        status, payloads, times = _stream(url)
        assert status == 200 and payloads[-1] == "[DONE]"
        text = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in _events_before(payloads) if e["choices"]
        )
        assert text == TEXT
        assert times[-1] > TIMEOUT_S * 2, "the stream outlived the per-attempt timeout"
        assert times[-1] - times[0] > pause * (len(payloads) - 2), "events were relayed as they came"
        [ex] = _stored(app, store)
        assert ex.response is not None and ex.response["choices"][0]["message"]["content"] == TEXT
        assert (ex.response_kind, ex.upstream_status) == ("text", 200)


def test_the_agent_leaving_mid_stream_is_logged_and_harmless(store: Store) -> None:
    with (
        FaultUpstream(default="slow", pause_s=0.05) as upstream,
        serve_gateway(_config(upstream.base_url), store) as (url, app),
    ):
        with httpx.stream("POST", f"{url}/v1/chat/completions", content=STREAM_BODY, timeout=10) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ")
        upstream.default = "ok"
        deadline = time.monotonic() + 5
        while app.state.writer.written < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _post(url).status_code == 200
        stored = _stored(app, store)
        assert len(stored) == 2 and stored[1].response_kind == "text"
        assert stored[0].request["stream"] is True


def test_a_non_json_answer_passes_through(store: Store) -> None:
    with (
        FaultUpstream(default="garbage") as upstream,
        serve_gateway(_config(upstream.base_url), store) as (
            url,
            app,
        ),
    ):
        response = _post(url)
        assert response.status_code == 200 and response.text.startswith("<html>")
        assert response.headers["content-type"].startswith("text/html")
        [ex] = _stored(app, store)
        assert (ex.response, ex.response_kind, ex.upstream_status) == (None, "empty", 200)
