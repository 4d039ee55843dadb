"""Copied arguments: learned from the teacher's calls on real tau-airline logs, enforced by the grammar."""

from __future__ import annotations

import json
from pathlib import Path

from downsize.backends.grammar import ToolCallGrammar, tool_schemas
from downsize.copying import (
    _string_leaves,
    conversation_text,
    conversation_tokens,
    is_span,
    learn_copied,
    learn_spans,
    load_copied,
    load_spans,
    options_line,
    restrict_schemas,
    save_copied,
)
from downsize.importers.tau_airline import read_exchanges
from downsize.shapes import response_message, tool_calls
from downsize.types import ToolCall

TOOLS = json.loads((Path(__file__).resolve().parents[2] / "shared/data/tau-airline/tools.json").read_text())


def _teacher_calls(tau_path: Path, split: str) -> list[tuple[list[dict], ToolCall]]:
    return [
        (ex.request["messages"], call)
        for ex in read_exchanges(tau_path)
        if ex.split == split
        for call in tool_calls(response_message(ex.response))
    ]


def test_the_ids_gpt4o_copies_are_learned_and_free_text_is_not(tau_path: Path) -> None:
    copied = learn_copied(_teacher_calls(tau_path, "dev"))
    assert "reservation_id" in copied["get_reservation_details"]
    assert "user_id" in copied["get_user_details"]
    assert "reservation_id" in copied["cancel_reservation"]
    # free text, computed values and words are never restricted
    assert "think" not in copied and "transfer_to_human_agents" not in copied and "calculate" not in copied
    assert "cabin" not in copied.get("update_reservation_flights", {})
    # airport codes are in the conversation only ~95% of the time (gpt-4o knows some from city names)
    assert "origin" not in copied.get("search_direct_flight", {})
    # on the unseen test split, the learned parameters hold as well: every value is a conversation token
    test = _teacher_calls(tau_path, "test")
    for messages, call in test:
        for param in copied.get(call.name, {}):
            if param in call.arguments:
                assert call.arguments[param] in conversation_tokens(messages), (call, param)


def test_too_few_or_not_always_copied_parameters_are_not_learned() -> None:
    said = [{"role": "user", "content": "my reservation is ABC123"}]
    always = [(said, ToolCall("get", {"reservation_id": "ABC123"}))] * 8
    assert learn_copied(always) == {"get": {"reservation_id": ["ID_UPPER_ALNUM"]}}
    assert learn_copied(always[:7]) == {}  # fewer than min_calls
    invented = always + [
        ([{"role": "user", "content": "the other one"}], ToolCall("get", {"reservation_id": "XYZ789"}))
    ]
    assert learn_copied(invented) == {}  # 8 of 9 copied < 0.98
    system_only = [
        ([{"role": "system", "content": "ABC123"}], ToolCall("get", {"reservation_id": "ABC123"}))
    ] * 9
    assert learn_copied(system_only) == {}  # the system prompt is not the conversation


def test_restricted_grammar_accepts_only_ids_the_conversation_holds(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "policy mentions QQQ999"},
        {"role": "user", "content": "I booked ZFA04Y and also 8JX2WO, my id is mia_li_3668"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "get_user_details", "arguments": '{"user_id": "mia_li_3668"}'},
                }
            ],
        },
    ]
    copied = {"get_reservation_details": {"reservation_id": ["ID_UPPER_ALNUM", "UPPER6"]}}
    save_copied(tmp_path, copied)
    assert load_copied(tmp_path) == (copied, True) and load_copied(tmp_path / "none") == ({}, False)
    schemas = restrict_schemas(tool_schemas(TOOLS), copied, messages)
    assert schemas["get_reservation_details"]["properties"]["reservation_id"]["enum"] == ["8JX2WO", "ZFA04Y"]
    assert schemas["get_user_details"] == tool_schemas(TOOLS)["get_user_details"]  # untouched

    def accepts(text: str) -> bool:
        grammar = ToolCallGrammar(["get_reservation_details"], 160, schemas)
        return grammar.feed(text) and grammar.done

    assert accepts('get_reservation_details {"reservation_id":"ZFA04Y"}')
    assert not accepts('get_reservation_details {"reservation_id":"ZFA04"}')  # a misspelt id
    assert not accepts('get_reservation_details {"reservation_id":"QQQ999"}')  # only in the system prompt
    # nothing of the shape to copy: the parameter keeps its schema rather than becoming impossible
    bare = restrict_schemas(tool_schemas(TOOLS), copied, [{"role": "user", "content": "hello"}])
    assert "enum" not in bare["get_reservation_details"]["properties"]["reservation_id"]


def test_options_line_lists_candidates_in_order_and_marks_the_ones_already_used() -> None:
    messages = [
        {"role": "system", "content": "policy QQQ999"},
        {"role": "user", "content": "my user id is mia_li_3668"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {
                        "name": "get_reservation_details",
                        "arguments": '{"reservation_id": "NO6JO3"}',
                    },
                }
            ],
        },
        {
            "role": "tool",
            "content": '{"user_id": "mia_li_3668", "reservations": ["NO6JO3", "AIXC49", "HKEG34"]}',
        },
    ]
    copied = {
        "get_reservation_details": {"reservation_id": ["ID_UPPER_ALNUM", "UPPER6"]},
        "cancel_reservation": {"reservation_id": ["ID_UPPER_ALNUM"]},
        "get_user_details": {"user_id": ["ID_SNAKE"]},
    }
    assert options_line(messages, copied) == "reservation_id: NO6JO3* AIXC49 HKEG34; user_id: mia_li_3668"
    assert options_line(messages, copied, max_options=1) == "reservation_id: NO6JO3*; user_id: mia_li_3668"
    assert (
        options_line(messages, {}) == "" and options_line([{"role": "user", "content": "hi"}], copied) == ""
    )


def test_spans_gpt4o_writes_as_the_conversation_does_are_learned_at_any_depth(tau_path: Path) -> None:
    dev = _teacher_calls(tau_path, "dev")
    copied = learn_copied(dev)
    spans = learn_spans(dev, copied)
    # names, flight numbers and dates as written, inside arrays of objects too
    assert {"flights[].flight_number", "flights[].date"} <= set(spans["update_reservation_flights"])
    assert {"passengers[].first_name", "passengers[].last_name"} <= set(spans["book_reservation"])
    assert "origin" in spans["search_direct_flight"]
    assert "origin" not in spans["book_reservation"]  # an airport code there: a copied id
    # what gpt-4o composes or computes is not a span; ids stay with their stricter rule
    assert "think" not in spans and "transfer_to_human_agents" not in spans and "calculate" not in spans
    assert "reservation_id" not in spans.get("get_reservation_details", [])
    # search dates are spans 76% of the time ("next Friday" becomes 2024-05-24): below the 95% rule
    assert "date" not in spans.get("search_direct_flight", [])
    # on the unseen test split, most learned span values are spans there too (it is a rate, not a law)
    test = _teacher_calls(tau_path, "test")
    hits = [
        is_span(value, conversation_text(messages))
        for messages, call in test
        for path, value in _string_leaves(call.arguments)
        if path in spans.get(call.name, [])
    ]
    assert len(hits) >= 40 and sum(hits) / len(hits) > 0.9


def test_the_span_grammar_takes_only_word_aligned_spans_of_the_conversation(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": 'I fly from Tel Aviv, Israel on "2024-05-20", seat 12A'},
        {"role": "system", "content": "Secret City"},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "book",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "origin": {"type": "string"},
                        "cabin": {"type": "string", "enum": ["economy", "business"]},
                        "legs": {
                            "type": "array",
                            "items": {"type": "object", "properties": {"date": {"type": "string"}}},
                        },
                    },
                },
            },
        }
    ]
    spans = {"book": ["cabin", "legs[].date", "origin"]}
    schemas = restrict_schemas(tool_schemas(tools), {}, messages, spans)
    grammar = ToolCallGrammar(["book"], 160, schemas)

    def fits(arguments: str) -> bool:
        trial = grammar.copy()
        return trial.feed("book " + arguments) and trial.done

    assert fits('{"origin":"Tel Aviv"}') and fits('{"origin":"Tel Aviv, Israel"}')
    assert fits('{"origin":"12A"}')
    assert not fits('{"origin":"Tel Aviv, CA"}')  # rewritten, not copied
    assert not fits('{"origin":"el Aviv"}') and not fits('{"origin":"Tel Av"}')  # not word-aligned
    assert not fits('{"origin":"Secret City"}')  # the system prompt is not the conversation
    assert not fits('{"origin":"2024-05-20\\", seat"}')  # a span never crosses a quote
    assert fits('{"legs":[{"date":"2024-05-20"}]}') and not fits('{"legs":[{"date":"2024-05-21"}]}')
    assert fits('{"cabin":"business"}')  # an enum keeps its own rule
    # every prefix the grammar takes can still be completed: a half-written word ends where the word does
    trial = grammar.copy()
    assert trial.feed('book {"origin":"Isr') and not trial.copy().feed('"') and trial.feed('ael"}')
    # saved beside the adapter and read back; older folders have none
    save_copied(tmp_path, {}, spans=spans)
    assert load_spans(tmp_path) == spans and load_spans(tmp_path / "missing") == {}


def test_a_parameter_name_that_is_a_span_across_tools_applies_to_tools_never_seen() -> None:
    from downsize.copying import ANY_TOOL, NOT_SPAN, span_paths

    def call(tool: str, city: str, said: str) -> tuple[list[dict[str, str]], ToolCall]:
        return [{"role": "user", "content": said}], ToolCall(tool, {"city": city, "note": f"about {city}"})

    # `city` is copied as written by five tools, too few calls each for the per-tool rule
    calls = [
        call(f"tool{i}", c, f"weather in {c} please") for i in range(5) for c in ("Oslo", "Tel Aviv") * 3
    ]
    # one tool copies it 7 times of 8 and once writes a code: enough calls of its own to overrule the name
    calls += [call("geocode", "Oslo", "Oslo on the map") for _ in range(7)]
    calls += [call("geocode", "LON", "London on the map")]
    spans = learn_spans(calls)
    assert spans[ANY_TOOL] == ["city"]  # `note` is composed, never a span
    assert spans["geocode"] == [NOT_SPAN + "city"]
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    assert span_paths(spans, "forecast", schema) == ["city"]  # a tool training never saw
    assert span_paths(spans, "geocode", schema) == []
    assert span_paths(spans, "forecast", {"type": "object", "properties": {"town": {"type": "string"}}}) == []
    # the grammar of the unseen tool then takes only spans of its conversation
    messages = [{"role": "user", "content": "Is it raining in Bergen, Norway?"}]
    tools = [{"type": "function", "function": {"name": "forecast", "parameters": schema}}]
    grammar = ToolCallGrammar(["forecast"], 60, restrict_schemas(tool_schemas(tools), {}, messages, spans))
    assert grammar.copy().feed('forecast {"city":"Bergen, Norway"')
    assert not grammar.copy().feed('forecast {"city":"Bergn')
    # one tool alone is not enough to generalise a name
    alone = [call("tool0", c, f"weather in {c} please") for c in ("Oslo", "Tel Aviv") * 5]
    assert ANY_TOOL not in learn_spans(alone)
