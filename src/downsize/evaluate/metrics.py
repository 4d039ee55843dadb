"""Agreement metrics, Wilson bounds and threshold calibration. Pure Python, shared by eval, demo and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from downsize.artifacts import AtThreshold, TargetRow
from downsize.types import ToolCall


def wilson_lower(successes: float, n: float, z: float = 1.959964) -> float:
    """Lower end of the Wilson score interval (95% by default); 0 for n = 0. Counts may be effective
    (fractional) ones (`effective_lower95`)."""
    if n == 0:
        return 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def design_effect(clusters: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """(intra-cluster correlation, design effect) of a right/wrong outcome observed in clusters of (calls,
    right) - a workflow's calls, which agree or fail together when its trials repeat the same steps. The
    correlation is the one-way ANOVA estimator (clipped at 0), the design effect Kish's 1 + (m0 - 1) * icc with
    m0 the size-weighted mean cluster size: n calls carry the evidence of about n / design effect independent
    ones. (0, 1) when there are fewer than two clusters or no outcome varies."""
    sized = [(n, k) for n, k in clusters if n > 0]
    total = sum(n for n, _ in sized)
    groups = len(sized)
    if groups < 2 or total <= groups:
        return 0.0, 1.0
    p = sum(k for _, k in sized) / total
    between = sum(n * (k / n - p) ** 2 for n, k in sized) / (groups - 1)
    within = sum(k * (1 - k / n) for n, k in sized) / (total - groups)
    m0 = (total - sum(n * n for n, _ in sized) / total) / (groups - 1)
    denominator = between + (m0 - 1) * within
    icc = max(0.0, min(1.0, (between - within) / denominator)) if denominator > 0 else 0.0
    return icc, 1.0 + (m0 - 1) * icc


def effective_lower95(agreed: int, served: int, deff: float) -> float:
    """The Wilson lower bound counting `served` calls as `served / deff` independent ones (same rate)."""
    scale = 1.0 / max(1.0, deff)
    return wilson_lower(agreed * scale, served * scale)


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


DELTA = 0.05  # calibration's risk: the chance that the served calls' agreement is below target after all


def binomial_upper_tail(successes: int, n: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(n, p): the exact one-sided p-value of "agreement rate <= p"."""
    if successes <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        for k in range(successes, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def start_size(target: float, delta: float = DELTA, min_served: int = 10) -> int:
    """Where the fixed sequence of tests starts: twice the calls a perfect record needs to reject
    "agreement <= target" at `delta` (fewer could never pass, and a first test that cannot pass would stop
    the sequence before it reaches calls with power), and at least `min_served`."""
    if target <= 0.0:
        return min_served
    if target >= 1.0:
        return 10**9
    return max(min_served, 2 * math.ceil(math.log(delta) / math.log(target)))


def ltt_point(
    points: Sequence[CurvePoint], target: float, delta: float = DELTA, min_served: int = 10
) -> CurvePoint | None:
    """Learn-then-Test (Angelopoulos et al., 2021) over the curve's thresholds, fixed-sequence: from the most
    confident, test each threshold's null "the calls it serves agree at a rate <= target" with the exact
    binomial tail, and stop at the first that cannot be rejected at `delta`. The point returned is the laxest
    rejected one: with probability >= 1 - delta over the calibration calls, calls exchangeable with them that
    it serves agree at a rate above `target`. None when the first test fails (then nothing is served).

    The grid is the curve's own thresholds, thinned to steps of about 2% of the calls so that one noisy
    neighbour does not end the sequence; it is fixed by confidences alone, never by which calls agreed.
    """
    ordered = sorted(points, key=lambda p: p.served)
    if not ordered:
        return None
    step = max(5, ordered[-1].served // 50)
    grid: list[CurvePoint] = []
    first = start_size(target, delta, min_served)
    for point in ordered:
        if point.served >= first and (not grid or point.served >= grid[-1].served + step):
            grid.append(point)
    if ordered[-1].served >= first and grid and grid[-1] is not ordered[-1]:
        grid.append(ordered[-1])
    best = None
    for point in grid:
        if binomial_upper_tail(point.agreed, point.served, target) > delta:
            break
        best = point
    return best


def calibrate(
    items: Sequence[Scored], target: float, min_served: int = 10, delta: float = DELTA
) -> float | None:
    """The threshold Learn-then-Test (`ltt_point`) picks for `target` on these calls: the laxest whose served
    calls agree above `target` with 95% confidence, tested in sequence from the most confident.

    None when no threshold does: then the specialist should serve nothing.
    """
    point = ltt_point(curve(items), target, delta, min_served)
    return point.threshold if point else None


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The probability that a right answer's score ranks above a wrong one's (ties count half): how well a
    confidence signal separates them. None without both kinds."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda x: x[0])
    positives = sum(1 for _, y in pairs if y)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        mid = (i + j) / 2 + 1  # mean rank of the tied run
        rank_sum += mid * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


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
