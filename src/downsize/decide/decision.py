"""The one accept-or-fall-back rule, used by the router online and by calibration offline.

A specialist decides in two steps around its generation, so evaluation can batch the generations while
the router runs one: `before` (does the request fall in the specialist's scope; what does the task gate
say) and `after` (is the generated call valid for the request; is its confidence at the threshold). With
`threshold=None` (calibration) nothing is cut for confidence: every decision carries the confidence, and
a threshold t then serves exactly the decisions with `valid` and `confidence >= t`, as the router at t
would. The served confidence is the lower of the gate's log-probability and the student's lowest token
log-probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from downsize.contracts import OutputContract
from downsize.decide.gate import TaskGate
from downsize.decide.risk import ANSWER, RiskPolicy, tier_of
from downsize.decide.validate import validate_call
from downsize.prompting import TEXT_REPLY
from downsize.shapes import tool_names
from downsize.sites import site_key
from downsize.types import Generation, Specialist, ToolCall

if TYPE_CHECKING:
    from downsize.store import Store


class Assigner(Protocol):
    """Maps a request to a discovered task (discover.assign.TaskAssigner)."""

    def assign(
        self, request: dict[str, Any], agent: str | None = None, task_hint: str | None = None
    ) -> Any: ...


@dataclass(frozen=True)
class Scope:
    """The requests a specialist answers: its call site (the tool set it was trained on) and, for a
    specialist of discovered tasks, the requests the task assigner maps to them."""

    task_tools: frozenset[str] = frozenset()
    tasks: frozenset[str] = frozenset()
    assigner: Assigner | None = None
    agent: str | None = None  # the agent it was trained for; None: any
    kind: str = "tool_call"  # the output contract's kind
    sites: frozenset[str] = frozenset()  # other kinds: the call sites (`sites.site_key`) it was trained on

    def call_site(self, request: dict[str, Any]) -> str | None:
        """None when the request is one this specialist's call site could answer, else why not."""
        if (request.get("n") or 1) != 1:
            return "n_not_1"
        if self.kind != "tool_call":
            site = site_key(request)
            if site.startswith("tools:"):
                return "tools_offered"  # the teacher could call a tool: not this specialist's call site
            return None if not self.sites or site in self.sites else "other_site"
        names = frozenset(tool_names(request))
        if not names:
            return "no_tools"
        if self.task_tools and names != self.task_tools:
            return "other_tools"
        if request.get("tool_choice") == "none":
            return "tool_choice_none"
        return None

    def task(
        self, request: dict[str, Any], agent: str | None = None, task_hint: str | None = None
    ) -> str | None:
        """None when the request falls in one of the specialist's tasks (or it has none), else why not."""
        if self.assigner is None or not self.tasks:
            return None
        assignment = self.assigner.assign(request, agent, task_hint)
        if assignment.task is None:
            return f"novel_task:{assignment.reason}"[:64]
        return None if assignment.task in self.tasks else f"other_task:{assignment.task}"[:64]


def scope_of(store: Store, sp: Specialist) -> Scope:
    """What a specialist answers: its call site (tool set), agent, and discovered tasks with their assigner."""
    tasks = frozenset(sp.config.get("tasks") or [])
    assigner = None
    if tasks:
        from downsize.discover.discovery import load_assigner

        assigner = load_assigner(store, sp.config.get("discovery_run"))
    return Scope(
        task_tools=frozenset(sp.config.get("task_tools") or []),
        tasks=tasks,
        assigner=assigner,
        agent=sp.config.get("agent"),
        kind=OutputContract.from_dict(sp.config.get("contract")).kind,
        sites=frozenset(sp.config.get("sites") or []),
    )


def decider_of(sp: Specialist, threshold: float | None) -> Decider:
    """A stored specialist's decider: its task gate (tool calls), its output contract, this threshold."""
    calibration = (sp.metrics.get("eval") or {}).get("calibration") or {}
    chosen = calibration.get("signal") or {}
    tiers = (sp.metrics.get("promotion") or {}).get("tier_thresholds")
    return Decider(
        gate=TaskGate.load(sp.adapter_path),
        threshold=threshold,
        contract=OutputContract.from_dict(sp.config.get("contract")),
        signal=chosen.get("name") or "min",
        weights=chosen.get("weights"),
        risk=RiskPolicy.from_dict(calibration.get("risk")),
        tier_thresholds=dict(tiers) if isinstance(tiers, dict) else None,
    )


@dataclass
class Plan:
    """What the gate fixed before generation: the tool (None: the student picks) and its log-probability."""

    tool: str | None = None
    gate_logp: float = 0.0
    gate_note: str | None = None


@dataclass
class Decision:
    """The specialist's verdict on one request.

    `valid`: the answer could be served at some threshold (the gate chose a tool the request offers and the
    call validates); `accepted`: it is served at this decider's threshold.
    """

    reason: str  # accept | gate_text | low_confidence | invalid_output:<why> | <scope reason>
    valid: bool = False
    confidence: float = -math.inf
    call: ToolCall | None = None
    value: Any = None  # the answer under the contract (the call, for tool calls)
    candidate: str | None = None
    tokens: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.reason == "accept"


SIGNALS = ("min", "token_min", "token_mean", "gate", "learned")
FEATURES = ("token_min", "token_mean", "gate", "log_tokens")
FLOOR = -30.0  # a log-probability of -inf (a cut generation) counts as this in a learned signal


def signal_features(generation: Generation, plan: Plan) -> dict[str, float]:
    """What a confidence signal is computed from: the student's lowest and mean token log-probability, the
    gate's log-probability of its choice (0 without a gate), the answer's length."""
    return {
        "token_min": max(FLOOR, generation.min_logprob),
        "token_mean": max(FLOOR, generation.mean_logprob),
        "gate": max(FLOOR, plan.gate_logp),
        "log_tokens": math.log1p(max(0, generation.tokens)),
    }


def confidence_of(signal: str, features: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """A confidence signal's value: `min` (the lower of the gate's and the lowest token log-probability, the
    default), one feature alone, or `learned` (a logistic combination fitted at calibration: its log-odds)."""
    if signal == "min":
        return min(features["token_min"], features["gate"])
    if signal == "learned":
        w = weights or {}
        return w.get("bias", 0.0) + sum(w.get(name, 0.0) * features[name] for name in FEATURES)
    return features[signal]


@dataclass
class Decider:
    """A specialist's gate, threshold, output contract and confidence signal; `threshold=None` decides for
    calibration (nothing cut)."""

    gate: TaskGate | None = None
    threshold: float | None = None
    contract: OutputContract = field(default_factory=lambda: OutputContract("tool_call"))
    signal: str = "min"  # see SIGNALS; calibration picks the one that ranks right answers highest
    weights: dict[str, float] | None = None  # the learned signal's
    risk: RiskPolicy | None = None  # the user's tool tiers (`decide/risk.py`); annotations in requests first
    # per risk tier, the threshold promotion set (None: that tier is never served); None: one threshold for all
    tier_thresholds: dict[str, float | None] | None = None

    def _tier_cut(self, tier: str) -> tuple[bool, float | None]:
        """(never served, the threshold) for a tier, online; calibration (threshold None) cuts nothing."""
        if self.threshold is None or self.tier_thresholds is None or tier not in self.tier_thresholds:
            return False, self.threshold
        value = self.tier_thresholds[tier]
        return value is None, value

    @property
    def cuts_early(self) -> bool:
        """Whether a low gate or token log-probability alone settles the decision below the threshold (the
        signal is a minimum over them), so generation may stop at the first token under it."""
        return self.signal in ("min", "token_min")

    def before(self, request: dict[str, Any]) -> Plan | Decision:
        """The gate's step: a Plan for generation, or the Decision already (a text reply, an unoffered tool,
        a gate below the threshold)."""
        if self.gate is None:
            return Plan()
        gated = self.gate.decide(request.get("messages") or [])
        note = f"gate: {gated.label} p={gated.probability:.3f}"
        logp = gated.log_probability
        if gated.label == TEXT_REPLY:
            return Decision("gate_text", confidence=logp, candidate=note)
        if gated.label not in tool_names(request):
            return Decision("invalid_output:unknown_tool", confidence=logp, candidate=note)
        tier = tier_of(gated.label, request, self.risk)
        if self._tier_cut(tier)[0]:  # the chosen tool's tier is never served: no generation
            return Decision(
                f"risk_tier:{tier}", valid=True, confidence=logp, candidate=note, details={"tier": tier}
            )
        if self.threshold is not None and self.signal in ("min", "gate") and logp < self.threshold:
            return Decision("low_confidence", valid=True, confidence=logp, candidate=note)
        return Plan(tool=gated.label, gate_logp=logp, gate_note=note)

    def after(self, request: dict[str, Any], plan: Plan, generation: Generation) -> Decision:
        """The verdict on a generated answer: validation under the contract, then confidence against the
        threshold."""
        features = signal_features(generation, plan)
        confidence = (
            min(generation.min_logprob, plan.gate_logp)  # -inf stays -inf: a generation cut short
            if self.signal == "min"
            else confidence_of(self.signal, features, self.weights)
        )
        value = generation.value if generation.value is not None else generation.call
        if value is None and generation.complete and self.contract.kind != "tool_call":
            value = self.contract.parse(generation.text)  # a worker's generation: read by this contract
        decision = Decision(
            "accept",
            confidence=confidence,
            call=value if isinstance(value, ToolCall) else None,
            value=value,
            candidate=generation.text[:2000],
            tokens=generation.tokens,
            details={"signals": features},
        )
        if generation.stopped_early:
            decision.reason, decision.valid = "low_confidence", True
            return decision
        if self.contract.kind == "tool_call":
            problem = validate_call(value, request.get("tools") or []) if value is not None else "incomplete"
        else:
            problem = self.contract.validate(value, request)
        if problem:
            decision.reason = "invalid_output:" + problem.split(":", 1)[0]
            decision.candidate = f"{generation.text[:1500]} [{problem}]"
            return decision
        decision.valid = True
        tier = tier_of(value.name, request, self.risk) if isinstance(value, ToolCall) else ANSWER
        decision.details["tier"] = tier
        never, threshold = self._tier_cut(tier)
        if never:
            decision.reason = f"risk_tier:{tier}"
        elif threshold is not None and confidence < threshold:
            decision.reason = "low_confidence"
        return decision

    def serves_at(self, decision: Decision, threshold: float) -> bool:
        """Whether a decision made for calibration (threshold None) is served at `threshold`."""
        return decision.valid and not math.isinf(decision.confidence) and decision.confidence >= threshold
