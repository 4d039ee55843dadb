"""Automatic rollback: a canary or live task goes back to shadow when its served traffic shows, with
confidence, that it is worse than a configured limit (`config.RollbackConfig`).

Only the traffic since the specialist entered its current mode counts (its last `route_events` row). Three
rules, each needing `min_calls` observations (workflows for the outcome rule) and a one-sided Wilson bound at
`confidence` past its limit, so one bad call never rolls a task back:

- disagreement: served calls the LLM was also asked (the gateway's background check of `check_fraction` of
  served calls, stored as `probe` exchanges) and answered differently, by the strict rule of the answers' kind
  (`evaluate/probe.py`);
- fallbacks: decided calls that fell back (validation, confidence, errors, timeouts; a canary's hold-out share
  is not a fallback);
- outcomes: workflows with a served call succeed less often than the same agent's LLM-only workflows, by more
  than `max_success_drop`.

`check` only reads; `roll_back` applies a verdict through `modes.set_mode` (actor `rollback`, the figures as
evidence), which the gateway picks up on its next reload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from downsize.config import RollbackConfig
from downsize.evaluate.metrics import wilson_lower
from downsize.evaluate.probe import answers_agree, pair_probes
from downsize.route.modes import RouteChange, set_mode
from downsize.store import Store
from downsize.types import PROBE_ROUTE, Specialist

NOT_FALLBACKS = ("served", "shadow", "canary_holdout")


@dataclass
class RollbackVerdict:
    specialist: Specialist
    roll_back: bool
    reason: str
    since: str | None
    evidence: dict[str, Any] = field(default_factory=dict)


def wilson_upper(successes: int, n: int, z: float) -> float:
    """Upper end of the Wilson interval (1 for n = 0)."""
    return 1.0 - wilson_lower(n - successes, n, z) if n else 1.0


def operating_since(store: Store, specialist: Specialist) -> str | None:
    """When the specialist entered its current mode (its newest route event into it), else its creation."""
    for event in reversed(store.route_events(specialist.id)):
        if event["to_mode"] == specialist.status:
            return str(event["created_at"])
    return specialist.created_at


def check(store: Store, specialist: Specialist, limits: RollbackConfig) -> RollbackVerdict:
    """Whether a canary or live specialist should go back to shadow, and the figures either way."""
    assert specialist.id is not None
    since = operating_since(store, specialist)
    if specialist.status not in ("canary", "live"):
        return RollbackVerdict(specialist, False, f"{specialist.status}: nothing to roll back", since)
    z = NormalDist().inv_cdf(limits.confidence)  # one-sided
    decisions = store.decisions_of(specialist.id, since)
    decided = [d for d in decisions if d["reason"] != "canary_holdout"]
    fallbacks = sum(d["reason"] not in NOT_FALLBACKS for d in decided)
    served = [d for d in decided if d["served"]]
    evidence: dict[str, Any] = {"since": since, "decided": len(decided), "served": len(served)}

    # disagreement with the LLM on served calls it was also asked
    route = f"specialist:{specialist.id}"
    pairs = pair_probes(store.exchanges(since=since, routes=(route, PROBE_ROUTE)))
    verdicts = [v for v in (answers_agree(first, probe) for first, probe in pairs) if v is not None]
    disagreed = sum(not v for v in verdicts)
    evidence["checked"] = len(verdicts)
    evidence["disagreed"] = disagreed
    if verdicts:
        evidence["disagreement"] = round(disagreed / len(verdicts), 4)
        evidence["disagreement_lower"] = round(wilson_lower(disagreed, len(verdicts), z), 4)
    evidence["fallbacks"] = fallbacks
    if decided:
        evidence["fallback_rate"] = round(fallbacks / len(decided), 4)
        evidence["fallback_rate_lower"] = round(wilson_lower(fallbacks, len(decided), z), 4)

    # workflow outcomes against the same agent's LLM-only workflows
    agents = {d["agent"] for d in decisions if d["agent"]}
    outcomes = store.session_outcomes(next(iter(agents)) if len(agents) == 1 else None, since)
    mine = {d["session"] for d in served if d["session"]}
    with_served = [ok for session, (ok, _) in outcomes.items() if session in mine]
    llm_only = [ok for ok, any_served in outcomes.values() if not any_served]
    evidence["workflows_served"] = len(with_served)
    evidence["workflows_llm_only"] = len(llm_only)

    reasons = []
    if len(verdicts) >= limits.min_calls and evidence["disagreement_lower"] > limits.max_disagreement:
        reasons.append(
            f"disagreement with the LLM {disagreed}/{len(verdicts)} (lower bound "
            f"{evidence['disagreement_lower']:.2f} > {limits.max_disagreement:.2f})"
        )
    if len(decided) >= limits.min_calls and evidence["fallback_rate_lower"] > limits.max_fallback_rate:
        reasons.append(
            f"fallbacks {fallbacks}/{len(decided)} (lower bound {evidence['fallback_rate_lower']:.2f} > "
            f"{limits.max_fallback_rate:.2f})"
        )
    if len(with_served) >= limits.min_workflows and len(llm_only) >= limits.min_workflows:
        wins = sum(ok >= 1.0 for ok in with_served)
        upper = wilson_upper(wins, len(with_served), z)
        baseline = sum(ok >= 1.0 for ok in llm_only) / len(llm_only)
        evidence["success_served"] = round(wins / len(with_served), 4)
        evidence["success_served_upper"] = round(upper, 4)
        evidence["success_llm_only"] = round(baseline, 4)
        if upper < baseline - limits.max_success_drop:
            reasons.append(
                f"workflow success {wins}/{len(with_served)} (upper bound {upper:.2f}) below the LLM-only "
                f"workflows' {baseline:.2f} by more than {limits.max_success_drop:.2f}"
            )
    if reasons:
        return RollbackVerdict(specialist, True, "; ".join(reasons), since, evidence)
    return RollbackVerdict(specialist, False, "within limits", since, evidence)


def roll_back(store: Store, verdict: RollbackVerdict) -> RouteChange:
    """Send a task whose verdict says so back to shadow, recording why and the figures."""
    return set_mode(
        store,
        verdict.specialist,
        "shadow",
        actor="rollback",
        reason=f"rolled back from {verdict.specialist.status}: {verdict.reason}",
        evidence=verdict.evidence,
    )


def check_all(store: Store, limits: RollbackConfig, apply: bool = True) -> list[RollbackVerdict]:
    """Check every canary and live specialist; roll back (when `apply`) those whose verdict says so."""
    verdicts = []
    for status in ("canary", "live"):
        for sp in store.specialists(status=status):
            verdict = check(store, sp, limits)
            if verdict.roll_back and apply:
                roll_back(store, verdict)
            verdicts.append(verdict)
    return verdicts
