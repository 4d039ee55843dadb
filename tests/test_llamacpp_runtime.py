"""The llama.cpp serving path: the GGUF LoRA writer, and agreement with the transformers reference path.

The agreement test trains a LoRA briefly on SmolLM2-135M (a few real tau-airline calls, overfitted in a
few steps so the model is confident), then asks both runtimes for the same calls: the same generated
text, and confidences within a small margin (llama.cpp runs the shipped Q4_1 values converted to bf16 or
q8_0, transformers the same values dequantised to fp32).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiny_adapters
from downsize.backends.gguf_lora import gguf_lora_for, lora_tensors, rope_permute, write_gguf_lora
from downsize.prompting import PromptBudget
from downsize.types import ToolCall

TAU = tiny_adapters.TAU
TOOLS = json.loads((TAU / "tools.json").read_text())
BUDGET = PromptBudget(48, 24)
META = {"architecture": "llama", "block_count": 2, "head_count": 4, "head_count_kv": 2, "chat_template": None}


def tau_calls(n: int) -> list[tuple[list[dict[str, Any]], ToolCall]]:
    """The first n short teacher calls (user and reservation lookups) of the test split."""
    return tiny_adapters.tau_calls(n, ("get_user_details", "get_reservation_details"))


def fake_adapter(folder: Path, r: int = 4, alpha: float = 8.0, **config: object) -> dict[str, np.ndarray]:
    """A PEFT-shaped LoRA folder for a tiny llama (hidden 16, 4 heads, 2 kv heads, 2 layers)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    shapes = {
        "q_proj": (16, 16),
        "k_proj": (8, 16),
        "v_proj": (8, 16),
        "o_proj": (16, 16),
        "down_proj": (16, 32),
    }
    weights = {}
    for layer in range(2):
        for module, (out_dim, in_dim) in shapes.items():
            part = "mlp" if module == "down_proj" else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{part}.{module}"
            weights[f"{key}.lora_A.weight"] = rng.normal(size=(r, in_dim)).astype(np.float32)
            weights[f"{key}.lora_B.weight"] = rng.normal(size=(out_dim, r)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": alpha, **config}))
    return weights


def test_peft_weights_get_llama_cpp_names_layout_permutation_and_scale(tmp_path: Path) -> None:
    weights = fake_adapter(tmp_path / "a")
    alpha, tensors = lora_tensors(tmp_path / "a", META)
    assert alpha == 8.0 and len(tensors) == 2 * 2 * 5
    prefix = "base_model.model.model.layers.1"
    v_a, v_b = (
        weights[f"{prefix}.self_attn.v_proj.lora_A.weight"],
        weights[f"{prefix}.self_attn.v_proj.lora_B.weight"],
    )
    assert np.array_equal(tensors["blk.1.attn_v.weight.lora_a"], v_a)
    assert np.array_equal(tensors["blk.1.attn_v.weight.lora_b"], v_b)
    assert tensors["blk.0.ffn_down.weight.lora_a"].shape == (4, 32)
    # q and k rows follow llama.cpp's RoPE permutation (per head count), so B.A permutes like the base weight
    q_b = weights[f"{prefix}.self_attn.q_proj.lora_B.weight"]
    k_b = weights[f"{prefix}.self_attn.k_proj.lora_B.weight"]
    assert np.array_equal(tensors["blk.1.attn_q.weight.lora_b"], rope_permute(q_b, 4))
    assert np.array_equal(tensors["blk.1.attn_k.weight.lora_b"], rope_permute(k_b, 2))
    assert not np.array_equal(rope_permute(q_b, 4), q_b)


def test_rslora_and_alpha_patterns_are_folded_into_lora_b(tmp_path: Path) -> None:
    weights = fake_adapter(tmp_path / "a", use_rslora=True, alpha_pattern={"v_proj": 2.0})
    _, tensors = lora_tensors(tmp_path / "a", META)
    b = weights["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    # PEFT scales by alpha/sqrt(r) (2/2 here for v_proj); llama.cpp applies alpha/r = 8/4
    assert np.allclose(tensors["blk.0.attn_v.weight.lora_b"] * 8.0 / 4, b * 2.0 / math.sqrt(4))


def test_adapters_without_a_gguf_lora_form_are_refused(tmp_path: Path) -> None:
    from downsize.errors import ConfigError

    fake_adapter(tmp_path / "d", use_dora=True)
    with pytest.raises(ConfigError, match="DoRA"):
        lora_tensors(tmp_path / "d", META)
    with pytest.raises(ConfigError, match="not a PEFT LoRA adapter"):
        lora_tensors(tmp_path, META)


def test_the_engine_fails_with_an_install_hint_without_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from downsize.backends import llamacpp_runtime
    from downsize.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'downsize\[serve\]'"):
        llamacpp_runtime.require_llama_cpp()


def test_the_engine_is_chosen_on_the_command_line_and_checked() -> None:
    from click.testing import CliRunner

    from downsize.backends.engines import runtime_for
    from downsize.cli.main import main
    from downsize.errors import ConfigError
    from downsize.types import Specialist

    for command in ("serve", "specialist-worker", "eval", "demo"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "--engine [auto|transformers|llamacpp]" in result.output
    specialist = Specialist("s", "t", "smollm2-135m", "x", config={}, data_hash="")
    with pytest.raises(ConfigError, match="unknown engine"):
        runtime_for(specialist, engine="vllm")


def test_auto_engine_is_the_calibrated_one_else_llama_cpp_where_it_can_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from downsize.backends.engines import resolve_engine
    from downsize.types import Specialist

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("{}")

    def specialist(base: str, folder: Path, engine: str | None = None) -> Specialist:
        metrics = {"eval": {"engine": engine}} if engine else {}
        return Specialist("s", "t", base, str(folder), config={}, data_hash="", metrics=metrics)

    installed = importlib.util.find_spec("llama_cpp") is not None
    assert resolve_engine("auto", specialist("smollm2-135m", adapter)) == (
        "llamacpp" if installed else "transformers"
    )
    assert resolve_engine("auto", specialist("smollm2-135m", adapter, "transformers")) == "transformers"
    assert resolve_engine("auto", specialist("smollm2-135m", adapter, "llamacpp")) == (
        "llamacpp"  # what the threshold was calibrated on, even where llama.cpp would then be missing
    )
    old = Specialist("s", "t", "smollm2-135m", str(adapter), {}, "", metrics={"eval": {"threshold": -1}})
    assert resolve_engine("auto", old) == "transformers"  # evaluated before the engine was recorded
    assert resolve_engine("auto", specialist("smollm2-135m", full)) == "transformers"  # a full fine-tune
    assert (
        resolve_engine("auto", specialist("HuggingFaceTB/SmolLM2-360M-Instruct", adapter)) == "transformers"
    )
    assert resolve_engine("transformers", specialist("smollm2-135m", adapter, "llamacpp")) == "transformers"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    assert resolve_engine("auto", specialist("smollm2-135m", adapter)) == "transformers"


@pytest.mark.slow
def test_the_student_is_served_from_faster_weights_converted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_cpp")
    from downsize.backends.llamacpp_runtime import GGUF_WEIGHTS, base_gguf, serving_gguf, weights_choice
    from downsize.errors import ConfigError

    monkeypatch.setenv("DOWNSIZE_MODELS", str(tmp_path))
    shipped = base_gguf("smollm2-135m")
    assert weights_choice() in GGUF_WEIGHTS[1:3]  # auto resolves to what this CPU computes fastest
    monkeypatch.setenv("DOWNSIZE_GGUF_WEIGHTS", "q8_0")
    converted = serving_gguf("smollm2-135m")
    assert converted == tmp_path / "gguf" / "SmolLM2-135M-Instruct.Q4_1.Q8_0.gguf"
    assert converted.stat().st_size > shipped.stat().st_size  # 8 bits a weight where 4 were shipped
    stamp = converted.stat().st_mtime_ns
    assert serving_gguf("smollm2-135m").stat().st_mtime_ns == stamp  # written once
    assert not list((tmp_path / "gguf").glob("*.tmp"))
    monkeypatch.setenv("DOWNSIZE_GGUF_WEIGHTS", "shipped")
    assert serving_gguf("smollm2-135m") == shipped
    assert serving_gguf(str(converted)) == converted  # a user's own GGUF is served as it is
    monkeypatch.setenv("DOWNSIZE_GGUF_WEIGHTS", "fp8")
    with pytest.raises(ConfigError, match="DOWNSIZE_GGUF_WEIGHTS='fp8' is not one of auto, bf16, q8_0"):
        serving_gguf("smollm2-135m")


# -- the real model on both engines --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA on SmolLM2-135M overfitted on a few real calls (seconds), saved as PEFT writes it."""
    pytest.importorskip("llama_cpp")
    os.environ.setdefault("DOWNSIZE_MODELS", str(tmp_path_factory.mktemp("models")))
    from downsize.backends.students import load_student

    base, tokenizer = load_student("smollm2-135m")
    return tiny_adapters.overfit_adapter(
        base, tokenizer, tau_calls(4), BUDGET, 10, tmp_path_factory.mktemp("adapter")
    )


@pytest.fixture(scope="module")
def engines(trained_adapter: Path) -> tuple:
    from downsize.backends.llamacpp_runtime import LlamaCppRuntime
    from downsize.backends.transformers_runtime import TransformersRuntime

    reference = TransformersRuntime("smollm2-135m", trained_adapter, BUDGET, max_new_tokens=40)
    fast = LlamaCppRuntime("smollm2-135m", trained_adapter, BUDGET, max_new_tokens=40)
    return reference, fast


@pytest.mark.slow
def test_both_engines_see_the_same_prompt_and_tokens(engines: tuple) -> None:
    reference, fast = engines
    for messages, _ in tau_calls(6):
        prompt = reference.prompt(messages)
        assert fast.prompt(messages) == prompt
        assert fast.tokenizer.encode(prompt) == reference.tokenizer.encode(prompt, add_special_tokens=False)
    same = sum(a == b for a, b in zip(reference.vocab, fast.token_texts.texts, strict=False))
    assert same / len(reference.vocab) > 0.99


@pytest.mark.slow
def test_both_engines_generate_the_same_calls_with_close_confidences(engines: tuple) -> None:
    reference, fast = engines
    samples = tau_calls(6)  # the first 4 were trained on; the model is confident there
    requests = [(messages, TOOLS) for messages, _ in samples]
    expected = reference.generate_batch(requests)
    served = [fast.generate(messages, TOOLS) for messages, _ in requests]
    assert (
        sum(g.call is not None and g.call == call for g, (_, call) in zip(served, samples, strict=True)) >= 3
    )
    confident = [(ref, got) for ref, got in zip(expected, served, strict=True) if ref.min_logprob > -0.5]
    assert len(confident) >= 4
    for ref, got in confident:  # two engines can only part at a near tie, i.e. at low confidence
        assert got.text == ref.text
        assert got.min_logprob == pytest.approx(ref.min_logprob, abs=0.1)
        assert got.mean_logprob == pytest.approx(ref.mean_logprob, abs=0.05)
    assert sum(ref.text == got.text for ref, got in zip(expected, served, strict=True)) >= 4
    # a chosen tool and the early stop behave alike too
    messages, call = samples[2]
    fixed = [rt.generate(messages, TOOLS, tool=call.name) for rt in engines]
    assert fixed[0].text == fixed[1].text and fixed[0].text.startswith(call.name + " ")
    cut = [rt.generate(messages, TOOLS, stop_below=0.0) for rt in engines]
    assert all(c.stopped_early and c.tokens == 1 and c.call is None for c in cut)


@pytest.mark.slow
def test_complete_takes_any_grammar_and_the_lora_changes_the_output(
    engines: tuple, trained_adapter: Path
) -> None:
    from downsize.backends.grammar import ToolCallGrammar
    from downsize.backends.llamacpp_runtime import LlamaCppRuntime

    reference, fast = engines
    messages = tau_calls(1)[0][0]
    prompts = [reference.prompt(messages)]
    grammar = ToolCallGrammar.for_tools(TOOLS)
    ref, got = reference.complete(prompts, [grammar])[0], fast.complete(prompts, [grammar])[0]
    assert got.text == ref.text and got.done and not grammar.done  # the caller's grammar is not consumed
    assert len(got.logprobs) == len(ref.logprobs)
    base = LlamaCppRuntime("smollm2-135m", None, BUDGET, max_new_tokens=40)
    plain = base.complete(prompts, [grammar])[0]
    assert plain.text != got.text or abs(plain.mean_logprob - got.mean_logprob) > 0.5
    # the GGUF LoRA is written once beside the adapter and reused
    path = gguf_lora_for(trained_adapter, fast.model_path)
    assert path == fast.lora_path and path.parent == trained_adapter
    stamp = path.stat().st_mtime_ns
    assert gguf_lora_for(trained_adapter, fast.model_path).stat().st_mtime_ns == stamp
    assert (
        write_gguf_lora(trained_adapter, fast.model_path, trained_adapter / "again.gguf").stat().st_size > 0
    )
