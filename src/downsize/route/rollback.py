"""Automatic rollback: a canary or live task goes back to shadow when its served traffic shows, with
confidence, that it is worse than a configured limit (`config.RollbackConfig`).

Only the traffic since the specialist entered its current mode counts (its last `route_events` row). Three
rules, each needing `min_calls` observations (workflows for the outcome rule) and a one-sided Wilson bound at
`confidence` past its limit, so one bad call never rolls a task back:

- disagreement: served calls the LLM was also asked (the gateway's background check of `check_fraction` of
  served calls, stored as `probe` exchanges) and answered differently, by the strict rule of the answers' kind
  (`evaluate/probe.py`);
- failures: answers that fail validation, errors and timeouts among the calls the specialist answered (a
  changed tool schema makes its answers invalid);
- served share: the share of the task's calls it served, against the share its evaluation measured at the same
  threshold on validation. Falling back is the design (a tool-call specialist abstains where the teacher would
  reply in text, and below its threshold): only a served share far below the calibrated one is a drift. Calls
  outside its tasks and a canary's hold-out share do not count;
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

OUTSIDE = ("canary_holdout", "other_task", "novel_task")  # not the task's calls to judge it on
FAILURES = ("invalid_output", "specialist_error", "specialist_timeout")


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
    decided = [d for d in decisions if d["reason"].split(":", 1)[0] not in OUTSIDE]
    served = [d for d in decided if d["served"]]
    answered = [d for d in decided if d["reason"] != "gate_text"]  # the specialist wrote an answer
    failures = sum(d["reason"].split(":", 1)[0] in FAILURES for d in answered)
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
    evidence["answered"] = len(answered)
    evidence["failures"] = failures
    if answered:
        evidence["failure_rate"] = round(failures / len(answered), 4)
        evidence["failure_rate_lower"] = round(wilson_lower(failures, len(answered), z), 4)
    expected = _calibrated_share(specialist)
    if decided:
        evidence["served_share"] = round(len(served) / len(decided), 4)
        evidence["served_share_upper"] = round(wilson_upper(len(served), len(decided), z), 4)
    evidence["served_share_calibrated"] = expected

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
    if len(answered) >= limits.min_calls and evidence["failure_rate_lower"] > limits.max_failure_rate:
        reasons.append(
            f"invalid answers or errors {failures}/{len(answered)} (lower bound "
            f"{evidence['failure_rate_lower']:.2f} > {limits.max_failure_rate:.2f})"
        )
    floor = expected * (1 - limits.max_served_drop) if expected else None
    if floor and len(decided) >= limits.min_calls and evidence["served_share_upper"] < floor:
        reasons.append(
            f"served {len(served)}/{len(decided)} of its calls (upper bound {evidence['served_share_upper']:.2f}) "
            f"against {expected:.2f} at calibration (floor {floor:.2f})"
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


def _calibrated_share(specialist: Specialist) -> float | None:
    """The served share its evaluation measured on validation at its threshold (None when not evaluated)."""
    from downsize.artifacts import EvalReport

    report = EvalReport.of(specialist)
    at = report.validation.at_threshold if report else None
    return round(at.served_share, 4) if at is not None and at.calls else None


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
