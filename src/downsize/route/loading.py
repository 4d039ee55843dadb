"""Build the router for the gateway from the store: the live specialist (or a named one) and its runtime."""

from __future__ import annotations

from collections.abc import Callable

from downsize.errors import NoSpecialistError
from downsize.route.gate import TaskGate
from downsize.route.router import Router, SpecialistRuntime
from downsize.store import Store
from downsize.types import Specialist


def load_router(
    store: Store,
    specialist: str | None = None,
    threshold: float | None = None,
    runtime_factory: Callable[[Specialist], SpecialistRuntime] | None = None,
) -> Router | None:
    """A Router for the named specialist, else the live one, else the shadow one; None (log only) when none.

    A specialist in shadow status decides and logs every request but never serves. `runtime_factory` makes
    the runtime (the gateway passes one that starts a worker process); the default loads it in-process.
    """
    if specialist is not None:
        sp = store.specialist(specialist)
    else:
        candidates = store.specialists(status="live") or store.specialists(status="shadow")
        if not candidates:
            return None
        sp = candidates[-1]
    chosen = threshold if threshold is not None else sp.threshold
    if chosen is None:
        raise NoSpecialistError(
            f"specialist {sp.name} (id {sp.id}) has no calibrated threshold: run `downsize eval {sp.id}`, "
            "or pass --threshold"
        )
    if runtime_factory is None:
        from downsize.backends.transformers_runtime import runtime_for

        runtime_factory = runtime_for
    runtime = runtime_factory(sp)
    tasks = frozenset(sp.config.get("tasks") or [])
    assigner = None
    if tasks:
        from downsize.discover.discovery import load_assigner

        assigner = load_assigner(store, sp.config.get("discovery_run"))
    return Router(
        specialist=sp,
        runtime=runtime,
        threshold=chosen,
        task_tools=frozenset(sp.config.get("task_tools", [])),
        gate=TaskGate.load(sp.adapter_path),
        shadow=sp.status == "shadow",
        assigner=assigner,
        tasks=tasks,
    )
