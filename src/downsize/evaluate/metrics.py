"""Agreement metrics, Wilson bounds and threshold calibration. Pure Python, shared by eval, demo and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from downsize.artifacts import AtThreshold, TargetRow
from downsize.types import ToolCall


def wilson_lower(successes: int, n: int, z: float = 1.959964) -> float:
    """Lower end of the Wilson score interval (95% by default); 0 for n = 0."""
    if n == 0:
        return 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def exact_match(predicted: ToolCall | None, reference: ToolCall | None) -> bool:
    """Same tool and the same arguments after JSON normalisation; a call where the teacher replied in text is wrong."""
    return predicted is not None and reference is not None and predicted.canonical() == reference.canonical()


@dataclass
class Scored:
    """One held-out call: the student's confidence, whether its call was valid, and whether it agreed."""

    confidence: float
    valid: bool
    agrees: bool
    teacher_called: bool  # the teacher answered with a tool call (not text)


@dataclass
class CurvePoint:
    threshold: float
    served: int
    agreed: int
    coverage: float  # served / teacher tool calls
    agreement: float
    agreement_lower95: float


def curve(items: Sequence[Scored]) -> list[CurvePoint]:
    """Agreement vs coverage when serving every valid call whose confidence is at least each threshold."""
    tool_calls = sum(1 for s in items if s.teacher_called) or 1
    ranked = sorted(
        (s for s in items if s.valid and not math.isinf(s.confidence)), key=lambda s: -s.confidence
    )
    points: list[CurvePoint] = []
    served = agreed = 0
    for i, s in enumerate(ranked):
        served += 1
        agreed += s.agrees
        if i + 1 < len(ranked) and ranked[i + 1].confidence == s.confidence:
            continue  # ties enter together
        points.append(
            CurvePoint(
                threshold=s.confidence,
                served=served,
                agreed=agreed,
                coverage=served / tool_calls,
                agreement=agreed / served,
                agreement_lower95=wilson_lower(agreed, served),
            )
        )
    return points


def calibrate(items: Sequence[Scored], target: float, min_served: int = 10) -> float | None:
    """The lowest threshold whose served calls reach `target` agreement (at least `min_served` of them).

    None when no threshold does: then the specialist should serve nothing.
    """
    best = None
    for point in curve(items):
        if point.served >= min_served and point.agreement >= target:
            best = point.threshold
    return best


def at_threshold(items: Sequence[Scored], threshold: float | None) -> AtThreshold:
    """What serving at a threshold gives: served, share of the teacher's tool calls, agreement and its bound."""
    tool_calls = sum(1 for s in items if s.teacher_called)
    if threshold is None:
        served = agreed = 0
    else:
        chosen = [s for s in items if s.valid and s.confidence >= threshold]
        served, agreed = len(chosen), sum(s.agrees for s in chosen)
    return AtThreshold(
        calls=len(items),
        tool_calls=tool_calls,
        served=served,
        agreed=agreed,
        served_share=served / tool_calls if tool_calls else 0.0,
        agreement=agreed / served if served else 0.0,
        agreement_lower95=wilson_lower(agreed, served),
    )


TARGETS = (0.80, 0.85, 0.90, 0.95)


def by_target(
    validation: Sequence[Scored], test: Sequence[Scored], targets: Sequence[float] = TARGETS
) -> list[TargetRow]:
    """For each target agreement: the threshold calibrated on validation, and what it serves on test.

    What a user gets by choosing a laxer target than the default, measured the honest way (the threshold
    never sees the test calls).
    """
    rows = []
    for target in sorted(set(targets)):
        threshold = calibrate(validation, target)
        rows.append(
            TargetRow(target, threshold, at_threshold(validation, threshold), at_threshold(test, threshold))
        )
    return rows
