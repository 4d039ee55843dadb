"""Routing modes per task: `off`, `shadow`, `canary` (a share of the task's traffic), `live`.

A task's mode is the status of its routed specialist (the newest version that is not retired), so the store
holds one truth that `downsize route`, the admin API, the flywheel and automatic rollback all change through
`set_mode`, each change recorded in `route_events` with who made it, why, and the figures behind it. A running
gateway polls `Store.routing_version` and reloads its specialists when it moves (`Gateway.reload_router`).

Gates: `shadow` and `canary` need a calibrated threshold (the promotion gate's `shadow` step); `live` needs the
promotion gate's `live` step under the chosen rule (strict or parity). `force` skips the gate and says so in
the event; going back (to `off` or `shadow`) is never gated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from downsize.errors import DownsizeError, NoSpecialistError
from downsize.evaluate.promotion import promotion_gate
from downsize.store import Store
from downsize.types import Specialist

MODES = ("off", "shadow", "canary", "live")
DEFAULT_CANARY_TRAFFIC = 0.10


class RouteModeError(DownsizeError):
    """A mode change that cannot be made (unknown task or mode, a gate that does not hold)."""


@dataclass
class RouteChange:
    specialist: Specialist
    from_mode: str
    to_mode: str
    traffic: float | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def mode_of(specialist: Specialist) -> str:
    """The routing mode a specialist's status stands for (`off` for one that routes nothing)."""
    return specialist.status if specialist.status in MODES else "off"


def resolve(store: Store, ref: str) -> Specialist:
    """The specialist a `downsize route` argument names: an id or a specialist name, else a task (the
    specialist's task, or one of the discovered task keys it was trained on); the newest version that is not
    retired."""
    candidates = [sp for sp in store.specialists() if sp.status != "retired"]
    if ref.isdigit():
        found = [sp for sp in store.specialists() if sp.id == int(ref)]
    else:
        found = [sp for sp in candidates if sp.name == ref] or [
            sp for sp in candidates if sp.task == ref or ref in (sp.config.get("tasks") or [])
        ]
    if not found:
        known = sorted({sp.task for sp in candidates})
        raise NoSpecialistError(
            f"no specialist answers {ref!r}: name a specialist (id or name) or one of its tasks "
            f"({', '.join(known[:8]) or 'none trained yet: run `downsize train`'})"
        )
    return max(found, key=lambda sp: sp.id or 0)


def set_mode(
    store: Store,
    ref: str | Specialist,
    mode: str,
    *,
    traffic: float | None = None,
    rule: str = "strict",
    target: float = 0.90,
    min_served: int = 20,
    count: str = "workflows",
    force: bool = False,
    actor: str = "cli",
    reason: str = "",
    evidence: dict[str, Any] | None = None,
) -> RouteChange:
    """Move a task's specialist to `mode`, gated as the module says; returns what changed and why."""
    if mode not in MODES:
        raise RouteModeError(f"unknown routing mode {mode!r}: use one of {', '.join(MODES)}")
    sp = ref if isinstance(ref, Specialist) else resolve(store, ref)
    assert sp.id is not None
    if sp.status == "retired":
        raise RouteModeError(
            f"specialist {sp.name} (id {sp.id}) is retired: route a newer version of task {sp.task}"
        )
    if mode == "canary":
        traffic = DEFAULT_CANARY_TRAFFIC if traffic is None else traffic
        if not 0.0 < traffic < 1.0:
            raise RouteModeError(
                f"a canary's traffic share must be between 0 and 1 (exclusive), not {traffic}"
            )
    elif traffic is not None:
        raise RouteModeError("--traffic applies only to canary mode")
    facts: dict[str, Any] = dict(evidence or {})
    why = reason
    going_back = MODES.index(mode) < MODES.index(mode_of(sp))  # toward off: never gated
    if mode in ("shadow", "canary", "live") and not force and not going_back:
        gate = promotion_gate(
            sp, "live" if mode == "live" else "shadow", target, min_served, rule=rule, count=count
        )
        if not gate.allowed:
            raise RouteModeError(
                f"cannot route task {sp.task} to {mode} with specialist {sp.name} (id {sp.id}): {gate.reason} "
                "(or pass --force to route it anyway; the event records that)"
            )
        facts.setdefault("gate", {"rule": rule, "reason": gate.reason, **gate.evidence})
        if mode == "live" and gate.threshold is not None and gate.threshold != sp.threshold:
            store.update_specialist(sp.id, threshold=gate.threshold)
        why = why or gate.reason
    elif force and not going_back:
        facts["forced"] = True
        why = why or f"forced to {mode} by {actor}"
    previous = mode_of(sp)
    why = why or f"{previous} -> {mode}"
    store.set_status(sp.id, mode, actor=actor, reason=why, evidence=facts, traffic=traffic)
    return RouteChange(store.specialist(sp.id), previous, mode, traffic, why, facts)


def routes_table(store: Store) -> list[dict[str, Any]]:
    """One row per task with a version that is not retired: its routed specialist (or newest), the mode, the
    canary share, the threshold and the last change (who, when, why)."""
    by_task: dict[str, list[Specialist]] = {}
    for sp in store.specialists():
        if sp.status != "retired":
            by_task.setdefault(sp.task, []).append(sp)
    events = store.route_events()
    last: dict[int, dict[str, Any]] = {event["specialist_id"]: event for event in events}
    rows: list[dict[str, Any]] = []
    for task, versions in sorted(by_task.items()):
        routed = [sp for sp in versions if mode_of(sp) != "off"]
        for sp in sorted(routed or versions[-1:], key=lambda s: -(s.id or 0)):
            event: dict[str, Any] | None = last.get(sp.id or -1)
            rows.append(
                {
                    "task": task,
                    "specialist_id": sp.id,
                    "specialist": sp.name,
                    "mode": mode_of(sp),
                    "traffic": sp.traffic,
                    "threshold": sp.threshold,
                    "changed_at": event["created_at"] if event else sp.created_at,
                    "changed_by": event["actor"] if event else None,
                    "reason": event["reason"] if event else None,
                }
            )
    return rows
