"""The one way a stage selects its calls: source, agent, split role, output kind, discovered task, curated or raw.

Training, the task gate's fit, the copied-argument rules, calibration and evaluation all ask here, so they see
the same data. With `curated`, every exchange comes from the newest (or a named) curation run's masked view:
nothing fitted for a curated specialist ever sees an unmasked value. Splits are placed when exchanges are
stored (`splits.py`); exchanges stored before that are placed here on first use.

Only the teacher's answers are selected: a call a specialist served (route `specialist:<id>`) holds the
student's own answer and a consistency probe's second answer (route `probe`) repeats a call, so neither is
ever a target. A call the LLM answered after a specialist fell back, or beside a shadow specialist (route
`fallback:<reason>`), holds the LLM's answer and is selected like any other: that is how the flywheel learns
from the calls its specialists could not take.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from downsize.errors import ConfigError
from downsize.shapes import tool_names
from downsize.sites import site_key
from downsize.splits import role as split_role
from downsize.store import Store
from downsize.types import Exchange

ROLES = ("train", "validation", "test", "dev")
SERVED_PREFIX = "specialist:"  # the route of a call a specialist answered (`RouteDecision.route`)


@dataclass(frozen=True)
class CallSelection:
    """Which logged calls a stage works on. Every field narrows; the defaults take everything."""

    source: str | None = None
    agent: str | None = None
    role: str | None = None  # train | validation (dev workflows by hash) | dev | test; None: every split
    kinds: tuple[str, ...] | None = ("tool_call",)  # response kinds; None: every kind
    tasks: tuple[str, ...] = ()  # discovered task keys (discovery's own assignment of stored calls)
    discovery_run: int | None = None
    tool_set: frozenset[str] | None = None  # only requests offering exactly these tools (one call site)
    site: str | None = None  # only requests of this call site (`sites.site_key`)
    curated: bool = False  # the masked view of a curation run
    curation_run: int | None = None
    include_hci: bool = False  # text replies a human reads (curation flags them)
    validation_fraction: float = 0.25
    held_out_fold: int = 0  # the dev fold that is `validation` (cross-fitting's fold models hold out others)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in ROLES:
            raise ConfigError(f"unknown split role {self.role!r}: use one of {', '.join(ROLES)}")


@dataclass
class Selected:
    """The calls, and what the selection stood on (recorded with every artifact made from them)."""

    exchanges: list[Exchange]
    selection: CallSelection
    curation_run: int | None = None
    counts: dict[str, int] = field(default_factory=dict)


def select_calls(store: Store, selection: CallSelection) -> Selected:
    """The exchanges a selection names, in id order; the curated view's masked bodies with `curated`."""
    store.assign_splits()  # exchanges stored before workflows were recorded
    members = _task_members(store, selection) if selection.tasks else None
    split = "test" if selection.role == "test" else ("dev" if selection.role else None)
    kinds = set(selection.kinds) if selection.kinds is not None else None
    masked: dict[int, dict[str, Any]] | None = None
    run_id = None
    if selection.curated:
        from downsize.curate import view

        run_id = selection.curation_run if selection.curation_run is not None else view.latest_run_id(store)
        if run_id is None:
            raise ConfigError("no finished curation run in the store: run `downsize curate` first")
        masked = {row["exchange_id"]: row for row in view.curated_rows(store, run_id, kept=True)}
    out: list[Exchange] = []
    counts = {"stored": 0, "other_role": 0, "other_kind": 0, "other_task": 0, "other_tools": 0}
    counts.update({"hci": 0, "not_curated": 0, "specialist_answer": 0})
    for ex in store.exchanges(source=selection.source, split=split, agent=selection.agent):
        counts["stored"] += 1
        if not teacher_answered(ex):
            counts["specialist_answer"] += 1
            continue
        if kinds is not None and ex.response_kind not in kinds:
            counts["other_kind"] += 1
            continue
        if selection.role in ("train", "validation") and (
            split_role(ex, selection.validation_fraction, selection.held_out_fold) != selection.role
        ):
            counts["other_role"] += 1
            continue
        if members is not None and ex.id not in members:
            counts["other_task"] += 1
            continue
        if selection.tool_set is not None and frozenset(tool_names(ex.request)) != selection.tool_set:
            counts["other_tools"] += 1
            continue
        if selection.site is not None and site_key(ex.request) != selection.site:
            counts["other_tools"] += 1
            continue
        if ex.is_hci and not selection.include_hci:
            counts["hci"] += 1
            continue
        if masked is not None:
            row = masked.get(ex.id or -1)
            if row is None:
                counts["not_curated"] += 1
                continue
            if row["request"] is not None:  # NULL bodies: the run copied nothing (no masking)
                ex.request, ex.response = row["request"], row["response"]
        out.append(ex)
        if selection.limit is not None and len(out) >= selection.limit:
            break
    counts["selected"] = len(out)
    return Selected(out, selection, run_id, counts)


def teacher_answered(ex: Exchange) -> bool:
    """Whether the stored response is the LLM's: not a specialist's served answer (`specialist:<id>`)."""
    return not (ex.route or "").startswith(SERVED_PREFIX)


def _task_members(store: Store, selection: CallSelection) -> set[int]:
    from downsize.discover import runs

    wanted = set(selection.tasks)
    assigned = runs.exchange_tasks(store, runs.require_run(store, selection.discovery_run))
    return {ex_id for ex_id, (key, _) in assigned.items() if key in wanted}


def decision_points(
    exchanges: Iterable[Exchange],
) -> list[tuple[list[dict[str, Any]], str | None, list[str]]]:
    """Every point in these conversations where the agent's model spoke: (messages before it, response kind,
    tools called), newest view of each point once.

    The task gate learns from them (text replies included). A curated store keeps only machine-facing calls,
    but their masked conversations still hold every earlier assistant turn: read from there, the gate sees
    the text-reply points without an unmasked byte.
    """
    seen: set[tuple[str, int]] = set()
    points: list[tuple[list[dict[str, Any]], str | None, list[str]]] = []
    for ex in sorted(exchanges, key=lambda e: -(len(e.request.get("messages") or []))):
        messages = [m for m in ex.request.get("messages") or [] if isinstance(m, dict)]
        conversation = ex.workflow or ex.session or str(ex.id)
        key = (f"{conversation}/{ex.session}", len(messages))
        if key not in seen:
            seen.add(key)
            points.append((messages, ex.response_kind, list(ex.tool_names)))
        for i, message in enumerate(messages):
            if message.get("role") != "assistant" or (f"{conversation}/{ex.session}", i) in seen:
                continue
            seen.add((f"{conversation}/{ex.session}", i))
            calls = message.get("tool_calls") or []
            names = [str((c.get("function") or {}).get("name")) for c in calls if isinstance(c, dict)]
            points.append((messages[:i], "tool_call" if names else "text", names))
    return points
