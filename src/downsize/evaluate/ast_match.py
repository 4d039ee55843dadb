"""BFCL-style AST match of predicted tool calls against a set of possible answers.

Re-implemented from the public rule of the Berkeley Function Calling Leaderboard's Python AST checker
(bfcl_eval/eval_checker/ast_eval/ast_checker.py), so that a specialist can be scored the way BFCL scores
models without installing bfcl-eval (it pins old numpy and many heavy packages). For one call:

1. the function name matches (a "." in the expected name may appear as "_", as OpenAI-style tool names
   cannot hold dots);
2. every required parameter is present;
3. no parameter is unexpected: each is in the schema and in the possible answer;
4. each value has the schema's type, with Python's conversions as BFCL allows them: an int is accepted for a
   float, a value of the possible answer's type is accepted when the gold answer is a variable name, and
   array items are checked one level deep;
5. each value is one of the possible answers: strings compared after BFCL's normalisation (spaces and
   ``,./-_*^`` removed, lower case, ' read as "), lists element-wise, dicts key by key;
6. every parameter the possible answer does not mark optional (with "") is given.

Categories: simple (exactly one call), multiple (one call chosen among several functions), parallel (several
calls in any order, each matched to a distinct gold call). Values compare as Python values, so 2 == 2.0 and
True is not an int (types are compared exactly, as BFCL does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from downsize.types import ToolCall

PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
    # JSON Schema names, for schemas already in OpenAI tools form
    "number": float,
    "object": dict,
}
NESTED_TYPES = ("array", "tuple")  # types whose items are type-checked (one level deep, as BFCL does)
_STRIP = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class AstResult:
    """Whether the predicted calls match, and if not, the first reason (BFCL's message and error type)."""

    valid: bool
    error: str = ""
    error_type: str = ""


OK = AstResult(True)


def standardize_string(text: str) -> str:
    """BFCL's string normalisation: 'April 1, 2024' and 'april 1 2024' compare equal."""
    return _STRIP.sub("", text).lower().replace("'", '"')


def _name_key(name: str) -> str:
    return name.replace(".", "_")


def normalise_functions(functions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function docs or OpenAI `tools` entries as plain {name, description, parameters} dicts."""
    out = []
    for fn in functions:
        if fn.get("type") == "function" and isinstance(fn.get("function"), Mapping):
            fn = fn["function"]
        out.append(dict(fn))
    return out


def normalise_calls(calls: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Predicted calls as (name, arguments) from ToolCall, OpenAI tool_calls, {name, arguments} or BFCL's {name: args}.

    Arguments given as a JSON string are parsed; a string that does not parse is kept as an empty call so the
    checker reports the missing parameters rather than raising.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for call in calls:
        if isinstance(call, ToolCall):
            out.append((call.name, dict(call.arguments)))
            continue
        if not isinstance(call, Mapping):
            raise TypeError(f"a predicted call is a ToolCall or a mapping, not {type(call).__name__}")
        if isinstance(call.get("function"), Mapping):  # OpenAI tool_call
            call = call["function"]
        if "name" in call and ("arguments" in call or len(call) == 1):
            args: Any = call.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    args = {}
            out.append((str(call["name"]), dict(args) if isinstance(args, Mapping) else {}))
        elif len(call) == 1:  # BFCL's own form {func_name: {param: value}}
            ((name, args),) = call.items()
            out.append((str(name), dict(args) if isinstance(args, Mapping) else {}))
        else:
            raise TypeError(f"cannot read a call from {dict(call)!r}")
    return out


def find_description(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    for fn in functions:
        if fn.get("name") == name or _name_key(str(fn.get("name", ""))) == _name_key(name):
            return fn
    return None


def _answer_type(possible: Sequence[Any]) -> type | None:
    """The type of the first non-optional possible answer ("" marks an optional parameter)."""
    for answer in possible:
        if answer != "":
            return type(answer)
    return None


def _check_type(
    param: str,
    value: Any,
    possible: Sequence[Any],
    expected_name: str,
    expected: type,
    nested: type | None,
) -> tuple[AstResult, bool]:
    """(result, is_variable): whether `value` has the expected type, or the possible answer's (a variable)."""
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return OK, is_variable
        elements: list[Any] = value if isinstance(value, list) else []  # nested is set for arrays only
        for item in possible:
            if type(item) is list and not all(
                _check_type(param, v, item, nested.__name__, nested, None)[0].valid for v in elements
            ):
                continue
            return OK, is_variable
        return (
            AstResult(
                False,
                f"Nested type checking failed for parameter {param!r}. Expected outer type {expected_name} "
                f"with inner type {nested.__name__}. Parameter value: {value!r}.",
                "type_error:nested",
            ),
            False,
        )
    if answer_type is not None and type(value) is answer_type:
        return OK, True
    return (
        AstResult(
            False,
            f"Incorrect type for parameter {param!r}. Expected type {expected_name}, got "
            f"{type(value).__name__}. Parameter value: {value!r}.",
            "type_error:simple",
        ),
        False,
    )


def _standardize(value: Any) -> Any:
    return standardize_string(value) if isinstance(value, str) else value


def _check_string(param: str, value: str, possible: Sequence[Any]) -> AstResult:
    allowed = [standardize_string(p) for p in possible if isinstance(p, str)]
    if standardize_string(value) in allowed:
        return OK
    return AstResult(
        False,
        f"Invalid value for parameter {param!r}: {value!r}. Expected one of {list(possible)}. Case insensitive.",
        "value_error:string",
    )


def _check_list(param: str, value: list[Any], possible: Sequence[Any]) -> AstResult:
    got = [_standardize(v) for v in value]
    allowed = [[_standardize(v) for v in p] for p in possible if isinstance(p, list)]
    if "" in possible:
        allowed.append([])  # BFCL reads an optional marker as an empty list, so [] passes there
    if got in allowed:
        return OK
    return AstResult(
        False,
        f"Invalid value for parameter {param!r}: {value!r}. Expected one of {list(possible)}.",
        "value_error:list/tuple",
    )


def _check_dict(param: str, value: Mapping[str, Any], possible: Sequence[Any]) -> AstResult:
    """The dict matches one possible dict: no unknown keys, each value allowed, every required key given."""
    result = AstResult(False, f"No possible answer for parameter {param!r}.", "dict_checker:unclear")
    for answer in possible:
        if answer == "" or not isinstance(answer, Mapping):
            continue
        result = OK
        for key, item in value.items():
            if key not in answer:
                result = AstResult(False, f"Unexpected dict key parameter: {key!r}.", "value_error:dict_key")
                break
            options = answer[key] if isinstance(answer[key], list) else [answer[key]]
            allowed = [_standardize(a) for a in options]
            if _standardize(item) not in allowed:
                result = AstResult(
                    False,
                    f"Invalid value for parameter {key!r}: {item!r}. Expected one of {allowed}.",
                    "value_error:dict_value",
                )
                break
        if result.valid:
            for key, allowed_values in answer.items():
                if key not in value and "" not in (
                    allowed_values if isinstance(allowed_values, list) else []
                ):
                    result = AstResult(False, f"Missing dict key parameter: {key!r}.", "value_error:dict_key")
                    break
        if result.valid:
            return OK
    return result


def _check_list_of_dicts(param: str, value: list[Any], possible: Sequence[Any]) -> AstResult:
    """Dicts in the same order as one possible list of dicts."""
    result = AstResult(False, f"No possible answer for parameter {param!r}.", "list_dict_checker:unclear")
    for answer in possible:
        if answer == "":
            answer = []  # BFCL reads the optional marker as an empty list: [] passes there
        if not isinstance(answer, list):
            continue
        if len(value) != len(answer):
            result = AstResult(
                False, "Wrong number of dictionaries in the list.", "value_error:list_dict_count"
            )
            continue
        result = OK
        for item, expected in zip(value, answer, strict=True):
            result = (
                _check_dict(param, item, [expected])
                if isinstance(item, Mapping)
                else AstResult(False, f"Expected a dict in {param!r}, got {item!r}.", "type_error:nested")
            )
            if not result.valid:
                break
        if result.valid:
            return OK
    return result


def match_call(
    function: Mapping[str, Any], name: str, arguments: Mapping[str, Any], answer: Mapping[str, Any]
) -> AstResult:
    """One predicted call against one gold call {func_name: {param: [possible values]}} and its function doc."""
    ((expected_name, possible_args),) = answer.items()
    if _name_key(name) != _name_key(str(function.get("name", expected_name))):
        return AstResult(
            False,
            f"Function name {function.get('name', expected_name)!r} not found in model output.",
            "simple_function_checker:wrong_func_name",
        )
    parameters = function.get("parameters") or {}
    properties: Mapping[str, Any] = parameters.get("properties") or {}
    for param in parameters.get("required") or []:
        if param not in arguments:
            return AstResult(
                False, f"Missing required parameter: {param!r}.", "simple_function_checker:missing_required"
            )
    for param, value in arguments.items():
        if param not in properties or param not in possible_args:
            return AstResult(
                False, f"Unexpected parameter: {param!r}.", "simple_function_checker:unexpected_param"
            )
        possible = possible_args[param]
        schema = properties[param] if isinstance(properties[param], Mapping) else {}
        type_name = str(schema.get("type", "any"))
        expected = PYTHON_TYPES.get(type_name)
        if expected is None:  # a type BFCL's Python checker does not know: compare values only
            if value not in possible:
                return _invalid_value(param, value, possible)
            continue
        nested = None
        if type_name in NESTED_TYPES:
            items = schema.get("items")
            nested = PYTHON_TYPES.get(str(items.get("type"))) if isinstance(items, Mapping) else None
        if type_name in ("float", "number") and type(value) is int:
            value = float(value)  # Python would convert it; BFCL accepts it
        type_result, is_variable = _check_type(param, value, possible, type_name, expected, nested)
        if not type_result.valid:
            return type_result
        if not is_variable:
            if expected is dict:
                result = _check_dict(param, value, possible)
            elif expected is list and nested is dict:
                result = _check_list_of_dicts(param, value, possible)
            elif expected is str:
                result = _check_string(param, value, possible)
            elif expected is list:
                result = _check_list(param, value, possible)
            else:
                result = OK if value in possible else _invalid_value(param, value, possible)
            if not result.valid:
                return result
            continue
        if value not in possible:
            return _invalid_value(param, value, possible)
    for param, possible in possible_args.items():
        if param not in arguments and "" not in possible:
            return AstResult(
                False,
                f"Optional parameter {param!r} not provided and not marked as optional.",
                "simple_function_checker:missing_optional",
            )
    return OK


def _invalid_value(param: str, value: Any, possible: Sequence[Any]) -> AstResult:
    return AstResult(
        False,
        f"Invalid value for parameter {param!r}: {value!r}. Expected one of {list(possible)}.",
        "value_error:others",
    )


def _description_for(functions: Sequence[Mapping[str, Any]], answer: Mapping[str, Any]) -> Mapping[str, Any]:
    ((expected_name, _),) = answer.items()
    found = find_description(functions, expected_name)
    # a gold call to a function not offered is a data error; checking against a bare doc reports it clearly
    return found if found is not None else {"name": expected_name, "parameters": {}}


def ast_match(
    functions: Iterable[Mapping[str, Any]],
    calls: Iterable[Any],
    possible_answers: Sequence[Mapping[str, Any]],
    category: str = "simple",
) -> AstResult:
    """Predicted `calls` against BFCL `possible_answers` (its ground_truth list) for the offered `functions`.

    `category` picks the rule as BFCL does: containing "parallel" → any order, one gold call per predicted
    call; containing "multiple" → one call, its function looked up among several; else simple.
    """
    docs = normalise_functions(functions)
    predicted = normalise_calls(calls)
    if "parallel" in category:
        return _match_parallel(docs, predicted, possible_answers)
    if len(predicted) != len(possible_answers):
        kind = "multiple_function_checker" if "multiple" in category else "simple_function_checker"
        return AstResult(False, "Wrong number of functions.", f"{kind}:wrong_count")
    if not predicted:
        return OK  # nothing expected, nothing called
    answer = possible_answers[0]
    function = _description_for(docs, answer) if "multiple" in category else (docs[0] if docs else {})
    name, arguments = predicted[0]
    return match_call(function, name, arguments, answer)


def _match_parallel(
    docs: Sequence[Mapping[str, Any]],
    predicted: Sequence[tuple[str, dict[str, Any]]],
    possible_answers: Sequence[Mapping[str, Any]],
) -> AstResult:
    """Each gold call must match a distinct predicted call, in any order (greedy, as BFCL's checker)."""
    if len(predicted) != len(possible_answers):
        return AstResult(
            False, "Wrong number of functions.", "parallel_function_checker_no_order:wrong_count"
        )
    matched: set[int] = set()
    for i, answer in enumerate(possible_answers):
        function = _description_for(docs, answer)
        errors = []
        for j, (name, arguments) in enumerate(predicted):
            if j in matched:
                continue
            result = match_call(function, name, arguments, answer)
            if result.valid:
                matched.add(j)
                break
            errors.append(f"call {j}: {result.error}")
        else:
            return AstResult(
                False,
                f"Could not find a matching function among the model's calls for gold call {i}: "
                + " | ".join(errors),
                "parallel_function_checker_no_order:cannot_find_match",
            )
    return OK
