"""Capture that neither slows nor loses: batched store writes, the sync mode, the block and shed policies
when the store is slow, and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from downsize.config import GatewayConfig
from downsize.errors import StoreError
from downsize.gateway.writer import ExchangeWriter, Record
from downsize.route.router import Router
from downsize.store.store import Store
from downsize.types import Exchange, Generation, RouteDecision, Specialist, ToolCall
from upstream_stub import TOOL_NAME, StubUpstream, serve_gateway

MESSAGES: Any = [{"role": "user", "content": "Hi, I am sara_doe_496."}]


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


def _record(i: int, decision: RouteDecision | None = None, specialist_id: int | None = None) -> Record:
    exchange = Exchange(
        request={"messages": [{"role": "user", "content": str(i)}]}, response=None, session=f"s{i}"
    )
    return exchange, decision, specialist_id


class SlowStore(Store):
    def record_many(self, items: list[Record]) -> list[int]:
        time.sleep(0.2)
        return super().record_many(items)


class BrokenStore:
    def record_many(self, items: list[Record]) -> list[int]:
        raise StoreError("disk full")


def _post(url: str, headers: dict[str, str] | None = None) -> int:
    body = json.dumps({"model": "m", "messages": MESSAGES}).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        return int(response.status)


# -- the store's batch write ---------------------------------------------------------------------------------


def test_record_many_links_each_decision_to_its_exchange(store: Store) -> None:
    sp_id = store.add_specialist(Specialist("s", "t", "b", "/a", {}, "h"))
    store.record_many([_record(-1)])  # ids need not start at 1
    items = [
        _record(i, RouteDecision(served=i % 3 == 0, reason=f"r{i}", specialist=str(sp_id)), sp_id)
        if i % 2
        else _record(i)
        for i in range(300)
    ]
    ids = store.record_many(items)
    assert ids == list(range(ids[0], ids[0] + 300))
    by_id = {ex.id: ex for ex in store.exchanges()}
    assert [by_id[i].session for i in ids] == [f"s{i}" for i in range(300)]
    decisions = store.route_decisions()
    assert len(decisions) == 150
    assert all(by_id[d["exchange_id"]].session == f"s{d['reason'][1:]}" for d in decisions)
    assert store.record_many([]) == []


# -- the writer's policies -----------------------------------------------------------------------------------


def test_shed_drops_and_counts_block_waits_for_room(store: Store) -> None:
    async def scenario() -> None:
        shedding = ExchangeWriter(store, max_queue=2)  # not started: nothing drains
        assert [await shedding.put_async(_record(i), block=False) for i in range(3)] == [True, True, False]
        assert shedding.dropped == 1
        started = time.perf_counter()
        assert await shedding.put_async(_record(9), block=True, wait_s=0.1) is False
        assert time.perf_counter() - started >= 0.1 and shedding.dropped == 2

        blocking = ExchangeWriter(SlowStore(store.engine), max_queue=2, max_wait_s=0.0)
        blocking.start()
        results = await asyncio.gather(*(blocking.put_async(_record(100 + i), block=True) for i in range(6)))
        assert results == [True] * 6 and blocking.dropped == 0
        assert await blocking.flush_async(5)
        assert blocking.written == 6
        blocking.close()

    asyncio.run(scenario())
    assert store.count_exchanges() == 6


def test_put_committed_waits_for_the_commit(store: Store) -> None:
    async def scenario() -> None:
        writer = ExchangeWriter(store, max_wait_s=0.0)
        writer.start()
        oks = await asyncio.gather(*(writer.put_committed(_record(i)) for i in range(50)))
        assert oks == [True] * 50 and store.count_exchanges() == 50
        writer.close()
        broken = ExchangeWriter(BrokenStore(), max_wait_s=0.0)
        broken.start()
        assert await broken.put_committed(_record(0)) is False
        broken.close()

    asyncio.run(scenario())


def test_sync_mode_commits_before_answering(stub: StubUpstream, store: Store) -> None:
    import openai

    with serve_gateway(GatewayConfig(upstream=stub.base_url, capture_mode="sync"), store) as (url, _):
        for n in range(1, 4):
            assert _post(url) == 200
            assert store.count_exchanges() == n, "no flush: the row is there when the answer is"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        for n in range(4, 6):
            chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
            assert chunks and store.count_exchanges() == n, "a stream's row is committed before its [DONE]"


@pytest.mark.parametrize("policy", ["shed", "block"])
def test_a_slow_store_never_fails_the_call(stub: StubUpstream, store: Store, policy: str) -> None:
    config = GatewayConfig(upstream=stub.base_url, queue_policy=policy, queue_max=1, capture_interval_s=0.01)
    with serve_gateway(config, SlowStore(store.engine)) as (url, app):
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: _post(url), range(8)))
        assert statuses == [200] * 8
        writer = app.state.writer
    assert writer.written + writer.dropped == 8
    if policy == "shed":
        assert writer.dropped >= 1
    else:
        assert writer.dropped == 0 and store.count_exchanges() == 8


# -- metrics -------------------------------------------------------------------------------------------------


class FixedRuntime:
    def __init__(self, min_logprob: float) -> None:
        self.min_logprob = min_logprob

    def generate(
        self, messages: Any, tools: Any, stop_below: float | None = None, tool: str | None = None
    ) -> Generation:
        return Generation(
            text="",
            call=ToolCall(TOOL_NAME, {"user_id": "u"}),
            min_logprob=self.min_logprob,
            mean_logprob=-1,
            tokens=4,
        )


def _metric_lines(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics(stub: StubUpstream, store: Store) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": TOOL_NAME,
                "parameters": {"type": "object", "properties": {"user_id": {"type": "string"}}},
            },
        }
    ]
    specialist = Specialist("m", "t", "b", "/a", {}, "h", status="live")
    store.add_specialist(specialist)
    runtime = FixedRuntime(-3.0)
    router = Router.single(specialist, runtime, threshold=-1.0, task_tools=frozenset({TOOL_NAME}))
    with serve_gateway(GatewayConfig(upstream=stub.base_url), store, router) as (url, app):
        for _ in range(3):
            assert _post(url) == 200
        body = json.dumps({"messages": MESSAGES, "tools": tools}).encode()
        for confidence in (-3.0, -0.1):  # a fallback, then served by the specialist
            runtime.min_logprob = confidence
            request = urllib.request.Request(
                f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        assert app.state.writer.flush(5)
        m = _metric_lines(url)
    assert m['downsize_requests_total{route="upstream",code="200"}'] == 3
    assert m['downsize_requests_total{route="fallback",code="200"}'] == 1
    assert m['downsize_requests_total{route="specialist",code="200"}'] == 1
    assert m['downsize_fallbacks_total{reason="low_confidence"}'] == 1
    assert m['downsize_request_duration_seconds_count{route="upstream"}'] == 3
    assert m['downsize_request_duration_seconds_bucket{route="upstream",le="+Inf"}'] == 3
    assert m['downsize_request_duration_seconds_sum{route="upstream"}'] > 0
    assert m["downsize_exchanges_written_total"] == 5 and m["downsize_exchanges_dropped_total"] == 0
    assert m["downsize_capture_queue_depth"] == 0 and m["downsize_capture_queue_capacity"] == 10_000
    assert m["downsize_store_write_seconds_count"] >= 1
