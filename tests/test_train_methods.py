"""Training methods (LoRA, DoRA, full fine-tuning, QLoRA), the saved specialists, and the offline students.

The model tests take a few real optimisation steps on the real SmolLM2-135M student. The Gemma-3-270M test
converts its GGUF first (1-2.5 min on 2 cores), so it runs only with DOWNSIZE_TEST_GEMMA=1.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from downsize.backends.students import GEMMA_CHAT_TEMPLATE, specialist_artifact
from downsize.cli.main import main
from downsize.config import TrainConfig, resolve
from downsize.errors import ConfigError, TrainingError
from downsize.store import Store
from downsize.train.data import Example, build_examples, training_exchanges

SMALL = {"max_prompt_tokens": 24, "max_message_tokens": 12, "batch_size": 2, "max_tokens": 1, "gate": False}


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match="unknown training method 'adapter': use one of lora, dora, full, qlora"
    ):
        TrainConfig(method="adapter")
    with pytest.raises(ConfigError, match="unknown training method"):
        resolve(TrainConfig, {"method": "LoRA"})
    with pytest.raises(ConfigError, match="precision 'fp16': use one of auto, fp32, bf16"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        TrainConfig(learning_rate=0.0)


def test_learning_rate_defaults_by_method_unless_set() -> None:
    assert TrainConfig().resolved_learning_rate == 1e-3
    assert TrainConfig(method="dora").resolved_learning_rate == 1e-3
    assert TrainConfig(method="full").resolved_learning_rate == 5e-5
    assert TrainConfig(method="full", learning_rate=2e-4).resolved_learning_rate == 2e-4
    # the default follows the method, also when the method is changed afterwards
    assert replace(TrainConfig(), method="full").resolved_learning_rate == 5e-5


def test_cli_rejects_an_unknown_method() -> None:
    result = CliRunner().invoke(main, ["train", "--method", "adapter"])
    assert (
        result.exit_code == 2 and "'adapter' is not one of 'lora', 'dora', 'full', 'qlora'" in result.output
    )
    assert "--method" in CliRunner().invoke(main, ["train", "--help"]).output


def _qlora_possible() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def test_qlora_without_cuda_says_what_it_needs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if _qlora_possible():
        pytest.skip("this machine can run QLoRA")
    from downsize.train.loop import check_method_available

    with pytest.raises(TrainingError, match="method 'qlora' needs .*(CUDA|bitsandbytes).*use --method lora"):
        check_method_available("qlora")
    result = CliRunner().invoke(
        main, ["train", "--method", "qlora", "--db", f"sqlite:///{tmp_path / 'empty.db'}"]
    )
    assert result.exit_code == 1 and "error: method 'qlora' needs" in result.output  # before any loading


def test_specialist_artifact_reads_the_manifest_then_the_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "downsize.json").write_text(json.dumps({"artifact": "model"}))
    (tmp_path / "e").mkdir()
    assert specialist_artifact(tmp_path / "a") == "adapter"
    assert specialist_artifact(tmp_path / "m") == "model"
    with pytest.raises(ConfigError, match="neither a LoRA adapter nor a model"):
        specialist_artifact(tmp_path / "e")


# --- real steps on SmolLM2-135M -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder a session for the training modules: the GGUF is converted once (20-40 s), not per module."""
    path = tmp_path_factory.getbasetemp() / "models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def shared_models(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOWNSIZE_MODELS", str(models_dir))  # convert the GGUF once a session


@pytest.fixture(scope="module")
def student(models_dir: Path) -> tuple[Any, Any]:
    os.environ["DOWNSIZE_MODELS"] = str(models_dir)
    from downsize.backends.students import load_student

    return load_student("smollm2-135m")


@pytest.fixture(scope="module")
def examples(imported_db: str, student: tuple[Any, Any]) -> list[Example]:
    config = TrainConfig(**SMALL)
    exchanges = training_exchanges(Store.open(imported_db), config)[:4]
    return build_examples(exchanges, student[1], config)[0]


def _placement() -> tuple[str, str]:
    """The device and precision training picks here: fp32 on CPU, bf16 autocast on a GPU that has it."""
    import torch

    if torch.cuda.is_available():
        return "cuda:0", "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "cpu", "fp32"


def _logits(model: Any, tokenizer: Any, examples: list[Example]) -> Any:
    import torch

    from downsize.train.loop import collate

    ids, mask, _, _ = collate(examples[:2], tokenizer.pad_token_id)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.slow
@pytest.mark.usefixtures("shared_models")
def test_dora_steps_train_the_adapter_and_reload_with_the_same_logits(
    student: tuple[Any, Any], examples: list[Example], tmp_path: Path
) -> None:
    import torch

    from downsize.backends.students import load_specialist_model
    from downsize.train.loop import fit_adapter, prepare_model, save_specialist

    base, tokenizer = student
    config = TrainConfig(method="dora", lora_targets=["q_proj", "v_proj"], **{**SMALL, "max_tokens": None})
    model = prepare_model(copy.deepcopy(base), config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, stats = fit_adapter(model, tokenizer, examples, config, progress=False)
    after = dict(model.named_parameters())
    adapter = [n for n in before if "lora_" in n]
    assert any("lora_magnitude_vector" in n for n in adapter)  # DoRA, not plain LoRA
    assert all(not torch.equal(before[n], after[n]) for n in adapter if "lora_B" in n or "magnitude" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert stats.steps == 2 and math.isfinite(stats.final_loss) and stats.trainable_params > 0  # one epoch
    assert (stats.method, (stats.device, stats.precision), stats.learning_rate) == (
        "dora",
        _placement(),
        1e-3,
    )

    manifest = save_specialist(model, tokenizer, tmp_path / "dora", config, stats, "hash")
    assert manifest.artifact == "adapter" and manifest.method == "dora"
    assert (tmp_path / "dora" / "adapter_model.safetensors").is_file()
    loaded, _ = load_specialist_model("smollm2-135m", tmp_path / "dora")
    trained_logits = _logits(model, tokenizer, examples)
    assert torch.allclose(_logits(loaded, tokenizer, examples), trained_logits, atol=1e-4)
    assert not torch.allclose(_logits(base, tokenizer, examples), trained_logits, atol=1e-4)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_models")
def test_full_fine_tuning_trains_every_weight_and_saves_the_model(
    student: tuple[Any, Any], examples: list[Example], tmp_path: Path
) -> None:
    import torch

    from downsize.backends.students import load_specialist_model
    from downsize.train.loop import fit_adapter, save_specialist

    base, tokenizer = student
    model = copy.deepcopy(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(method="full", **SMALL)
    trained, stats = fit_adapter(model, tokenizer, examples, config, progress=False)
    assert trained is model and stats.learning_rate == 5e-5
    assert stats.trainable_params == sum(p.numel() for p in base.parameters())
    changed = [n for n, p in trained.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)  # embeddings, norms and every projection moved

    manifest = save_specialist(trained, tokenizer, tmp_path / "full", config, stats, "hash")
    assert manifest.artifact == "model" and manifest.config["method"] == "full"
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert (tmp_path / "full" / "tokenizer_config.json").is_file()
    loaded, loaded_tokenizer = load_specialist_model("smollm2-135m", tmp_path / "full")
    assert loaded_tokenizer.eos_token == tokenizer.eos_token
    assert torch.allclose(
        _logits(loaded, tokenizer, examples), _logits(trained, tokenizer, examples), atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.usefixtures("shared_models")
def test_train_specialist_full_registers_the_model_folder(imported_db: str, tmp_path: Path) -> None:
    from downsize.train.lora import train_specialist

    store = Store.open(imported_db)
    config = TrainConfig(method="full", specialist="t-full", **SMALL)
    result = train_specialist(store, config, out_dir=tmp_path / "full", progress=False)
    assert (result.method, (result.device, result.precision)) == ("full", _placement())
    manifest = json.loads((tmp_path / "full" / "downsize.json").read_text())
    assert manifest["artifact"] == "model" and manifest["stats"]["learning_rate"] == 5e-5
    assert manifest["data_hash"] == result.data_hash and manifest["stats"]["skipped"] == result.skipped
    assert store.specialist("t-full").adapter_path == str(tmp_path / "full")


@pytest.mark.slow
def test_gemma_template_renders_gemma_turns(student: tuple[Any, Any]) -> None:
    """The template alone, rendered by any tokenizer: Gemma's own is checked in the gated test below."""
    _, tokenizer = student
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Cancel ABC123 "}]
    text = tokenizer.apply_chat_template(
        chat, chat_template=GEMMA_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    assert (
        text == f"{bos}<start_of_turn>user\nBe brief.\n\nCancel ABC123<end_of_turn>\n<start_of_turn>model\n"
    )
    history = [*chat, {"role": "assistant", "content": "ok"}]
    text = tokenizer.apply_chat_template(history, chat_template=GEMMA_CHAT_TEMPLATE, tokenize=False)
    assert text.endswith("<start_of_turn>model\nok<end_of_turn>\n")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DOWNSIZE_TEST_GEMMA") != "1",
    reason="converts Gemma-3-270M's GGUF (1-2.5 min): set DOWNSIZE_TEST_GEMMA=1",
)
def test_gemma_loads_with_a_chat_template_and_trains(
    imported_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from downsize.backends.student_prompt import build_prompt, end_of_turn
    from downsize.backends.students import load_student
    from downsize.prompting import PromptBudget
    from downsize.train.loop import fit_adapter

    monkeypatch.setenv("DOWNSIZE_MODELS", os.environ.get("DOWNSIZE_TEST_GEMMA_MODELS") or str(tmp_path))
    model, tokenizer = load_student("gemma3-270m")
    prompt = build_prompt(tokenizer, [{"role": "user", "content": "Cancel ABC123"}], PromptBudget())
    assert prompt.startswith("<bos><start_of_turn>user\n") and prompt.endswith("<start_of_turn>model\n")
    assert end_of_turn(tokenizer) == "<end_of_turn>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in model.generation_config.eos_token_id
    config = TrainConfig(student="gemma3-270m", **{**SMALL, "max_tokens": None})
    exchanges = training_exchanges(Store.open(imported_db), config)[:4]
    examples, _ = build_examples(exchanges, tokenizer, config)
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert examples and all(
        e.target_ids[-1] == eot and e.prompt_ids[0] == tokenizer.bos_token_id for e in examples
    )
    _, stats = fit_adapter(model, tokenizer, examples, config, progress=False)
    assert stats.steps == 2 and math.isfinite(stats.final_loss)
