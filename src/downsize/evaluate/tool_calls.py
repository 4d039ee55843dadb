"""Evaluate a specialist on held-out calls against the teacher's logged answers, and calibrate its threshold.

The threshold is calibrated on held-out dev calls: the validation slice (workflows never trained on), or,
for a specialist trained with cross-fitting, every dev call, each decided by the fold model that never saw
its workflow (`crossfit.py`). Every call there counts, text replies included: at run time the router cannot
know that the teacher would have answered in text, so a call served there counts against it. The threshold
is Learn-then-Test's (`metrics.calibrate`), on the confidence signal that ranks right answers highest. The
test split is only reported on, never tuned on.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from downsize.artifacts import AtThreshold, EvalReport, SplitFigures, ToolCallFigures
from downsize.backends.engines import resolve_engine, runtime_for
from downsize.calls import CallSelection, select_calls
from downsize.config import EvalConfig, home, train_config_of
from downsize.contracts import OutputContract, answer_of
from downsize.decide.decision import Decider, Decision, Plan, decider_of, scope_of
from downsize.decide.risk import RiskPolicy
from downsize.errors import ConfigError
from downsize.evaluate.ceiling import RECENT_TURNS, teacher_ceiling
from downsize.evaluate.crossfit import (
    apply_signal,
    apply_signal_out_of_fold,
    choose_signal,
    fold_decisions,
    groups_of,
)
from downsize.evaluate.metrics import (
    DELTA,
    TARGETS,
    Scored,
    at_threshold,
    by_target,
    calibrate,
    curve,
    design_effect,
    intra_workflow_correlation,
    wilson_lower,
    workflow_clusters,
)
from downsize.evaluate.probe import request_key
from downsize.shapes import response_message, tool_calls
from downsize.splits import workflow_key
from downsize.store import Store
from downsize.store.store import now_iso
from downsize.types import PROBE_ROUTE, Exchange, Specialist


def teacher_call(ex: Exchange) -> Any:
    calls = tool_calls(response_message(ex.response))
    return calls[0] if calls else None


def scored(ex: Exchange, decision: Decision, contract: OutputContract | None = None) -> Scored:
    """A calibration decision (threshold None) against the teacher's logged answer, by the contract's strict
    rule (`OutputContract.agrees`)."""
    contract = contract or OutputContract("tool_call")
    return Scored(
        confidence=decision.confidence,
        valid=decision.valid,
        agrees=decision.valid and contract.agrees(decision.value, ex.response),
        teacher_called=answer_of(contract.kind, ex.response) is not None,
        workflow=workflow_key(ex),
    )


def _clustering(items: list[Scored], at: AtThreshold | None, count: str) -> dict[str, Any]:
    """The calibration answers' correlation within workflows, and what the calls served at the threshold are
    worth counted by it (`metrics.sized_design_effect`)."""
    clusters = workflow_clusters(items)
    icc, deff = design_effect(clusters)
    facts: dict[str, Any] = {
        "count": count,
        "workflows": len(clusters),
        "valid_answers": sum(n for n, _ in clusters),
        "intra_workflow_correlation": round(icc, 4),
        "design_effect": round(deff, 3),  # of every valid answer; a threshold's served calls have their own
    }
    if at is not None:  # the calls served at the calibrated threshold (`at_threshold`)
        served_deff = at.design_effect or 1.0
        facts["at_threshold"] = {
            "served": at.served,
            "design_effect": served_deff,
            "effective_calls": round(at.served / served_deff, 1),
            "agreement_lower95": round(at.agreement_lower95, 4),
            "agreement_lower95_effective": at.agreement_lower95_effective,
        }
    return facts


def decide_all(
    runtime: Any,
    exchanges: list[Exchange],
    decider: Decider,
    batch_size: int,
    label: str,
    progress: bool,
) -> list[Decision]:
    """The decision function over held-out calls, generations batched: the router's rule, decided without a
    threshold so calibration can sweep it."""
    steps: list[Plan | Decision] = [decider.before(ex.request) for ex in exchanges]
    todo = [i for i, step in enumerate(steps) if isinstance(step, Plan)]
    # similar lengths together: less padding per batch
    todo.sort(key=lambda i: len(json.dumps(exchanges[i].request.get("messages", [])[-3:])))
    out: dict[int, Decision] = {i: step for i, step in enumerate(steps) if isinstance(step, Decision)}
    with tqdm(total=len(todo), desc=label, unit="call", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            plans = [steps[i] for i in idx]
            chosen = [p.tool for p in plans if isinstance(p, Plan)]
            requests = [exchanges[i].request for i in idx]
            for i, plan, gen in zip(
                idx, plans, runtime.generate_requests(requests, tools_chosen=chosen), strict=True
            ):
                assert isinstance(plan, Plan)
                out[i] = decider.after(exchanges[i].request, plan, gen)
            bar.update(len(idx))
    return [out[i] for i in range(len(exchanges))]


def equivalent(contract: OutputContract, ex: Exchange, decision: Decision) -> bool:
    """Agreement by equivalence: for tool calls BFCL's possible-answer rule against the request's tools (strings
    case- and punctuation-insensitive, 2 = 2.0, optional arguments left out or at their defaults); every other
    kind's strict rule already normalises what does not matter (key order, number forms, case and spacing)."""
    if not decision.valid or decision.value is None:
        return False
    if contract.kind != "tool_call":
        return contract.agrees(decision.value, ex.response)
    from downsize.evaluate.outputs import score_tool_call

    reference = answer_of("tool_call", ex.response)
    if reference is None:
        return False
    score = score_tool_call([decision.value], [reference], ex.request.get("tools") or [])
    return bool(score.agrees or score.metrics.get("ast"))


def graded_score(
    contract: OutputContract, exchanges: list[Exchange], decisions: list[Decision]
) -> float | None:
    """The mean graded score of valid answers against the teacher's (0 for an invalid one): argument or field
    F1 for calls, JSON and Action steps, 1/0 for labels, MiniLM similarity for text. Reported beside the
    strict rule, never served on."""
    if not exchanges:
        return None
    from downsize.evaluate.outputs import score_output, score_texts

    if contract.kind == "text":
        pairs = [
            (d.value, answer_of("text", ex.response)) for ex, d in zip(exchanges, decisions, strict=True)
        ]
        valid = [i for i, (v, _) in enumerate(pairs) if v is not None]
        scores = score_texts([pairs[i][0] for i in valid], [pairs[i][1] for i in valid]) if valid else []
        return sum(s.score for s in scores) / len(exchanges)
    total = 0.0
    for ex, d in zip(exchanges, decisions, strict=True):
        reference = answer_of(contract.kind, ex.response)
        if d.value is None or reference is None:
            continue
        if contract.kind == "tool_call":
            total += score_output("tool_call", [d.value], [reference]).score
        elif contract.kind == "json":
            total += score_output("json", d.value, reference).score
        elif contract.kind == "react":
            total += score_output("json", asdict(d.value), asdict(reference)).score
        else:
            total += float(d.value == reference)
    return total / len(exchanges)


def evaluate_specialist(
    store: Store,
    specialist: Specialist,
    config: EvalConfig,
    runtime: Any = None,
    progress: bool = True,
    engine: str = "auto",
) -> EvalReport:
    """Run the specialist on validation and test calls; calibrate, report, and store the threshold and metrics.

    Both splits are scored over every call, text replies included, as the router meets them; the test
    tool calls also get the teacher-relative figures (tool-name accuracy, exact agreement). `engine` (or
    the given `runtime`) is recorded: the threshold holds for the engine it was calibrated on.
    """
    started = time.perf_counter()
    train_cfg = train_config_of(specialist.config)
    engine = getattr(runtime, "engine", None) or resolve_engine(engine, specialist)
    runtime = runtime or runtime_for(specialist, config.max_new_tokens, engine=engine)
    scope = scope_of(store, specialist)
    curated = bool(specialist.config.get("curated"))

    def in_scope(ex: Exchange) -> bool:  # the router's own dispatch rule: call site, then task
        return scope.call_site(ex.request) is None and scope.task(ex.request, ex.agent, ex.task_hint) is None

    contract = OutputContract.from_dict(specialist.config.get("contract"))
    # every answer kind the router meets at the call site: text replies too, since the router cannot know
    # the teacher would reply in text there (counted against the specialist when it serves)
    kinds = ("tool_call", "text") if contract.kind == "tool_call" else ("tool_call", "json", "text")

    def held_out(role: str, fold: int = 0) -> tuple[list[Exchange], int]:
        """The role's calls the router would send this specialist (`all`: every split, for the teacher's ceiling;
        `validation` of a `fold`: that dev fold's); `limit` caps each kind (quick looks)."""
        selection = CallSelection(
            source=specialist.config.get("source"),
            agent=specialist.config.get("agent"),
            role=None if role == "all" else role,
            kinds=kinds,
            include_hci=True,
            validation_fraction=train_cfg.validation_fraction,
            held_out_fold=fold,
        )
        offered = select_calls(store, selection).exchanges
        inside = [ex for ex in offered if in_scope(ex)]
        if config.limit is not None and role == "test":
            kept = {
                ex.id
                for kind in kinds
                for ex in [e for e in inside if e.response_kind == kind][: config.limit]
            }
            inside = [ex for ex in inside if ex.id in kept]
        return inside[: config.limit] if role not in ("test", "all") else inside, len(offered)

    dropped: dict[str, int] = {}

    def unseen(calls: list[Exchange], fold: int) -> list[Exchange]:
        """The calls whose request the fold's model never trained on verbatim. An agent's logs can hold the
        same request in several workflows (a test suite recorded twice, a retried job): calibrating on one the
        model memorised would promise agreement that new requests do not get."""
        from downsize.train.data import training_exchanges

        try:
            trained = {
                request_key(ex.request) for ex in training_exchanges(store, replace(train_cfg, fold=fold))
            }
        except ConfigError:
            return calls
        kept = [ex for ex in calls if request_key(ex.request) not in trained]
        dropped[str(fold)] = len(calls) - len(kept)
        return kept

    validation, offered = held_out("validation")
    validation = unseen(validation, 0)
    # the teacher only: every split, and the consistency probe's second answers to calls in this scope
    probes = [
        ex
        for ex in store.exchanges(agent=specialist.config.get("agent"), probes=True)
        if ex.route == PROBE_ROUTE and in_scope(ex)
    ]
    ceiling = teacher_ceiling([*held_out("all")[0], *probes], contract).overall
    test_all, _ = held_out("test")
    is_answer = [answer_of(contract.kind, ex.response) is not None for ex in test_all]
    test = [ex for ex, fits in zip(test_all, is_answer, strict=True) if fits]
    if not validation:
        tasks = ", ".join(sorted(specialist.config.get("tasks") or [])) or "its call site"
        raise ConfigError(
            f"none of the {offered} validation calls of this specialist's source falls in its scope ({tasks}), "
            "so no threshold can be calibrated: "
            + (
                "those tasks occur only in training workflows. Train on broader tasks (every `--task` key of a "
                "tool, see `downsize tasks`) or run `downsize discover` with a larger --min-cluster-size"
                if scope.tasks
                else "the source has too few workflows for a validation split; import more logs"
            )
        )
    # calibration decides with the default signal and keeps every signal's inputs; the choice comes after
    risk = RiskPolicy.from_dict(config.risk)
    decider = replace(
        decider_of(specialist, None), signal="min", weights=None, risk=risk, tier_thresholds=None
    )

    def decide(run: Any, calls: list[Exchange], chosen: Decider, label: str) -> list[Decision]:
        return decide_all(run, calls, chosen, config.batch_size, label, progress)

    val_decisions = decide(runtime, validation, decider, "eval validation")
    all_decisions = decide(runtime, test_all, decider, "eval test")
    calibration, cal_decisions = list(validation), list(val_decisions)
    folds = train_cfg.cross_fit
    if folds:
        more, more_decisions, fold_ids = fold_decisions(
            specialist,
            folds,
            lambda fold: unseen(held_out("validation", fold)[0], fold),
            decide,
            lambda model: runtime_for(model, config.max_new_tokens, engine=engine),
            decider,
        )
        calibration += more
        cal_decisions += more_decisions
        groups = [0] * len(validation) + fold_ids
    else:
        groups = groups_of(calibration, 4)
    cal_agrees = [scored(ex, d, contract).agrees for ex, d in zip(calibration, cal_decisions, strict=True)]
    signal = choose_signal(cal_decisions, cal_agrees, groups)
    apply_signal(all_decisions, signal)  # what serving computes: weights fitted on every calibration call
    apply_signal_out_of_fold(cal_decisions, cal_agrees, groups, signal)  # never in-sample
    cal_scored = [scored(ex, d, contract) for ex, d in zip(calibration, cal_decisions, strict=True)]
    val_scored = cal_scored[: len(validation)]  # fold 0: the specialist's own held-out workflows
    all_scored = [scored(ex, d, contract) for ex, d in zip(test_all, all_decisions, strict=True)]
    test_scored = [s for s, fits in zip(all_scored, is_answer, strict=True) if fits]
    test_decisions = [d for d, fits in zip(all_decisions, is_answer, strict=True) if fits]
    icc = intra_workflow_correlation(cal_scored)  # the calibration answers' own, for every calibration curve
    threshold = calibrate(cal_scored, config.target_agreement, count=config.count, icc=icc)
    targets = by_target(cal_scored, all_scored, sorted({*TARGETS, config.target_agreement}), config.count)
    cal_at, test_at = at_threshold(cal_scored, threshold, icc), at_threshold(all_scored, threshold)
    calibration_facts = {
        "method": "cross_fit" if folds else "validation",
        "folds": folds or None,
        "calls": len(calibration),
        "fold_calls": {str(k): groups.count(k) for k in sorted(set(groups))} if folds else None,
        "seen_dropped": dropped,  # calls per fold left out: their request was in that model's training verbatim
        "rule": "learn-then-test",
        "delta": DELTA,
        "signal": signal.to_dict(),
        "specialist_fold": asdict(at_threshold(val_scored, threshold)),
        # how far the calibration calls' agreement at the threshold overstates the test calls' (None: no serve)
        "gap": round(cal_at.agreement - test_at.agreement, 4) if cal_at.served and test_at.served else None,
        # calls of one workflow agree or fail together (a task's trials repeat the same steps): with
        # count "workflows" the thresholds and the gate count served calls by the design effect
        "workflows": _clustering(cal_scored, cal_at if threshold is not None else None, config.count),
        "risk": risk.to_dict(),
        # per risk tier of the tool the specialist would call: its calibration curve (promotion sets a
        # threshold per tier from it; `decide/risk.py`)
        "tiers": _tier_curves(cal_decisions, cal_scored, icc) if contract.kind == "tool_call" else None,
        # the same on every test call in scope: what a threshold per tier serves there (reported, not tuned on)
        "test_tiers": _tier_curves(all_decisions, all_scored) if contract.kind == "tool_call" else None,
        "test_curve": [
            asdict(p) for p in curve(all_scored)
        ],  # every test call in scope, text replies included
    }

    def same_tool(ex: Exchange, d: Decision) -> bool:
        reference = answer_of(contract.kind, ex.response)
        if contract.kind == "tool_call":
            return d.call is not None and reference is not None and d.call.name == reference.name
        return d.value is not None and reference is not None and d.value.action == reference.action

    named = contract.kind in ("tool_call", "react")
    names_right = sum(1 for ex, d in zip(test, test_decisions, strict=True) if named and same_tool(ex, d))
    exact = sum(s.agrees for s in test_scored)
    alike = sum(equivalent(contract, ex, d) for ex, d in zip(test, test_decisions, strict=True))
    n = len(test)
    report = EvalReport(
        specialist={"id": specialist.id, "name": specialist.name, "student": specialist.base_model},
        config=asdict(config),
        evaluated_at=now_iso(),
        engine=engine,
        weights=getattr(runtime, "weights", None) or None,
        target_agreement=config.target_agreement,
        threshold=threshold,
        validation=SplitFigures(  # the calibration calls: every dev fold's when cross-fitted
            calls=len(calibration),
            at_threshold=cal_at,
            curve=[asdict(p) for p in curve(cal_scored, icc)],
        ),
        test_tool_calls=ToolCallFigures(
            calls=n,
            tool_name_accuracy=(names_right / n if n else 0.0) if named else None,
            exact_agreement=exact / n if n else 0.0,
            exact_agreement_lower95=wilson_lower(exact, n),
            valid_share=sum(s.valid for s in test_scored) / n if n else 0.0,
            at_threshold=at_threshold(test_scored, threshold),
            curve=[asdict(p) for p in curve(test_scored)],
            graded_score=graded_score(contract, test, test_decisions),
            equivalent_agreement=alike / n if n else 0.0,
            equivalent_agreement_lower95=wilson_lower(alike, n),
        ),
        # every test call in scope, text replies included: what the router would serve, as in the replay
        test=SplitFigures(calls=len(test_all), at_threshold=test_at),
        by_target=targets,
        seconds=time.perf_counter() - started,
        kind=contract.kind,
        teacher_ceiling={**asdict(ceiling), "recent_turns": RECENT_TURNS, "rule": "strict"},
        calibration=calibration_facts,
        # raw calls of a curated specialist stay out of its artifacts: only their ids then
        examples=[
            {"exchange": ex.id}
            if curated
            else {
                "teacher": contract.target(ex.response),
                "student": d.candidate,
                "confidence": d.confidence,
            }
            for ex, d in list(zip(test, test_decisions, strict=True))[:20]
        ],
    )
    path = report_path(specialist)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.path = str(path)
    report.curve_path = str(path.with_suffix(".html"))
    saved = report.to_dict()
    metrics = dict(specialist.metrics)
    metrics["eval"] = {k: v for k, v in saved.items() if k != "examples"}
    assert specialist.id is not None
    store.update_specialist(specialist.id, threshold=threshold, metrics=metrics)
    path.write_text(json.dumps(saved, indent=2))
    from downsize.evaluate.curves import write_curve_html

    write_curve_html(saved, Path(report.curve_path))
    return report


def _tier_curves(decisions: list[Decision], items: list[Scored], icc: float | None = None) -> dict[str, Any]:
    """Each risk tier's calibration curve, over the valid decisions whose tool falls in it; design effects at
    correlation `icc` (default: each tier's own)."""
    out: dict[str, Any] = {}
    for tier in sorted({str(d.details.get("tier")) for d in decisions if d.valid and d.details.get("tier")}):
        chosen = [
            s for d, s in zip(decisions, items, strict=True) if d.valid and d.details.get("tier") == tier
        ]
        out[tier] = {"calls": len(chosen), "curve": [asdict(p) for p in curve(chosen, icc)]}
    return out


def report_path(specialist: Specialist) -> Path:
    return home() / "reports" / f"eval-{specialist.name}-{specialist.id}.json"
