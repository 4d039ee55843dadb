"""JSON outputs against a reference: does it parse, does it satisfy the schema, which fields agree.

Field match compares the two values as sets of leaves: every scalar (and every empty object or array) with
the path of keys and list indices that leads to it. Precision is the share of the candidate's leaves that
the reference has at the same path with an equal normalised value, recall the share of the reference's
leaves the candidate has; F1 their harmonic mean. Lists are compared index by index (their order matters in
most structured outputs: ranked results, steps). Values are normalised before comparing: strings stripped,
inner whitespace collapsed and case-folded; numbers compared as numbers (2 equals 2.0), booleans never
equal to numbers. Exact match is stricter: the same value after JSON normalisation (key order ignored,
strings as they are).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema

from downsize.contracts import canonical_json

Path = tuple[str | int, ...]
_SPACES = re.compile(r"\s+")
_MISSING = object()


@dataclass(frozen=True)
class FieldMatch:
    """Leaf-level agreement of a candidate JSON value with a reference."""

    matched: int
    predicted: int  # leaves in the candidate
    reference: int  # leaves in the reference

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else float(self.reference == 0)

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else float(self.predicted == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def parse_json(value: Any) -> tuple[Any, str]:
    """(value, "") for JSON text or an already parsed value; (None, why) when the text does not parse.

    A reply wrapped in a Markdown code fence (```json ... ```) is read inside the fence, as models often
    answer that way even when asked for JSON only.
    """
    if not isinstance(value, str | bytes):
        return value, ""
    text = value.decode() if isinstance(value, bytes) else value
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0].strip()
    if not stripped:
        return None, "empty output"
    try:
        return json.loads(stripped), ""
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    """A checked validator per schema: checking the schema itself costs more than validating a value."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_error(value: Any, schema: Mapping[str, Any]) -> str | None:
    """None when `value` satisfies the JSON schema; else the validator's first message (cut short)."""
    try:
        validator = _validator(json.dumps(schema, sort_keys=True, default=str))
    except jsonschema.SchemaError as exc:
        return f"the schema itself is invalid: {exc.message[:200]}"
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or '<root>'}: {error.message[:200]}"


def normalise_leaf(value: Any) -> Any:
    """A leaf as compared by field match: case- and space-insensitive strings, numbers as numbers."""
    if isinstance(value, str):
        return ("s", _SPACES.sub(" ", value.strip()).casefold())
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        number = float(value)
        return ("n", number if math.isfinite(number) else repr(number))
    if value is None:
        return ("null",)
    if isinstance(value, Mapping):
        return ("{}",)  # only empty objects are leaves
    if isinstance(value, list | tuple):
        return ("[]",)  # only empty arrays are leaves
    return ("other", repr(value))


def flatten(value: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """(path, leaf) for every scalar, empty object and empty array inside `value`."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from flatten(item, (*prefix, str(key)))
    elif isinstance(value, list | tuple) and value:
        for i, item in enumerate(value):
            yield from flatten(item, (*prefix, i))
    else:
        yield prefix, value


def field_match(predicted: Any, reference: Any) -> FieldMatch:
    """Leaf-level precision and recall of `predicted` against `reference` (both parsed JSON values)."""
    pred = {path: normalise_leaf(leaf) for path, leaf in flatten(predicted)}
    ref = {path: normalise_leaf(leaf) for path, leaf in flatten(reference)}
    matched = sum(1 for path, leaf in pred.items() if ref.get(path, _MISSING) == leaf)
    return FieldMatch(matched=matched, predicted=len(pred), reference=len(ref))


def json_exact(predicted: Any, reference: Any) -> bool:
    """The same JSON value: key order and number spelling (2 / 2.0) ignored, strings compared as they are."""
    return canonical_json(predicted) == canonical_json(reference)
