"""`discover`: group logged calls into recurring tasks and record them as a new discovery run.

Signature first (exact, cheap), clusters of what varies inside each signature second, then per task: a
readable label, volume, tokens, cost, output kind and a suitability score; finally the task assigner
the router uses, and a 2-D map of the clusters. Reads and writes through the store only.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from downsize.config import home
from downsize.discover import runs
from downsize.discover.assign import TaskAssigner
from downsize.discover.cluster import centroids, cluster_embeddings
from downsize.discover.config import DiscoverConfig
from downsize.discover.embed import embed_texts
from downsize.discover.label import class_terms, dominant, task_label
from downsize.discover.signature import Signature, TemplateIndex, signature, varying_text
from downsize.discover.stable import FIXED_EMBEDDERS, KeyMatch, match_keys
from downsize.discover.task_map import write_task_map
from downsize.errors import DownsizeError
from downsize.pricing import load_prices
from downsize.shapes import response_message, tool_calls
from downsize.store import Store
from downsize.types import Exchange

Progress = Callable[[str], None]
CHARS_PER_TOKEN = 4  # token estimate when the log has no counts


@dataclass
class Call:
    """What discovery keeps of one exchange (the bodies are not held: 20,000 calls fit in little memory)."""

    exchange_id: int
    signature: Signature
    text: str  # what varies: embedded, labelled, and what the assigner sees
    kind: str
    tool: str | None  # the first tool called, for tool calls
    shape: str  # the output's shape (tool and argument names, JSON keys, text length band)
    tokens: int
    cost: float


@dataclass
class DiscoveryResult:
    run_id: int
    tasks: list[dict[str, Any]]
    report: dict[str, Any]
    assignments: dict[int, tuple[str | None, float]] = field(default_factory=dict)  # exchange id -> task


def output_shape(kind: str, response: dict[str, Any] | None) -> tuple[str, str | None]:
    """The shape of an answer, for regularity: calls by tool and argument names, JSON by keys, text by length."""
    message = response_message(response) or {}
    if kind == "tool_call":
        calls = tool_calls(message)
        shape = ";".join(f"{c.name}({','.join(sorted(c.arguments))})" for c in calls)
        return shape, (calls[0].name if calls else None)
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content)
    if kind == "json":
        try:
            value = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            return "json:invalid", None
        return ("json:" + ",".join(sorted(value)) if isinstance(value, dict) else "json:list"), None
    return f"text:{int(math.log2(len(text or '') + 1))}", None


def _tokens(ex: Exchange) -> tuple[int, int]:
    if ex.prompt_tokens is not None and ex.completion_tokens is not None:
        return int(ex.prompt_tokens), int(ex.completion_tokens)
    prompt = len(json.dumps(ex.request, ensure_ascii=False)) // CHARS_PER_TOKEN
    completion = len(json.dumps(response_message(ex.response) or {}, ensure_ascii=False)) // CHARS_PER_TOKEN
    return prompt, completion


def read_calls(store: Store, config: DiscoverConfig, templates: TemplateIndex) -> list[Call]:
    """The exchanges discovery groups: the configured source, split and response kinds."""
    calls: list[Call] = []
    kinds = set(config.response_kinds)
    split = None if config.split in (None, "all") else config.split
    prices = load_prices()
    for ex in store.exchanges(source=config.source, split=split):
        if ex.response_kind not in kinds or ex.id is None:
            continue
        prompt, completion = _tokens(ex)
        listed = prices.cost(ex.model, prompt, completion)
        if ex.cost_estimate is not None:
            cost = float(ex.cost_estimate)
        elif listed is not None:  # the model's list price (`pricing.py`)
            cost = listed
        else:
            cost = (prompt * config.price_input_per_mtok + completion * config.price_output_per_mtok) / 1e6
        shape, tool = output_shape(ex.response_kind, ex.response)
        calls.append(
            Call(
                exchange_id=ex.id,
                signature=signature(
                    ex.request, ex.response_kind, templates, ex.agent, ex.task_hint, config.call_site
                ),
                text=varying_text(ex.request.get("messages") or [], config.max_messages, config.max_chars),
                kind=ex.response_kind,
                tool=tool,
                shape=shape,
                tokens=prompt + completion,
                cost=cost,
            )
        )
        if config.limit is not None and len(calls) >= config.limit:
            break
    return calls


def regularity(kind: str, shapes: list[str], text_weight: float) -> float:
    """Share of the task's most common output shape; free text is discounted by `text_weight`."""
    _, share = dominant(shapes)
    return share * (text_weight if kind == "text" else 1.0)


def discover(store: Store, config: DiscoverConfig, progress: Progress | None = None) -> DiscoveryResult:
    """Run task discovery over the store's exchanges and record it as a new run; returns the run."""
    say = progress or (lambda _msg: None)
    run_id = runs.start_run(store, asdict(config))
    try:
        result = _discover(store, config, run_id, say)
    except Exception as exc:  # recorded as failed, then re-raised: nothing is swallowed
        runs.finish_run(store, run_id, {"error": str(exc)}, status="failed")
        raise
    runs.finish_run(store, run_id, result.report)
    return result


def _discover(store: Store, config: DiscoverConfig, run_id: int, say: Progress) -> DiscoveryResult:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    templates = TemplateIndex(similarity=config.template_similarity)
    calls = read_calls(store, config, templates)
    seconds["read"] = time.perf_counter() - t0
    if not calls:
        raise DownsizeError(
            "no exchanges to discover tasks in"
            + (
                f" (source {config.source!r}, split {config.split!r})"
                if config.source or config.split
                else ""
            )
            + ": import logs first (`downsize import ...`) or serve traffic through the gateway"
        )
    groups: dict[str, list[int]] = defaultdict(list)
    for i, call in enumerate(calls):
        groups[call.signature.key].append(i)
    say(f"{len(calls)} calls in {len(groups)} signatures; embedding what varies with {config.embedder}")

    t = time.perf_counter()
    texts = [c.text for c in calls]
    vectors = embed_texts(texts, config.embedder, config.batch_size, config.seed)
    seconds["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    task_of = np.full(len(calls), -1, dtype=np.int64)  # global task index
    confidence = np.zeros(len(calls), dtype=np.float32)
    n_tasks = 0
    for key in sorted(groups, key=lambda k: (-len(groups[k]), k)):
        idx = np.array(groups[key])
        clustering = cluster_embeddings(vectors[idx], config)
        member = clustering.labels >= 0
        task_of[idx[member]] = clustering.labels[member] + n_tasks
        confidence[idx] = clustering.confidence
        n_tasks += clustering.n_clusters
    seconds["cluster"] = time.perf_counter() - t
    if n_tasks == 0:
        raise DownsizeError(
            f"{len(calls)} calls form no task (a task needs at least {config.min_cluster_size} calls with the "
            "same signature): log more calls, or lower --min-cluster-size"
        )
    say(f"{n_tasks} tasks; {int((task_of < 0).sum())} outliers")

    t = time.perf_counter()
    order = sorted(range(n_tasks), key=lambda j: (-int((task_of == j).sum()), j))
    rank = {old: new for new, old in enumerate(order)}
    task_of = np.array([rank[int(v)] if v >= 0 else -1 for v in task_of], dtype=np.int64)
    keys = [f"t{j:03d}" for j in range(n_tasks)]
    tasks = _summarise(calls, vectors, task_of, keys, config)
    seconds["label"] = time.perf_counter() - t
    matched = _keep_keys(store, config, calls, task_of, keys, tasks) if config.keep_keys else None
    if matched is not None:
        say(
            f"stable keys: {len(matched.kept)} tasks continue run {matched.previous_run}, "
            f"{len(matched.new)} new, {len(matched.ended)} ended"
        )

    t = time.perf_counter()
    task_keys: list[str | None] = [keys[j] if j >= 0 else None for j in task_of]
    assigner = TaskAssigner.fit(
        texts,
        task_keys,
        [c.signature.request_key for c in calls],
        templates,
        min_similarity=config.assign_min_similarity,
        max_features=config.assign_max_features,
        use_call_site=config.call_site,
        max_messages=config.max_messages,
        max_chars=config.max_chars,
        run_id=run_id,
    )
    assigner_path = assigner.save(assigner_file(run_id))
    seconds["assigner"] = time.perf_counter() - t

    t = time.perf_counter()
    assignments = {
        c.exchange_id: (task_keys[i], float(confidence[i]) if task_keys[i] else 0.0)
        for i, c in enumerate(calls)
    }
    runs.write_tasks(store, run_id, tasks, [(ex, k, conf) for ex, (k, conf) in assignments.items()])
    seconds["write"] = time.perf_counter() - t

    map_path = None
    if config.map:
        t = time.perf_counter()
        map_path = write_task_map(
            vectors,
            task_of,
            {j: f"{keys[j]} {tasks[j]['label']} ({tasks[j]['volume']})" for j in range(n_tasks)},
            home() / "reports" / f"discover-run{run_id}.html",
            title=f"downsize discovery run {run_id}: {n_tasks} tasks over {len(calls)} calls",
            seed=config.seed,
        )
        seconds["map"] = time.perf_counter() - t

    outliers = int((task_of < 0).sum())
    report = {
        "run_id": run_id,
        "calls": len(calls),
        "signatures": len(groups),
        "templates": len(templates.templates),
        "tasks": n_tasks,
        "outliers": outliers,
        "clustered_share": round(1 - outliers / len(calls), 4),
        "embedder": config.embedder,
        "algorithm": config.algorithm,
        "assigner_path": str(assigner_path),
        "assigner_threshold": round(assigner.threshold, 4),
        "map_path": str(map_path) if map_path else None,
        "keys": matched.as_dict() if matched is not None else None,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    say(f"discovery run {run_id}: {n_tasks} tasks written; assigner {assigner_path}")
    return DiscoveryResult(run_id, tasks, report, assignments)


def _keep_keys(
    store: Store,
    config: DiscoverConfig,
    calls: list[Call],
    task_of: np.ndarray,
    keys: list[str],
    tasks: list[dict[str, Any]],
) -> KeyMatch | None:
    """Rename this run's tasks (in `keys` and `tasks`, in place) to the keys of the previous finished run's
    tasks they continue (`discover/stable.py`); None when there is no previous run."""
    previous_run = runs.latest_run_id(store)
    if previous_run is None:
        return None
    members: dict[str, set[int]] = defaultdict(set)
    for call, j in zip(calls, task_of, strict=True):
        if j >= 0:
            members[keys[int(j)]].add(call.exchange_id)
    previous_members: dict[str, set[int]] = defaultdict(set)
    for ex_id, (key, _) in runs.exchange_tasks(store, previous_run).items():
        if key is not None:
            previous_members[key].add(ex_id)
    earlier = next((r for r in runs.discovery_runs(store) if r["id"] == previous_run), None) or {}
    same_space = (earlier.get("config") or {}).get("embedder") == config.embedder
    matched = match_keys(
        tasks,
        dict(members),
        runs.run_tasks(store, previous_run),
        dict(previous_members),
        comparable_space=same_space and config.embedder in FIXED_EMBEDDERS,
        used_keys=runs.all_task_keys(store),
        previous_run=previous_run,
    )
    for j, key in enumerate(keys):
        keys[j] = matched.renamed[key]
    for row in tasks:
        row["task_key"] = matched.renamed[row["task_key"]]
    return matched


def _summarise(
    calls: list[Call], vectors: np.ndarray, task_of: np.ndarray, keys: list[str], config: DiscoverConfig
) -> list[dict[str, Any]]:
    """One row per task: label, volume, tokens, cost, output kind, regularity, suitability, details."""
    # a few spare terms: the task's own tool name often ranks first and is already in the label
    terms = class_terms([c.text for c in calls], task_of.tolist(), config.label_terms + 2)
    cents = centroids(vectors, task_of) if len(keys) else np.zeros((0, vectors.shape[1]))
    members: dict[int, list[int]] = defaultdict(list)
    for i, j in enumerate(task_of):
        if j >= 0:
            members[int(j)].append(i)
    rows: list[dict[str, Any]] = []
    raw_scores: list[float] = []
    for j, key in enumerate(keys):
        mine = [calls[i] for i in members[j]]
        sig = mine[0].signature
        tool, tool_share = dominant([c.tool for c in mine])
        reg = regularity(sig.kind, [c.shape for c in mine], config.text_regularity_weight)
        cost = sum(c.cost for c in mine)
        tools = Counter(c.tool for c in mine if c.tool)
        words = [t for t in terms.get(j, []) if t != tool][: config.label_terms]
        raw_scores.append(cost * reg)  # = volume x cost per call x regularity
        rows.append(
            {
                "task_key": key,
                "label": task_label(sig.kind, tool, words),
                "signature": sig.key,
                "output_kind": sig.kind,
                "volume": len(mine),
                "tokens": sum(c.tokens for c in mine),
                "cost": round(cost, 6),
                "regularity": round(reg, 4),
                "suitability": 0.0,  # below: scaled so the run's best task is 1.0
                "dominant_tool": tool,
                "details": {
                    "terms": words,
                    "tool_share": round(tool_share, 4),
                    "tools": dict(tools.most_common(5)),
                    "examples": [c.text[:200] for c in mine[:3]],
                    "centroid": [round(float(v), 4) for v in cents[j]],
                },
            }
        )
    best = max(raw_scores, default=0.0) or 1.0
    for row, score in zip(rows, raw_scores, strict=True):
        row["suitability"] = round(score / best, 4)
    return rows


def assigner_file(run_id: int) -> Path:
    """Where a run's task assigner lives: $DOWNSIZE_HOME/discover/assigner-run<ID>.npz."""
    return home() / "discover" / f"assigner-run{run_id}.npz"


def load_assigner(store: Store, run_id: int | None = None) -> TaskAssigner:
    """The task assigner of a run (default: the newest finished one), for the router."""
    report = runs.run_report(store, run_id)
    path = report.get("assigner_path")
    if not path:
        raise DownsizeError("this discovery run saved no task assigner: run `downsize discover` again")
    return TaskAssigner.load(path)
