from __future__ import annotations

import math

import pytest

from downsize.evaluate.metrics import Scored, at_threshold, calibrate, curve, exact_match, wilson_lower
from downsize.types import ToolCall


def test_wilson_lower_bound_hand_checked() -> None:
    assert wilson_lower(0, 0) == 0.0
    # 95/100: Wilson 95% interval is [0.8882, 0.9785]
    assert wilson_lower(95, 100) == pytest.approx(0.8882, abs=1e-4)
    assert wilson_lower(10, 10) == pytest.approx(0.7225, abs=1e-4)


def test_exact_match_is_json_normalised() -> None:
    a = ToolCall("f", {"x": 1, "y": {"b": 2, "a": [1, 2]}})
    b = ToolCall("f", {"y": {"a": [1, 2], "b": 2}, "x": 1})
    assert exact_match(a, b)
    assert not exact_match(a, ToolCall("f", {"x": 2, "y": {"b": 2, "a": [1, 2]}}))
    assert not exact_match(a, None)  # the teacher answered in text


def _items() -> list[Scored]:
    # confidence, valid, agrees, teacher_called
    rows = [(-0.01, True, True, True)] * 20 + [(-0.5, True, False, True)] * 2 + [(-0.5, True, True, True)] * 8
    rows += (
        [(-2.0, True, False, False)] * 10
        + [(-0.02, False, False, True)] * 5
        + [(-math.inf, False, False, True)]
    )
    return [Scored(*r) for r in rows]


def test_curve_and_calibration() -> None:
    items = _items()
    points = curve(items)
    assert [p.served for p in points] == [20, 30, 40]  # invalid calls are never served; ties enter together
    assert points[0].agreement == 1.0 and points[1].agreement == pytest.approx(28 / 30)
    assert points[0].coverage == pytest.approx(20 / 36)  # over the teacher's tool calls
    # Learn-then-Test, by hand: at 0.95 a perfect record needs 59 calls to reject, so the sequence starts at
    # 118 and these 40 cannot reach it
    assert calibrate(items, 0.95) is None
    # at 0.80 it starts at 28 served: 28/30 has P(X >= 28 | Bin(30, 0.8)) = 0.044 <= 0.05, then 28/40
    # (p = 0.96) stops the sequence
    assert calibrate(items, 0.80) == -0.5
    # at 0.50 from 10 served: 20/20, 28/30 and 28/40 (p = 0.008) all pass
    assert calibrate(items, 0.50) == -2.0
    assert calibrate(items, 0.80, min_served=35) is None  # the sequence starts at 40 served: 28/40 fails
    served = at_threshold(items, -0.5)
    assert served.served == 30 and served.agreed == 28 and served.tool_calls == 36
    assert at_threshold(items, None).served == 0


def test_by_target_calibrates_each_target_on_validation_and_reports_test() -> None:
    from downsize.evaluate.metrics import by_target

    # validation: 120 sure and right, then 40 at -1.0 of which 36 right, then 50 at -3.0 of which 10 right
    val = [Scored(-0.1, True, True, True)] * 120
    val += [Scored(-1.0, True, True, True)] * 36 + [Scored(-1.0, True, False, True)] * 4
    val += [Scored(-3.0, True, True, True)] * 10 + [Scored(-3.0, True, False, False)] * 40
    test = [Scored(-0.1, True, True, True)] * 5 + [Scored(-1.0, True, False, False)] * 5
    rows = {r.target: r for r in by_target(val, test, (0.95, 0.90, 0.80))}
    assert list(rows) == [0.80, 0.90, 0.95]  # sorted
    # Learn-then-Test's exact binomial p-values: 120/120 at 0.95 is 0.002 (passes), 156/160 at 0.95 is 0.094
    # (stops); 156/160 at 0.90 is 0.0002 (passes); 166/210 fails at 0.90 and at 0.80 (p = 0.67)
    assert rows[0.95].threshold == -0.1
    assert rows[0.90].threshold == -1.0
    assert rows[0.80].threshold == -1.0
    assert rows[0.95].test.served == 5 and rows[0.95].test.agreed == 5
    # the laxer threshold also serves the five test calls where the teacher replied in text: all wrong
    assert rows[0.90].test.served == 10 and rows[0.90].test.agreement == 0.5
    assert rows[0.90].test.served_share == 2.0  # 10 served / 5 teacher tool calls
    assert by_target(val[:100], test, (0.95,))[0].threshold is None  # 100 perfect calls cannot show 0.95


def test_binomial_tail_and_auroc_hand_checked() -> None:
    from downsize.evaluate.metrics import auroc, binomial_upper_tail

    assert binomial_upper_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_upper_tail(5, 10, 0.5) == pytest.approx(638 / 1024)  # C(10,5..10) / 2^10
    assert binomial_upper_tail(0, 10, 0.9) == 1.0
    # every right answer above every wrong one; then one inversion of four pairs; ties count half
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.9, 0.2, 0.8, 0.1], [True, True, False, False]) == 0.75
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.1, 0.2], [True, True]) is None  # no wrong answer to rank against


def test_learn_then_test_stops_at_the_first_threshold_it_cannot_show() -> None:
    from downsize.evaluate.metrics import ltt_point

    # 30/30 sure calls, then a dip (30 at -1.0, 15 right: 45/60), then 100 more all right (145/160):
    # the last point alone would pass at 0.80 (p < 0.05), but the fixed sequence stopped at the dip
    items = [Scored(-0.1, True, True, True)] * 30
    items += [Scored(-1.0, True, True, True)] * 15 + [Scored(-1.0, True, False, True)] * 15
    items += [Scored(-2.0, True, True, True)] * 100
    points = curve(items)
    assert [p.served for p in points] == [30, 60, 160]
    chosen = ltt_point(points, 0.80)
    assert chosen is not None and chosen.threshold == -0.1
    assert ltt_point(points[2:], 0.80) is not None  # tested alone, 145/160 would have passed
