from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from downsize.cli.main import main
from downsize.evaluate.promotion import promotion_gate
from downsize.store import Store
from downsize.types import Specialist


def _specialist(threshold: float | None, served: int, agreed: int, status: str = "candidate") -> Specialist:
    from downsize.evaluate.metrics import wilson_lower

    at = {
        "served": served,
        "agreement": agreed / served if served else 0.0,
        "agreement_lower95": wilson_lower(agreed, served),
    }
    metrics = {"eval": {"target_agreement": 0.95, "validation": {"at_threshold": at}}}
    return Specialist(
        "tau", "tau", "smollm2-135m", "/a", {}, "h", id=1, status=status, threshold=threshold, metrics=metrics
    )


def test_shadow_needs_a_threshold_and_live_needs_the_lower_bound() -> None:
    assert not promotion_gate(_specialist(None, 0, 0), "shadow").allowed
    assert promotion_gate(_specialist(-0.2, 30, 29), "shadow").allowed
    # 29/30 is 96.7% agreement, but its 95% lower bound is 0.833: not enough for a 0.90 gate
    refused = promotion_gate(_specialist(-0.2, 30, 29), "live")
    assert not refused.allowed and "0.833" in refused.reason
    assert promotion_gate(_specialist(-0.2, 200, 198), "live").allowed  # lower bound 0.964
    assert not promotion_gate(_specialist(-0.2, 15, 15), "live").allowed  # too few served
    assert not promotion_gate(_specialist(-0.2, 200, 198, status="retired"), "live").allowed
    unevaluated = Specialist("tau", "tau", "b", "/a", {}, "h", id=3)
    assert "downsize eval 3" in promotion_gate(unevaluated, "shadow").reason


def test_cli_promote_moves_through_the_gate(downsize_home) -> None:
    store = Store.open()
    weak = _specialist(-0.2, 30, 29)
    weak.id = None
    weak_id = store.add_specialist(weak)
    runner = CliRunner()
    first = runner.invoke(main, ["promote", str(weak_id)])
    assert first.exit_code == 0 and "is shadow" in first.output
    second = runner.invoke(main, ["promote", str(weak_id)])
    assert second.exit_code == 1 and "lower bound 0.833" in second.output and "Traceback" not in second.output
    assert store.specialist(weak_id).status == "shadow"
    third = runner.invoke(main, ["promote", str(weak_id), "--target", "0.8"])
    assert third.exit_code == 0 and store.specialist(weak_id).status == "live"


def _at_parity(ceiling: dict[str, float] | None, curve: list[tuple[float, int, int]]) -> Specialist:
    """A specialist whose validation curve holds (threshold, served, agreed) points, and the teacher's ceiling."""
    points = [{"threshold": t, "served": s, "agreed": a} for t, s, a in curve]
    metrics = {
        "eval": {
            "target_agreement": 0.95,
            "validation": {"curve": points, "at_threshold": {}},
            "teacher_ceiling": ceiling,
        }
    }
    return Specialist("t", "t", "smollm2-135m", "/a", {}, "h", id=2, threshold=None, metrics=metrics)


def test_parity_is_a_non_inferiority_test_against_the_teachers_own_agreement() -> None:
    # hand-computed Wilson lower bounds: 27/30 -> 0.744, 36/40 -> 0.769, 45/60 -> 0.626, 19/20 -> 0.764
    curve = [(-0.1, 20, 19), (-0.3, 30, 27), (-0.5, 40, 36), (-0.9, 60, 45)]
    ceiling = {"agreement": 0.80, "pairs": 400, "situations": 80}
    sp = _at_parity(ceiling, curve)
    # bar 0.80 - 0.05 = 0.75: only 36/40 (0.769) and 19/20 (0.764) reach it; the one serving more wins
    result = promotion_gate(sp, "live", rule="parity", margin=0.05)
    assert result.allowed and result.threshold == -0.5 and result.evidence["bar"] == pytest.approx(0.75)
    assert "not below the teacher's own 0.800 minus 0.05" in result.reason
    # a tighter margin: no point reaches 0.78
    assert not promotion_gate(sp, "live", rule="parity", margin=0.02).allowed
    # the strict rule on the same specialist: no calibrated threshold, nothing to promote
    assert not promotion_gate(sp, "live", rule="strict").allowed
    # a ceiling on too few pairs cannot carry the judgement
    thin = _at_parity({"agreement": 0.8, "pairs": 12, "situations": 5}, curve)
    refused = promotion_gate(thin, "live", rule="parity")
    assert not refused.allowed and "12 answer pairs" in refused.reason
    assert not promotion_gate(_at_parity(None, curve), "live", rule="parity").allowed


def test_the_cli_promotes_at_parity_and_keeps_the_figures(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    store = Store.open(db)
    sp_id = store.add_specialist(
        _at_parity({"agreement": 0.80, "pairs": 400, "situations": 80}, [(-0.5, 40, 36), (-0.9, 60, 45)])
    )
    out = CliRunner().invoke(main, ["promote", str(sp_id), "--to", "live", "--rule", "parity", "--db", db])
    assert out.exit_code == 0, out.output
    sp = Store.open(db).specialist(str(sp_id))
    assert sp.status == "live" and sp.threshold == -0.5
    assert sp.metrics["promotion"]["rule"] == "parity" and sp.metrics["promotion"]["point"]["served"] == 40
