"""BFCL questions and gold answers read straight from the bfcl-eval wheel, split in halves, with OpenAI tools.

The Berkeley Function Calling Leaderboard ships its data inside the `bfcl-eval` wheel
(`bfcl_eval/data/BFCL_v4_<category>.json` and `bfcl_eval/data/possible_answer/BFCL_v4_<category>.json`, one
JSON object a line). Installing it would pin old numpy and pull many heavy packages, so we only download the
wheel and read it with zipfile. Each category is split in two halves by a hash of the question id, stable
across runs and machines: specialists train on one half and are tested on the other.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from downsize.config import home
from downsize.errors import ConfigError
from downsize.evaluate.ast_match import AstResult, ast_match, find_description
from downsize.select.cases import CallCase
from downsize.types import ToolCall

BFCL_VERSION = "2026.3.23"
CATEGORIES = ("simple_python", "multiple", "parallel")  # the single-turn Python categories used here
WHEEL_ENV = "DOWNSIZE_BFCL_WHEEL"

# BFCL's own mapping from its Python type names to JSON Schema (bfcl_eval's GORILLA_TO_OPENAPI).
GORILLA_TO_OPENAPI: dict[str, str] = {
    "integer": "integer",
    "number": "number",
    "float": "number",
    "string": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "dict": "object",
    "object": "object",
    "tuple": "array",
    "any": "string",
    "byte": "integer",
    "short": "integer",
    "long": "integer",
    "double": "number",
    "char": "string",
    "ArrayList": "array",
    "Array": "array",
    "HashMap": "object",
    "Hashtable": "object",
    "Queue": "array",
    "Stack": "array",
    "Any": "string",
    "String": "string",
    "Bigint": "integer",
}


def bfcl_cache_dir() -> Path:
    """Where `downsize` looks for the downloaded wheel: $DOWNSIZE_HOME/cache/bfcl."""
    return home() / "cache" / "bfcl"


def download_hint(folder: Path | None = None) -> str:
    return f"pip download --no-deps bfcl-eval=={BFCL_VERSION} -d {folder or bfcl_cache_dir()}"


def find_wheel(path: str | Path | None = None) -> Path:
    """The bfcl-eval wheel: `path` (a wheel or a folder holding one), else $DOWNSIZE_BFCL_WHEEL, else the cache.

    Prefers the pinned version when a folder holds several.
    """
    given = path if path is not None else os.environ.get(WHEEL_ENV) or None
    where = Path(given).expanduser() if given is not None else bfcl_cache_dir()
    if where.is_file():
        return where
    wheels = sorted(where.glob("bfcl_eval-*.whl")) if where.is_dir() else []
    if not wheels:
        raise ConfigError(
            f"no bfcl-eval wheel found at {where}: download it (it is read with zipfile, not installed) with "
            f"`{download_hint(where if where.suffix != '.whl' else where.parent)}`"
        )
    pinned = [w for w in wheels if w.name.startswith(f"bfcl_eval-{BFCL_VERSION}-")]
    return (pinned or wheels)[-1]


@dataclass
class BfclQuestion:
    """One single-turn BFCL question: the conversation, the functions offered, and the gold calls."""

    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]  # BFCL function docs (Python type names)
    ground_truth: list[dict[str, Any]]  # [{func_name: {param: [possible values]}}]
    tools: list[dict[str, Any]] = field(default_factory=list)  # the functions in OpenAI tools form

    def __post_init__(self) -> None:
        if not self.tools:
            self.tools = to_openai_tools(self.functions)

    def score(self, calls: Iterable[Any]) -> AstResult:
        """BFCL AST match of predicted calls against this question's gold answer."""
        return ast_match(self.functions, calls, self.ground_truth, self.category)

    def gold_calls(self) -> list[ToolCall]:
        """One correct answer, to train on: an optional parameter ("" among its possible values) is left out,
        any other takes its first possible value (nested dicts unwrapped the same way).

        Names are the OpenAI tool names ("." made "_"), the ones the student is offered and may write.
        """
        calls = []
        for answer in self.ground_truth:
            ((name, params),) = answer.items()
            doc = find_description(self.functions, str(name)) or {}
            required = set((doc.get("parameters") or {}).get("required") or [])
            arguments = {}
            for param, values in params.items():
                chosen = [v for v in values if v != ""]
                if chosen and (param in required or "" not in values):
                    arguments[param] = _first_answer(chosen[0])
            calls.append(ToolCall(name=str(name).replace(".", "_"), arguments=arguments))
        return calls

    def to_case(self, role: str) -> CallCase:
        """The question as a screen case (`role`: train or test), checked by BFCL's rule for its category."""
        return CallCase(
            key=self.id,
            messages=self.messages,
            tools=self.tools,
            gold=self.gold_calls(),
            role=role,
            category=self.category,
            possible_answers=self.ground_truth,
            functions=self.functions,
        )


def _first_answer(value: Any) -> Any:
    """A possible answer made a plain value: in a nested dict each key maps to its own list of possibilities."""
    if isinstance(value, dict):
        out = {}
        for key, values in value.items():
            chosen = [v for v in values if v != ""] if isinstance(values, list) else [values]
            if chosen:
                out[key] = _first_answer(chosen[0])
        return out
    if isinstance(value, list):
        return [_first_answer(v) for v in value]
    return value


def _read_jsonl(archive: zipfile.ZipFile, name: str, wheel: Path) -> list[dict[str, Any]]:
    try:
        raw = archive.read(name).decode("utf-8")
    except KeyError:
        raise ConfigError(
            f"{wheel.name} has no {name}: is it a bfcl-eval wheel of version {BFCL_VERSION}? "
            f"(`{download_hint(wheel.parent)}`)"
        ) from None
    try:
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} in {wheel.name} is not JSON lines: {exc}") from exc


def data_paths(category: str) -> tuple[str, str]:
    """(questions, possible answers) member names of a category inside the wheel."""
    return (
        f"bfcl_eval/data/BFCL_v4_{category}.json",
        f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json",
    )


def load_category(category: str, wheel: str | Path | None = None) -> list[BfclQuestion]:
    """Every question of a category with its gold answer, in the wheel's order."""
    wheel_path = find_wheel(wheel)
    questions_name, answers_name = data_paths(category)
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            questions = _read_jsonl(archive, questions_name, wheel_path)
            answers = {a["id"]: a for a in _read_jsonl(archive, answers_name, wheel_path)}
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{wheel_path} is not a readable wheel: {exc}; download it again") from exc
    out = []
    for q in questions:
        answer = answers.get(q["id"])
        if answer is None:
            raise ConfigError(f"BFCL question {q['id']} has no possible answer in {answers_name}")
        turns = q.get("question") or [[]]
        out.append(
            BfclQuestion(
                id=q["id"],
                category=category,
                messages=list(turns[0]),
                functions=list(q.get("function") or []),
                ground_truth=list(answer["ground_truth"]),
            )
        )
    return out


def half_of(question_id: str) -> float:
    """A stable position in [0, 1) from the id's SHA-256: the split does not depend on file order."""
    return int(hashlib.sha256(question_id.encode()).hexdigest()[:12], 16) / 16**12


def split_halves(questions: Sequence[BfclQuestion]) -> tuple[list[BfclQuestion], list[BfclQuestion]]:
    """(train, test): the questions ordered by id hash, first half for training, the rest for testing."""
    ordered = sorted(questions, key=lambda q: (half_of(q.id), q.id))
    cut = len(ordered) // 2
    return ordered[:cut], ordered[cut:]


def load_bfcl(
    categories: Iterable[str] = CATEGORIES, wheel: str | Path | None = None
) -> dict[str, dict[str, list[BfclQuestion]]]:
    """{category: {"train": [...], "test": [...]}} for each category."""
    out = {}
    for category in categories:
        train, test = split_halves(load_category(category, wheel))
        out[category] = {"train": train, "test": test}
    return out


def _cast_schema(schema: Mapping[str, Any], float_note: bool = True) -> dict[str, Any]:
    """One BFCL parameter schema in JSON Schema terms, recursively (unknown types read as strings, as BFCL does).

    As in BFCL's `_cast_to_openai_type`, a float parameter gets `format: float` and a note in its description
    (array items get the type only).
    """
    out = dict(schema)
    bfcl_type = str(out.get("type", "string"))
    if bfcl_type == "float" and float_note:  # JSON Schema has no float: keep the hint BFCL gives models
        out["format"] = "float"
        out["description"] = (str(out.get("description", "")) + " This is a float type value.").strip()
    out["type"] = GORILLA_TO_OPENAPI.get(bfcl_type, "string")
    if isinstance(out.get("properties"), Mapping):
        out["properties"] = {k: _cast_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), Mapping):
        out["items"] = _cast_schema(out["items"], float_note=False)
    return out


def to_openai_tools(functions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function docs as OpenAI `tools`: JSON Schema types, and "." in names made "_" (OpenAI forbids dots)."""
    tools = []
    for fn in functions:
        item = copy.deepcopy(dict(fn))
        item["name"] = str(item["name"]).replace(".", "_")
        params = dict(item.get("parameters") or {})
        params["type"] = "object"
        params["properties"] = {k: _cast_schema(v) for k, v in (params.get("properties") or {}).items()}
        item["parameters"] = params
        tools.append({"type": "function", "function": item})
    return tools


def accuracy(results: Sequence[AstResult]) -> float:
    """Share of questions whose calls matched (0 when there are none)."""
    return sum(r.valid for r in results) / len(results) if results else 0.0
