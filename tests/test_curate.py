"""`downsize curate` on a real tau-airline subset plus constructed duplicates, errors and refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, select

from downsize.calls import CallSelection, select_calls
from downsize.cli.curate import curate as curate_command
from downsize.curate.config import CurateConfig
from downsize.curate.curation import REASONS, NearDuplicates, curate, pruned_prompt
from downsize.curate.view import curated_rows, curation_report, curation_runs
from downsize.errors import ConfigError
from downsize.importers.tau_airline import read_exchanges
from downsize.store import Store
from downsize.store.migrations import applied
from downsize.types import Exchange

TASKS = {"1", "2", "3", "40"}  # three dev workflows (four trials each) and one test-split workflow


def planted(base: Exchange) -> list[Exchange]:
    """An error, an empty reply, a refusal, an exact and a near duplicate, made from a real tool call."""

    def clone(key: str, **changes: object) -> Exchange:
        ex = copy.deepcopy(base)
        ex.id, ex.source_key, ex.created_at = None, f"test:{key}", None
        for name, value in changes.items():
            setattr(ex, name, value)
        return ex

    near_request = copy.deepcopy(base.request)
    near_request["messages"][-1] = {**near_request["messages"][-1]}
    last = near_request["messages"][-1]
    last["content"] = (last.get("content") or "") + " thanks"
    refusal = {
        "choices": [{"message": {"role": "assistant", "content": None, "refusal": "I can't help with that."}}]
    }
    return [
        clone(
            "error", response={"error": {"message": "overloaded"}}, response_kind="error", upstream_status=529
        ),
        clone(
            "empty",
            response={"choices": [{"message": {"role": "assistant", "content": ""}}]},
            response_kind="empty",
        ),
        clone("refused", response=refusal, response_kind="text", is_hci=False),
        clone("exact", session="1#9"),  # a replay from another session: same request, same response
        clone("near", session="2#9", request=near_request),  # another session, one word more
    ]


@pytest.fixture(scope="module")
def tau_subset(tau_path: Path) -> list[Exchange]:
    return [ex for ex in read_exchanges(tau_path) if ex.session and ex.session.split("#")[0] in TASKS]


@pytest.fixture
def store(tmp_path: Path, tau_subset: list[Exchange]) -> Store:
    st = Store.open(f"sqlite:///{tmp_path / 'curate.db'}")
    st.add_exchanges(copy.deepcopy(tau_subset))
    first_call = next(st.exchanges(split="dev", response_kind="tool_call"))
    st.add_exchanges(planted(first_call))
    return st


def test_migration_adds_the_curation_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    Store.open(url).close()
    st = Store.open(url)  # reopening migrates nothing twice
    assert {"curation_runs", "curated_exchanges"} <= set(inspect(st.engine).get_table_names())
    with st.engine.connect() as conn:
        names = [r.name for r in conn.execute(select(applied.c.name))]
    assert names.count("m002_curation") == 1


def test_report_counts_add_up_and_every_removal_has_a_reason(
    store: Store, tau_subset: list[Exchange]
) -> None:
    report = curate(store, CurateConfig(pii=False))
    dev = [ex for ex in tau_subset if ex.split == "dev"]
    assert report.test_split_skipped == len(tau_subset) - len(dev)
    assert report.exchanges == len(dev) + 5
    assert report.kept + sum(report.removed.values()) == report.exchanges
    assert report.removed["error"] == 1 and report.removed["empty"] == 1
    assert report.removed["refused"] >= 1 and report.removed["exact_duplicate"] == 1
    assert report.removed["near_duplicate"] >= 1
    text_replies = sum(ex.response_kind == "text" for ex in dev)
    assert report.hci_flagged == text_replies
    assert (
        report.removed["hci"] + report.removed["refused"] - 1 == text_replies
    )  # refusals are text replies too
    rows = list(curated_rows(store, report.run_id))
    assert len(rows) == report.exchanges
    assert sum(not r["kept"] for r in rows) == sum(report.removed.values())
    assert {r["reason"] for r in rows if not r["kept"]} <= set(REASONS)
    assert all(r["request"] is None for r in rows)  # nothing copied without masking: the original is the view
    (run,) = curation_runs(store)
    assert run["status"] == "done" and run["config"]["pii"] is False
    assert curation_report(store) == report.as_dict()


def test_near_duplicates_of_the_same_session_are_kept(store: Store) -> None:
    """Consecutive calls of one session share most of their prompt; each is a distinct step."""
    report = curate(store, CurateConfig(pii=False, near_dup_threshold=0.5))
    rows = {r["exchange_id"]: r for r in curated_rows(store, report.run_id)}
    by_session: dict[str, list[Exchange]] = {}
    for ex in store.exchanges(split="dev"):
        if ex.session:
            by_session.setdefault(ex.session, []).append(ex)
    for session, calls in by_session.items():
        reasons = [rows[ex.id]["reason"] for ex in calls if ex.id in rows]
        if session.endswith("#0"):  # the first trial of each workflow is seen first: nothing to duplicate
            assert "near_duplicate" not in reasons, session
    assert report.removed["near_duplicate"] > 0


def test_near_duplicates_compare_across_sessions_only() -> None:
    text = (
        "user: my user id is mia_li_3668 and I want to change the flight of reservation ABC123 to May 20 " * 3
    )
    near = NearDuplicates(0.9)
    assert not near.is_duplicate("1", text, "7#0")
    assert not near.is_duplicate("2", text, "7#0")  # the same session: a later step, not a duplicate
    assert near.is_duplicate("3", text + " please", "7#1")
    assert not near.is_duplicate("4", "tool get_user_details returned: {} " * 5, "7#1")


def test_success_only_and_include_hci(store: Store, tau_subset: list[Exchange]) -> None:
    report = curate(store, CurateConfig(pii=False, success_only=True, near_dup_threshold=None))
    failed_calls = [
        ex
        for ex in tau_subset
        if ex.split == "dev" and ex.response_kind == "tool_call" and (ex.outcome or 0.0) < 1.0
    ]
    assert report.removed["outcome_failed"] >= len(failed_calls) > 0
    assert report.removed["near_duplicate"] == 0
    with_hci = curate(store, CurateConfig(pii=False, include_hci=True))
    assert with_hci.removed["hci"] == 0 and with_hci.hci_kept > 0
    assert with_hci.kept_by_kind.get("text", 0) == with_hci.hci_kept


def test_masked_training_view_keeps_ids_and_leaves_originals_alone(store: Store, tau_path: Path) -> None:
    originals = {ex.id: ex for ex in store.exchanges(split="dev")}
    report = curate(store, CurateConfig(pii=True, mode="surrogate"))
    assert report.pii["masked"] and report.pii["values_by_entity"]["PERSON"] > 0
    view = select_calls(store, CallSelection(role="dev", curated=True)).exchanges
    kept_calls = {
        r["exchange_id"]
        for r in curated_rows(store, report.run_id, kept=True)
        if originals[r["exchange_id"]].response_kind == "tool_call"
    }
    assert {ex.id for ex in view} == kept_calls and len(view) == report.kept_by_kind["tool_call"]
    users = json.loads((tau_path / "users.json").read_text())
    for ex in view:
        original = originals[ex.id]
        assert ex.session == original.session and ex.response_kind == "tool_call"
        assert ex.tool_names == original.tool_names
        masked_call = ex.response["choices"][0]["message"]["tool_calls"][0]["function"]
        assert (
            masked_call["name"]
            == original.response["choices"][0]["message"]["tool_calls"][0]["function"]["name"]
        )
        json.loads(masked_call["arguments"])
        for message in ex.request["messages"]:
            if message["role"] == "tool" and message["content"].startswith("{"):
                json.loads(message["content"])
        text = json.dumps(ex.request)
        for user_id, user in users.items():
            if user_id in json.dumps(original.request):
                assert user_id not in text and user["email"] not in text
    # the originals in the store are unchanged
    assert {ex.id: ex for ex in store.exchanges(split="dev")} == originals


def test_training_view_needs_a_finished_run(tmp_path: Path) -> None:
    st = Store.open(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ConfigError, match="downsize curate"):
        select_calls(st, CallSelection(curated=True))


def test_pruned_prompt_is_the_newest_words(tau_subset: list[Exchange]) -> None:
    ex = max(tau_subset, key=lambda e: len(e.request["messages"]))
    text = pruned_prompt(ex, 40)
    assert 0 < len(text.split()) <= 45 and "Airline Agent Policy" not in text


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="mode"):
        CurateConfig(mode="redact")
    with pytest.raises(ConfigError, match="near_dup_threshold"):
        CurateConfig(near_dup_threshold=1.5)


def test_cli_curate(store: Store, tmp_path: Path) -> None:
    url = str(store.engine.url)
    runner = CliRunner()
    help_text = runner.invoke(curate_command, ["--help"]).output
    assert "--success-only" in help_text and "--near-dup-threshold" in help_text
    result = runner.invoke(curate_command, ["--no-pii", "--near-dup-threshold", "0", "--db", url])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output and "removed" in result.output
    config = tmp_path / "curate.yaml"
    config.write_text("pii: false\nsuccess_only: true\n")
    result = runner.invoke(curate_command, ["--config", str(config), "--json", "--db", url])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["removed"]["outcome_failed"] > 0
    assert report["kept"] + sum(report["removed"].values()) == report["exchanges"]
    first, second = curation_runs(store)
    assert first["config"]["near_dup_threshold"] is None and first["report"]["removed"]["near_duplicate"] == 0
    assert second["config"]["near_dup_threshold"] == 0.9 and second["config"]["success_only"] is True


def test_trainer_reads_the_curated_view_when_asked(store: Store) -> None:
    from downsize.config import TrainConfig
    from downsize.train.data import training_exchanges

    curate(store, CurateConfig(pii=True, mode="placeholder"))
    raw = training_exchanges(store, TrainConfig(validation_fraction=0.0))
    curated = training_exchanges(store, TrainConfig(validation_fraction=0.0, curated=True))
    assert curated and {ex.id for ex in curated} <= {ex.id for ex in raw}
    assert json.dumps([ex.request for ex in curated]) != json.dumps(
        [ex.request for ex in raw if ex.id in {c.id for c in curated}]
    )
