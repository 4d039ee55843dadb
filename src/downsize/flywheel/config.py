"""`FlywheelConfig`: when the flywheel turns, how long it may train, and the settings of the stages it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from downsize.config import EvalConfig, TrainConfig, resolve
from downsize.curate.config import CurateConfig
from downsize.discover.config import DiscoverConfig
from downsize.errors import ConfigError
from downsize.evaluate.promotion import PARITY_MARGIN, RULES


@dataclass
class FlywheelConfig:
    """One turn: curate -> discover -> retrain the units whose data changed or whose specialist was rolled back
    -> evaluate -> promote behind the gate. A YAML file may hold every field, the stages' as nested mappings
    (`train: {student: gemma3-270m}`)."""

    every_exchanges: int | None = 500  # turn after this many new exchanges since the last run (None: never)
    interval_s: float | None = None  # turn this long after the last run finished (None: never)
    poll_s: float = 30.0  # how often the loop looks at the store
    max_minutes: float = 20.0  # training minutes of one run, shared by the units it retrains
    rule: str = "strict"  # the promotion rule for live: strict (the target's lower bound) | parity
    target: float = 0.90  # strict: the 95% lower bound of validation agreement live needs
    min_served: int = 20  # validation calls served at the threshold live needs
    margin: float = PARITY_MARGIN  # parity: below the teacher's own agreement by at most this
    engine: str = "auto"  # the engine to calibrate on (serve on the same one)
    units: list[str] = field(
        default_factory=list
    )  # only these units (tool:NAME, site:KEY, task keys); []: all
    max_units: int | None = None  # at most this many units a run, most training calls first
    curate: CurateConfig = field(default_factory=CurateConfig)
    discover: DiscoverConfig = field(default_factory=DiscoverConfig)
    # the template every unit's training starts from; curated: train on the curation this run made
    train: TrainConfig = field(default_factory=lambda: TrainConfig(curated=True))
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"flywheel rule must be one of {', '.join(RULES)}, not {self.rule!r}")
        if self.every_exchanges is not None and self.every_exchanges < 1:
            raise ConfigError(f"every_exchanges must be at least 1 (or null), not {self.every_exchanges}")
        if self.interval_s is not None and self.interval_s <= 0:
            raise ConfigError(f"interval_s must be positive (or null), not {self.interval_s}")
        if self.max_minutes <= 0 or self.poll_s <= 0:
            raise ConfigError("max_minutes and poll_s must be positive")


STAGES = {"curate": CurateConfig, "discover": DiscoverConfig, "train": TrainConfig, "eval": EvalConfig}


def flywheel_config(file_values: dict[str, Any] | None = None, **overrides: Any) -> FlywheelConfig:
    """A FlywheelConfig from a YAML file's values (stages as nested mappings) and flags (None: not given)."""
    values = dict(file_values or {})
    stages: dict[str, Any] = {}
    for name, cls in STAGES.items():
        given = values.pop(name, None)
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"flywheel setting {name!r} is a mapping of {cls.__name__} settings")
        if name == "train":
            given = {"curated": True, **(given or {})}
        if given is not None:
            stages[name] = resolve(cls, given)
    return resolve(FlywheelConfig, {**values, **stages}, **overrides)
