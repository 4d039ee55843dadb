"""Build the router for the gateway from the store: the live specialist (or a named one) and its runtime."""

from __future__ import annotations

from downsize.errors import NoSpecialistError
from downsize.route.gate import TaskGate
from downsize.route.router import Router
from downsize.store import Store


def load_router(store: Store, specialist: str | None = None, threshold: float | None = None) -> Router | None:
    """A Router for the named specialist, else the live one, else the shadow one; None (log only) when none.

    A specialist in shadow status decides and logs every request but never serves.
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
    from downsize.backends.transformers_runtime import runtime_for

    runtime = runtime_for(sp)
    return Router(
        specialist=sp,
        runtime=runtime,
        threshold=chosen,
        task_tools=frozenset(sp.config.get("task_tools", [])),
        gate=TaskGate.load(sp.adapter_path),
        shadow=sp.status == "shadow",
    )
