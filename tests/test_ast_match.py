"""BFCL-style AST match on hand-checked calls, and the BFCL reader on a real or a tiny fake wheel."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from downsize.errors import ConfigError
from downsize.evaluate.ast_match import ast_match, standardize_string
from downsize.evaluate.bfcl import (
    CATEGORIES,
    BfclQuestion,
    data_paths,
    find_wheel,
    load_bfcl,
    load_category,
    split_halves,
    to_openai_tools,
)
from downsize.types import ToolCall

AREA: dict[str, Any] = {
    "name": "calculate_triangle_area",
    "description": "Calculate the area of a triangle given its base and height.",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer", "description": "The base of the triangle."},
            "height": {"type": "integer", "description": "The height of the triangle."},
            "unit": {"type": "string", "description": "The unit of measure (defaults to 'units')."},
        },
        "required": ["base", "height"],
    },
}
AREA_GOLD = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]

INTEREST: dict[str, Any] = {
    "name": "finance.compound_interest",
    "description": "Compound interest.",
    "parameters": {
        "type": "dict",
        "properties": {
            "principal": {"type": "integer"},
            "rate": {"type": "float"},
            "years": {"type": "integer"},
            "flags": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "dict", "properties": {"round": {"type": "boolean"}}},
        },
        "required": ["principal", "rate"],
    },
}
INTEREST_GOLD = [
    {
        "finance.compound_interest": {
            "principal": [1000],
            "rate": [0.05, 5.0],
            "years": [10, ""],
            "flags": [["monthly", "net"], ""],
            "options": [{"round": [True]}, ""],
        }
    }
]


def area(**arguments: Any) -> list[dict[str, Any]]:
    return [{"name": "calculate_triangle_area", "arguments": arguments}]


def test_correct_call_with_optional_left_out() -> None:
    assert ast_match([AREA], area(base=10, height=5), AREA_GOLD).valid
    assert ast_match([AREA], area(base=10, height=5, unit="units"), AREA_GOLD).valid


def test_strings_are_normalised_as_bfcl_does() -> None:
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024") == "april12024"
    assert ast_match([AREA], area(base=10, height=5, unit="Units"), AREA_GOLD).valid
    assert ast_match([AREA], area(base=10, height=5, unit="u_n-i.t s"), AREA_GOLD).valid
    result = ast_match([AREA], area(base=10, height=5, unit="cm"), AREA_GOLD)
    assert not result.valid and result.error_type == "value_error:string"


def test_wrong_type_is_rejected() -> None:
    result = ast_match([AREA], area(base="10", height=5), AREA_GOLD)
    assert not result.valid
    assert result.error_type == "type_error:simple"
    assert "'base'" in result.error and "integer" in result.error
    # bool is not an int, even though True == 1 in Python
    assert not ast_match([AREA], area(base=True, height=5), AREA_GOLD).valid


def test_missing_required_parameter() -> None:
    result = ast_match([AREA], area(base=10), AREA_GOLD)
    assert (result.valid, result.error_type) == (False, "simple_function_checker:missing_required")
    assert "'height'" in result.error


def test_unexpected_parameter() -> None:
    result = ast_match([AREA], area(base=10, height=5, colour="red"), AREA_GOLD)
    assert (result.valid, result.error_type) == (False, "simple_function_checker:unexpected_param")


def test_value_not_among_possible_answers() -> None:
    result = ast_match([AREA], area(base=11, height=5), AREA_GOLD)
    assert (result.valid, result.error_type) == (False, "value_error:others")


def test_wrong_function_name_and_wrong_count() -> None:
    wrong = [{"name": "triangle_area", "arguments": {"base": 10, "height": 5}}]
    assert ast_match([AREA], wrong, AREA_GOLD).error_type == "simple_function_checker:wrong_func_name"
    assert ast_match([AREA], area(base=10, height=5) * 2, AREA_GOLD).error_type.endswith("wrong_count")
    assert not ast_match([AREA], [], AREA_GOLD).valid


def interest(**arguments: Any) -> list[ToolCall]:
    return [ToolCall("finance_compound_interest", arguments)]  # OpenAI-style name: "." became "_"


def test_int_accepted_for_float_and_dotted_names() -> None:
    assert ast_match([INTEREST], interest(principal=1000, rate=5), INTEREST_GOLD).valid
    assert ast_match([INTEREST], interest(principal=1000, rate=0.05), INTEREST_GOLD).valid
    # but not a float for an int, nor a string for a float
    assert not ast_match([INTEREST], interest(principal=1000.0, rate=0.05), INTEREST_GOLD).valid
    assert not ast_match([INTEREST], interest(principal=1000, rate="0.05"), INTEREST_GOLD).valid
    assert not ast_match([INTEREST], interest(principal=1000, rate=0.06), INTEREST_GOLD).valid


def test_arrays_and_dicts() -> None:
    ok = interest(principal=1000, rate=0.05, flags=["Monthly", "net"], options={"round": True})
    assert ast_match([INTEREST], ok, INTEREST_GOLD).valid
    order = interest(principal=1000, rate=0.05, flags=["net", "monthly"])
    assert ast_match([INTEREST], order, INTEREST_GOLD).error_type == "value_error:list/tuple"
    items = interest(principal=1000, rate=0.05, flags=["monthly", 3])
    # as in BFCL, an optional marker ("") lets the nested type check pass; the value check still fails
    assert ast_match([INTEREST], items, INTEREST_GOLD).error_type == "value_error:list/tuple"
    required_flags = [
        {"finance.compound_interest": {"principal": [1000], "rate": [0.05], "flags": [["monthly"]]}}
    ]
    assert ast_match([INTEREST], items, required_flags).error_type == "type_error:nested"
    key = interest(principal=1000, rate=0.05, options={"round": True, "ceil": False})
    assert ast_match([INTEREST], key, INTEREST_GOLD).error_type == "value_error:dict_key"
    value = interest(principal=1000, rate=0.05, options={"round": False})
    assert ast_match([INTEREST], value, INTEREST_GOLD).error_type == "value_error:dict_value"


def test_list_of_dicts_in_order_and_empty_when_optional() -> None:
    deck_fn: dict[str, Any] = {
        "name": "find_card_in_deck",
        "parameters": {
            "type": "dict",
            "properties": {
                "rank": {"type": "string"},
                "deck": {"type": "array", "items": {"type": "dict"}},
            },
            "required": ["rank"],
        },
    }
    gold = [
        {"find_card_in_deck": {"rank": ["Ace"], "deck": [[{"rank": ["Ace"], "suit": ["Spades"]}], [], ""]}}
    ]
    call: list[dict[str, Any]] = [{"name": "find_card_in_deck", "arguments": {"rank": "ace", "deck": []}}]
    # [] is one of the possible decks (as in BFCL's parallel_multiple_179)
    assert ast_match([deck_fn], call, gold).valid
    call[0]["arguments"]["deck"] = [{"rank": "Ace", "suit": "spades"}]
    assert ast_match([deck_fn], call, gold).valid
    call[0]["arguments"]["deck"] = [{"rank": "Ace", "suit": "Hearts"}]
    result = ast_match([deck_fn], call, gold)
    assert not result.valid  # the error is the last possible answer's, as BFCL reports it
    assert result.error_type == "value_error:list_dict_count"


def test_parameter_not_marked_optional_must_be_given() -> None:
    gold = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["cm"]}}]
    result = ast_match([AREA], area(base=10, height=5), gold)
    assert (result.valid, result.error_type) == (False, "simple_function_checker:missing_optional")


def test_variable_name_in_gold_answer_accepts_its_type() -> None:
    gold = [{"calculate_triangle_area": {"base": ["b"], "height": [5], "unit": [""]}}]
    assert ast_match([AREA], area(base="b", height=5), gold).valid
    assert not ast_match([AREA], area(base="c", height=5), gold).valid


def test_parallel_calls_match_in_any_order() -> None:
    gold = [
        {"calculate_triangle_area": {"base": [10], "height": [5], "unit": [""]}},
        {"calculate_triangle_area": {"base": [3], "height": [4], "unit": [""]}},
    ]
    forward = area(base=10, height=5) + area(base=3, height=4)
    backward = area(base=3, height=4) + area(base=10, height=5)
    assert ast_match([AREA], forward, gold, "parallel").valid
    assert ast_match([AREA], backward, gold, "parallel").valid
    twice = area(base=10, height=5) * 2  # one predicted call may not satisfy two gold calls
    result = ast_match([AREA], twice, gold, "parallel")
    assert (result.valid, result.error_type) == (
        False,
        "parallel_function_checker_no_order:cannot_find_match",
    )
    assert ast_match([AREA], forward[:1], gold, "parallel").error_type.endswith("wrong_count")


def test_multiple_chooses_the_gold_function_among_several() -> None:
    functions = [AREA, INTEREST]
    assert ast_match(functions, interest(principal=1000, rate=0.05), INTEREST_GOLD, "multiple").valid
    result = ast_match(functions, area(base=10, height=5), INTEREST_GOLD, "multiple")
    assert (result.valid, result.error_type) == (False, "simple_function_checker:wrong_func_name")


def test_call_shapes_are_all_read() -> None:
    shapes: list[Any] = [
        [ToolCall("calculate_triangle_area", {"base": 10, "height": 5})],
        [{"name": "calculate_triangle_area", "arguments": '{"base": 10, "height": 5}'}],
        [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "calculate_triangle_area", "arguments": '{"base":10,"height":5}'},
            }
        ],
        [{"calculate_triangle_area": {"base": 10, "height": 5}}],
    ]
    for calls in shapes:
        assert ast_match([AREA], calls, AREA_GOLD).valid, calls
    tools = to_openai_tools([AREA])
    assert ast_match(tools, shapes[0], AREA_GOLD).valid  # OpenAI tools accepted as the schema too
    broken = [{"name": "calculate_triangle_area", "arguments": '{"base": 10,'}]
    assert ast_match([AREA], broken, AREA_GOLD).error_type == "simple_function_checker:missing_required"


def test_openai_tools_conversion() -> None:
    (tool,) = to_openai_tools([INTEREST])
    fn = tool["function"]
    assert tool["type"] == "function" and fn["name"] == "finance_compound_interest"
    params = fn["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["rate"]["type"] == "number"
    assert params["properties"]["rate"]["format"] == "float"
    assert params["properties"]["flags"] == {"type": "array", "items": {"type": "string"}}
    assert params["properties"]["options"]["type"] == "object"
    assert params["properties"]["options"]["properties"]["round"]["type"] == "boolean"
    assert INTEREST["parameters"]["type"] == "dict"  # the source is not modified


# --- the reader ---------------------------------------------------------------------------------------


def _real_wheel() -> Path | None:
    """A real bfcl-eval wheel, if one was downloaded ($DOWNSIZE_BFCL_WHEEL or ~/.downsize/cache/bfcl)."""
    for candidate in (os.environ.get("DOWNSIZE_BFCL_WHEEL"), Path.home() / ".downsize" / "cache" / "bfcl"):
        if candidate:
            try:
                return find_wheel(candidate)
            except ConfigError:
                continue
    return None


REAL_WHEEL = _real_wheel()


def _pick(options: list[Any]) -> Any:
    """The first possible value that is not BFCL's "may be omitted" marker, as a model would write it."""
    value = next(v for v in options if v != "")
    if isinstance(value, dict):  # possible dicts list the possible values of each key
        return {k: _pick(v) for k, v in value.items() if any(x != "" for x in v)}
    if isinstance(value, list):
        return [
            {k: _pick(v) for k, v in x.items() if any(y != "" for y in v)} if isinstance(x, dict) else x
            for x in value
        ]
    return value


def _gold_call(answer: dict[str, Any]) -> dict[str, Any]:
    """A call built from the gold answer: the first possible value of each parameter (all-optional ones left out)."""
    ((name, params),) = answer.items()
    arguments = {p: _pick(values) for p, values in params.items() if any(v != "" for v in values)}
    return {"name": name.replace(".", "_"), "arguments": arguments}


@pytest.fixture
def fake_wheel(tmp_path: Path) -> Path:
    """A wheel with BFCL's layout and four simple_python questions, to test the reader without the download."""
    questions, answers = [], []
    for i in range(4):
        questions.append(
            {
                "id": f"simple_python_{i}",
                "question": [
                    [{"role": "user", "content": f"Area of a triangle with base {i + 1} and height 2?"}]
                ],
                "function": [AREA],
            }
        )
        answers.append(
            {
                "id": f"simple_python_{i}",
                "ground_truth": [{AREA["name"]: {"base": [i + 1], "height": [2], "unit": [""]}}],
            }
        )
    wheel = tmp_path / "bfcl_eval-2026.3.23-py3-none-any.whl"
    q_name, a_name = data_paths("simple_python")
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(q_name, "\n".join(json.dumps(q) for q in questions) + "\n")
        archive.writestr(a_name, "\n".join(json.dumps(a) for a in answers) + "\n")
    return wheel


def test_reader_on_a_fake_wheel(fake_wheel: Path) -> None:
    questions = load_category("simple_python", fake_wheel)
    assert [q.id for q in questions] == [f"simple_python_{i}" for i in range(4)]
    q = questions[0]
    assert q.messages[0]["role"] == "user" and q.tools[0]["function"]["parameters"]["type"] == "object"
    assert q.score(area(base=1, height=2)).valid
    assert not q.score(area(base=2, height=2)).valid
    train, test = split_halves(questions)
    assert len(train) == len(test) == 2
    assert {x.id for x in train}.isdisjoint(x.id for x in test)
    assert split_halves(list(reversed(questions))) == (train, test)  # independent of file order
    assert find_wheel(fake_wheel.parent) == fake_wheel  # a folder holding the wheel works too
    with pytest.raises(ConfigError, match="has no bfcl_eval/data/BFCL_v4_multiple.json"):
        load_category("multiple", fake_wheel)


def test_missing_wheel_says_how_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOWNSIZE_BFCL_WHEEL", raising=False)
    with pytest.raises(ConfigError, match=r"pip download --no-deps bfcl-eval==2026\.3\.23 -d "):
        find_wheel()
    with pytest.raises(ConfigError, match="pip download"):
        find_wheel(tmp_path / "nowhere")


@pytest.mark.skipif(REAL_WHEEL is None, reason="no bfcl-eval wheel downloaded (see downsize.evaluate.bfcl)")
def test_real_wheel_categories_and_gold_answers_match_themselves() -> None:
    data = load_bfcl(CATEGORIES, REAL_WHEEL)
    for category, halves in data.items():
        questions: list[BfclQuestion] = halves["train"] + halves["test"]
        assert len(questions) >= 100, category
        assert abs(len(halves["train"]) - len(halves["test"])) <= 1
        for q in questions:
            calls = [_gold_call(a) for a in q.ground_truth]
            result = q.score(calls)
            assert result.valid, (q.id, result.error)
