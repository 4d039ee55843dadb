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
    assert calibrate(items, 0.95) == -0.01
    assert calibrate(items, 0.90) == -0.5
    assert calibrate(items, 0.95, min_served=25) is None
    served = at_threshold(items, -0.5)
    assert served.served == 30 and served.agreed == 28 and served.tool_calls == 36
    assert at_threshold(items, None).served == 0


def test_by_target_calibrates_each_target_on_validation_and_reports_test() -> None:
    from downsize.evaluate.metrics import by_target

    # validation: 10 sure and right, then 10 at -1.0 of which 8 right, then 10 at -3.0 of which 2 right
    val = [Scored(-0.1, True, True, True)] * 10
    val += [Scored(-1.0, True, True, True)] * 8 + [Scored(-1.0, True, False, True)] * 2
    val += [Scored(-3.0, True, True, True)] * 2 + [Scored(-3.0, True, False, False)] * 8
    test = [Scored(-0.1, True, True, True)] * 5 + [Scored(-1.0, True, False, False)] * 5
    rows = {r.target: r for r in by_target(val, test, (0.95, 0.90, 0.80))}
    assert list(rows) == [0.80, 0.90, 0.95]  # sorted
    assert rows[0.95].threshold == -0.1  # 10/10; adding -1.0 gives 18/20 = 0.90
    assert rows[0.90].threshold == -1.0  # 18/20 = 0.90 reaches 0.90
    assert rows[0.80].threshold == -1.0  # -3.0 gives 20/30 = 0.67
    assert rows[0.95].test.served == 5 and rows[0.95].test.agreed == 5
    # the laxer threshold also serves the five test calls where the teacher replied in text: all wrong
    assert rows[0.90].test.served == 10 and rows[0.90].test.agreement == 0.5
    assert rows[0.90].test.served_share == 2.0  # 10 served / 5 teacher tool calls
    assert by_target(val[:5], test, (0.95,))[0].threshold is None  # fewer than 10 served
