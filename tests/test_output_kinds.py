"""Every kind of narrow call, end to end on small real data: trained for a few steps, evaluated and calibrated,
then served through one gateway with validation, and falling back upstream when not confident.

- JSON under the request's schema: crewAI's memory-analysis step (`MemoryAnalysis`, its recorded gpt-4o-mini
  answers);
- a label: CLINC150 intent classification (utterances and labels written by people, logged as an intent
  classifier's calls: a stand-in for an LLM classifier's traffic, since no such log ships);
- text-format tool use: tau-airline's gpt-4o tool calls written as ReAct "Action: / Action Input:" steps (the
  teacher's own decisions in the text format MetaGPT, LangChain and crewAI agents use);
- short free text: crewAI's system-less one-shot calls ("Say hello", describe an image in one sentence).

A few training steps teach nothing worth serving; these tests prove the mechanics of each kind (target,
grammar, validation, routing, serving shape), not quality: `make bench-conversion` measures that.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from downsize.config import EvalConfig, GatewayConfig, TrainConfig
from downsize.contracts import OutputContract, parse_react
from downsize.sites import site_key
from downsize.splits import role as split_role
from downsize.store import Store
from upstream_stub import StubUpstream, serve_gateway

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from standin_logs import intent_log, react_log  # noqa: E402

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INTENTS = ["balance", "transfer", "freeze_account", "pay_bill", "transactions", "card_declined"]
STEPS = {"batch_size": 4, "max_prompt_tokens": 96, "max_message_tokens": 64, "epochs": 1.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, dict[str, int]]]:
    """One store with the four call sites, a specialist trained and evaluated for each."""
    home = tmp_path_factory.mktemp("home")
    previous = os.environ.get("DOWNSIZE_HOME")
    os.environ["DOWNSIZE_HOME"] = str(home)
    os.environ.setdefault("DOWNSIZE_MODELS", str(tmp_path_factory.mktemp("models")))
    from downsize.evaluate.tool_calls import evaluate_specialist
    from downsize.importers.cassettes import import_cassettes
    from downsize.importers.openai_jsonl import import_openai_jsonl
    from downsize.train.lora import train_specialist

    store = Store.open(f"sqlite:///{home / 'kinds.db'}")
    import_cassettes(store, [DATA / "crewai-cassettes"], agent="crewai")
    intent_log(home / "intents.jsonl", INTENTS, per_intent=14)
    react_log(
        home / "react.jsonl", ("get_user_details", "get_reservation_details"), tasks=range(12), trials=2
    )
    import_openai_jsonl(store, home / "intents.jsonl")
    import_openai_jsonl(store, home / "react.jsonl")
    sites = {site_key(ex.request) for ex in store.exchanges(agent="crewai")}
    memory = next(s for s in sites if s.endswith(":MemoryAnalysis"))
    one_shot = site_key({"messages": [{"role": "user", "content": "Say hello"}]})
    scopes = {
        "json": {"agent": "crewai", "site": memory, "epochs": 2.0},
        "label": {"agent": "intents"},
        "react": {"agent": "react-agent", "max_tokens": 6000},
        "text": {"agent": "crewai", "site": one_shot, "max_tokens": 3000},
    }
    ids = {}
    for kind, scope in scopes.items():
        config = TrainConfig(**{**STEPS, **scope, "specialist": f"kind-{kind}"})
        result = train_specialist(store, config, progress=False)
        assert result.specialist_id is not None
        ids[kind] = result.specialist_id
        report = evaluate_specialist(
            store,
            store.specialist(result.specialist_id),
            EvalConfig(limit=6, batch_size=6, target_agreement=0.5),
            progress=False,
        )
        assert report.kind == kind and report.validation.calls > 0
    yield store, ids
    store.close()
    if previous is None:
        os.environ.pop("DOWNSIZE_HOME", None)
    else:
        os.environ["DOWNSIZE_HOME"] = previous


@pytest.fixture
def home_of(trained: tuple[Store, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The trained store's $DOWNSIZE_HOME (each test gets its own otherwise): specialists live there."""
    monkeypatch.setenv("DOWNSIZE_HOME", str(Path(trained[0].engine.url.database or "").parent))


def test_each_kind_is_detected_and_saved_with_its_specialist(
    trained: tuple[Store, dict[str, int]], home_of: None
) -> None:
    store, ids = trained
    for kind, sp_id in ids.items():
        sp = store.specialist(sp_id)
        contract = OutputContract.from_dict(sp.config["contract"])
        assert contract.kind == kind and sp.config["task_tools"] == []
        assert sp.metrics["eval"]["kind"] == kind and "graded_score" in sp.metrics["eval"]["test_tool_calls"]
    label = OutputContract.from_dict(store.specialist(ids["label"]).config["contract"])
    assert set(label.labels) <= set(INTENTS) and len(label.labels) >= 4
    react = OutputContract.from_dict(store.specialist(ids["react"]).config["contract"])
    assert set(react.actions) == {"get_user_details", "get_reservation_details"}
    assert (
        OutputContract.from_dict(store.specialist(ids["json"]).config["contract"]).schema_source == "request"
    )


def test_one_gateway_serves_every_kind_validated_and_falls_back_when_unsure(
    trained: tuple[Store, dict[str, int]], home_of: None
) -> None:
    from downsize.route.loading import load_router

    store, ids = trained
    router = load_router(store, [str(i) for i in ids.values()], threshold=-1e9)
    assert router is not None
    held_out: dict[str, dict[str, Any]] = {}
    for ex in store.exchanges():
        slot, why = router.slot_for(ex.request, ex.agent)
        if slot is None or why is not None or split_role(ex, 0.25) == "train":  # never a call trained on
            continue
        kind = slot.scope.kind
        if kind not in held_out and ex.response_kind in ("json", "text"):
            held_out[kind] = {k: v for k, v in ex.request.items() if k != "stream"}
    assert set(held_out) == set(ids), f"no held-out request reached {set(ids) - set(held_out)}"

    stub = StubUpstream().start()
    try:
        with serve_gateway(
            GatewayConfig(upstream=stub.base_url, capture_mode="sync", specialist_timeout_s=600),
            store,
            router,
        ) as (
            url,
            _,
        ):
            served = {kind: _post(url, body) for kind, body in held_out.items()}
            streamed = _stream(url, {**held_out["label"], "stream": True})
            for slot in router.slots:
                slot.decider.threshold = 0.0  # no token is that sure: every answer falls back upstream
            fallen = {kind: _post(url, body) for kind, body in held_out.items()}
    finally:
        stub.stop()

    for kind, (route, reply) in served.items():
        assert route == f"specialist:{ids[kind]}", (kind, route)
        message = reply["choices"][0]["message"]
        assert "tool_calls" not in message and message["content"]
        contract = OutputContract.from_dict(store.specialist(ids[kind]).config["contract"])
        value = contract.parse(message["content"])
        assert contract.validate(value, held_out[kind]) is None, (kind, message["content"])
    assert isinstance(json.loads(served["json"][1]["choices"][0]["message"]["content"]), dict)
    # a client that streams gets the label as SSE chunks, the same answer
    assert streamed == served["label"][1]["choices"][0]["message"]["content"]
    assert parse_react(served["react"][1]["choices"][0]["message"]["content"]) is not None
    for kind, (route, reply) in fallen.items():
        assert route.startswith("fallback:") or route == "upstream", (kind, route)
        assert reply["model"] != f"downsize/kind-{kind}"
    decisions = [d for d in store.route_decisions() if d["reason"] == "low_confidence"]
    assert len(decisions) == len(ids) and all(not math.isnan(d["confidence"] or 0.0) for d in decisions)


def _post(url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    import urllib.request

    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.headers.get("X-Downsize-Route", "upstream"), dict(json.loads(response.read()))


def _stream(url: str, body: dict[str, Any]) -> str:
    """The content a streamed request's SSE chunks carry, joined."""
    import urllib.request

    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    parts = []
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.headers.get("Content-Type", "").startswith("text/event-stream")
        for line in response.read().decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:]).get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)
