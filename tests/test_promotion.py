from __future__ import annotations

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
