"""The router: one confidence score, one calibrated threshold, strict validation, fallback otherwise.

For a request the live specialist applies to (same tool set as the task it was trained on), the
specialist generates one tool call under a grammar (a known tool name, then a JSON object), the call
is validated against that tool's JSON schema, and it is served only when its confidence (the lowest
token log-probability of the generated call) clears the threshold calibrated on held-out calls.
Anything else is forwarded upstream, and the reason is recorded.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from downsize.discover.assign import TaskAssigner
from downsize.prompting import TEXT_REPLY
from downsize.route.gate import TaskGate
from downsize.route.validate import validate_call
from downsize.shapes import completion, tool_names
from downsize.types import RouteDecision, Specialist, ToolCall


@dataclass
class Generation:
    """What a specialist runtime produced for one request."""

    text: str
    call: ToolCall | None  # parsed call when the text parsed, else None
    min_logprob: float  # lowest log-probability of any generated token (-inf when aborted early)
    mean_logprob: float
    tokens: int
    stopped_early: bool = False  # generation was cut because confidence fell below the floor


class SpecialistRuntime(Protocol):
    """Generates one tool call for a chat request (transformers today; llama.cpp or vLLM later).

    With `tool` given, the tool is fixed (the task gate chose it) and only its arguments are generated.
    """

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop_below: float | None = None,
        tool: str | None = None,
    ) -> Generation: ...


@dataclass
class RouteOutcome:
    """The router's answer: a decision (None when no specialist applies) and, if served, the response."""

    decision: RouteDecision | None
    response: dict[str, Any] | None = None
    specialist_id: int | None = None


@dataclass
class Router:
    """Routes requests to one live specialist when it applies and is confident; otherwise upstream."""

    specialist: Specialist
    runtime: SpecialistRuntime
    threshold: float
    task_tools: frozenset[str] = field(default_factory=frozenset)
    gate: TaskGate | None = None  # decides text-or-which-tool before the student fills the arguments
    shadow: bool = False  # run beside the LLM: decide and log, but never serve
    assigner: TaskAssigner | None = None  # maps a request to a discovered task (or none: novel)
    tasks: frozenset[str] = field(default_factory=frozenset)  # the discovered tasks the specialist serves

    def covers(
        self, request: dict[str, Any], agent: str | None = None, task_hint: str | None = None
    ) -> str | None:
        """None when the request falls in one of the specialist's discovered tasks, else why not."""
        if self.assigner is None or not self.tasks:
            return None
        assignment = self.assigner.assign(request, agent, task_hint)
        if assignment.task is None:
            return f"novel_task:{assignment.reason}"
        return None if assignment.task in self.tasks else f"other_task:{assignment.task}"

    def applies(self, request: dict[str, Any]) -> str | None:
        """None when the specialist may answer this request, else the reason it may not."""
        names = frozenset(tool_names(request))
        if not names:
            return "no_tools"
        if self.task_tools and names != self.task_tools:
            return "other_task"
        if request.get("tool_choice") == "none":
            return "tool_choice_none"
        if (request.get("n") or 1) != 1:
            return "n_not_1"
        return None

    def route(
        self, request: dict[str, Any], agent: str | None = None, task_hint: str | None = None
    ) -> RouteOutcome:
        not_applicable = self.applies(request)
        if not_applicable is not None:
            return RouteOutcome(decision=None)
        started = time.perf_counter()
        decision = RouteDecision(
            served=False, reason="", specialist=str(self.specialist.id), threshold=self.threshold
        )
        uncovered = self.covers(request, agent, task_hint)
        if uncovered is not None:
            decision.reason = uncovered[:64]
            decision.latency_ms = (time.perf_counter() - started) * 1000
            return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
        tool = None
        gate_logp = 0.0
        if self.gate is not None:
            gated = self.gate.decide(request["messages"])
            gate_logp = gated.log_probability
            decision.confidence = gate_logp
            decision.candidate = f"gate: {gated.label} p={gated.probability:.3f}"
            if gated.label == TEXT_REPLY or gate_logp < self.threshold:
                decision.reason = "gate_text" if gated.label == TEXT_REPLY else "low_confidence"
                decision.latency_ms = (time.perf_counter() - started) * 1000
                return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
            if gated.label not in tool_names(request):
                decision.reason = "invalid_output:unknown_tool"
                decision.latency_ms = (time.perf_counter() - started) * 1000
                return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
            tool = gated.label
        try:
            gen = self.runtime.generate(
                request["messages"], request["tools"], stop_below=self.threshold, tool=tool
            )
        except Exception as exc:  # any runtime failure must fall back, never fail the agent's call
            decision.reason = "specialist_error"
            decision.candidate = f"{type(exc).__name__}: {exc}"[:500]
            decision.latency_ms = (time.perf_counter() - started) * 1000
            return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
        decision.latency_ms = (time.perf_counter() - started) * 1000
        decision.confidence = min(gen.min_logprob, gate_logp)
        decision.candidate = gen.text[:2000]
        if gen.stopped_early:
            decision.reason = "low_confidence"
            return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
        problem = validate_call(gen.call, request["tools"]) if gen.call else "incomplete"
        if problem is None and decision.confidence < self.threshold:
            decision.reason = "low_confidence"
            return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
        if problem:
            decision.reason = "invalid_output:" + problem.split(":", 1)[0]
            decision.candidate = f"{gen.text[:1500]} [{problem}]"
            return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
        assert gen.call is not None
        if self.shadow:
            decision.reason = (
                "shadow"  # would have served: the stored candidate is compared with the LLM's answer
            )
            return RouteOutcome(decision=decision, specialist_id=self.specialist.id)
        decision.served = True
        decision.reason = "served"
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_ds_{uuid.uuid4().hex[:20]}",
                    "type": "function",
                    "function": {
                        "name": gen.call.name,
                        "arguments": json.dumps(gen.call.arguments, ensure_ascii=False),
                    },
                }
            ],
        }
        response = completion(
            message,
            f"downsize/{self.specialist.name}",
            int(time.time()),
            f"chatcmpl-ds-{uuid.uuid4().hex[:24]}",
        )
        response["usage"] = {"prompt_tokens": 0, "completion_tokens": gen.tokens, "total_tokens": gen.tokens}
        response["system_fingerprint"] = f"downsize-specialist-{self.specialist.id}"
        return RouteOutcome(decision=decision, response=response, specialist_id=self.specialist.id)
