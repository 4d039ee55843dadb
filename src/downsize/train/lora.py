"""Training a specialist from the store: examples from the dev split's tool calls, `fit_adapter` (LoRA by
default; DoRA, full fine-tuning or QLoRA by `TrainConfig.method`), the saved weights and manifest, the task
gate, and the `candidate` specialist registered in the store.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from downsize.config import TrainConfig, home
from downsize.copying import learn_copied, save_copied
from downsize.errors import TrainingError
from downsize.shapes import response_message, tool_calls
from downsize.store import Store
from downsize.train.data import build_examples, data_hash, resolve_tasks, training_exchanges
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
    config = resolve_tasks(store, config)  # discovered tasks, when given: pin their run
    exchanges = training_exchanges(store, config, "train")
    if not exchanges:
        raise TrainingError(
            "no training data: the store holds no dev-split tool-call exchanges. "
            "Run `downsize import tau-airline` or send traffic through `downsize serve` first"
        )
    copied = (
        learn_copied(
            (ex.request.get("messages") or [], call)
            for ex in exchanges
            for call in tool_calls(response_message(ex.response))
        )
        if config.copy_arguments
        else {}
    )
    model, tokenizer = load_training_student(config)
    examples, skipped = build_examples(exchanges, tokenizer, config, copied)
    if not examples:
        raise TrainingError(
            f"all {skipped} examples had targets over max_target_tokens={config.max_target_tokens}"
        )
    model, stats = fit_adapter(model, tokenizer, examples, config, progress=progress)

    hashed = data_hash(examples)
    out_dir = out_dir or home() / "specialists" / f"{config.specialist}-{time.strftime('%Y%m%d-%H%M%S')}"
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
    gate_stats = fit_gate(store, config, out_dir) if config.gate else None
    save_copied(out_dir, copied)
    train_stats["copied_arguments"] = copied
    save_specialist(
        model, tokenizer, out_dir, config, stats, hashed, extra={"stats": train_stats, "gate": gate_stats}
    )
    tasks = sorted({name for ex in exchanges for name in _offered(ex.request)})
    specialist = Specialist(
        name=config.specialist,
        task=",".join(config.tasks) if config.tasks else config.specialist,
        base_model=config.student,
        adapter_path=str(out_dir),
        config={**asdict(config), "task_tools": tasks},
        data_hash=hashed,
        metrics={"train": train_stats},
    )
    result.specialist_id = store.add_specialist(specialist)
    return result


def fit_gate(store: Store, config: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Fit the task gate on every dev-split training call (text replies included) and save it beside the adapter."""
    from downsize.prompting import gate_input
    from downsize.route.gate import TaskGate, gate_label
    from downsize.splits import dev_role

    texts, labels = [], []
    for ex in store.exchanges(split="dev"):
        if ex.response_kind in ("tool_call", "text") and dev_role(ex, config.validation_fraction) == "train":
            texts.append(gate_input(ex.request.get("messages") or []))
            labels.append(gate_label(ex.response_kind, ex.tool_names))
    started = time.perf_counter()
    gate = TaskGate.fit(texts, labels, seed=config.seed)
    gate.save(out_dir)
    return {
        "examples": len(texts),
        "labels": len(set(labels)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _offered(request: dict[str, Any]) -> list[str]:
    from downsize.shapes import tool_names

    return tool_names(request)
