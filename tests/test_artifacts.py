"""Typed, versioned artifacts: older versions load, newer ones are refused with what to do, paths move with home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from downsize.artifacts import (
    EVAL_SCHEMA,
    MANIFEST_SCHEMA,
    EvalReport,
    SpecialistManifest,
    SpecialistScope,
    specialist_summary,
)
from downsize.errors import ConfigError
from downsize.evaluate.promotion import promotion_gate
from downsize.store import Store
from downsize.types import Specialist

# an evaluation as the first versions of `downsize eval` stored it: no schema_version, no engine
V1_EVAL = {
    "specialist": {"id": 1, "name": "tau-airline", "student": "smollm2-135m"},
    "target_agreement": 0.95,
    "threshold": -0.2,
    "validation": {
        "calls": 268,
        "at_threshold": {"served": 30, "agreed": 29, "agreement": 0.967, "agreement_lower95": 0.83},
    },
    "test_tool_calls": {"calls": 163, "exact_agreement": 0.25, "tool_name_accuracy": 0.53},
    "by_target": [{"target": 0.9, "threshold": -0.5, "validation": {"served": 40}, "test": {"served": 22}}],
}


def test_an_evaluation_of_the_first_version_still_reads_and_promotes() -> None:
    report = EvalReport.from_dict(V1_EVAL)
    assert report.engine == "transformers"  # before the engine was recorded, eval ran on transformers
    assert report.validation.at_threshold.served == 30 and report.test_tool_calls.exact_agreement == 0.25
    assert report.by_target[0].test.served == 22 and report.schema_version == EVAL_SCHEMA
    sp = Specialist("s", "t", "smollm2-135m", "", {}, "", id=1, threshold=-0.2, metrics={"eval": V1_EVAL})
    assert promotion_gate(sp, "live", target_lower95=0.8, min_served=20).allowed
    assert specialist_summary(sp)["test_exact_agreement"] == 0.25
    # and the typed report round-trips through its JSON form
    assert EvalReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_a_newer_artifact_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="upgrade downsize"):
        EvalReport.from_dict({**V1_EVAL, "schema_version": EVAL_SCHEMA + 1})
    (tmp_path / "downsize.json").write_text(
        json.dumps({"schema_version": MANIFEST_SCHEMA + 1, "artifact": "adapter"})
    )
    with pytest.raises(ConfigError, match="upgrade downsize"):
        SpecialistManifest.load(tmp_path)
    with pytest.raises(ConfigError, match="not written by `downsize train`"):
        SpecialistManifest.load(tmp_path / "elsewhere")


def test_a_manifest_of_the_first_version_loads_with_its_scope(tmp_path: Path) -> None:
    v1 = {
        "config": {"student": "smollm2-135m", "method": "lora", "tasks": ["t001"]},
        "data_hash": "ab",
        "artifact": "adapter",
    }
    (tmp_path / "downsize.json").write_text(json.dumps(v1))
    manifest = SpecialistManifest.load(tmp_path)
    assert (manifest.student, manifest.method, manifest.scope.tasks) == ("smollm2-135m", "lora", ("t001",))
    scope = SpecialistScope(task_tools=("a", "b"), tasks=("t1",), agent="crewai", curated=True)
    SpecialistManifest("adapter", "smollm2-135m", "lora", {}, "h", scope=scope).save(tmp_path)
    again = SpecialistManifest.load(tmp_path)
    assert again.scope == scope and again.schema_version == MANIFEST_SCHEMA


def test_adapter_paths_are_stored_relative_to_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, downsize_home: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    inside = downsize_home / "specialists" / "s-1"
    sp_id = Store.open(db).add_specialist(Specialist("s", "t", "m", str(inside), {}, "h"))
    with Store.open(db).engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT adapter_path FROM specialists").scalar_one()
    assert stored == "specialists/s-1"
    moved = tmp_path / "moved-home"
    monkeypatch.setenv("DOWNSIZE_HOME", str(moved))  # the home moved (or is mounted elsewhere)
    assert Store.open(db).specialist(sp_id).adapter_path == str(moved / "specialists" / "s-1")
