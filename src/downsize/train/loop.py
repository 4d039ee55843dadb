"""The optimisation loop, on any list of examples: LoRA, DoRA, full fine-tuning or QLoRA, CPU or GPU.

A plain PyTorch loop (about 2x faster than TRL's SFTTrainer per step on 2 CPU cores), length-bucketed
batches to waste little on padding, and a learning-rate schedule that decays along whichever budget
(epochs, tokens, minutes) binds first. The same code runs on a GPU: only the device, the autocast dtype
(bf16 where the GPU supports it) and, for QLoRA, the 4-bit base differ.

The loss is computed only over the columns that hold target tokens (`logits_to_keep`): the prompt's
logits are never materialised. The output projection is a fifth of SmolLM2's compute and most of
Gemma-3-270M's (a 262k vocabulary), so this is the cheapest speed-up there is.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from downsize.artifacts import SpecialistManifest, SpecialistScope
from downsize.backends.students import load_student
from downsize.config import TRAIN_METHODS, TrainConfig
from downsize.errors import TrainingError
from downsize.store.store import now_iso
from downsize.train.data import Example

ADAPTER_METHODS = tuple(m for m in TRAIN_METHODS if m != "full")  # saved as an adapter over the student


@dataclass
class TrainStats:
    """What one run of `fit_adapter` did, recorded in the specialist's manifest."""

    method: str
    device: str  # cpu, cuda:0, ...
    precision: str  # fp32 | bf16 (autocast over fp32 weights) | nf4+bf16 (QLoRA)
    learning_rate: float
    batch_size: int
    examples: int
    trainable_params: int
    steps: int = 0
    epochs: float = 0.0
    tokens: int = 0  # real (unpadded) tokens, prompt and target
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    final_loss: float = math.nan
    losses: list[float] = field(default_factory=list)


def check_method_available(method: str) -> None:
    """Fail early and clearly when this machine cannot run the method (QLoRA needs CUDA and bitsandbytes)."""
    if method not in TRAIN_METHODS:
        raise TrainingError(f"unknown training method {method!r}: use one of {', '.join(TRAIN_METHODS)}")
    if method != "qlora":
        return
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible to torch here)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (`pip install bitsandbytes`)")
    if missing:
        raise TrainingError(
            f"method 'qlora' needs {' and '.join(missing)}; on this machine use --method lora "
            "(the same adapter over an unquantised base) or dora"
        )


def load_training_student(config: TrainConfig) -> tuple[Any, Any]:
    """The student as the method needs it: fp32 (on the GPU when there is one), or 4-bit for QLoRA."""
    check_method_available(config.method)
    return load_student(config.student, load_in_4bit=config.method == "qlora")


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


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most transformers causal LMs do)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batch_loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """Mean cross-entropy of the target tokens: the same value as the model's own loss, computed from the
    logits of the columns that predict a target token only."""
    import torch

    if not _keeps_logits(model):
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    predicts = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)  # column t predicts token t+1
    start, end = int(predicts[0]), int(predicts[-1]) + 1
    keep = torch.arange(start, end, device=ids.device)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    targets = labels[:, start + 1 : end + 1]
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


def train_step(
    model: Any, optimizer: Any, batch: list[Example], pad_id: int, precision: str = "fp32"
) -> tuple[float, int]:
    """One optimisation step on a batch; returns (loss, real tokens)."""
    import torch

    device = next(model.parameters()).device
    ids, mask, labels, real = collate(batch, pad_id)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision != "fp32"):
        loss = batch_loss(model, ids.to(device), mask.to(device), labels.to(device))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), real


def lora_model(model: Any, config: TrainConfig) -> Any:
    """The model wrapped with a fresh LoRA adapter (weight-decomposed for DoRA) on the configured targets."""
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
        use_dora=config.method == "dora",
    )
    return get_peft_model(model, peft_config)


def prepare_model(model: Any, config: TrainConfig) -> Any:
    """The model ready for the method: adapter-wrapped (base frozen), or every weight trainable for full.

    A model that already carries a peft adapter keeps it and trains it further.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if config.method == "full":
            raise TrainingError("full fine-tuning needs a plain model: merge_and_unload() the adapter first")
        return model
    if config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if config.method == "qlora":
        if not getattr(model, "is_loaded_in_4bit", False):
            raise TrainingError(
                "method 'qlora' trains over a 4-bit base: load it with load_training_student(config) "
                "or load_student(student, load_in_4bit=True)"
            )
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return lora_model(model, config)


CPU_BATCH_SIZE = 2  # on 2 cores: 228 tokens/s against 195 at 8, and a lower loss per token (docs/log.md)
GPU_BATCH_SIZE = 16


def training_batch_size(config: TrainConfig, device: Any) -> int:
    """The configured batch size, else the device's default: small on CPU, where a step's cost grows with
    the batch's activations (cache-bound), larger on a GPU, where it is nearly free."""
    if config.batch_size is not None:
        return config.batch_size
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


def training_precision(config: TrainConfig, model: Any) -> str:
    """fp32 on CPU (no bf16 on AVX2-only CPUs: ~23x slower); bf16 autocast on a GPU that supports it."""
    import torch

    if getattr(model, "is_loaded_in_4bit", False) or config.method == "qlora":
        return "nf4+bf16"
    if config.precision != "auto":
        return config.precision
    device = next(model.parameters()).device
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def fit_adapter(
    model: Any, tokenizer: Any, examples: list[Example], config: TrainConfig, progress: bool = True
) -> tuple[Any, TrainStats]:
    """Fine-tune `model` on `examples` by `config.method` within the config's budgets.

    `model` is a plain causal LM on its device (as `load_training_student` gives it; 4-bit for QLoRA) or
    one already carrying a peft adapter, which is trained further. Returns the trained model (wrapped by
    peft for the adapter methods, the same model for full) in eval mode, and what the run did. Seeds,
    threads, batch size, learning rate and the epoch/token/minute budgets all come from `config`.
    """
    import torch

    if not examples:
        raise TrainingError("no examples to train on")
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)  # the adapter's initial weights
    model = prepare_model(model, config)
    precision = training_precision(config, model)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = config.resolved_learning_rate
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rng = random.Random(config.seed)
    batch_size = training_batch_size(config, device)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    budget_tokens = config.max_tokens
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    warmup = 0.05
    stats = TrainStats(
        method=config.method,
        device=str(device),
        precision=precision,
        learning_rate=base_lr,
        batch_size=batch_size,
        examples=len(examples),
        trainable_params=sum(p.numel() for p in params),
    )

    model.train()
    started = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        desc=f"{config.method} {config.specialist}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    batches: list[list[Example]] = []
    done = False
    while not done:
        if not batches:
            batches = make_batches(examples, batch_size, rng)
        batch = batches.pop()
        fractions = [stats.steps / total_steps]
        if budget_tokens:
            fractions.append(stats.tokens / budget_tokens)
        if budget_s:
            fractions.append((time.perf_counter() - started) / budget_s)
        progress_frac = min(1.0, max(fractions))
        lr = base_lr * min(1.0, (progress_frac + 1e-9) / warmup) * max(0.0, 1.0 - progress_frac)
        for group in optimizer.param_groups:
            group["lr"] = max(lr, base_lr * 0.02)
        loss, real = train_step(model, optimizer, batch, pad_id, precision)
        stats.steps += 1
        stats.tokens += real
        stats.losses.append(loss)
        elapsed = time.perf_counter() - started
        bar.update(1)
        recent = stats.losses[-10:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", tok_s=f"{stats.tokens / elapsed:.0f}")
        done = (
            stats.steps >= total_steps
            or (budget_tokens is not None and stats.tokens >= budget_tokens)
            or (budget_s is not None and elapsed >= budget_s)
        )
    bar.close()
    stats.seconds = time.perf_counter() - started
    stats.epochs = stats.steps / steps_per_epoch
    stats.tokens_per_s = stats.tokens / stats.seconds if stats.seconds else 0.0
    recent = stats.losses[-10:]
    stats.final_loss = sum(recent) / len(recent)
    return model.eval(), stats


def save_specialist(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    config: TrainConfig,
    stats: TrainStats,
    data_hash: str,
    extra: dict[str, Any] | None = None,
) -> SpecialistManifest:
    """Write the trained weights and `downsize.json` (resolved config, data hash, device, metrics).

    Adapter methods save the adapter folder (a few MB); full fine-tuning saves the whole model as
    safetensors with its tokenizer. The manifest's `artifact` ("adapter" or "model") tells
    `load_specialist_model` which. Returns the manifest.
    """
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    artifact = "adapter" if config.method in ADAPTER_METHODS else "model"
    if artifact == "model":
        tokenizer.save_pretrained(out_dir)
    extra = extra or {}
    manifest = SpecialistManifest(
        artifact=artifact,
        student=config.student,
        method=config.method,
        config=asdict(config),
        data_hash=data_hash,
        trained_at=now_iso(),
        device=stats.device,
        precision=stats.precision,
        learning_rate=stats.learning_rate,
        torch_threads=torch.get_num_threads(),
        stats=extra.get("stats") or {k: v for k, v in asdict(stats).items() if k != "losses"},
        losses=stats.losses,
        gate=extra.get("gate"),
        scope=extra.get("scope") or SpecialistScope(tasks=tuple(config.tasks), curated=config.curated),
    )
    manifest.save(out_dir)
    return manifest
