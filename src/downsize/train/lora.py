"""Training a specialist from the store: examples from the dev split's tool calls, `fit_adapter` (LoRA by
default; DoRA, full fine-tuning or QLoRA by `TrainConfig.method`), the saved weights and manifest, the task
gate, and the `candidate` specialist registered in the store.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from downsize.artifacts import SpecialistScope, fold_dir
from downsize.config import TrainConfig, home
from downsize.copying import learn_copied, learn_spans, save_copied
from downsize.errors import TrainingError
from downsize.shapes import response_message, tool_calls
from downsize.sites import site_key
from downsize.store import Store
from downsize.train.data import build_examples, contract_for, data_hash, resolve_tasks, training_exchanges
from downsize.train.loop import check_method_available, fit_adapter, load_training_student, save_specialist
from downsize.types import Specialist


@dataclass
class TrainResult:
    adapter_path: Path  # the specialist's folder: an adapter, or the whole model for method "full"
    examples: int
    skipped: int
    steps: int
    epochs: float
    tokens: int
    seconds: float
    tokens_per_s: float
    final_loss: float
    data_hash: str
    losses: list[float] = field(default_factory=list)
    specialist_id: int | None = None
    method: str = "lora"
    device: str = "cpu"
    precision: str = "fp32"


def train_specialist(
    store: Store, config: TrainConfig, out_dir: Path | None = None, progress: bool = True
) -> TrainResult:
    """Build examples from the store, fine-tune the student within budget, save and register the specialist."""
    check_method_available(config.method)  # before minutes of loading
    requested = list(config.tasks)  # as the user named them (tool:NAME before it expands to task keys)
    config = resolve_tasks(store, config)  # discovered tasks, when given: pin their run
    exchanges = training_exchanges(store, config, "train")
    if not exchanges:
        where = f" of source {config.source!r}" if config.source else ""
        where += f" of agent {config.agent!r}" if config.agent else ""
        where += f" at call site {config.site!r} (`downsize sites` lists them)" if config.site else ""
        raise TrainingError(
            f"no training data: the store holds no calls{where} in the training part of the dev split"
            + (" of the curated view" if config.curated else "")
            + ". Import logs (`downsize import ...`) or send traffic through `downsize serve`; "
            "`downsize splits` shows what each source holds"
        )
    contract = contract_for(config, exchanges)
    if not contract.specialisable:
        raise TrainingError(
            f"these calls are {contract.kind} ({contract.reason}); pass --kind text to train a specialist anyway"
        )
    if config.specialist is None:
        config = replace(config, specialist=default_name(config, exchanges, requested))
    assert config.specialist is not None
    out_dir = out_dir or home() / "specialists" / f"{config.specialist}-{time.strftime('%Y%m%d-%H%M%S')}"
    result, train_stats, tools, sites = _fit(store, config, exchanges, contract, out_dir, progress)
    if config.cross_fit:
        train_stats["cross_fit"] = train_folds(store, config, contract, out_dir, result.tokens, progress)
    specialist = Specialist(
        name=config.specialist,
        # the tasks as the user (or the flywheel) named them: `tool:NAME` stays one task across discovery runs,
        # while the keys it expands to (config["tasks"], the routing scope) may change
        task=",".join(requested) if requested else config.specialist,
        base_model=config.student,
        adapter_path=str(out_dir),
        config={**asdict(config), "task_tools": tools, "contract": contract.to_dict(), "sites": sites},
        data_hash=result.data_hash,
        metrics={"train": train_stats},
    )
    result.specialist_id = store.add_specialist(specialist)
    return result


def _fit(
    store: Store,
    config: TrainConfig,
    exchanges: list[Any],
    contract: Any,
    out_dir: Path,
    progress: bool,
) -> tuple[TrainResult, dict[str, Any], list[str], list[str]]:
    """Fit one model on these training calls and save it with its gate, copied-argument rules and manifest:
    the specialist, or one of its cross-fitting fold models."""
    teacher_calls = [
        (ex.request.get("messages") or [], call)
        for ex in exchanges
        for call in tool_calls(response_message(ex.response))
    ]
    copying = config.copy_arguments and contract.kind == "tool_call"
    copied = learn_copied(teacher_calls) if copying else {}
    spans = learn_spans(teacher_calls, copied) if copying and config.copy_spans else {}
    model, tokenizer = load_training_student(config)
    examples, skipped = build_examples(exchanges, tokenizer, config, copied, contract)
    if not examples:
        raise TrainingError(
            f"none of the {len(exchanges)} training calls made an example: {skipped} had targets over "
            f"max_target_tokens={config.max_target_tokens} or did not fit the {contract.kind} contract"
        )
    model, stats = fit_adapter(model, tokenizer, examples, config, progress=progress)
    hashed = data_hash(examples)
    result = TrainResult(
        adapter_path=out_dir,
        examples=len(examples),
        skipped=skipped,
        steps=stats.steps,
        epochs=stats.epochs,
        tokens=stats.tokens,
        seconds=stats.seconds,
        tokens_per_s=stats.tokens_per_s,
        final_loss=stats.final_loss,
        data_hash=hashed,
        losses=stats.losses,
        method=stats.method,
        device=stats.device,
        precision=stats.precision,
    )
    train_stats = {
        **{k: v for k, v in asdict(stats).items() if k != "losses"},
        **{k: v for k, v in asdict(result).items() if k not in ("adapter_path", "losses", "specialist_id")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tools = (
        sorted({name for ex in exchanges for name in _offered(ex.request)})
        if contract.kind == "tool_call"
        else []
    )
    sites = sorted({site_key(ex.request) for ex in exchanges})
    gate_stats = (
        fit_gate(store, config, out_dir, frozenset(tools))
        if config.gate and contract.kind == "tool_call"
        else None
    )
    train_stats["contract"] = contract.to_dict()
    save_copied(out_dir, copied, spans=spans)
    train_stats["copied_arguments"] = copied
    train_stats["span_arguments"] = spans
    scope = SpecialistScope(
        task_tools=tuple(tools),
        tasks=tuple(config.tasks),
        discovery_run=config.discovery_run,
        agent=config.agent,
        source=config.source,
        curated=config.curated,
        kind=contract.kind,
        sites=tuple(sites),
    )
    save_specialist(
        model,
        tokenizer,
        out_dir,
        config,
        stats,
        hashed,
        extra={"stats": train_stats, "gate": gate_stats, "scope": scope},
    )
    return result, train_stats, tools, sites


def train_folds(
    store: Store, config: TrainConfig, contract: Any, out_dir: Path, tokens: int, progress: bool
) -> dict[str, Any]:
    """The cross-fitting fold models: for each dev fold k >= 1, the same training on every other fold, for the
    same number of tokens as the specialist (not minutes: the same compute whatever the machine's load), saved
    under `folds/k`. Each scores only its own fold's calls at evaluation."""
    folds: list[dict[str, Any]] = []
    for fold in range(1, config.cross_fit):
        fold_config = replace(config, fold=fold, max_minutes=None, max_tokens=tokens)
        exchanges = training_exchanges(store, fold_config, "train")
        if not exchanges:
            raise TrainingError(f"cross-fitting fold {fold} has no training calls: use fewer folds")
        if progress:
            print(f"cross-fitting: fold model {fold} of {config.cross_fit - 1} ({len(exchanges)} calls)")
        result, _, _, _ = _fit(store, fold_config, exchanges, contract, fold_dir(out_dir, fold), progress)
        folds.append(
            {
                "fold": fold,
                "examples": result.examples,
                "tokens": result.tokens,
                "seconds": round(result.seconds, 1),
            }
        )
    return {"folds": config.cross_fit, "models": folds}


def fit_gate(store: Store, config: TrainConfig, out_dir: Path, tools: frozenset[str]) -> dict[str, Any]:
    """Fit the task gate on every decision point of the call site's training workflows and save it beside
    the adapter: the teacher's tool calls and its text replies, from the same selection as the training
    calls (with `curated`, the masked conversations only)."""
    from downsize.calls import CallSelection, decision_points, select_calls
    from downsize.decide.gate import TaskGate, gate_label
    from downsize.prompting import gate_input

    chosen = CallSelection(
        source=config.source,
        agent=config.agent,
        role="train",
        kinds=("tool_call", "text"),
        tool_set=tools,
        curated=config.curated,
        include_hci=True,
        validation_fraction=config.validation_fraction,
        held_out_fold=config.fold,
    )
    points = decision_points(select_calls(store, chosen).exchanges)
    texts = [gate_input(messages) for messages, _, _ in points]
    labels = [gate_label(kind, names) for _, kind, names in points]
    started = time.perf_counter()
    gate = TaskGate.fit(texts, labels, seed=config.seed)
    gate.save(out_dir)
    return {
        "examples": len(texts),
        "labels": len(set(labels)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def default_name(config: TrainConfig, exchanges: list[Any], requested: list[str] | None = None) -> str:
    """A specialist is named for what it answers: its task keys (as named: `tool:NAME` is `tool-NAME`), else
    its agent's (or source's) call site."""
    keys = requested or config.tasks
    if keys:
        name = "+".join(keys[:3]) + (f"+{len(keys) - 3}" if len(keys) > 3 else "")
    else:
        owner = (
            config.agent
            or config.source
            or (exchanges[0].agent or exchanges[0].source if exchanges else None)
        )
        site = "+".join(sorted(config.tools)[:3]) if config.tools else "calls"
        name = f"{owner or 'agent'}-{site}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name.replace("tool:", "tool-")).strip("-")[:80] or "specialist"


def _offered(request: dict[str, Any]) -> list[str]:
    from downsize.shapes import tool_names

    return tool_names(request)
