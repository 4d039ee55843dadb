"""Typed, versioned artifacts: the specialist manifest (`downsize.json` beside its weights), what a specialist
answers (its scope), and the evaluation report. Stdlib only.

Every reader goes through these dataclasses instead of reading nested dicts by string keys. Each artifact
carries a schema version: an older one is upgraded on load (the fields it lacks get the values the older code
implied), a newer one is refused with a message that says to upgrade downsize. Paths inside `$DOWNSIZE_HOME`
are stored relative to it, so a home can be moved or mounted elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from downsize.config import home
from downsize.errors import ConfigError
from downsize.types import Specialist

MANIFEST_FILE = "downsize.json"
MANIFEST_SCHEMA = 2  # 1: before versions (no `schema_version`, no `scope`)
EVAL_SCHEMA = 2  # 1: before versions (no `schema_version`; `engine` absent meant transformers)


def home_relative(path: str | Path) -> str:
    """A path as stored: relative to $DOWNSIZE_HOME when it lies inside it, else absolute."""
    resolved = Path(path).expanduser().resolve()
    try:
        return str(resolved.relative_to(home().resolve()))
    except ValueError:
        return str(resolved)


def from_home(stored: str) -> str:
    """A stored path made absolute again (relative ones are under the current $DOWNSIZE_HOME)."""
    if not stored:
        return stored
    path = Path(stored).expanduser()
    return str(path if path.is_absolute() else home() / path)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _check_version(kind: str, found: int, supported: int, where: str) -> None:
    if found > supported:
        raise ConfigError(
            f"{where}: this {kind} has schema version {found}, newer than this downsize reads ({supported}): "
            "upgrade downsize (`pip install -U downsize`), or retrain with this version"
        )


@dataclass(frozen=True)
class SpecialistScope:
    """What a specialist answers: one agent's call site (its tool set) and, optionally, discovered tasks."""

    task_tools: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    discovery_run: int | None = None
    agent: str | None = None
    source: str | None = None
    curated: bool = False
    kind: str = "tool_call"  # the output contract's kind (`contracts.py`; the contract itself is in config)
    sites: tuple[str, ...] = ()  # the call sites (`sites.site_key`) it was trained on

    @classmethod
    def of(cls, specialist: Specialist) -> SpecialistScope:
        """Read from the specialist's stored config (every version wrote these keys, or lacked them)."""
        config = specialist.config
        return cls(
            task_tools=tuple(sorted(config.get("task_tools") or [])),
            tasks=tuple(sorted(config.get("tasks") or [])),
            discovery_run=config.get("discovery_run"),
            agent=config.get("agent"),
            source=config.get("source"),
            curated=bool(config.get("curated")),
            kind=str((config.get("contract") or {}).get("kind") or "tool_call"),
            sites=tuple(sorted(config.get("sites") or [])),
        )


@dataclass
class SpecialistManifest:
    """`downsize.json`: what produced the weights beside it, so "what made this?" always has an answer."""

    artifact: str  # adapter (LoRA/DoRA/QLoRA weights on the student) | model (a whole fine-tuned model)
    student: str
    method: str
    config: dict[str, Any]  # the resolved TrainConfig
    data_hash: str
    trained_at: str | None = None
    device: str | None = None
    precision: str | None = None
    learning_rate: float | None = None
    torch_threads: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    gate: dict[str, Any] | None = None
    scope: SpecialistScope = field(default_factory=SpecialistScope)
    schema_version: int = MANIFEST_SCHEMA

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SpecialistManifest:
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise ConfigError(
                f"{folder} has no {MANIFEST_FILE}: it was not written by `downsize train`, or it was moved; "
                "train it again or point the specialist at the folder that holds it"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}): train the specialist again") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_FILE) -> SpecialistManifest:
        version = int(data.get("schema_version") or 1)
        _check_version("manifest", version, MANIFEST_SCHEMA, where)
        values = _known(cls, data)
        config = dict(values.get("config") or {})
        values.setdefault("artifact", "adapter")
        values.setdefault("student", config.get("student", ""))
        values.setdefault("method", config.get("method", "lora"))
        values.setdefault("data_hash", "")
        values["config"] = config
        scope = data.get("scope")
        values["scope"] = (
            SpecialistScope(
                **{
                    **_known(SpecialistScope, scope),
                    "task_tools": tuple(scope.get("task_tools") or ()),
                    "tasks": tuple(scope.get("tasks") or ()),
                    "sites": tuple(scope.get("sites") or ()),
                }
            )
            if isinstance(scope, dict)
            else SpecialistScope(tasks=tuple(config.get("tasks") or ()), curated=bool(config.get("curated")))
        )
        values["schema_version"] = MANIFEST_SCHEMA
        return cls(**values)


@dataclass
class AtThreshold:
    """What serving at a threshold gives on a set of calls."""

    calls: int = 0
    tool_calls: int = 0
    served: int = 0
    agreed: int = 0
    served_share: float = 0.0
    agreement: float = 0.0
    agreement_lower95: float = 0.0
    # the served calls counted by their workflows (`metrics.sized_design_effect`); None in older reports
    design_effect: float | None = None
    agreement_lower95_effective: float | None = None

    def lower95(self, count: str = "workflows") -> float:
        """The agreement's lower bound as the gate counts evidence: by workflows where measured, else calls."""
        if count == "workflows" and self.agreement_lower95_effective is not None:
            return self.agreement_lower95_effective
        return self.agreement_lower95


def fold_dir(adapter_path: str | Path, fold: int) -> Path:
    """Where a specialist's cross-fitting model for dev fold `fold` is saved (fold 0 is the specialist)."""
    return Path(adapter_path) if fold == 0 else Path(adapter_path) / "folds" / str(fold)


@dataclass
class SplitFigures:
    calls: int = 0
    at_threshold: AtThreshold = field(default_factory=AtThreshold)
    curve: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ToolCallFigures(SplitFigures):
    """The test split's calls the teacher answered in the specialist's kind (tool calls, JSON, labels, ...):
    teacher-relative figures beside the served ones. `exact_agreement` is the strict rule calibration uses;
    `graded_score` the kind's graded score (argument or field F1, text similarity) beside it."""

    tool_name_accuracy: float | None = (
        0.0  # tool calls (and Action steps): the same tool; None for other kinds
    )
    exact_agreement: float = 0.0
    exact_agreement_lower95: float = 0.0
    valid_share: float = 0.0
    graded_score: float | None = None
    # agreement by equivalence (tool calls: BFCL's possible-answer rule: strings case- and punctuation-
    # insensitive, 2 = 2.0, an optional argument left out or at its default), reported beside the strict figure
    equivalent_agreement: float | None = None
    equivalent_agreement_lower95: float | None = None


@dataclass
class TargetRow:
    """For one target agreement: the threshold calibrated on validation and what it serves on each split."""

    target: float
    threshold: float | None
    validation: AtThreshold
    test: AtThreshold


@dataclass
class EvalReport:
    """`downsize eval`'s report: calibration on validation, figures on test, by target; saved as JSON and
    with the specialist (`metrics["eval"]`)."""

    specialist: dict[str, Any]  # id, name, student
    engine: str
    target_agreement: float
    threshold: float | None
    validation: SplitFigures
    test_tool_calls: ToolCallFigures
    test: SplitFigures  # every test call in scope, text replies included
    by_target: list[TargetRow] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    evaluated_at: str | None = None
    seconds: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None  # where the JSON was written
    curve_path: str | None = None  # the HTML page of the curves
    kind: str = "tool_call"  # the specialist's output contract
    # the teacher's agreement with itself where a situation recurs in the logs of this scope (evaluate/ceiling.py)
    teacher_ceiling: dict[str, Any] | None = None
    # how the threshold was calibrated (evaluate/crossfit.py): method (cross_fit | validation), folds, calls,
    # rule (learn-then-test) and delta, the confidence signal chosen and every signal's AUROC, the fold-0 figures
    # and the gap between the calibration calls' agreement at the threshold and the test calls'
    calibration: dict[str, Any] | None = None
    weights: str | None = None  # the student weights the engine computed with (e.g. a bf16 GGUF's file name)
    schema_version: int = EVAL_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "eval report") -> EvalReport:
        version = int(data.get("schema_version") or 1)
        _check_version("eval report", version, EVAL_SCHEMA, where)

        def at(d: Any) -> AtThreshold:
            return AtThreshold(**_known(AtThreshold, d)) if isinstance(d, dict) else AtThreshold()

        def split(d: Any, kind: type[SplitFigures] = SplitFigures) -> Any:
            d = d if isinstance(d, dict) else {}
            values = _known(kind, d)
            values["at_threshold"] = at(d.get("at_threshold"))
            return kind(**values)

        return cls(
            specialist=dict(data.get("specialist") or {}),
            engine=str(data.get("engine") or "transformers"),  # v1 evaluations ran on transformers
            target_agreement=float(data.get("target_agreement", 0.95)),
            threshold=data.get("threshold"),
            validation=split(data.get("validation")),
            test_tool_calls=split(data.get("test_tool_calls"), ToolCallFigures),
            test=split(data.get("test")),
            by_target=[
                TargetRow(r["target"], r.get("threshold"), at(r.get("validation")), at(r.get("test")))
                for r in data.get("by_target") or []
            ],
            config=dict(data.get("config") or {}),
            evaluated_at=data.get("evaluated_at"),
            seconds=float(data.get("seconds") or 0.0),
            examples=list(data.get("examples") or []),
            kind=str(data.get("kind") or "tool_call"),
            teacher_ceiling=data.get("teacher_ceiling"),
            calibration=data.get("calibration"),
            weights=data.get("weights"),
            path=data.get("path"),
            curve_path=data.get("curve_path"),
        )

    @classmethod
    def of(cls, specialist: Specialist) -> EvalReport | None:
        """The specialist's newest evaluation, or None when it was never evaluated."""
        data = specialist.metrics.get("eval")
        return cls.from_dict(data, f"specialist {specialist.id}") if isinstance(data, dict) and data else None


def specialist_summary(specialist: Specialist) -> dict[str, Any]:
    """One specialist as `downsize specialists` and `GET /v1/downsize/specialists` show it: what it answers,
    its status, and its figures on held-out calls."""
    scope = SpecialistScope.of(specialist)
    report = EvalReport.of(specialist)
    return {
        "id": specialist.id,
        "name": specialist.name,
        "status": specialist.status,
        "agent": scope.agent,
        "source": scope.source,
        "tasks": list(scope.tasks),
        "tools": len(scope.task_tools),
        "kind": scope.kind,
        "sites": list(scope.sites),
        "student": specialist.base_model,
        "threshold": specialist.threshold,
        "engine": report.engine if report else None,
        "test_exact_agreement": report.test_tool_calls.exact_agreement if report else None,
        "test_calls": report.test.calls if report else None,
        "test_served_share": report.test.at_threshold.served_share if report else None,
        "test_agreement_served": report.test.at_threshold.agreement if report else None,
        "adapter_path": specialist.adapter_path,
        "created_at": specialist.created_at,
    }
