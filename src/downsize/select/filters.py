"""Hard filters on the catalog for one task: licence, context window, and memory on the target hardware.

These run before any model is loaded, so they only use facts: what the licence allows, whether the task's
longest pruned prompt (plus its longest completion) fits the context window, and whether the weights at a
chosen precision, with headroom for KV cache and activations, fit the target's memory (GPU memory when there
is a GPU, else RAM). Survivors go on to the zero-/few-shot screen on the task's validation calls.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from downsize.errors import ConfigError
from downsize.select.catalog import CATALOG, PRECISIONS, CatalogEntry

# A licence policy names the uses the specialist is for; each allows these licence kinds.
LICENCE_POLICIES: dict[str, frozenset[str]] = {
    "permissive": frozenset({"permissive"}),  # OSI-style licences only (Apache-2.0, MIT)
    "commercial": frozenset({"permissive", "restricted"}),  # commercial use, custom terms accepted
    "research": frozenset({"permissive", "restricted", "non-commercial"}),  # anything, for research
}
DEFAULT_HEADROOM = 1.2  # weights x 1.2: KV cache and activations of short agent prompts at batch 1

_GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")  # NVIDIA, ROCm, WSL


@dataclass(frozen=True)
class TaskStats:
    """What the filters need to know about a task: its longest pruned prompt and completion, in tokens."""

    longest_prompt_tokens: int
    max_completion_tokens: int = 0
    name: str = "task"

    @classmethod
    def of(cls, value: TaskStats | Mapping[str, Any]) -> TaskStats:
        """Accept a TaskStats or a mapping with the same keys (as stored in a task's JSON)."""
        if isinstance(value, TaskStats):
            return value
        try:
            return cls(
                longest_prompt_tokens=int(value["longest_prompt_tokens"]),
                max_completion_tokens=int(value.get("max_completion_tokens", 0)),
                name=str(value.get("name", "task")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"task stats need an integer 'longest_prompt_tokens' (and optionally 'max_completion_tokens'): {exc}"
            ) from exc

    @property
    def context_needed(self) -> int:
        return self.longest_prompt_tokens + self.max_completion_tokens


@dataclass(frozen=True)
class Hardware:
    """The machine a specialist will be trained or served on."""

    cores: int
    ram_gb: float
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None

    @classmethod
    def detect(cls) -> Hardware:
        """This machine: cores, physical RAM (os.sysconf), and the first GPU as torch sees it, if any.

        torch is imported only when it is installed and the OS shows a GPU device node, so a CPU-only
        machine answers in microseconds instead of paying torch's multi-second import.
        """
        cores = os.cpu_count() or 1
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not POSIX, or the names are unknown
            ram = 0
        gpu_name, gpu_memory = _detect_gpu()
        return cls(cores=cores, ram_gb=ram / 1e9, gpu_name=gpu_name, gpu_memory_gb=gpu_memory)

    @property
    def has_gpu(self) -> bool:
        return self.gpu_memory_gb is not None

    @property
    def memory_gb(self) -> float:
        """The memory the model must fit in: GPU memory when there is a GPU, else RAM."""
        return self.gpu_memory_gb if self.gpu_memory_gb is not None else self.ram_gb

    @property
    def memory_label(self) -> str:
        return f"GPU memory ({self.gpu_name})" if self.has_gpu else "RAM"

    @property
    def default_precision(self) -> str:
        """bf16 on a GPU; fp32 on CPU (CPUs without AVX-512 BF16 run bf16 ~20x slower, see DESIGN.md)."""
        return "bf16" if self.has_gpu else "fp32"

    def describe(self) -> str:
        gpu = f", {self.gpu_name} {self.gpu_memory_gb:.0f} GB" if self.has_gpu else ", no GPU"
        return f"{self.cores} cores, {self.ram_gb:.0f} GB RAM{gpu}"


def _detect_gpu() -> tuple[str | None, float | None]:
    if importlib.util.find_spec("torch") is None:
        return None, None
    if sys.platform.startswith("linux") and not any(Path(p).exists() for p in _GPU_DEVICE_NODES):
        return None, None
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(0)
    return str(props.name), props.total_memory / 1e9


class Candidate(NamedTuple):
    """One catalog entry and why the hard filters rejected it; no reasons means it passed."""

    entry: CatalogEntry
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "; ".join(self.reasons)


def allowed_licence_kinds(policy: str | Iterable[str]) -> frozenset[str]:
    """The licence kinds a policy allows: a policy name, or the kinds themselves."""
    if isinstance(policy, str):
        if policy in LICENCE_POLICIES:
            return LICENCE_POLICIES[policy]
        raise ConfigError(
            f"unknown licence policy {policy!r}: use one of {', '.join(LICENCE_POLICIES)} "
            "(permissive: Apache/MIT only; commercial: also custom commercial licences such as Llama and "
            "Gemma; research: also non-commercial licences)"
        )
    kinds = frozenset(policy)
    unknown = kinds - LICENCE_POLICIES["research"]
    if unknown:
        raise ConfigError(
            f"unknown licence kinds {sorted(unknown)}: use permissive, restricted, non-commercial"
        )
    return kinds


def check_entry(
    entry: CatalogEntry,
    task: TaskStats,
    hardware: Hardware,
    allowed: frozenset[str],
    precision: str,
    headroom: float = DEFAULT_HEADROOM,
) -> tuple[str, ...]:
    """Every hard-filter reason to reject `entry` for `task` on `hardware`; empty when it passes them all."""
    reasons: list[str] = []
    if entry.licence_kind not in allowed:
        reasons.append(
            f"licence {entry.licence} is {entry.licence_kind}, the policy allows {', '.join(sorted(allowed))}"
        )
    if entry.context_window < task.context_needed:
        reasons.append(
            f"context window {entry.context_window} < {task.context_needed} tokens "
            f"(longest pruned prompt {task.longest_prompt_tokens} + completion {task.max_completion_tokens})"
        )
    weights = entry.footprint_gb(precision)
    needed = weights * headroom
    if needed > hardware.memory_gb:
        reasons.append(
            f"needs {needed:.1f} GB at {precision} ({weights:.2f} GB weights x {headroom:g}) "
            f"but {hardware.memory_label} is {hardware.memory_gb:.1f} GB"
        )
    return tuple(reasons)


def select_candidates(
    task_stats: TaskStats | Mapping[str, Any],
    hardware: Hardware,
    licence_policy: str | Iterable[str] = "commercial",
    precision: str | None = None,
    headroom: float = DEFAULT_HEADROOM,
    catalog: Sequence[CatalogEntry] = CATALOG,
) -> list[Candidate]:
    """Every catalog entry with its rejection reasons: passing entries first, smallest first.

    `precision` defaults to the hardware's (bf16 on a GPU, fp32 on CPU); pass "4bit" to ask what fits
    quantised (QLoRA training, GGUF serving).
    """
    task = TaskStats.of(task_stats)
    allowed = allowed_licence_kinds(licence_policy)
    precision = precision or hardware.default_precision
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if headroom < 1:
        raise ConfigError(f"headroom multiplies the weights' size and must be >= 1, not {headroom}")
    results = [
        Candidate(entry, check_entry(entry, task, hardware, allowed, precision, headroom))
        for entry in catalog
    ]
    return sorted(results, key=lambda c: (not c.ok, c.entry.params_b))
