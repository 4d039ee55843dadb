"""Build the gateway's router from the store: every live specialist (or the named ones), one slot each."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from downsize.decide.decision import decider_of, scope_of
from downsize.errors import NoSpecialistError
from downsize.route.router import Router, Slot
from downsize.store import Store
from downsize.types import Specialist, SpecialistRuntime


def routed_specialists(store: Store, names: Sequence[str] = ()) -> list[Specialist]:
    """The named specialists; else every live and canary one, and every shadow one whose scope no live or
    canary one covers.

    Of several versions with the same scope (agent, tool set, tasks) and status, the newest wins. Task
    specialists come before whole-call-site ones, so a request of a trained task reaches its own specialist
    first; then canaries before live ones (the requests outside a canary's share go on to the live version)
    and live before shadow, whatever their scopes: a shadow slot only logs, so a newer shadow version whose
    tasks overlap an older live one's must not take its requests away from it.
    """
    if names:
        return [store.specialist(name) for name in names]
    chosen: dict[tuple[object, ...], Specialist] = {}
    for status in ("canary", "live", "shadow"):
        for sp in sorted(store.specialists(status=status), key=lambda s: -(s.id or 0)):
            key = _scope_key(sp)
            if status == "shadow" and any(k[1:] == key for k in chosen):
                continue
            if (status, *key) not in chosen:
                chosen[(status, *key)] = sp
    newest: dict[tuple[object, ...], int] = {}
    for sp in chosen.values():
        newest[_scope_key(sp)] = max(newest.get(_scope_key(sp), 0), sp.id or 0)
    order = {"canary": 0, "live": 1, "shadow": 2}
    return sorted(
        chosen.values(),
        key=lambda s: (not s.config.get("tasks"), order[s.status], -newest[_scope_key(s)], -(s.id or 0)),
    )


def _scope_key(sp: Specialist) -> tuple[object, ...]:
    config = sp.config
    return (
        config.get("agent"),
        tuple(sorted(config.get("task_tools") or [])),
        tuple(sorted(config.get("tasks") or [])),
    )


def load_router(
    store: Store,
    specialists: Sequence[str] = (),
    threshold: float | None = None,
    runtime_factory: Callable[[Specialist], SpecialistRuntime] | None = None,
) -> Router | None:
    """A Router over the named specialists, else every live one (and shadow ones, which only log); None
    (log only) when there are none. Each slot's runtime is made on its first request by `runtime_factory`
    (the gateway's starts the specialist in a worker process; the default loads it in-process).
    """
    chosen = routed_specialists(store, specialists)
    if not chosen:
        return None
    if runtime_factory is None:
        from downsize.backends.engines import runtime_for

        runtime_factory = runtime_for
    factory = runtime_factory
    slots = []
    for sp in chosen:
        value = threshold if threshold is not None else sp.threshold
        if value is None:
            raise NoSpecialistError(
                f"specialist {sp.name} (id {sp.id}) has no calibrated threshold: run `downsize eval {sp.id}`, "
                "or pass --threshold"
            )
        slots.append(
            Slot(
                specialist=sp,
                scope=scope_of(store, sp),
                decider=decider_of(sp, value),
                make_runtime=lambda sp=sp: factory(sp),  # type: ignore[misc]
                shadow=sp.status == "shadow",
                traffic=(sp.traffic if sp.traffic is not None else 0.1) if sp.status == "canary" else None,
            )
        )
    return Router(slots)
