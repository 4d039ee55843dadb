from __future__ import annotations

import json

import pytest

from downsize.backends.grammar import JsonObjectState, ToolCallGrammar

NAMES = ["get_user_details", "get_reservation_details", "calculate"]


def feed(text: str, names: list[str] = NAMES) -> ToolCallGrammar | None:
    g = ToolCallGrammar(names)
    return g if g.feed(text) else None


@pytest.mark.parametrize(
    "text",
    [
        'get_user_details {"user_id":"mia_li_3668"}',
        'calculate {"expression": "2 * (3 + 4.5e1)"}',
        'get_reservation_details {"a":[1,-2.5,true,false,null,{"b":"x\\"y"}],"c":{}}',
        "calculate {}",
    ],
)
def test_complete_calls_are_accepted_and_done(text: str) -> None:
    g = feed(text)
    assert g is not None and g.done
    json.loads(text.split(" ", 1)[1])  # the grammar accepted only valid JSON


@pytest.mark.parametrize(
    "text",
    [
        "get_user {}",  # unknown tool
        "book_reservation {}",
        'calculate {"a":01}',  # leading zero
        'calculate {"a":tru}',
        'calculate {"a" "b"}',
        "calculate []",  # arguments must be an object
        "calculate {} x",  # nothing after the object
        'calculate {"a":1,}',
    ],
)
def test_invalid_text_is_rejected(text: str) -> None:
    assert feed(text) is None


def test_prefixes_are_accepted_but_not_done() -> None:
    for prefix in ["get_", "get_user_details", 'get_user_details {"us', 'calculate {"a":[1,']:
        g = feed(prefix)
        assert g is not None and not g.done


def test_copy_is_independent() -> None:
    g = ToolCallGrammar(NAMES)
    assert g.feed("calculate {")
    trial = g.copy()
    assert not trial.feed("]")
    assert g.feed("}") and g.done


def test_strings_are_bounded() -> None:
    state = JsonObjectState(max_string=5)
    assert all(state.feed(c) for c in '{"a":"12345')
    assert not state.copy().feed("6")
