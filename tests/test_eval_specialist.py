"""`downsize eval` end to end on the real student: a few training steps, then validation and test calls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from downsize.config import EvalConfig, TrainConfig
from downsize.store import Store

pytestmark = pytest.mark.slow


def test_eval_calibrates_reports_and_draws_the_curves(
    imported_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from downsize.evaluate.tool_calls import evaluate_specialist
    from downsize.train.lora import train_specialist

    store = Store.open(imported_db)
    config = TrainConfig(
        max_tokens=300, batch_size=4, max_prompt_tokens=64, max_message_tokens=32, specialist="t-eval"
    )
    result = train_specialist(store, config, out_dir=tmp_path / "adapter", progress=False)
    sp = store.specialist(result.specialist_id)
    report = evaluate_specialist(
        store, sp, EvalConfig(limit=6, batch_size=6, max_new_tokens=32), progress=False
    )
    # validation holds text replies too (the router cannot know them in advance); test only tool calls
    assert report.validation.calls == 6 and report.test_tool_calls.calls == 6
    t = report.test_tool_calls
    assert 0.0 <= t.exact_agreement <= t.tool_name_accuracy + 1e-9 <= 1.0 + 1e-9
    assert 0.0 <= t.valid_share <= 1.0  # calls the gate sends to text are never generated, so not valid
    for point in report.validation.curve:
        assert point["agreement_lower95"] <= point["agreement"] and point["served"] >= point["agreed"]
    # the threshold and metrics are stored with the specialist; the JSON and the HTML page are written
    again = store.specialist(sp.id)
    assert again.threshold == report.threshold and "eval" in again.metrics
    assert report.threshold is None or math.isfinite(report.threshold)
    # every test call, text replies included, as the router meets them; a row per target agreement
    assert report.test.calls == 12 and report.test.at_threshold.tool_calls == 6
    assert [r.target for r in report.by_target] == [0.8, 0.85, 0.9, 0.95]
    assert all(r.test.calls == 12 for r in report.by_target)
    assert report.engine in ("transformers", "llamacpp")
    assert again.metrics["eval"]["engine"] == report.engine
    saved = json.loads(Path(str(report.path)).read_text())
    assert saved["test_tool_calls"]["calls"] == 6 and saved["schema_version"] == 2
    from downsize.artifacts import EvalReport

    assert EvalReport.from_dict(saved).test_tool_calls.calls == 6  # the saved JSON reads back typed
    page = Path(str(report.curve_path)).read_text()
    assert "<svg" in page and "<script" not in page

    # a specialist of discovered tasks whose tasks cover no validation call cannot be calibrated: say so
    import downsize.evaluate.tool_calls as tool_calls_module
    from downsize.decide.decision import Scope
    from downsize.errors import ConfigError

    class Elsewhere:  # an assigner that maps every request to another task
        def assign(self, request: object, agent: object = None, task_hint: object = None) -> object:
            return type("Assignment", (), {"task": "other", "reason": ""})()

    scope = Scope(tasks=frozenset({"mine"}), assigner=Elsewhere())
    monkeypatch.setattr(tool_calls_module, "scope_of", lambda _store, _sp: scope)
    with pytest.raises(ConfigError, match="none of the .* validation calls .* occur only in training"):
        evaluate_specialist(store, sp, EvalConfig(limit=6, batch_size=6, max_new_tokens=32), progress=False)


def test_cross_fitted_calibration_never_scores_a_call_with_a_model_trained_on_its_workflow(
    imported_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    import downsize.evaluate.tool_calls as tool_calls_module
    from downsize.config import train_config_of
    from downsize.evaluate.tool_calls import evaluate_specialist
    from downsize.splits import fold_of, workflow_key
    from downsize.train.data import training_exchanges
    from downsize.train.lora import train_specialist

    store = Store.open(imported_db)
    config = TrainConfig(
        max_tokens=200,
        batch_size=4,
        max_prompt_tokens=64,
        max_message_tokens=32,
        specialist="t-crossfit",
        cross_fit=3,
    )
    result = train_specialist(store, config, out_dir=tmp_path / "adapter", progress=False)
    sp = store.specialist(result.specialist_id)
    assert sp.metrics["train"]["cross_fit"]["folds"] == 3
    for fold in (1, 2):  # the fold models: same tokens as the specialist, saved beside it
        assert (tmp_path / "adapter" / "folds" / str(fold) / "downsize.json").is_file()
        assert sp.metrics["train"]["cross_fit"]["models"][fold - 1]["tokens"] >= 200

    made, decided = tool_calls_module.runtime_for, []

    def runtime_for(model, *args, **kwargs):  # which model each runtime is
        runtime = made(model, *args, **kwargs)
        runtime.test_adapter = Path(model.adapter_path)
        return runtime

    real_decide = tool_calls_module.decide_all

    def decide_all(runtime, exchanges, decider, batch_size, label, progress):
        decided.append((runtime.test_adapter, label, list(exchanges)))
        return real_decide(runtime, exchanges, decider, batch_size, label, progress)

    monkeypatch.setattr(tool_calls_module, "runtime_for", runtime_for)
    monkeypatch.setattr(tool_calls_module, "decide_all", decide_all)
    report = evaluate_specialist(
        store, sp, EvalConfig(limit=6, batch_size=6, max_new_tokens=32), progress=False
    )

    trained = train_config_of(sp.config)
    folds_seen = set()
    for adapter, label, exchanges in decided:
        if label == "eval test":
            assert adapter == tmp_path / "adapter"  # the test split is the specialist's own
            continue
        fold = 0 if adapter == tmp_path / "adapter" else int(adapter.name)
        folds_seen.add(fold)
        its_training = {
            workflow_key(ex) for ex in training_exchanges(store, replace(trained, fold=fold), "train")
        }
        assert its_training and exchanges
        assert all(fold_of(ex, 3) == fold for ex in exchanges)  # each model scores its own held-out fold
        assert not {workflow_key(ex) for ex in exchanges} & its_training  # never a workflow it trained on
    assert folds_seen == {0, 1, 2}
    cal = report.calibration or {}
    assert cal["method"] == "cross_fit" and cal["folds"] == 3 and cal["rule"] == "learn-then-test"
    assert cal["calls"] == report.validation.calls == sum(cal["fold_calls"].values())
    assert set(cal["fold_calls"]) == {"0", "1", "2"}
    # calls whose request a fold's model trained on verbatim are left out (none here: each task's trials are
    # one workflow, so no request recurs across folds)
    assert cal["seen_dropped"] == {"0": 0, "1": 0, "2": 0}
    assert set(cal["signal"]["auroc"]) == {"min", "token_min", "token_mean", "gate", "learned"}
    # the calibration answers' correlation within workflows; thresholds count served calls by it
    clustering = cal["workflows"]
    assert clustering["valid_answers"] == cal["signal"]["calls"] and clustering["workflows"] >= 2
    assert 0.0 <= clustering["intra_workflow_correlation"] <= 1.0 and clustering["design_effect"] >= 1.0
    assert clustering["count"] == "workflows"
    for point in report.validation.curve:  # each point's served calls weigh as served / design effect
        assert point["design_effect"] >= 1.0 and point["served"] / point["design_effect"] <= point["served"]
        assert point["agreement_lower95_effective"] <= point["agreement_lower95"] + 1e-4  # stored rounded
