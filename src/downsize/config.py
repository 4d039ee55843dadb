"""Where downsize keeps its files, and one config dataclass per stage.

Values come from defaults, then an optional YAML file, then CLI flags; every artifact saves
the resolved config it was made with (`asdict(config)`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from downsize.errors import ConfigError


def default_tau_airline() -> Path:
    """../shared/data/tau-airline beside the project (as in a checkout and in CI)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "data" / "tau-airline"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data" / "tau-airline"


def home() -> Path:
    """$DOWNSIZE_HOME (default ~/.downsize), created on first use."""
    path = Path(os.environ.get("DOWNSIZE_HOME") or Path.home() / ".downsize").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted student weights: $DOWNSIZE_MODELS, else $DOWNSIZE_HOME/models (shared by every specialist)."""
    path = Path(os.environ.get("DOWNSIZE_MODELS") or home() / "models").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url() -> str:
    return f"sqlite:///{home() / 'downsize.db'}"


@dataclass
class TrainConfig:
    """Supervised distillation of the teacher's tool calls into a LoRA adapter on a small student."""

    student: str = "smollm2-135m"  # a catalog name, a Hugging Face model id or a local folder
    specialist: str = "tau-airline"  # name of the specialist (one per task)
    max_prompt_tokens: int = 192  # pruned prompt budget: older turns are dropped first
    max_message_tokens: int = 96  # each kept message is cut to this many tokens (head and tail kept)
    max_target_tokens: int = 64  # longer teacher calls are skipped, not truncated
    validation_fraction: float = 0.25  # of dev workflows (by hash), held out for threshold calibration
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = 1e-3
    batch_size: int = 8
    epochs: float = 1.0  # an upper bound; the token and minute budgets may stop earlier
    max_tokens: int | None = None  # stop after this many trained tokens (padding excluded)
    max_minutes: float | None = None  # stop after this many minutes of training
    seed: int = 0
    threads: int | None = None  # torch threads; default: all cores


@dataclass
class EvalConfig:
    """Held-out evaluation of a specialist against the teacher's logged calls."""

    target_agreement: float = 0.95  # the threshold is the lowest that reaches this on validation
    batch_size: int = 16
    max_new_tokens: int = 64
    limit: int | None = None  # evaluate at most this many exchanges per split (for quick looks)


@dataclass
class RouteConfig:
    """How the gateway decides between a live specialist and the upstream LLM."""

    enabled: bool = True
    max_new_tokens: int = 64
    threshold: float | None = None  # override the specialist's calibrated threshold


@dataclass
class GatewayConfig:
    """The OpenAI-compatible gateway."""

    upstream: str = "https://api.openai.com/v1"
    host: str = "127.0.0.1"
    port: int = 8787
    upstream_timeout_s: float = 120.0
    max_body_bytes: int = 8 * 1024 * 1024
    route: RouteConfig = field(default_factory=RouteConfig)


C = TypeVar("C")


def resolve(cls: type[C], file_values: dict[str, Any] | None = None, **overrides: Any) -> C:
    """Build a config from file values then overrides (None means 'not given'); unknown keys are errors."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for source in (file_values or {}), {k: v for k, v in overrides.items() if v is not None}:
        for key, value in source.items():
            if key not in known:
                raise ConfigError(
                    f"unknown {cls.__name__} setting {key!r}; known settings: {', '.join(sorted(known))}"
                )
            values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"bad {cls.__name__} settings: {exc}") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; a clear error if it is missing or not a mapping."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of settings, not {type(data).__name__}")
    return data
