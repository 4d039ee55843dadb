"""LoRA fine-tuning of a student on the teacher's calls: a plain PyTorch loop (about 2x faster than
TRL's SFTTrainer per step on 2 CPU cores), length-bucketed batches to waste little on padding, and a
learning-rate schedule that decays along whichever budget (epochs, tokens, minutes) binds first.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from downsize.backends.students import load_student
from downsize.config import TrainConfig, home
from downsize.errors import TrainingError
from downsize.store import Store
from downsize.store.store import now_iso
from downsize.train.data import Example, build_examples, data_hash, training_exchanges
from downsize.types import Specialist


@dataclass
class TrainResult:
    adapter_path: Path
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


def make_batches(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, sort within windows of 16 batches by length, then shuffle the batches."""
    order = examples[:]
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda e: e.length)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(batch: list[Example], pad_id: int) -> tuple[Any, Any, Any, int]:
    """Right-padded input ids, attention mask, labels (-100 outside the target), real token count."""
    import torch

    width = max(e.length for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        seq = e.prompt_ids + e.target_ids
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, len(e.prompt_ids) : len(seq)] = torch.tensor(e.target_ids)
    return ids, mask, labels, sum(e.length for e in batch)


def train_step(model: Any, optimizer: Any, batch: list[Example], pad_id: int) -> tuple[float, int]:
    """One optimisation step on a batch; returns (loss, real tokens)."""
    import torch

    device = next(model.parameters()).device
    ids, mask, labels, real = collate(batch, pad_id)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach()), real


def lora_model(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in config.lora_targets if t in names]
    if not targets:
        raise TrainingError(
            f"none of the LoRA targets {config.lora_targets} exist in this model; set lora_targets"
        )
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def train_specialist(
    store: Store, config: TrainConfig, out_dir: Path | None = None, progress: bool = True
) -> TrainResult:
    """Build examples from the store, LoRA-fine-tune the student within budget, save and register the adapter."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    exchanges = training_exchanges(store, config, "train")
    if not exchanges:
        raise TrainingError(
            "no training data: the store holds no dev-split tool-call exchanges. "
            "Run `downsize import tau-airline` or send traffic through `downsize serve` first"
        )
    model, tokenizer = load_student(config.student)
    examples, skipped = build_examples(exchanges, tokenizer, config)
    if not examples:
        raise TrainingError(
            f"all {skipped} examples had targets over max_target_tokens={config.max_target_tokens}"
        )
    model = lora_model(model, config)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    budget_tokens = config.max_tokens
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    warmup = 0.05

    model.train()
    started = time.perf_counter()
    tokens = steps = 0
    losses: list[float] = []
    bar = tqdm(
        total=total_steps,
        desc=f"train {config.specialist}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    batches: list[list[Example]] = []
    done = False
    while not done:
        if not batches:
            batches = make_batches(examples, config.batch_size, rng)
        batch = batches.pop()
        fractions = [steps / total_steps]
        if budget_tokens:
            fractions.append(tokens / budget_tokens)
        if budget_s:
            fractions.append((time.perf_counter() - started) / budget_s)
        progress_frac = min(1.0, max(fractions))
        lr = config.learning_rate * min(1.0, (progress_frac + 1e-9) / warmup) * max(0.0, 1.0 - progress_frac)
        for group in optimizer.param_groups:
            group["lr"] = max(lr, config.learning_rate * 0.02)
        loss, real = train_step(model, optimizer, batch, tokenizer.pad_token_id)
        steps += 1
        tokens += real
        losses.append(loss)
        elapsed = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", tok_s=f"{tokens / elapsed:.0f}")
        done = (
            steps >= total_steps
            or (budget_tokens is not None and tokens >= budget_tokens)
            or (budget_s is not None and elapsed >= budget_s)
        )
    bar.close()
    seconds = time.perf_counter() - started

    hashed = data_hash(examples)
    out_dir = out_dir or home() / "specialists" / f"{config.specialist}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    gate_stats = fit_gate(store, config, out_dir) if config.gate else None
    result = TrainResult(
        adapter_path=out_dir,
        examples=len(examples),
        skipped=skipped,
        steps=steps,
        epochs=steps / steps_per_epoch,
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds else 0.0,
        final_loss=sum(losses[-10:]) / len(losses[-10:]),
        data_hash=hashed,
        losses=losses,
    )
    manifest = {
        "config": asdict(config),
        "data_hash": hashed,
        "student": config.student,
        "trained_at": now_iso(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "stats": {
            k: v for k, v in asdict(result).items() if k not in ("adapter_path", "losses", "specialist_id")
        },
        "losses": losses,
        "gate": gate_stats,
    }
    (out_dir / "downsize.json").write_text(json.dumps(manifest, indent=2))
    tasks = sorted({name for ex in exchanges for name in _offered(ex.request)})
    specialist = Specialist(
        name=config.specialist,
        task=config.specialist,
        base_model=config.student,
        adapter_path=str(out_dir),
        config={**asdict(config), "task_tools": tasks},
        data_hash=hashed,
        metrics={"train": manifest["stats"]},
    )
    result.specialist_id = store.add_specialist(specialist)
    return result


def fit_gate(store: Store, config: TrainConfig, out_dir: Path) -> dict[str, Any]:
    """Fit the task gate on every dev-split training call (text replies included) and save it beside the adapter."""
    from downsize.prompting import gate_text
    from downsize.route.gate import TaskGate, gate_label
    from downsize.splits import dev_role

    texts, labels = [], []
    for ex in store.exchanges(split="dev"):
        if ex.response_kind in ("tool_call", "text") and dev_role(ex, config.validation_fraction) == "train":
            texts.append(gate_text(ex.request.get("messages") or []))
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
