"""Router decisions with a scripted runtime: this tests the decision logic, not a model."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from downsize.decide.gate import TaskGate
from downsize.prompting import TEXT_REPLY
from downsize.route.router import Router
from downsize.types import Generation, Specialist, ToolCall

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_user_details",
            "parameters": {
                "type": "object",
                "properties": {"user_id": {"type": "string"}},
                "required": ["user_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "think",
            "parameters": {"type": "object", "properties": {"thought": {"type": "string"}}},
        },
    },
]
REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "my id is u1"}], "tools": TOOLS}


class Scripted:
    def __init__(self, gen: Generation | Exception) -> None:
        self.gen = gen
        self.calls = 0

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop_below: float | None = None,
        tool: str | None = None,
    ) -> Generation:
        self.calls += 1
        self.tool = tool
        if isinstance(self.gen, Exception):
            raise self.gen
        return self.gen


def router(gen: Generation | Exception, threshold: float = -0.5) -> Router:
    sp = Specialist("tau", "tau", "smollm2-135m", "/x", {}, "h", id=7)
    return Router.single(
        specialist=sp,
        runtime=Scripted(gen),
        threshold=threshold,
        task_tools=frozenset({"get_user_details", "think"}),
    )


def gen(text: str, min_lp: float, call: ToolCall | None = None, stopped: bool = False) -> Generation:
    return Generation(
        text=text, call=call, min_logprob=min_lp, mean_logprob=min_lp, tokens=5, stopped_early=stopped
    )


def test_confident_valid_call_is_served_as_openai_tool_call() -> None:
    call = ToolCall("get_user_details", {"user_id": "u1"})
    out = router(gen('get_user_details {"user_id":"u1"}', -0.1, call)).route(REQUEST)
    assert out.decision is not None and out.decision.served and out.decision.route == "specialist:7"
    message = out.response["choices"][0]["message"]
    assert out.response["choices"][0]["finish_reason"] == "tool_calls"
    fn = message["tool_calls"][0]["function"]
    assert fn["name"] == "get_user_details" and json.loads(fn["arguments"]) == {"user_id": "u1"}


@pytest.mark.parametrize(
    ("generation", "reason"),
    [
        (
            gen("get_user_details {}", -0.1, ToolCall("get_user_details", {})),
            "invalid_output:missing_required",
        ),
        (
            gen('get_user_details {"user_id":3}', -0.1, ToolCall("get_user_details", {"user_id": 3})),
            "invalid_output:schema",
        ),
        (gen('nope {"a":1}', -0.1, ToolCall("nope", {"a": 1})), "invalid_output:unknown_tool"),
        (gen('get_user_details {"user', -0.1, None), "invalid_output:incomplete"),
        (
            gen('get_user_details {"user_id":"u1"}', -0.9, ToolCall("get_user_details", {"user_id": "u1"})),
            "low_confidence",
        ),
        (gen("get_", -math.inf, None, stopped=True), "low_confidence"),
        (RuntimeError("model exploded"), "specialist_error"),
    ],
)
def test_falls_back_when_invalid_unconfident_or_broken(
    generation: Generation | Exception, reason: str
) -> None:
    out = router(generation).route(REQUEST)
    assert out.decision is not None and not out.decision.served
    assert out.decision.reason == reason
    assert out.response is None
    assert out.decision.route == f"fallback:{reason}"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"tools": None}, "no_tools"),
        ({"tools": TOOLS[:1]}, "other_tools"),
        ({"tool_choice": "none"}, "tool_choice_none"),
        ({"n": 2}, "n_not_1"),
    ],
)
def test_does_not_apply_outside_its_task(change: dict[str, Any], why: str) -> None:
    r = router(gen("x", 0.0))
    request = {**REQUEST, **change}
    assert r.slots[0].scope.call_site(request) == why
    assert r.route(request).decision is None
    assert r.slots[0].runtime.calls == 0  # type: ignore[attr-defined]


def _gate() -> TaskGate:
    texts = [f"LAST user: my user id is user_{i}" for i in range(20)] + [
        f"LAST user: hello, how are you {i}" for i in range(20)
    ]
    labels = ["get_user_details"] * 20 + [TEXT_REPLY] * 20
    return TaskGate.fit(texts, labels)


def test_gate_defers_text_turns_without_running_the_student() -> None:
    r = router(gen("x", 0.0), threshold=-0.7)
    r.slots[0].decider.gate = _gate()
    out = r.route({**REQUEST, "messages": [{"role": "user", "content": "hello, how are you"}]})
    assert out.decision is not None and out.decision.reason == "gate_text" and not out.decision.served
    assert r.slots[0].runtime.calls == 0  # type: ignore[attr-defined]


def test_gate_chooses_the_tool_and_the_student_fills_arguments() -> None:
    call = ToolCall("get_user_details", {"user_id": "u1"})
    r = router(gen('get_user_details {"user_id":"u1"}', -0.05, call), threshold=-0.7)
    r.slots[0].decider.gate = _gate()
    out = r.route({**REQUEST, "messages": [{"role": "user", "content": "my user id is u1"}]})
    assert r.slots[0].runtime.tool == "get_user_details"  # type: ignore[attr-defined]
    assert out.decision is not None and out.decision.served
    assert out.decision.confidence is not None and -0.7 < out.decision.confidence <= -0.05


def test_gate_round_trips_through_its_file(tmp_path) -> None:
    gate = _gate()
    gate.save(tmp_path)
    again = TaskGate.load(tmp_path)
    assert again is not None
    text = "LAST user: my user id is someone_9"
    assert again.decide_texts([text])[0] == gate.decide_texts([text])[0]
    assert TaskGate.load(tmp_path / "missing") is None


def test_shadow_mode_decides_and_logs_but_never_serves() -> None:
    call = ToolCall("get_user_details", {"user_id": "u1"})
    r = router(gen('get_user_details {"user_id":"u1"}', -0.1, call))
    r.slots[0].shadow = True
    out = r.route(REQUEST)
    assert out.decision is not None and not out.decision.served and out.response is None
    assert out.decision.reason == "shadow" and out.decision.candidate == 'get_user_details {"user_id":"u1"}'


def test_gate_decides_nothing_for_no_conversations() -> None:
    gate = _gate()
    assert gate.decide_many([]) == []
    assert (
        gate.decide_many([[{"role": "user", "content": "my user id is user_7"}]])[0].label
        == "get_user_details"
    )
