"""The promotion gate: a specialist moves candidate -> shadow -> live only on held-out evidence.

shadow needs a calibrated threshold (the specialist runs beside the LLM, serves nothing, and every
would-be answer is logged for comparison). live needs the lower end of the 95% Wilson interval of its
agreement with the teacher, on the held-out validation calls it would serve at that threshold, to reach
the task's target, on at least `min_served` calls: a lower bound, not a point estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from downsize.artifacts import AtThreshold, EvalReport
from downsize.types import Specialist

ORDER = ("candidate", "shadow", "live")


@dataclass
class GateResult:
    allowed: bool
    reason: str
    evidence: dict[str, Any]


def promotion_gate(
    specialist: Specialist, to: str, target_lower95: float = 0.90, min_served: int = 20
) -> GateResult:
    """Whether `specialist` may move to status `to`, and why (the message names what to do next)."""
    evaluation = EvalReport.of(specialist)
    at = evaluation.validation.at_threshold if evaluation else AtThreshold()
    evidence = {
        "threshold": specialist.threshold,
        "validation_served": at.served,
        "validation_agreement": at.agreement if evaluation else None,
        "validation_agreement_lower95": at.agreement_lower95,
        "target_lower95": target_lower95,
        "min_served": min_served,
    }
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
    if specialist.threshold is None:
        return GateResult(
            False,
            f"no confidence threshold reached {evaluation.target_agreement:.0%} agreement on validation, "
            "so the specialist would serve nothing: train longer or on more data, then `downsize eval` again",
            evidence,
        )
    if to == "shadow":
        return GateResult(True, "calibrated: it may run in shadow beside the LLM", evidence)
    served, lower = at.served, at.agreement_lower95
    if served < min_served or lower < target_lower95:
        return GateResult(
            False,
            f"agreement lower bound {lower:.3f} on {served} served validation calls is below the gate "
            f"({target_lower95:.2f} on at least {min_served}): keep it in shadow, or lower the target with --target",
            evidence,
        )
    return GateResult(
        True,
        f"agreement lower bound {lower:.3f} on {served} served calls clears {target_lower95:.2f}",
        evidence,
    )
