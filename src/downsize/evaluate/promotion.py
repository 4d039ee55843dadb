"""The promotion gate: a specialist moves candidate -> shadow -> live only on held-out evidence.

shadow needs a calibrated threshold (the specialist runs beside the LLM, serves nothing, and every
would-be answer is logged for comparison). live needs the lower end of the 95% Wilson interval of its
agreement with the teacher, on the held-out validation calls it would serve at that threshold, to reach
the task's target, on at least `min_served` calls: a lower bound, not a point estimate.

`rule="parity"` judges against the teacher instead of a fixed target: a non-inferiority test. The bar is the
teacher's own agreement where a situation recurs (`evaluate/ceiling.py`, stored in the eval report) minus a
stated `margin`; the threshold is the one serving the most validation calls whose agreement's 95% lower bound
is not below that bar, on at least `min_served` calls, chosen by Learn-then-Test (`metrics.ltt_point`) so that
picking the laxest of many thresholds does not inflate the bound; the ceiling must rest on at least
`MIN_CEILING_PAIRS` answer pairs. Both rules return the figures behind the decision.

Both rules count the evidence by workflows by default (`count="workflows"`): calls of one workflow agree or
fail together, so the served calls are worth served / design effect independent ones (`metrics.CurvePoint`).
`count="calls"` counts them as independent, the laxer rule; reports written before design effects were
stored are judged by calls, and the evidence says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from downsize.artifacts import AtThreshold, EvalReport
from downsize.decide.risk import ANSWER, DESTRUCTIVE_TARGET
from downsize.evaluate.metrics import COUNTS, CurvePoint, ltt_point, wilson_lower
from downsize.types import Specialist

ORDER = ("candidate", "shadow", "live")
RULES = ("strict", "parity")
MIN_CEILING_PAIRS = 30
PARITY_MARGIN = 0.05


@dataclass
class GateResult:
    allowed: bool
    reason: str
    evidence: dict[str, Any]
    threshold: float | None = None  # parity: the threshold it would serve at (strict: the calibrated one)


def _refused(
    specialist: Specialist, to: str, evaluation: EvalReport | None, evidence: dict[str, Any]
) -> GateResult | None:
    """What either rule refuses before looking at figures: an unknown status, a retired or unevaluated one."""
    if to not in ORDER[1:]:
        return GateResult(False, f"promotion goes to 'shadow' or 'live', not {to!r}", evidence)
    if specialist.status == "retired":
        return GateResult(False, "a retired specialist is not promoted again: train a new version", evidence)
    if not evaluation:
        return GateResult(
            False,
            f"specialist {specialist.id} has not been evaluated: run `downsize eval {specialist.id}`",
            evidence,
        )
    return None


def parity_point(
    curve: list[dict[str, Any]], bar: float, min_served: int, count: str = "workflows"
) -> dict[str, Any] | None:
    """The calibration curve point Learn-then-Test picks at `bar` (`metrics.ltt_point`): the laxest threshold
    whose served calls agree above the bar with 95% confidence, tested in sequence from the most confident,
    the evidence counted by `count`."""
    points = [CurvePoint.of(p) for p in curve]
    point = ltt_point(points, bar, min_served=min_served, count=count)
    return next((p for p in curve if float(p["threshold"]) == point.threshold), None) if point else None


OLDER_REPORT = "calls (this evaluation predates workflow counts: run `downsize eval` again)"


def _counting(count: str, measured: bool) -> tuple[str, str]:
    """(the count used, as the evidence says it): by workflows only where the evaluation measured design
    effects (older reports did not)."""
    if count == "workflows" and not measured:
        return "calls", OLDER_REPORT
    return count, count


def _tier_bar(tier: str, target: float, parity_bar: float | None) -> float:
    """The agreement a tier's served calls must show: read-only tools (and answers that are not tool calls) at
    parity when the rule is parity, destructive ones at `DESTRUCTIVE_TARGET`, others at `target`."""
    if tier in ("read_only", ANSWER) and parity_bar is not None:
        return parity_bar
    return max(target, DESTRUCTIVE_TARGET) if tier == "destructive" else target


def tier_thresholds(
    tiers: dict[str, Any],
    target: float,
    min_served: int,
    parity_bar: float | None = None,
    count: str = "workflows",
) -> dict[str, float | None]:
    """A threshold per risk tier (`decide/risk.py`) on that tier's calibration curve, at `_tier_bar`, by
    Learn-then-Test. None: the tier is never served."""
    out: dict[str, float | None] = {}
    for tier, figures in sorted(tiers.items()):
        curve = list((figures or {}).get("curve") or [])
        point = parity_point(curve, _tier_bar(tier, target, parity_bar), min_served, count)
        out[tier] = float(point["threshold"]) if point else None
    return out


def _tier_line(tier: str, threshold: float | None, bar: float, target: float) -> str:
    needed = _tier_bar(tier, target, bar)
    rule = (
        f"at parity {needed:.3f}" if needed == bar and tier in ("read_only", ANSWER) else f"at {needed:.2f}"
    )
    return f"{tier} {rule}: " + (f"threshold {threshold:.4g}" if threshold is not None else "not served")


def parity_gate(
    specialist: Specialist,
    to: str,
    margin: float = PARITY_MARGIN,
    min_served: int = 20,
    count: str = "workflows",
) -> GateResult:
    """The non-inferiority rule: agreement with the teacher not below its own ceiling minus `margin`."""
    evaluation = EvalReport.of(specialist)
    ceiling = (evaluation.teacher_ceiling if evaluation else None) or {}
    evidence: dict[str, Any] = {
        "rule": "parity",
        "margin": margin,
        "min_served": min_served,
        "ceiling": ceiling,
        "count": count,
    }
    refused = _refused(specialist, to, evaluation, evidence)
    if refused is not None:
        return refused
    assert evaluation is not None  # _refused returns a refusal without one
    if ceiling.get("agreement") is None or int(ceiling.get("pairs") or 0) < MIN_CEILING_PAIRS:
        return GateResult(
            False,
            f"the teacher's ceiling rests on {int(ceiling.get('pairs') or 0)} answer pairs (at least "
            f"{MIN_CEILING_PAIRS} needed): too few recurring situations in this scope to judge at parity; use "
            "--rule strict, or log more traffic (a consistency probe will measure it live)",
            evidence,
        )
    bar = float(ceiling["agreement"]) - margin
    evidence["bar"] = bar
    tiers = (evaluation.calibration or {}).get("tiers")
    curves = [list((f or {}).get("curve") or []) for f in (tiers or {}).values()] or [
        evaluation.validation.curve
    ]
    measured = all(p.get("design_effect") is not None for c in curves for p in c)
    count, evidence["count"] = _counting(count, measured)
    if tiers:  # tool calls: each risk tier of the called tool gets its own threshold
        chosen = tier_thresholds(tiers, evaluation.target_agreement, min_served, parity_bar=bar, count=count)
        if count == "workflows":  # the laxer count, printed beside, never served on
            evidence["tier_thresholds_by_calls"] = tier_thresholds(
                tiers, evaluation.target_agreement, min_served, parity_bar=bar, count="calls"
            )
        evidence["tier_thresholds"] = chosen
        served = {t: v for t, v in chosen.items() if v is not None}
        listed = "; ".join(_tier_line(t, v, bar, evaluation.target_agreement) for t, v in chosen.items())
        if not served:
            hint = (
                ""
                if "read_only" in chosen
                else "; parity serves read-only tools only: declare them with `downsize eval ID --read-only "
                "PATTERNS` (or send MCP readOnlyHint annotations), or"
            )
            return GateResult(
                False, f"no risk tier of its tools can be served ({listed}){hint}: keep training", evidence
            )
        return GateResult(
            True,
            f"by risk tier of the called tool ({listed}); the teacher's own agreement is {ceiling['agreement']:.3f}; "
            f"evidence counted by {evidence['count']}",
            evidence,
            threshold=min(served.values()),
        )
    point = parity_point(evaluation.validation.curve, bar, min_served, count)
    evidence["point"] = point
    if point is None:
        return GateResult(
            False,
            f"no threshold serves {min_served} validation calls with an agreement lower bound of at least "
            f"{bar:.3f} (the teacher's {ceiling['agreement']:.3f} minus {margin:.2f}), counting by "
            f"{evidence['count']}: keep training",
            evidence,
        )
    return GateResult(
        True,
        f"at parity: agreement lower bound {_lower(point, count)} on {point['served']} served validation calls "
        f"is not below the teacher's own {ceiling['agreement']:.3f} minus {margin:.2f}",
        evidence,
        threshold=float(point["threshold"]),
    )


def _lower(point: dict[str, Any], count: str) -> str:
    """A served set's lower bound as the gate counted it, the other count beside."""
    by_calls = wilson_lower(point["agreed"], point["served"])
    effective = point.get("agreement_lower95_effective")
    if count == "workflows" and effective is not None:
        return f"{effective:.3f} by workflows (design effect {point['design_effect']:.2f}; {by_calls:.3f} by calls)"
    return f"{by_calls:.3f} by calls"


def promotion_gate(
    specialist: Specialist,
    to: str,
    target_lower95: float = 0.90,
    min_served: int = 20,
    rule: str = "strict",
    margin: float = PARITY_MARGIN,
    count: str = "workflows",
) -> GateResult:
    """Whether `specialist` may move to status `to`, and why (the message names what to do next)."""
    if count not in COUNTS:
        return GateResult(False, f"unknown count {count!r}: use one of {', '.join(COUNTS)}", {})
    if rule == "parity":
        return parity_gate(specialist, to, margin, min_served, count)
    if rule != "strict":
        return GateResult(False, f"unknown promotion rule {rule!r}: use one of {', '.join(RULES)}", {})
    evaluation = EvalReport.of(specialist)
    at = evaluation.validation.at_threshold if evaluation else AtThreshold()
    count, counted = _counting(count, at.agreement_lower95_effective is not None)
    evidence: dict[str, Any] = {
        "threshold": specialist.threshold,
        "validation_served": at.served,
        "validation_agreement": at.agreement if evaluation else None,
        "validation_agreement_lower95": at.agreement_lower95,
        "validation_agreement_lower95_effective": at.agreement_lower95_effective,
        "validation_design_effect": at.design_effect,
        "target_lower95": target_lower95,
        "min_served": min_served,
        "rule": "strict",
        "count": counted,
    }
    refused = _refused(specialist, to, evaluation, evidence)
    if refused is not None:
        return refused
    assert evaluation is not None  # _refused returns a refusal without one
    if specialist.threshold is None:
        return GateResult(
            False,
            f"no confidence threshold reached {evaluation.target_agreement:.0%} agreement on validation, "
            "so the specialist would serve nothing: train longer or on more data, then `downsize eval` again",
            evidence,
        )
    if to == "shadow":
        return GateResult(
            True, "calibrated: it may run in shadow beside the LLM", evidence, threshold=specialist.threshold
        )
    tiers = (evaluation.calibration or {}).get("tiers") or {}
    if "destructive" in tiers:  # tools that destroy answer to a stricter target than the rest
        destructive = tier_thresholds(
            {"destructive": tiers["destructive"]},
            evaluation.target_agreement,
            min_served,
            count=count,
        )
        evidence["tier_thresholds"] = {**{t: specialist.threshold for t in tiers}, **destructive}
    served, lower = at.served, at.lower95(count)
    by = f"by {count}"
    if count == "workflows":
        by += f", design effect {at.design_effect:.2f}; {at.agreement_lower95:.3f} by calls"
    if served < min_served or lower < target_lower95:
        return GateResult(
            False,
            f"agreement lower bound {lower:.3f} ({by}) on {served} served validation calls is below the gate "
            f"({target_lower95:.2f} on at least {min_served}): keep it in shadow, or lower the target with --target",
            evidence,
        )
    return GateResult(
        True,
        f"agreement lower bound {lower:.3f} ({by}) on {served} served calls clears {target_lower95:.2f}",
        evidence,
        threshold=specialist.threshold,
    )


def record_promotion(store: Any, specialist: Specialist, to: str, result: GateResult) -> None:
    """Apply an allowed promotion: the status, the threshold the rule chose, and the figures behind it
    (`metrics.promotion`, with the per-tier thresholds the router then applies)."""
    assert result.allowed and specialist.id is not None
    metrics = {**specialist.metrics, "promotion": {"to": to, "reason": result.reason, **result.evidence}}
    kept = {"threshold": result.threshold} if result.threshold is not None else {}
    store.update_specialist(specialist.id, metrics=metrics, **kept)
    store.set_status(specialist.id, to)


def served_at(evaluation: EvalReport, gate: GateResult, split: str = "test") -> tuple[int, int, int] | None:
    """(served, agreed, teacher tool calls) at the thresholds an allowed gate chose, per risk tier where it set
    them, offline from the report's curves: on the test split (`test`: every test call in scope, a call served
    where the teacher replied in text counting against it) or on the calibration calls (`calibration`); None
    when the gate refused. The two side by side are the calibration-vs-test gap."""
    from downsize.evaluate.curves import point_at_threshold

    if not gate.allowed:
        return None
    calibration = evaluation.calibration or {}
    on_test = split == "test"
    tool_calls = (evaluation.test if on_test else evaluation.validation).at_threshold.tool_calls
    chosen = gate.evidence.get("tier_thresholds")
    tiers = calibration.get("test_tiers" if on_test else "tiers")
    if chosen and tiers is not None:
        served = agreed = 0
        for tier, threshold in chosen.items():
            curve = (tiers.get(tier) or {}).get("curve") or []
            point = point_at_threshold(curve, threshold) if threshold is not None else None
            served += point["served"] if point else 0
            agreed += point["agreed"] if point else 0
        return served, agreed, tool_calls
    curve = (calibration.get("test_curve") or []) if on_test else evaluation.validation.curve
    point = point_at_threshold(curve, gate.threshold)
    return (point["served"], point["agreed"], tool_calls) if point else (0, 0, tool_calls)


def served_on_test(evaluation: EvalReport, gate: GateResult) -> tuple[int, int, int] | None:
    """`served_at` on the test split."""
    return served_at(evaluation, gate, "test")
