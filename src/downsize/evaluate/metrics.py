"""Agreement metrics, Wilson bounds and threshold calibration. Pure Python, shared by eval, demo and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from downsize.artifacts import AtThreshold, TargetRow
from downsize.config import COUNTS
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


def _cluster(item: Scored, i: int) -> object:
    """The cluster a call falls in: its workflow, or a cluster of its own when it has none."""
    return item.workflow if item.workflow is not None else ("call", i)


def workflow_clusters(items: Sequence[Scored]) -> list[tuple[int, int]]:
    """(valid answers, agreeing) per workflow of these items: `design_effect`'s clusters."""
    clusters: dict[object, list[int]] = {}
    for i, s in enumerate(items):
        if s.valid:
            counts = clusters.setdefault(_cluster(s, i), [0, 0])
            counts[0] += 1
            counts[1] += int(s.agrees)
    return [(n, k) for n, k in clusters.values()]


def intra_workflow_correlation(items: Sequence[Scored]) -> float:
    """How strongly the valid answers' agreement clusters by workflow (`design_effect`'s correlation)."""
    return design_effect(workflow_clusters(items))[0]


def sized_design_effect(sizes: Sequence[int], icc: float) -> float:
    """Kish's design effect 1 + (m - 1) * icc of calls falling `sizes` to a workflow, m the size-weighted mean
    size: the correlation is the outcome's (measured over every valid answer), the sizes those of the calls a
    threshold serves, so a threshold serving a few calls from each of many workflows loses little."""
    total = sum(sizes)
    if total == 0:
        return 1.0
    return 1.0 + (sum(n * n for n in sizes) / total - 1.0) * max(0.0, icc)


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
    workflow: str | None = None  # calls of one workflow agree or fail together (None: a cluster of its own)


@dataclass
class CurvePoint:
    threshold: float
    served: int
    agreed: int
    coverage: float  # served / teacher tool calls
    agreement: float
    agreement_lower95: float
    # the served calls' design effect by their workflows (`sized_design_effect`): they carry the evidence of
    # served / design_effect independent calls; 1.0 in reports written before workflows were counted
    design_effect: float = 1.0
    agreement_lower95_effective: float | None = None  # the Wilson bound on those effective calls

    def effective(self, count: str = "workflows") -> tuple[float, float]:
        """(agreed, served) as evidence: divided by the design effect when counting by workflows."""
        scale = 1.0 if count == "calls" else 1.0 / max(1.0, self.design_effect)
        return self.agreed * scale, self.served * scale

    @classmethod
    def of(cls, row: dict[str, Any]) -> CurvePoint:
        """A point read back from a stored curve."""
        served, agreed = int(row["served"]), int(row["agreed"])
        return cls(
            threshold=float(row["threshold"]),
            served=served,
            agreed=agreed,
            coverage=float(row.get("coverage", 0.0)),
            agreement=agreed / served if served else 0.0,
            agreement_lower95=wilson_lower(agreed, served),
            design_effect=float(row.get("design_effect") or 1.0),
            agreement_lower95_effective=row.get("agreement_lower95_effective"),
        )


def curve(items: Sequence[Scored], icc: float | None = None) -> list[CurvePoint]:
    """Agreement vs coverage when serving every valid call whose confidence is at least each threshold; each
    point's design effect from the served calls' workflows at correlation `icc` (default: these items' own)."""
    tool_calls = sum(1 for s in items if s.teacher_called) or 1
    icc = intra_workflow_correlation(items) if icc is None else icc
    ranked = sorted(
        (s for s in items if s.valid and not math.isinf(s.confidence)), key=lambda s: -s.confidence
    )
    points: list[CurvePoint] = []
    served = agreed = 0
    sizes: dict[object, int] = {}
    square_sum = 0  # sum of the squared calls per workflow among the served
    for i, s in enumerate(ranked):
        served += 1
        agreed += s.agrees
        key = _cluster(s, i)
        square_sum += 2 * sizes.get(key, 0) + 1
        sizes[key] = sizes.get(key, 0) + 1
        if i + 1 < len(ranked) and ranked[i + 1].confidence == s.confidence:
            continue  # ties enter together
        deff = 1.0 + (square_sum / served - 1.0) * max(0.0, icc)
        points.append(
            CurvePoint(
                threshold=s.confidence,
                served=served,
                agreed=agreed,
                coverage=served / tool_calls,
                agreement=agreed / served,
                agreement_lower95=wilson_lower(agreed, served),
                design_effect=round(deff, 4),
                agreement_lower95_effective=round(effective_lower95(agreed, served, deff), 4),
            )
        )
    return points


DELTA = 0.05  # calibration's risk: the chance that the served calls' agreement is below target after all


def effective_tail(agreed: float, served: float, p: float) -> float:
    """`binomial_upper_tail` on effective (fractional) counts, made whole on the cautious side: the calls
    rounded down, the failures up."""
    n = math.floor(served + 1e-9)
    failures = math.ceil(served - agreed - 1e-9)
    return binomial_upper_tail(max(0, n - failures), n, p)


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
    points: Sequence[CurvePoint],
    target: float,
    delta: float = DELTA,
    min_served: int = 10,
    count: str = "workflows",
) -> CurvePoint | None:
    """Learn-then-Test (Angelopoulos et al., 2021) over the curve's thresholds, fixed-sequence: from the most
    confident, test each threshold's null "the calls it serves agree at a rate <= target" with the exact
    binomial tail, and stop at the first that cannot be rejected at `delta`. The point returned is the laxest
    rejected one: with probability >= 1 - delta over the calibration calls, calls exchangeable with them that
    it serves agree at a rate above `target`. None when the first test fails (then nothing is served).

    `count="workflows"` (the default) tests each point on its effective calls (`CurvePoint.effective`): calls
    of one workflow agree or fail together, and counting them as independent makes the bound too narrow by the
    square root of the design effect; `count="calls"` treats them as independent (the laxer rule). A point
    needs `min_served` served calls and, as evidence, twice what a perfect record needs (`start_size`).

    The grid is the curve's own thresholds, thinned to steps of about 2% of the calls so that one noisy
    neighbour does not end the sequence; it is fixed by confidences alone, never by which calls agreed.
    """
    ordered = sorted(points, key=lambda p: p.served)
    if not ordered:
        return None
    if count not in COUNTS:
        raise ValueError(f"count must be one of {', '.join(COUNTS)}, not {count!r}")
    step = max(5, ordered[-1].served // 50)
    grid: list[CurvePoint] = []
    first = start_size(target, delta, 0)

    def testable(point: CurvePoint) -> bool:
        return point.served >= min_served and point.effective(count)[1] >= first

    for point in ordered:
        if testable(point) and (not grid or point.served >= grid[-1].served + step):
            grid.append(point)
    if testable(ordered[-1]) and grid and grid[-1] is not ordered[-1]:
        grid.append(ordered[-1])
    best = None
    for point in grid:
        if effective_tail(*point.effective(count), target) > delta:
            break
        best = point
    return best


def calibrate(
    items: Sequence[Scored],
    target: float,
    min_served: int = 10,
    delta: float = DELTA,
    count: str = "workflows",
    icc: float | None = None,
) -> float | None:
    """The threshold Learn-then-Test (`ltt_point`) picks for `target` on these calls: the laxest whose served
    calls agree above `target` with 95% confidence, tested in sequence from the most confident.

    None when no threshold does: then the specialist should serve nothing.
    """
    point = ltt_point(curve(items, icc), target, delta, min_served, count)
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


def at_threshold(items: Sequence[Scored], threshold: float | None, icc: float | None = None) -> AtThreshold:
    """What serving at a threshold gives: served, share of the teacher's tool calls, agreement and its bound,
    by calls and by the served calls' workflows (correlation `icc`, default these items' own)."""
    tool_calls = sum(1 for s in items if s.teacher_called)
    chosen = [] if threshold is None else [s for s in items if s.valid and s.confidence >= threshold]
    served, agreed = len(chosen), sum(s.agrees for s in chosen)
    sizes: dict[object, int] = {}
    for i, s in enumerate(chosen):
        sizes[_cluster(s, i)] = sizes.get(_cluster(s, i), 0) + 1
    deff = sized_design_effect(
        list(sizes.values()), intra_workflow_correlation(items) if icc is None else icc
    )
    return AtThreshold(
        calls=len(items),
        tool_calls=tool_calls,
        served=served,
        agreed=agreed,
        served_share=served / tool_calls if tool_calls else 0.0,
        agreement=agreed / served if served else 0.0,
        agreement_lower95=wilson_lower(agreed, served),
        design_effect=round(deff, 4),
        agreement_lower95_effective=round(effective_lower95(agreed, served, deff), 4),
    )


TARGETS = (0.80, 0.85, 0.90, 0.95)


def by_target(
    validation: Sequence[Scored],
    test: Sequence[Scored],
    targets: Sequence[float] = TARGETS,
    count: str = "workflows",
) -> list[TargetRow]:
    """For each target agreement: the threshold calibrated on validation, and what it serves on test.

    What a user gets by choosing a laxer target than the default, measured the honest way (the threshold
    never sees the test calls).
    """
    icc = intra_workflow_correlation(validation)
    rows = []
    for target in sorted(set(targets)):
        threshold = calibrate(validation, target, count=count, icc=icc)
        rows.append(
            TargetRow(
                target, threshold, at_threshold(validation, threshold, icc), at_threshold(test, threshold)
            )
        )
    return rows
