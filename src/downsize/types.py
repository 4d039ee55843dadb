"""Records that move between stages. Standard library only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

ResponseKind = Literal["tool_call", "text", "json", "error", "empty"]
Split = Literal["dev", "test"]


# the stored route of a consistency probe's second upstream answer (the gateway's `probe:`; `evaluate/probe.py`)
PROBE_ROUTE = "probe"


@dataclass(frozen=True)
class ToolCall:
    """One function call: a tool name and its arguments as a parsed JSON object."""

    name: str
    arguments: dict[str, Any]

    def canonical(self) -> str:
        """JSON-normalised form used for exact agreement (key order and spacing ignored)."""
        return json.dumps(
            {"name": self.name, "arguments": self.arguments}, sort_keys=True, separators=(",", ":")
        )


@dataclass
class Exchange:
    """One LLM call an agent made: the request it sent and the response it got."""

    request: dict[str, Any]
    response: dict[str, Any] | None
    id: int | None = None
    created_at: str | None = None
    source: str = "gateway"
    source_key: str | None = None
    agent: str | None = None
    session: str | None = None
    task_hint: str | None = None
    model: str | None = None
    response_kind: ResponseKind | None = None
    tool_names: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    upstream_status: int | None = None
    route: str | None = None
    cost_estimate: float | None = None
    is_hci: bool | None = None
    outcome: float | None = None
    split: Split | None = None
    workflow: str | None = None  # the unit of the split (splits.workflow_key), set when stored
    split_rule: str | None = None  # what placed it: source (the source's own), hash or time


@dataclass
class RouteDecision:
    """What the router did with one request, and why."""

    served: bool
    reason: str
    specialist: str | None = None
    confidence: float | None = None
    threshold: float | None = None
    candidate: str | None = None
    latency_ms: float | None = None

    @property
    def route(self) -> str:
        """The `route` column of the exchange: `specialist:<id>` or `fallback:<reason>` or `upstream`."""
        if self.served:
            return f"specialist:{self.specialist}"
        return f"fallback:{self.reason}" if self.specialist else "upstream"


@dataclass
class Specialist:
    """A trained small model for one task, with what made it and how it scored."""

    name: str
    task: str
    base_model: str
    adapter_path: str
    config: dict[str, Any]
    data_hash: str
    id: int | None = None
    status: str = "candidate"
    threshold: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    traffic: float | None = None  # canary: the share of its task's traffic it answers


@dataclass
class Generation:
    """What a specialist runtime produced for one request."""

    text: str
    call: ToolCall | None  # parsed call when the text parsed, else None
    min_logprob: float  # lowest log-probability of any generated token (-inf when aborted early)
    mean_logprob: float
    tokens: int
    stopped_early: bool = False  # generation was cut because confidence fell below the floor
    value: Any = None  # the answer under the specialist's contract (the call, a JSON value, a label, ...)
    complete: bool = False  # the grammar accepted a whole answer (a worker sends this; the caller parses)


class SpecialistRuntime(Protocol):
    """Generates one answer for a chat request under its specialist's contract (a tool call, JSON, a label,
    text-format tool use or short text) on transformers, llama.cpp, or a worker process.

    With `tool` given, the tool is fixed (the task gate chose it) and only its arguments are generated;
    `response_format` is the request's own (a JSON answer follows its schema).
    """

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop_below: float | None = None,
        tool: str | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Generation: ...
