"""Real tau-airline teacher calls, and LoRAs overfitted on a few of them in seconds (for the engine tests)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from downsize.prompting import PromptBudget, render_target
from downsize.types import ToolCall

TAU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tau-airline"


def tau_calls(n: int, names: Sequence[str], skip: int = 0) -> list[tuple[list[dict[str, Any]], ToolCall]]:
    """(messages up to a teacher call of one of these tools, that call): calls n after `skip`, test split only."""
    samples = []
    for run in json.loads((TAU / "trajectories-gpt-4o.json").read_text()):
        if run["task_id"] < 35 or run["trial"] != 0:
            continue
        for i, message in enumerate(run["traj"]):
            for call in message.get("tool_calls") or []:
                if call["function"]["name"] in names:
                    args = json.loads(call["function"]["arguments"])
                    samples.append((run["traj"][:i], ToolCall(call["function"]["name"], args)))
                break
    return samples[skip : skip + n]


def overfit_adapter(
    base: Any,
    tokenizer: Any,
    samples: list[tuple[list[dict[str, Any]], ToolCall]],
    budget: PromptBudget,
    steps: int,
    folder: Path,
) -> Path:
    """Train a LoRA (r 8) on these calls for `steps` full-batch steps and save it as PEFT does, in `folder`."""
    import torch

    from downsize.backends.student_prompt import build_prompt, end_of_turn
    from downsize.config import TrainConfig
    from downsize.train.data import Example
    from downsize.train.loop import batch_loss, collate, lora_model

    torch.manual_seed(0)
    model = lora_model(base, TrainConfig(lora_r=8, lora_alpha=16))
    examples = []
    for messages, call in samples:
        prompt = tokenizer.encode(build_prompt(tokenizer, messages, budget), add_special_tokens=False)
        target = tokenizer.encode(render_target(call) + end_of_turn(tokenizer), add_special_tokens=False)
        examples.append(Example(None, list(prompt), list(target)))
    ids, mask, labels, _ = collate(examples, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=4e-3)
    for _ in range(steps):
        batch_loss(model, ids, mask, labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder
