"""The router: maps each request to its agent's task and that task's specialist, runs the one decision
function (`decide.decision`), and serves the specialist's answer or falls back upstream with the reason.

A gateway holds many specialists (`Slot`s), one per task (or call site) of each agent, each with its own
threshold, gate and engine; a slot's runtime is made on its first request (lazily), so a gateway with ten
specialists starts as fast as one with none. A request no slot's call site matches goes upstream (route
`upstream`); one that matches a call site but no live task of it falls back with `other_task:<key>` or
`novel_task:<why>`.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from downsize.contracts import OutputContract
from downsize.decide.decision import Decider, Decision, Plan, Scope
from downsize.decide.gate import TaskGate
from downsize.shapes import completion
from downsize.types import RouteDecision, Specialist, SpecialistRuntime


@dataclass
class RouteOutcome:
    """The router's answer: a decision (None when no specialist applies) and, if served, the response."""

    decision: RouteDecision | None
    response: dict[str, Any] | None = None
    specialist_id: int | None = None


@dataclass
class Slot:
    """One live (or shadow) specialist in the gateway: what it answers, how it decides, its runtime."""

    specialist: Specialist
    scope: Scope
    decider: Decider
    make_runtime: Callable[[], SpecialistRuntime]
    shadow: bool = False  # decide and log, never serve
    traffic: float | None = (
        None  # canary: the share of the task's traffic it answers (the rest goes upstream)
    )
    _runtime: SpecialistRuntime | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def threshold(self) -> float:
        return self.decider.threshold if self.decider.threshold is not None else float("-inf")

    @property
    def loaded(self) -> bool:
        return self._runtime is not None

    @property
    def mode(self) -> str:
        return "shadow" if self.shadow else "canary" if self.traffic is not None else "live"

    def takes(self, session: str | None) -> bool:
        """Whether this request is in the slot's share of traffic: always, except for a canary, which takes
        a session's every call or none (a workflow sees one system, so outcomes compare by workflow); calls
        without a session are drawn one by one."""
        if self.traffic is None:
            return True
        if session:
            digest = hashlib.blake2b(f"{self.specialist.id}:{session}".encode(), digest_size=8).digest()
            return int.from_bytes(digest) / 2**64 < self.traffic
        return random.random() < self.traffic

    def adopt(self, other: Slot) -> None:
        """Keep another slot's loaded runtime when both serve the same specialist (a reload keeps models)."""
        if other._runtime is not None and other.specialist.id == self.specialist.id:
            self._runtime = other._runtime

    @property
    def runtime(self) -> SpecialistRuntime:
        """The specialist's runtime, made on first use (loading a model takes seconds: only when needed)."""
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = self.make_runtime()
        return self._runtime


@dataclass
class Router:
    """Routes each request to the specialist of its task when one is live and confident; otherwise upstream."""

    slots: list[Slot] = field(default_factory=list)

    @classmethod
    def single(
        cls,
        specialist: Specialist,
        runtime: SpecialistRuntime,
        threshold: float,
        task_tools: frozenset[str] = frozenset(),
        gate: TaskGate | None = None,
        shadow: bool = False,
        assigner: Any = None,
        tasks: frozenset[str] = frozenset(),
        contract: OutputContract | None = None,
        sites: frozenset[str] = frozenset(),
    ) -> Router:
        """A router of one specialist whose runtime is already made (tests, the demo, benchmarks)."""
        contract = contract or OutputContract("tool_call")
        slot = Slot(
            specialist=specialist,
            scope=Scope(
                task_tools=task_tools, tasks=tasks, assigner=assigner, kind=contract.kind, sites=sites
            ),
            decider=Decider(gate=gate, threshold=threshold, contract=contract),
            make_runtime=lambda: runtime,
            shadow=shadow,
        )
        slot._runtime = runtime
        return cls([slot])

    @property
    def specialists(self) -> list[Specialist]:
        return [slot.specialist for slot in self.slots]

    def slot_for(
        self,
        request: dict[str, Any],
        agent: str | None = None,
        task_hint: str | None = None,
        session: str | None = None,
    ) -> tuple[Slot | None, str | None]:
        """The slot that answers a request, or (the nearest slot, why it does not), or (None, None) when no
        specialist's call site matches (the request is none of theirs: plain upstream). A canary's request
        outside its share goes on to the next slot of the task (an older live version), else upstream with
        `canary_holdout`."""
        nearest: tuple[Slot | None, str | None] = (None, None)
        held: Slot | None = None
        for slot in self.slots:
            if slot.scope.agent is not None and agent is not None and slot.scope.agent != agent:
                continue
            if slot.scope.call_site(request) is not None:
                continue
            why = slot.scope.task(request, agent, task_hint)
            if why is None:
                if slot.takes(session):
                    return slot, None
                held = held or slot
                continue
            if nearest[0] is None:
                nearest = (slot, why)
        return (held, "canary_holdout") if held is not None else nearest

    def route(
        self,
        request: dict[str, Any],
        agent: str | None = None,
        task_hint: str | None = None,
        dispatched: tuple[Slot | None, str | None] | None = None,
        session: str | None = None,
    ) -> RouteOutcome:
        """Decide one request (`dispatched`: `slot_for`'s answer when the caller already asked it)."""
        started = time.perf_counter()
        slot, why = (
            dispatched if dispatched is not None else self.slot_for(request, agent, task_hint, session)
        )
        if slot is None:
            return RouteOutcome(decision=None)
        specialist = slot.specialist
        decision = RouteDecision(
            served=False, reason="", specialist=str(specialist.id), threshold=slot.decider.threshold
        )

        def finish(reason: str, verdict: Decision | None = None) -> RouteOutcome:
            decision.reason = reason[:64]
            if verdict is not None:
                decision.confidence = verdict.confidence
                decision.candidate = verdict.candidate
            decision.latency_ms = (time.perf_counter() - started) * 1000
            return RouteOutcome(decision=decision, specialist_id=specialist.id)

        if why is not None:
            return finish(why)
        step = slot.decider.before(request)
        if isinstance(step, Decision):
            return finish(step.reason, step)
        plan: Plan = step
        try:
            extra = (
                {} if slot.scope.kind == "tool_call" else {"response_format": request.get("response_format")}
            )
            gen = slot.runtime.generate(
                request["messages"],
                request.get("tools") or [],
                stop_below=slot.decider.threshold if slot.decider.cuts_early else None,
                tool=plan.tool,
                **extra,
            )
        except Exception as exc:  # any runtime failure must fall back, never fail the agent's call
            decision.candidate = f"{type(exc).__name__}: {exc}"[:500]
            return finish("specialist_error")
        verdict = slot.decider.after(request, plan, gen)
        if not verdict.accepted:
            return finish(verdict.reason, verdict)
        if slot.shadow:  # would have served: the stored candidate is compared with the LLM's answer
            return finish("shadow", verdict)
        outcome = finish("served", verdict)
        decision.served = True
        message = answer_message(slot.decider.contract, verdict)
        response = completion(
            message,
            f"downsize/{specialist.name}",
            int(time.time()),
            f"chatcmpl-ds-{uuid.uuid4().hex[:24]}",
        )
        response["usage"] = {"prompt_tokens": 0, "completion_tokens": gen.tokens, "total_tokens": gen.tokens}
        response["system_fingerprint"] = f"downsize-specialist-{specialist.id}"
        outcome.response = response
        return outcome


def answer_message(contract: OutputContract, verdict: Decision) -> dict[str, Any]:
    """The assistant message that serves an accepted answer: a tool call, or the contract's text content."""
    if contract.kind != "tool_call":
        return contract.message(verdict.value)
    assert verdict.call is not None
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_ds_{uuid.uuid4().hex[:20]}",
                "type": "function",
                "function": {
                    "name": verdict.call.name,
                    "arguments": json.dumps(verdict.call.arguments, ensure_ascii=False),
                },
            }
        ],
    }
