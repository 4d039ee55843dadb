"""Issue 15's scenario at reduced size (`make bench-flywheel` runs it in full): dev conversations through the
gateway, the flywheel once, the promoted task live, the test conversations replayed, the teacher drifts, the
rollback; served share, agreement, savings and the rollback read back from the store.

Reduced: 30 dev conversations, one unit (`tool:get_reservation_details`, the largest), half a minute of training,
and a gate lowered to any calibrated specialist (`target` 0), so the flow runs in about 3 minutes on 2 cores;
the full run keeps the real gate. A specialist this weak disagrees with gpt-4o often enough to be rolled back
before any drift (which the scenario reports), so here the rollback checks start with the drift.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from downsize.config import EvalConfig, TrainConfig
from downsize.curate.config import CurateConfig
from downsize.demo.scenario import ScenarioConfig, run_scenario, swap_case_arguments
from downsize.discover.config import DiscoverConfig
from downsize.flywheel import FlywheelConfig
from downsize.store import Store

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-airline"


def test_the_drifted_teacher_inverts_the_case_of_string_arguments_only() -> None:
    response = {
        "choices": [
            {
                "message": {
                    "tool_calls": [
                        {
                            "function": {
                                "name": "get_user_details",
                                "arguments": '{"user_id": "mia_li_3668", "reservation_id": "ABC123", "n": 2}',
                            }
                        }
                    ]
                }
            }
        ]
    }
    drifted = swap_case_arguments(response)
    call = drifted["choices"][0]["message"]["tool_calls"][0]["function"]
    assert (
        call["arguments"] == '{"user_id": "MIA_LI_3668", "reservation_id": "abc123", "n": 2}'
        and call["name"] == "get_user_details"
    )
    assert "mia_li_3668" in response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]


@pytest.mark.slow
def test_scenario_goes_live_then_rolls_back_after_the_drift(tmp_path: Path) -> None:
    unit = "tool:get_reservation_details"
    flywheel = FlywheelConfig(
        every_exchanges=None,
        max_minutes=2,
        units=[unit],
        target=0.0,  # reduced: any calibrated specialist passes the gate (the full run keeps the real one)
        min_served=1,
        curate=CurateConfig(pii=False),
        discover=DiscoverConfig(embedder="lsa", map=False),
        train=TrainConfig(
            curated=True, max_tokens=1500, batch_size=4, max_prompt_tokens=160, max_message_tokens=64
        ),
        eval=EvalConfig(target_agreement=0.0),
    )
    config = ScenarioConfig(
        dev_workflows=30,
        test_workflows=8,
        drift_calls=None,
        check_fraction=1.0,
        min_calls=5,
        max_disagreement=0.5,
        rollback_before_drift=False,
        flywheel=flywheel,
    )
    store = Store.open(f"sqlite:///{tmp_path / 'scenario.db'}")
    said: list[str] = []
    out = run_scenario(DATA, store, config, say=said.append)

    assert out["before"]["served"] == 0 and out["before"]["calls"] > 1000  # logging only
    assert out["flywheel"]["units"] == {unit: "live"}
    [task] = out["live_after_flywheel"]
    assert task == unit  # the specialist's task is the unit as named, not the keys it expands to
    after = out["after"]
    assert after["served"] > 0 and after["agreement"] is not None and after["rolled_back"] == []
    drift = out["drift"]
    assert drift["live_at_start"] == [task]
    assert [r["task"] for r in drift["rolled_back"]] == [task], json.dumps(out, indent=1, default=str)
    assert "disagreement with the LLM" in drift["rolled_back"][0]["reason"]
    assert drift["served"] >= 5 and drift["agreed"] == 0  # the drifted teacher agrees with no served call
    assert drift["calls_until_rollback"] is not None
    sp = next(sp for sp in store.specialists() if sp.task == task and sp.status != "retired")
    assert sp.status == "shadow"
    actors = [e["actor"] for e in store.route_events(sp.id)]
    assert actors[-1] == "rollback" and "flywheel" in actors
    assert out["savings"]["calls_served"] == after["served"] + drift["served"]
    assert any(line.startswith("4/5 drift") for line in said)
