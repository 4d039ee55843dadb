"""One turn of the flywheel (paper step S6): curate -> discover -> retrain -> evaluate -> promote, unattended.

Steps run in order, and each step's result is written to the run's `state` in the store as it finishes, so a
run whose process died (status still `running`, its pid gone) is resumed by the next one from the first step
not finished: nothing finished is done twice. The units retrained are the ones `downsize tasks` marks
suitable (a tool's tasks, a call site's answers, or a task) whose training calls changed since their
specialist was trained (the hash of the exchange ids they train on), or whose specialist was rolled back.

A turn never leaves a task without a working route: a new version goes live only when the promotion gate
holds for it (`evaluate/promotion.py`, strict or parity), and then replaces the unit's earlier versions;
otherwise the live version stays and the new one is kept as a candidate (not in shadow: a shadow version
ahead of the live one would take its requests). A unit without a live version (new, or rolled back) gets
its new version in shadow when it is calibrated, until a version passes. A unit whose training or
evaluation fails is recorded with the error, and the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from downsize.config import TrainConfig
from downsize.errors import DownsizeError
from downsize.flywheel import runs
from downsize.flywheel.config import FlywheelConfig
from downsize.route.modes import set_mode
from downsize.store import Store
from downsize.types import Specialist

log = logging.getLogger(__name__)
Say = Callable[[str], None]
ACTOR = "flywheel"
UNIT_STEPS = ("train", "evaluate", "promote")


class FlywheelBusy(DownsizeError):
    """Another flywheel run is going on in a live process."""


@dataclass
class FlywheelReport:
    """What a run did: its id, how it ended, each step's result and timing, each unit's outcome."""

    run_id: int
    status: str
    trigger: str
    resumed_from: int | None
    steps: dict[str, Any] = field(default_factory=dict)
    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_flywheel(
    store: Store, config: FlywheelConfig, trigger: str = "once", say: Say | None = None
) -> FlywheelReport:
    """One turn of the flywheel, or the resumption of one a dead process left unfinished; returns its report.

    Raises FlywheelBusy when another run's process is alive.
    """
    say = say or (lambda _msg: None)
    started = time.perf_counter()
    state, resumed = _claim(store, trigger, say)
    if resumed is not None:
        trigger = f"resume:{resumed}"
    run_id = runs.start(store, asdict(config), trigger, state)
    if resumed is not None:
        runs.finish(
            store, resumed, "failed", {"error": f"its process ended mid-run; resumed as run {run_id}"}
        )
        say(f"flywheel run {run_id}: resuming run {resumed} after {', '.join(state['done']) or 'no step'}")
    else:
        say(f"flywheel run {run_id} ({trigger})")
    turn = _Turn(store, config, run_id, state, say)
    try:
        turn.run()
    except BaseException as exc:  # recorded as failed, then re-raised: nothing is swallowed
        state["error"] = f"{type(exc).__name__}: {exc}"
        runs.save_state(store, run_id, state)
        runs.finish(store, run_id, "failed", turn.report(resumed, trigger, started, "failed").as_dict())
        raise
    report = turn.report(resumed, trigger, started, "done")
    runs.finish(store, run_id, "done", report.as_dict())
    say(
        f"flywheel run {run_id} done in {report.seconds:.0f} s: "
        + ", ".join(f"{unit} {u.get('outcome', '?')}" for unit, u in report.units.items())
        if report.units
        else f"flywheel run {run_id} done in {report.seconds:.0f} s: no unit to retrain"
    )
    return report


def _claim(store: Store, trigger: str, say: Say) -> tuple[dict[str, Any], int | None]:
    """The state a new run starts from: a dead run's (to resume it), else a fresh one."""
    fresh: dict[str, Any] = {
        "process": runs.this_process(),
        "exchanges_upto": runs.newest_exchange_id(store),
        "done": [],
        "steps": {},
        "units": {},
        "current": None,
    }
    dead = []
    for row in runs.running(store):
        process = (row["state"] or {}).get("process") or {}
        if runs.alive(process):
            raise FlywheelBusy(
                f"flywheel run {row['id']} is running (pid {process.get('pid')} on {process.get('host')}): "
                "wait for it, or stop that process; a run whose process died is resumed by the next one"
            )
        dead.append(row)
    for row in dead[1:]:  # only the newest dead run is resumed; older ones were superseded
        runs.finish(store, int(row["id"]), "failed", {"error": "its process ended mid-run"})
    if dead:
        state = dict(dead[0]["state"] or {})
        if state.get("current"):
            say(f"run {dead[0]['id']} died during {state['current']}: that step runs again")
        kept = {k: v for k, v in state.items() if k in ("exchanges_upto", "done", "steps", "units")}
        return {**fresh, **kept}, int(dead[0]["id"])
    return fresh, None


class _Turn:
    """The steps of one run over its state (a dict written to the store after every step)."""

    def __init__(self, store: Store, config: FlywheelConfig, run_id: int, state: dict[str, Any], say: Say):
        self.store, self.config, self.run_id, self.state, self.say = store, config, run_id, state, say

    # -- bookkeeping -------------------------------------------------------------------------------

    def _step(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `work` unless the state says it finished; record its result and time as it ends."""
        if name in self.state["done"]:
            return dict(self.state["steps"][name])
        self.state["current"] = name
        runs.save_state(self.store, self.run_id, self.state)
        started = time.perf_counter()
        result = work()
        result["seconds"] = round(time.perf_counter() - started, 2)
        self.state["steps"][name] = result
        self.state["done"].append(name)
        self.state["current"] = None
        runs.save_state(self.store, self.run_id, self.state)
        return result

    def report(self, resumed: int | None, trigger: str, started: float, status: str) -> FlywheelReport:
        return FlywheelReport(
            run_id=self.run_id,
            status=status,
            trigger=trigger,
            resumed_from=resumed,
            steps=dict(self.state["steps"]),
            units=dict(self.state["units"]),
            seconds=round(time.perf_counter() - started, 2),
        )

    # -- the steps ---------------------------------------------------------------------------------

    def _done_before(self, name: str) -> str:
        return " (finished before the restart)" if name in self.state["done"] else ""

    def run(self) -> None:
        note = self._done_before("curate")
        curated = self._step("curate", self.curate)
        self.say(
            f"  curate    {curated['exchanges']} exchanges, {curated['kept']} kept "
            f"(run {curated['run_id']}; {curated['seconds']:.1f} s){note}"
        )
        note = self._done_before("discover")
        found = self._step("discover", self.discover)
        keys = found.get("keys") or {}
        self.say(
            f"  discover  {found['tasks']} tasks over {found['calls']} calls (run {found['run_id']}; "
            + (
                f"{keys['kept']} keys kept, {len(keys['new'])} new, {len(keys['ended'])} ended"
                if keys
                else "the first discovery: every key new"
            )
            + f"; {found['seconds']:.1f} s){note}"
        )
        note = self._done_before("plan")
        plan = self._step("plan", lambda: self.plan(found["run_id"]))
        todo = [u for u in plan["units"] if u["retrain"]]
        self.say(
            f"  plan      {len(plan['units'])} suitable units, {len(todo)} to retrain: "
            + (", ".join(f"{u['unit']} ({u['why']})" for u in todo) or "none")
            + note
        )
        for i, unit in enumerate(todo):
            self.unit(unit, todo[i:], found["run_id"])

    def curate(self) -> dict[str, Any]:
        from downsize.curate.curation import curate

        report = curate(self.store, self.config.curate)
        return {
            "run_id": report.run_id,
            "exchanges": report.exchanges,
            "kept": report.kept,
            "removed": {k: v for k, v in report.removed.items() if v},
        }

    def discover(self) -> dict[str, Any]:
        from downsize.discover.discovery import discover

        result = discover(self.store, self.config.discover)
        report = result.report
        return {k: report.get(k) for k in ("run_id", "calls", "tasks", "outliers", "keys")}

    def plan(self, discovery_run: int) -> dict[str, Any]:
        """The suitable units of the discovery run; which need a new version and why."""
        from downsize.discover.suitability import assess_tasks

        fits = [f for f in assess_tasks(self.store, discovery_run) if f.suitable]
        if self.config.units:
            fits = [f for f in fits if f.task_key in self.config.units]
        fits.sort(key=lambda f: -f.train)
        units = []
        for fit in fits:
            train = self.unit_config(fit.task_key, discovery_run)
            try:
                digest, calls = calls_hash(self.store, train)
            except DownsizeError as exc:
                units.append({"unit": fit.task_key, "retrain": False, "why": f"no training data: {exc}"})
                continue
            current = unit_versions(self.store, train.specialist or "")
            why = retrain_reason(self.store, current, digest)
            units.append(
                {
                    "unit": fit.task_key,
                    "name": train.specialist,
                    "calls": calls,
                    "calls_hash": digest,
                    "retrain": why is not None,
                    "why": why or "unchanged",
                    "versions": [sp.id for sp in current],
                }
            )
        if self.config.max_units is not None:
            chosen = [u for u in units if u["retrain"]][: self.config.max_units]
            for u in units:
                if u["retrain"] and u not in chosen:
                    u["retrain"], u["why"] = False, f"beyond max_units {self.config.max_units}"
        return {"discovery_run": discovery_run, "units": units}

    def unit_config(self, unit: str, discovery_run: int) -> TrainConfig:
        from downsize.train.lora import default_name

        base = self.config.train
        return replace(
            base,
            tasks=[unit],
            discovery_run=discovery_run,
            specialist=default_name(replace(base, tasks=[unit]), [], [unit]),
        )

    def unit(self, unit: dict[str, Any], remaining: list[dict[str, Any]], discovery_run: int) -> None:
        """Train, evaluate and promote one unit; a failure is recorded and ends this unit only."""
        key = unit["unit"]
        record = self.state["units"].setdefault(key, {"why": unit["why"], "calls": unit["calls"]})
        if record.get("outcome") == "failed":  # failed before a crash: recorded, not tried again
            return
        try:
            notes = {step: self._done_before(f"{step}:{key}") for step in UNIT_STEPS}
            trained = self._step(f"train:{key}", lambda: self.train(unit, remaining, discovery_run))
            if trained.get("skipped"):
                record["outcome"] = f"not trained: {trained['skipped']}"
                self.say(f"  train     {key}: {trained['skipped']}")
                return
            record["specialist_id"] = trained["specialist_id"]
            self.say(
                f"  train     {key}: specialist {trained['specialist_id']}, {trained['examples']} examples, "
                f"{trained['tokens']} tokens in {trained['minutes']:.1f} of {trained['budget_minutes']:.1f} min"
                + notes["train"]
            )
            checked = self._step(f"evaluate:{key}", lambda: self.evaluate(trained["specialist_id"]))
            self.say(
                f"  evaluate  {key}: threshold "
                + (f"{checked['threshold']:.4f}" if checked["threshold"] is not None else "none")
                + f", test agreement {checked['test_agreement']:.3f} on {checked['test_calls']} calls "
                f"({checked['seconds']:.0f} s)" + notes["evaluate"]
            )
            promoted = self._step(f"promote:{key}", lambda: self.promote(unit, trained["specialist_id"]))
            record["outcome"] = promoted["outcome"]
            record["reason"] = promoted["reason"]
            self.say(f"  promote   {key}: {promoted['outcome']} ({promoted['reason']}){notes['promote']}")
        except Exception as exc:  # one unit's failure is recorded and the next unit goes on (logged here)
            log.exception("flywheel run %s: unit %s failed", self.run_id, key)
            record["outcome"] = "failed"
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.state["current"] = None
            runs.save_state(self.store, self.run_id, self.state)
            self.say(f"  failed    {key}: {record['error']}")
        finally:
            runs.save_state(self.store, self.run_id, self.state)

    def train(
        self, unit: dict[str, Any], remaining: list[dict[str, Any]], discovery_run: int
    ) -> dict[str, Any]:
        """Train the unit's new version within its share of the run's training minutes."""
        from downsize.train.lora import train_specialist
        from downsize.train.plan import MIN_MINUTES, OVERHEAD_MINUTES, training_share

        trained = [s for name, s in self.state["steps"].items() if name.startswith("train:")]
        left = self.config.max_minutes - sum(float(s.get("minutes") or 0.0) for s in trained)
        measured = [
            float(s["minutes"]) - float(s["budget_minutes"]) for s in trained if "budget_minutes" in s
        ]
        overhead = max(0.0, sum(measured) / len(measured)) if measured else OVERHEAD_MINUTES
        share = training_share(left, [int(u["calls"]) for u in remaining], overhead, MIN_MINUTES)
        if share is None:
            return {
                "skipped": f"budget: {max(left, 0):.1f} of {self.config.max_minutes:g} min left",
                "minutes": 0,
            }
        config = self.unit_config(unit["unit"], discovery_run)
        minutes = share / max(1, config.cross_fit)
        config = replace(
            config, max_minutes=min(minutes, config.max_minutes) if config.max_minutes else minutes
        )
        started = time.perf_counter()
        result = train_specialist(self.store, config, progress=False)
        assert result.specialist_id is not None
        sp = self.store.specialist(result.specialist_id)
        flywheel = {"run": self.run_id, "unit": unit["unit"], "calls_hash": unit["calls_hash"]}
        self.store.update_specialist(sp.id or 0, metrics={**sp.metrics, "flywheel": flywheel})
        return {
            "specialist_id": result.specialist_id,
            "examples": result.examples,
            "tokens": result.tokens,
            "minutes": round((time.perf_counter() - started) / 60, 3),
            "budget_minutes": round(share, 3),
        }

    def evaluate(self, specialist_id: int) -> dict[str, Any]:
        from downsize.evaluate.tool_calls import evaluate_specialist

        sp = self.store.specialist(specialist_id)
        report = evaluate_specialist(
            self.store, sp, self.config.eval, progress=False, engine=self.config.engine
        )
        t = report.test_tool_calls
        return {
            "threshold": report.threshold,
            "validation_calls": report.validation.calls,
            "test_calls": t.calls,
            "test_agreement": t.exact_agreement,
            "engine": report.engine,
        }

    def promote(self, unit: dict[str, Any], specialist_id: int) -> dict[str, Any]:
        """Live when the gate holds (replacing the unit's other versions); else the live version stays."""
        from downsize.evaluate.promotion import promotion_gate

        c = self.config
        sp = self.store.specialist(specialist_id)
        others = [v for v in unit_versions(self.store, sp.name) if v.id != sp.id]
        live = [v for v in others if v.status in ("live", "canary")]
        gate = promotion_gate(
            sp, "live", c.target, c.min_served, rule=c.rule, margin=c.margin, count=c.eval.count
        )
        if gate.allowed:
            # the figures behind the decision, with the per-tier thresholds the router applies
            metrics = {**sp.metrics, "promotion": {"to": "live", "reason": gate.reason, **gate.evidence}}
            self.store.update_specialist(sp.id or 0, metrics=metrics)
            set_mode(
                self.store,
                self.store.specialist(specialist_id),
                "live",
                rule=c.rule,
                target=c.target,
                min_served=c.min_served,
                count=c.eval.count,
                actor=ACTOR,
                reason=f"flywheel run {self.run_id}: {gate.reason}",
            )
            self._retire(others, specialist_id)
            return {"outcome": "live", "reason": gate.reason, "replaced": [v.id for v in others]}
        if live:
            return {
                "outcome": f"kept live version {live[0].id}",
                "reason": f"version {specialist_id} stays a candidate: {gate.reason}",
            }
        shadow = promotion_gate(sp, "shadow", c.target, c.min_served, count=c.eval.count)
        if not shadow.allowed:  # both reasons: why not live (the rule asked for) and why not even shadow
            return {"outcome": "candidate", "reason": f"not live: {gate.reason}; not shadow: {shadow.reason}"}
        set_mode(
            self.store,
            sp,
            "shadow",
            actor=ACTOR,
            reason=f"flywheel run {self.run_id}: calibrated, not yet live ({gate.reason})",
        )
        self._retire([v for v in others if v.status == "shadow"], specialist_id)
        return {"outcome": "shadow", "reason": gate.reason}

    def _retire(self, versions: list[Specialist], by: int) -> None:
        """Retire a unit's earlier routed versions a new one replaces (their task lists may differ from the
        new one's, so `Store.set_status` would not retire them by task)."""
        for v in versions:
            fresh = self.store.specialist(v.id or 0)
            if fresh.status in ("shadow", "canary", "live", "candidate", "off"):
                self.store.set_status(
                    v.id or 0,
                    "retired",
                    actor=ACTOR,
                    reason=f"flywheel run {self.run_id}: replaced by version {by}",
                )


def calls_hash(store: Store, config: TrainConfig) -> tuple[str, int]:
    """The hash of the exchange ids a unit trains on, and how many: a stored exchange never changes, so the
    same ids are the same data."""
    from downsize.train.data import resolve_tasks, training_exchanges

    exchanges = training_exchanges(store, resolve_tasks(store, config), "train")
    digest = hashlib.sha256(
        ",".join(str(ex.id) for ex in sorted(exchanges, key=lambda e: e.id or 0)).encode()
    )
    return digest.hexdigest(), len(exchanges)


def unit_versions(store: Store, name: str) -> list[Specialist]:
    """The unit's versions that are not retired (a unit's versions share its specialist name), newest first."""
    return sorted(
        (sp for sp in store.specialists() if sp.name == name and sp.status != "retired"),
        key=lambda sp: -(sp.id or 0),
    )


def rolled_back(store: Store, sp: Specialist) -> bool:
    """Whether automatic rollback put this specialist in shadow and it is still there."""
    events = store.route_events(sp.id)
    last = events[-1] if events else None
    return (
        sp.status == "shadow"
        and last is not None
        and last["actor"] == "rollback"
        and last["to_mode"] == "shadow"
    )


def retrain_reason(store: Store, versions: list[Specialist], digest: str) -> str | None:
    """Why a unit needs a new version (None: it does not): none yet (`new`), automatic rollback put its version
    in shadow and no version is live (`rolled back`; once a version retrained on these same calls has failed
    its gate, the unit waits for new calls instead of training the same model again), or its training calls
    changed since its newest version was trained (`data changed`)."""
    if not versions:
        return "new"

    def hash_of(sp: Specialist) -> str | None:
        return (sp.metrics.get("flywheel") or {}).get("calls_hash")

    rolled = [sp.id or 0 for sp in versions if rolled_back(store, sp)]
    if rolled and not any(sp.status in ("live", "canary") for sp in versions):
        since = [sp for sp in versions if (sp.id or 0) > max(rolled)]
        if not since or hash_of(since[0]) != digest:
            return "rolled back"
    recorded = hash_of(versions[0])
    if recorded != digest:
        return "data changed" if recorded else "data changed (not trained by the flywheel)"
    return None


def due(store: Store, config: FlywheelConfig) -> str | None:
    """The trigger of the next run, or None when none is due: a dead run to resume, N new exchanges since the
    last run began, or the interval since it ended."""
    if any(not runs.alive((row["state"] or {}).get("process")) for row in runs.running(store)):
        return "resume"
    last = runs.flywheel_runs(store, limit=1)
    if not last:
        return "first"
    upto = int((last[0]["state"] or {}).get("exchanges_upto") or 0)
    new = runs.exchanges_since(store, upto)
    if config.every_exchanges is not None and new >= config.every_exchanges:
        return f"exchanges:{new}"
    finished = last[0]["finished_at"]
    if config.interval_s is not None and finished:
        from datetime import datetime

        waited = time.time() - datetime.fromisoformat(finished).timestamp()
        if waited >= config.interval_s:
            return "schedule"
    return None


def run_loop(
    store: Store,
    config: FlywheelConfig,
    say: Say | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Turn whenever a run is due (`due`), polling the store every `poll_s`, until `stop()` says so."""
    say = say or (lambda _msg: None)
    while not stop():
        trigger = due(store, config)
        if trigger is not None:
            try:
                run_flywheel(store, config, trigger, say)
            except (
                DownsizeError
            ) as exc:  # recorded with the run (or another run is going on): wait for the next
                say(f"error: {exc}")
        time.sleep(config.poll_s)
