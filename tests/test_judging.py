"""Judging like the field: the teacher's ceiling (its agreement with itself where a situation recurs), and
agreement by equivalence beside the strict rule."""

from __future__ import annotations

import json
from typing import Any

import pytest

from downsize.contracts import OutputContract
from downsize.evaluate.ceiling import situation_key, teacher_ceiling
from downsize.shapes import completion
from downsize.types import Exchange

TOOL_CALL = OutputContract("tool_call")


def call(name: str, **args: Any) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        ],
    }
    return completion(message, "gpt-4o", 0, "c")


def text(words: str) -> dict[str, Any]:
    return completion({"role": "assistant", "content": words}, "gpt-4o", 0, "c")


def ex(workflow: str, turns: list[str], response: dict[str, Any], system: str = "policy") -> Exchange:
    messages = [{"role": "system", "content": system}] + [{"role": "user", "content": t} for t in turns]
    return Exchange({"messages": messages}, response, workflow=workflow)


def test_recurring_situations_give_the_teachers_self_agreement() -> None:
    log = [
        # situation A in three workflows: two answer alike, one differs -> 3 pairs, 1 agreeing
        ex("w1", ["hi", "my id is u1"], call("get_user", id="u1")),
        ex(
            "w2", ["hello", "hi", "my id is u1"], call("get_user", id="u1")
        ),  # older turns differ: same situation
        ex("w3", ["hi", "my id is u1"], call("get_user", id="U1")),
        # situation B twice in one workflow: no second workflow, not counted
        ex("w1", ["cancel it"], call("cancel", id="r1")),
        ex("w1", ["cancel it"], call("cancel", id="r2")),
        # situation C: both text replies at a tool call site, nothing the router would serve: not counted
        ex("w1", ["thanks"], text("You're welcome")),
        ex("w2", ["thanks"], text("Glad to help")),
        # situation D: a call against a text reply counts, and disagrees
        ex("w2", ["book it"], call("book", seat="1A")),
        ex("w3", ["book it"], text("Which seat?")),
    ]
    ceiling = teacher_ceiling(log, TOOL_CALL, recent=2)
    o = ceiling.overall
    assert (o.situations, o.answers, o.pairs, o.agreed) == (2, 5, 4, 1)
    assert o.agreement == pytest.approx(0.25) and o.agreement_lower95 < 0.25 < o.agreement_upper95
    by_task = teacher_ceiling(
        log, TOOL_CALL, task_of=lambda e: "book" if "book it" in str(e.request) else "rest", recent=2
    )
    assert by_task.by_task["book"].pairs == 1 and by_task.by_task["rest"].agreed == 1
    none = teacher_ceiling(log[3:7], TOOL_CALL, recent=2)  # one workflow each, or text against text
    assert none.overall.situations == 0 and none.overall.agreement is None


def test_a_situation_is_its_recent_turns_and_ignores_the_system_prompt() -> None:
    a = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    b = [
        {"role": "system", "content": "y"},
        {"role": "user", "content": "z"},
        {"role": "user", "content": "b"},
    ]
    assert situation_key(a, 1) == situation_key(b, 1) and situation_key(a, 2) != situation_key(b, 2)


def test_labels_compare_as_labels() -> None:
    contract = OutputContract("label", labels=("yes", "no"))
    log = [ex("w1", ["q"], text("yes")), ex("w2", ["q"], text("yes")), ex("w3", ["q"], text("no"))]
    o = teacher_ceiling(log, contract).overall
    assert (o.pairs, o.agreed) == (3, 1)


def test_the_curve_page_draws_the_ceiling() -> None:
    from downsize.evaluate.curves import curve_svg

    point = {"threshold": -1.0, "served": 10, "agreed": 6, "coverage": 0.5, "agreement": 0.6}
    report = {
        "target_agreement": 0.95,
        "validation": {"curve": [{**point, "agreement_lower95": 0.3}]},
        "teacher_ceiling": {"agreement": 0.72, "pairs": 418},
    }
    svg = curve_svg(report)
    assert 'class="ceiling"' in svg and "own agreement 72% (418 pairs)" in svg
    assert 'class="ceiling"' not in curve_svg({**report, "teacher_ceiling": None})


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "seats": {"type": "number"},
                    "cabin": {"type": "string", "default": "economy"},
                },
                "required": ["city", "seats"],
            },
        },
    }
]


@pytest.mark.parametrize(
    ("student", "alike"),
    [
        ({"city": "New York", "seats": 2}, True),  # the same call
        ({"seats": 2.0, "city": "new york"}, True),  # key order, number form, case: equivalent
        ({"city": "New York", "seats": 2, "cabin": "economy"}, True),  # an optional argument at its default
        ({"city": "New York", "seats": 2, "cabin": "business"}, False),  # an optional argument changed
        ({"city": "Boston", "seats": 2}, False),  # another value
    ],
)
def test_equivalence_follows_bfcls_possible_answer_rule(student: dict[str, Any], alike: bool) -> None:
    from downsize.decide.decision import Decision
    from downsize.evaluate.tool_calls import equivalent
    from downsize.types import ToolCall

    teacher = ex("w1", ["find"], call("search", city="New York", seats=2))
    teacher.request["tools"] = TOOLS
    decision = Decision(
        "accept", valid=True, value=ToolCall("search", student), call=ToolCall("search", student)
    )
    assert equivalent(TOOL_CALL, teacher, decision) is alike
    strict = TOOL_CALL.agrees(decision.value, teacher.response)
    assert strict == (student == {"city": "New York", "seats": 2})  # the strict rule is kept beside it


def test_a_probe_answer_pairs_with_the_call_it_repeats() -> None:
    from downsize.evaluate.probe import probe_report
    from downsize.types import PROBE_ROUTE

    def probe(of: Exchange, response: dict[str, Any], id_: int) -> Exchange:
        return Exchange(
            of.request, response, workflow=of.workflow, route=PROBE_ROUTE, id=id_, prompt_tokens=10
        )

    first = ex("w1", ["cancel r1"], call("cancel", id="r1"))
    first.id, first.response_kind = 1, "tool_call"
    other = ex("w2", ["thanks"], text("bye"))
    other.id, other.response_kind = 2, "text"
    again = probe(first, call("cancel", id="r1"), 3)
    again.response_kind = "tool_call"
    differs = probe(other, text("see you"), 4)
    differs.response_kind = "text"
    # the same situation in one workflow: without the probe nothing recurs; with it, one pair that agrees
    assert teacher_ceiling([first], TOOL_CALL).overall.pairs == 0
    both = teacher_ceiling([first, again], TOOL_CALL).overall
    assert (both.pairs, both.agreed, both.probe_pairs) == (1, 1, 1)
    report = probe_report([first, other, again, differs])
    assert report.overall.probes == report.overall.paired == 2
    # the tool-call pair agrees; two text answers of a site without tools compare as normalised text
    assert (report.overall.pairs, report.overall.agreed) == (2, 1)
    assert report.overall.prompt_tokens == 20
