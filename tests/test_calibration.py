"""Cross-fitted calibration: the choice of confidence signal, and fold models that never score their own workflows."""

from __future__ import annotations

import math
import random

import pytest

from downsize.decide.decision import Decider, Decision, Plan, confidence_of
from downsize.evaluate.crossfit import apply_signal, choose_signal
from downsize.types import Generation, Specialist


def _decision(token_min: float, token_mean: float, gate: float = 0.0) -> Decision:
    features = {"token_min": token_min, "token_mean": token_mean, "gate": gate, "log_tokens": 2.0}
    return Decision("accept", valid=True, confidence=min(token_min, gate), details={"signals": features})


def test_the_signal_that_ranks_right_answers_highest_is_chosen() -> None:
    rng = random.Random(0)
    decisions, agrees = [], []
    for i in range(200):
        right = i % 2 == 0
        # the lowest token says nothing; the mean token log-probability separates right from wrong
        decisions.append(_decision(-rng.uniform(0, 3), -(0.1 if right else 0.6) - rng.uniform(0, 0.2)))
        agrees.append(right)
    groups = [i % 4 for i in range(200)]
    choice = choose_signal(decisions, agrees, groups)
    assert choice.auroc["token_mean"] == 1.0 and choice.auroc["min"] < 0.65
    assert choice.name in ("token_mean", "learned") and choice.calls == 200
    assert choice.auroc["learned"] is not None  # judged out of fold
    apply_signal(decisions, choice)
    ranked = sorted(zip(decisions, agrees, strict=True), key=lambda x: -x[0].confidence)
    assert all(right for _, right in ranked[:100])  # served first: the right answers


def test_the_default_signal_keeps_its_place_on_a_tie() -> None:
    decisions = [_decision(-0.1, -0.1), _decision(-2.0, -2.0), _decision(-0.2, -0.2), _decision(-3.0, -3.0)]
    choice = choose_signal(decisions, [True, False, True, False], [0, 1, 0, 1])
    assert choice.name == "min" and choice.weights is None
    assert choice.auroc["learned"] is None  # each fold holds one label: nothing to fit out of fold


def test_the_decider_serves_on_its_signal_and_cuts_early_only_for_a_minimum() -> None:
    gen = Generation("x", None, min_logprob=-2.0, mean_logprob=-0.1, tokens=5, value="ok", complete=True)
    from downsize.contracts import OutputContract

    label = OutputContract("label", labels=["ok", "no"])
    by_min = Decider(threshold=-1.0, contract=label)
    by_mean = Decider(threshold=-1.0, contract=label, signal="token_mean")
    assert by_min.cuts_early and not by_mean.cuts_early
    request = {"messages": [{"role": "user", "content": "is it ok?"}]}
    assert by_min.after(request, Plan(), gen).reason == "low_confidence"
    served = by_mean.after(request, Plan(), gen)
    assert served.accepted and served.confidence == pytest.approx(-0.1)
    weights = {"bias": 1.0, "token_min": 0.5, "token_mean": 0.0, "gate": 0.0, "log_tokens": 0.0}
    assert confidence_of("learned", served.details["signals"], weights) == pytest.approx(0.0)
    cut = Generation("", None, min_logprob=-math.inf, mean_logprob=-math.inf, tokens=1, stopped_early=True)
    assert by_mean.after(request, Plan(), cut).reason == "low_confidence"


def test_risk_tiers_come_from_annotations_then_config_then_strict() -> None:
    from downsize.decide.risk import RiskPolicy, tier_of

    tools = [
        {"type": "function", "function": {"name": "get_order"}, "annotations": {"readOnlyHint": True}},
        {"type": "function", "function": {"name": "refund", "annotations": {"destructiveHint": True}}},
        {"type": "function", "function": {"name": "note", "readOnlyHint": False, "destructiveHint": False}},
        {"type": "function", "function": {"name": "search_items"}},
        {"type": "function", "function": {"name": "cancel_order"}},
        {"type": "function", "function": {"name": "transfer"}},
    ]
    request = {"messages": [], "tools": tools}
    policy = RiskPolicy.from_dict({"read_only": ["search_*", "refund"], "destructive": ["cancel_*"]})
    assert tier_of("get_order", request, policy) == "read_only"  # annotated
    assert tier_of("refund", request, policy) == "destructive"  # the annotation wins over the config
    assert tier_of("note", request, policy) == "strict"  # writes, not destructively
    assert tier_of("search_items", request, policy) == "read_only"  # config pattern
    assert tier_of("cancel_order", request, policy) == "destructive"
    assert tier_of("transfer", request, policy) == "strict"  # neither: strict
    assert tier_of(None, request, policy) == "answer"  # not a tool call
    with pytest.raises(Exception, match="unknown risk tier"):
        RiskPolicy.from_dict({"readonly": ["x"]})


def test_a_tier_without_a_threshold_is_never_served_and_others_use_their_own() -> None:
    from downsize.decide.risk import RiskPolicy
    from downsize.types import ToolCall

    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("get", "cancel")
    ]
    request = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    decider = Decider(
        threshold=-2.0,
        risk=RiskPolicy.from_dict({"read_only": ["get"], "destructive": ["cancel"]}),
        tier_thresholds={"read_only": -2.0, "destructive": None, "strict": -0.1},
    )

    def gen(name: str, logp: float) -> Generation:
        return Generation("x", ToolCall(name, {}), min_logprob=logp, mean_logprob=logp, tokens=3)

    assert decider.after(request, Plan(), gen("get", -1.0)).accepted  # read-only at its own threshold
    refused = decider.after(request, Plan(), gen("cancel", -0.01))
    assert refused.reason == "risk_tier:destructive" and refused.details["tier"] == "destructive"
    # calibration (no threshold) records the tier and cuts nothing
    calibrating = Decider(risk=decider.risk, tier_thresholds=None)
    assert calibrating.after(request, Plan(), gen("cancel", -0.01)).details["tier"] == "destructive"


def test_parity_promotion_sets_a_threshold_per_risk_tier() -> None:
    from downsize.evaluate.promotion import promotion_gate
    from downsize.types import Specialist

    def points(rows: list[tuple[float, int, int]]) -> list[dict[str, float]]:
        return [{"threshold": t, "served": n, "agreed": k} for t, n, k in rows]

    # read-only: 36/40 at -0.5 clears the parity bar 0.75 (p = 0.016); strict: 28/30 cannot show 0.95
    tiers = {
        "read_only": {"calls": 60, "curve": points([(-0.3, 30, 27), (-0.5, 40, 36), (-0.9, 60, 45)])},
        "strict": {"calls": 30, "curve": points([(-0.2, 30, 28)])},
    }
    metrics = {
        "eval": {
            "target_agreement": 0.95,
            "validation": {"curve": [], "at_threshold": {}},
            "teacher_ceiling": {"agreement": 0.80, "pairs": 400, "situations": 80},
            "calibration": {"tiers": tiers},
        }
    }
    sp = Specialist("t", "t", "smollm2-135m", "/a", {}, "h", id=2, threshold=None, metrics=metrics)
    result = promotion_gate(sp, "live", rule="parity", margin=0.05)
    assert result.allowed and result.threshold == -0.5
    assert result.evidence["tier_thresholds"] == {"read_only": -0.5, "strict": None}
    assert "strict at 0.95: not served" in result.reason


def test_what_tier_thresholds_serve_on_test_is_read_from_each_tiers_curve() -> None:
    from downsize.artifacts import EvalReport
    from downsize.evaluate.promotion import GateResult, served_on_test

    def pts(rows: list[tuple[float, int, int]]) -> list[dict[str, float]]:
        return [{"threshold": t, "served": n, "agreed": k} for t, n, k in rows]

    report = EvalReport.from_dict(
        {
            "test": {"calls": 50, "at_threshold": {"tool_calls": 40}},
            "calibration": {
                "test_tiers": {
                    "read_only": {"curve": pts([(-0.1, 5, 5), (-0.6, 12, 10), (-2.0, 20, 12)])},
                    "destructive": {"curve": pts([(-0.05, 3, 3)])},
                },
                "test_curve": pts([(-0.1, 8, 8), (-0.6, 15, 13)]),
            },
        }
    )
    tiers = GateResult(
        True, "", {"tier_thresholds": {"read_only": -0.5, "destructive": None}}, threshold=-0.5
    )
    assert served_on_test(report, tiers) == (5, 5, 40)  # -0.5 serves the -0.1 point; destructive never
    single = GateResult(True, "", {}, threshold=-0.6)
    assert served_on_test(report, single) == (15, 13, 40)
    assert served_on_test(report, GateResult(False, "", {})) is None


def test_the_calibration_figures_at_the_promoted_thresholds_sit_beside_the_tests() -> None:
    from downsize.artifacts import EvalReport
    from downsize.evaluate.promotion import GateResult, served_at

    curve = [{"threshold": -0.1, "served": 40, "agreed": 36}, {"threshold": -0.9, "served": 90, "agreed": 60}]
    report = EvalReport.from_dict(
        {
            "validation": {"calls": 200, "at_threshold": {"tool_calls": 120}, "curve": curve},
            "calibration": {"tiers": {"read_only": {"curve": curve}}},
        }
    )
    gate = GateResult(True, "", {"tier_thresholds": {"read_only": -0.5, "strict": None}}, threshold=-0.5)
    assert served_at(report, gate, "calibration") == (40, 36, 120)
    assert served_at(report, GateResult(True, "", {}, threshold=-1.0), "calibration") == (90, 60, 120)


def test_parity_on_tools_nobody_declared_read_only_says_how_to_declare_them() -> None:
    from downsize.evaluate.promotion import promotion_gate
    from downsize.types import Specialist

    curve = [{"threshold": -0.1, "served": 60, "agreed": 59}]
    metrics = {
        "eval": {
            "target_agreement": 0.95,
            "validation": {"curve": curve, "at_threshold": {}},
            "teacher_ceiling": {"agreement": 0.80, "pairs": 400, "situations": 80},
            "calibration": {"tiers": {"strict": {"calls": 60, "curve": curve}}},
        }
    }
    sp = Specialist("t", "t", "smollm2-135m", "/a", {}, "h", id=2, threshold=None, metrics=metrics)
    result = promotion_gate(sp, "live", rule="parity")
    # 60 calls cannot show 0.95 (the sequence starts at 118), and nothing is declared read-only
    assert not result.allowed and "--read-only" in result.reason and "readOnlyHint" in result.reason


def test_calibration_calls_are_never_scored_by_weights_fitted_on_them() -> None:
    """The learned combination is fitted on the calibration calls; scored with those weights they rank in-sample
    and the threshold overstates what new calls get. Each is scored by weights fitted on the other groups."""
    from downsize.evaluate.crossfit import SignalChoice, _fit_weights, apply_signal_out_of_fold
    from downsize.evaluate.metrics import auroc

    n, fitted, honest = 60, [], []
    for seed in range(10):  # signals that say nothing about the labels, ten draws
        rng = random.Random(seed)
        agrees = [rng.random() < 0.5 for _ in range(n)]
        groups = [i % 3 for i in range(n)]

        def fresh(seed: int = seed) -> list[Decision]:
            r = random.Random(seed + 100)
            return [_decision(-r.uniform(0, 3), -r.uniform(0, 3), -r.uniform(0, 3)) for _ in range(n)]

        rows = [d.details["signals"] for d in fresh()]
        choice = SignalChoice("learned", _fit_weights(rows, agrees), {}, n)
        in_sample, out_of_fold = fresh(), fresh()
        apply_signal(in_sample, choice)
        apply_signal_out_of_fold(out_of_fold, agrees, groups, choice)
        others = [i for i in range(n) if groups[i] != 0]
        held = _fit_weights([rows[i] for i in others], [agrees[i] for i in others])
        assert out_of_fold[0].confidence == pytest.approx(confidence_of("learned", rows[0], held))
        fitted.append(auroc([d.confidence for d in in_sample], agrees) or 0.0)
        honest.append(auroc([d.confidence for d in out_of_fold], agrees) or 0.0)
    # noise looks like signal in-sample (about 0.61 here), not out of fold (about 0.46)
    assert sum(fitted) / 10 > 0.58 and sum(honest) / 10 < 0.53
    assert all(f > h for f, h in zip(fitted, honest, strict=True))
    # a signal with nothing fitted is applied as it is
    plain = fresh()
    apply_signal_out_of_fold(plain, agrees, groups, SignalChoice("token_mean"))
    assert [d.confidence for d in plain] == [d.details["signals"]["token_mean"] for d in plain]


def test_the_design_effect_counts_workflows_that_agree_or_fail_together() -> None:
    from downsize.evaluate.metrics import design_effect, effective_lower95, wilson_lower

    # every workflow all right or all wrong: each is one piece of evidence, however many calls it has
    icc, deff = design_effect([(10, 10), (10, 0), (10, 10), (10, 0)])
    assert icc == pytest.approx(1.0) and deff == pytest.approx(10.0)
    # the same rate spread evenly: nothing is shared within a workflow (ANOVA estimator clips at 0)
    icc, deff = design_effect([(10, 5), (10, 5), (10, 5), (10, 5)])
    assert icc == 0.0 and deff == 1.0
    # hand-computed: p = 0.5, between = (10 * 0.16 + 10 * 0.16) / 1 = 3.2, within = (9 * 0.1 + 1 * 0.9) / 18
    # = 0.1, m0 = (20 - 200 / 20) / 1 = 10, icc = (3.2 - 0.1) / (3.2 + 9 * 0.1) = 0.756, deff = 1 + 9 * 0.756
    icc, deff = design_effect([(10, 9), (10, 1)])
    assert icc == pytest.approx(3.1 / 4.1) and deff == pytest.approx(1 + 9 * 3.1 / 4.1)
    assert design_effect([(12, 7)]) == (0.0, 1.0)  # one workflow: nothing to compare
    # counting 40 calls as 4 lowers the bound; a design effect of 1 leaves it as it was
    assert effective_lower95(36, 40, 10.0) < wilson_lower(36, 40) - 0.3
    assert effective_lower95(36, 40, 1.0) == pytest.approx(wilson_lower(36, 40))


def _clustered(per_workflow: list[tuple[str, int, bool, float]]) -> list:
    """Scored calls: (workflow, calls, all agree, confidence) - every call of a workflow alike."""
    from downsize.evaluate.metrics import Scored

    return [
        Scored(confidence=conf - i * 1e-4, valid=True, agrees=agrees, teacher_called=True, workflow=wf)
        for wf, n, agrees, conf in per_workflow
        for i in range(n)
    ]


def test_thresholds_count_evidence_by_the_served_calls_workflows() -> None:
    from downsize.evaluate.metrics import (
        binomial_upper_tail,
        calibrate,
        curve,
        effective_tail,
        intra_workflow_correlation,
        sized_design_effect,
    )

    # hand-computed: 2 + 2 calls at correlation 0.5 -> size-weighted mean 2 -> 1 + (2 - 1) * 0.5
    assert sized_design_effect([2, 2], 0.5) == pytest.approx(1.5)
    assert sized_design_effect([1, 1, 1], 0.9) == pytest.approx(1.0)  # one call a workflow: nothing shared
    # fractional evidence is made whole on the cautious side: 10.4 calls with 0.9 failures -> 9 of 10
    assert effective_tail(9.5, 10.4, 0.7) == pytest.approx(binomial_upper_tail(9, 10, 0.7))

    # three workflows of 20 calls that all agree, ranked above two of 20 that all fail: by calls, 60 of 60
    # show 0.80; but each workflow agreed or failed as one, so the 60 are worth about 3 calls: no threshold
    together = _clustered([("a", 20, True, 0.9), ("b", 20, True, 0.8), ("c", 20, True, 0.7)])
    together += _clustered([("d", 20, False, 0.2), ("e", 20, False, 0.1)])
    icc = intra_workflow_correlation(together)
    assert icc == pytest.approx(1.0)
    at_60 = next(p for p in curve(together) if p.served == 60)  # 3 workflows of 20
    assert at_60.design_effect == pytest.approx(20.0, rel=0.01)
    assert calibrate(together, 0.80, count="calls") is not None
    assert calibrate(together, 0.80) is None  # by workflows, the default

    # the same correlation, but the confident calls spread one per workflow: counted by workflows they keep
    # their weight (design effect 1 among the served), and every one of the 60 is served
    spread = _clustered([(f"w{i}", 1, True, 0.9 - i * 1e-3) for i in range(60)])
    spread += [s for s in together if s.workflow in ("d", "e")]
    spread += _clustered([("a", 20, True, 0.3), ("b", 20, True, 0.3)])  # workflows whose calls cluster
    at_60 = next(p for p in curve(spread) if p.served == 60)
    assert at_60.design_effect == pytest.approx(1.0)
    threshold = calibrate(spread, 0.80)
    assert threshold is not None and threshold <= at_60.threshold
    # past them, the clustered workflows weigh as few calls: counting calls serves deeper than workflows
    assert calibrate(spread, 0.80, count="calls") < threshold


def test_the_gate_counts_by_workflows_and_shows_the_laxer_count_beside() -> None:
    from dataclasses import asdict

    from downsize.evaluate.metrics import curve
    from downsize.evaluate.promotion import promotion_gate

    items = _clustered([("a", 20, True, 0.9), ("b", 20, True, 0.8), ("c", 20, True, 0.7)])
    items += _clustered([("d", 20, False, 0.2), ("e", 20, False, 0.1)])
    tiers = {"read_only": {"calls": len(items), "curve": [asdict(p) for p in curve(items)]}}
    metrics = {
        "eval": {
            "target_agreement": 0.95,
            "validation": {"curve": [], "at_threshold": {}},
            "teacher_ceiling": {"agreement": 0.85, "pairs": 400, "situations": 80},
            "calibration": {"tiers": tiers},
        }
    }
    sp = Specialist("t", "t", "smollm2-135m", "/a", {}, "h", id=2, threshold=None, metrics=metrics)
    by_workflows = promotion_gate(sp, "live", rule="parity")
    assert not by_workflows.allowed and by_workflows.evidence["count"] == "workflows"
    assert by_workflows.evidence["tier_thresholds"]["read_only"] is None
    assert by_workflows.evidence["tier_thresholds_by_calls"]["read_only"] is not None  # shown, not served
    by_calls = promotion_gate(sp, "live", rule="parity", count="calls")
    assert by_calls.allowed and by_calls.evidence["count"] == "calls"
    # a report written before design effects were stored is judged by calls, and the evidence says so
    for p in tiers["read_only"]["curve"]:
        p.pop("design_effect")
        p.pop("agreement_lower95_effective")
    older = promotion_gate(sp, "live", rule="parity")
    assert older.allowed and "predates workflow counts" in older.evidence["count"]
