"""The evaluation harness by output kind (tool calls, JSON, text) and the agreement-vs-coverage page."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from downsize.contracts import normalise_text, response_format_schema
from downsize.evaluate.curves import curve_series, point_at_threshold, write_curve_html
from downsize.evaluate.json_metrics import (
    canonical_json,
    field_match,
    flatten,
    parse_json,
)
from downsize.evaluate.metrics import Scored, calibrate, curve, wilson_lower
from downsize.evaluate.outputs import (
    OutputScore,
    as_tool_calls,
    score_exchanges,
    score_output,
    score_outputs,
    summarize,
)
from downsize.evaluate.text_metrics import cosine_similarities
from downsize.shapes import completion, describe_response
from downsize.types import Exchange, ToolCall

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def tau_tools(tau_path: Path) -> list[dict[str, Any]]:
    return json.loads((tau_path / "tools.json").read_text())


@pytest.fixture(scope="module")
def tau_runs(tau_path: Path) -> list[dict[str, Any]]:
    return json.loads((tau_path / "trajectories-gpt-4o.json").read_text())


@pytest.fixture(scope="module")
def minilm() -> Callable[[list[str]], np.ndarray]:
    """all-MiniLM-L6-v2 loaded once for the module; records the batches it was asked for."""
    from downsize.discover.embed import embed_minilm

    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return embed_minilm(texts)

    embed.calls = calls  # type: ignore[attr-defined]
    embed(["warm up"])
    return embed


# -- tool calls ------------------------------------------------------------------------------------------


def test_tool_call_reads_every_shape() -> None:
    call = ToolCall("get_user_details", {"user_id": "sara_doe_496"})
    shapes: list[Any] = [
        call,
        'get_user_details {"user_id": "sara_doe_496"}',  # the specialist's target text
        {"name": "get_user_details", "arguments": '{"user_id": "sara_doe_496"}'},
        {"name": "get_user_details", "arguments": {"user_id": "sara_doe_496"}},
        {"get_user_details": {"user_id": "sara_doe_496"}},  # BFCL's form
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_user_details", "arguments": '{"user_id":"sara_doe_496"}'},
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_user_details", "arguments": '{"user_id": "sara_doe_496"}'},
                }
            ],
        },
        completion(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "get_user_details", "arguments": '{"user_id":"sara_doe_496"}'},
                    }
                ],
            },
            "m",
            0,
            "x",
        ),
    ]
    for shape in shapes:
        assert as_tool_calls(shape) == [call], shape
    assert as_tool_calls(None) == [] and as_tool_calls("") == []
    assert as_tool_calls({"role": "assistant", "content": "Sure."}) == []  # a text reply: no call
    assert as_tool_calls("get_user_details(") is None  # unreadable


def test_tool_call_metrics_hand_checked(tau_tools: list[dict[str, Any]]) -> None:
    ref = ToolCall("get_user_details", {"user_id": "sara_doe_496"})
    same = score_output("tool_call", 'get_user_details {"user_id":"sara_doe_496"}', ref, tau_tools)
    assert same == OutputScore(
        "tool_call",
        True,
        1.0,
        {"name_match": True, "exact": True, "argument_f1": 1.0, "schema_valid": True, "ast": True},
    )
    # BFCL's AST rule reads strings case- and punctuation-insensitively; exact match does not
    cased = score_output(
        "tool_call", ToolCall("get_user_details", {"user_id": "Sara-Doe 496"}), ref, tau_tools
    )
    assert cased.metrics["ast"] is True and cased.metrics["exact"] is False and not cased.agrees
    assert cased.reason == "different arguments"
    # a wrong type is schema-invalid and fails the AST check
    typed = score_output("tool_call", ToolCall("get_user_details", {"user_id": 496}), ref, tau_tools)
    assert typed.metrics["schema_valid"] is False and typed.metrics["ast"] is False
    assert "invalid: get_user_details: user_id" in typed.reason
    wrong = score_output(
        "tool_call", ToolCall("get_reservation_details", {"reservation_id": "ZFA04Y"}), ref, tau_tools
    )
    assert wrong.metrics == {
        "name_match": False,
        "exact": False,
        "argument_f1": 0.0,
        "schema_valid": True,
        "ast": False,
    }
    unknown = score_output("tool_call", ToolCall("delete_everything", {}), ref, tau_tools)
    assert unknown.metrics["schema_valid"] is False and "unknown tool 'delete_everything'" in unknown.reason
    unreadable = score_output("tool_call", "get_user_details {", ref, tau_tools)
    assert not unreadable.agrees and unreadable.reason.startswith("unreadable tool call")
    # without the tools, no schema or AST metric
    assert set(score_output("tool_call", ref, ref).metrics) == {"name_match", "exact", "argument_f1"}


def test_argument_field_f1_hand_checked() -> None:
    ref = ToolCall("f", {"a": 1, "b": "x", "c": [1, 2]})
    pred = ToolCall("f", {"a": 1.0, "b": "y", "c": [1, 2], "d": True})
    s = score_output("tool_call", pred, ref)
    # leaves: ref a, b, c/0, c/1 (4); pred a, b, c/0, c/1, d (5); matched a (1 == 1.0), c/0, c/1 (3)
    precision, recall = 3 / 5, 3 / 4
    assert s.score == pytest.approx(2 * precision * recall / (precision + recall)) == pytest.approx(2 / 3)
    assert s.metrics["name_match"] and not s.metrics["exact"]
    # a call without arguments is one leaf: the right name alone matches it
    assert (
        score_output("tool_call", ToolCall("list_all_airports", {}), ToolCall("list_all_airports", {})).score
        == 1.0
    )


def test_parallel_calls_in_any_order_and_text_replies(tau_tools: list[dict[str, Any]]) -> None:
    a = ToolCall("get_reservation_details", {"reservation_id": "ZFA04Y"})
    b = ToolCall("get_reservation_details", {"reservation_id": "Q69X3R"})
    c = ToolCall("get_user_details", {"user_id": "sara_doe_496"})
    s = score_output("tool_call", [b, c, a], [a, b, c], tau_tools)
    assert s.agrees and s.metrics["ast"] and s.score == 1.0
    one_missing = score_output("tool_call", [b, c], [a, b, c], tau_tools)
    assert not one_missing.metrics["name_match"] and not one_missing.metrics["ast"]
    # 2 of the 3 reference calls matched leaf for leaf: P = 2/2, R = 2/3
    assert one_missing.score == pytest.approx(0.8)
    # the teacher replied in text: a call disagrees, and so does nothing only when the teacher called
    text = {"role": "assistant", "content": "Could you give me your user id?"}
    assert not score_output("tool_call", c, text).agrees
    assert score_output("tool_call", None, text).agrees
    assert not score_output("tool_call", None, c).agrees


def test_ast_lets_an_optional_parameter_out_or_at_its_default() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "default": 10}},
                    "required": ["query"],
                },
            },
        }
    ]
    ref = ToolCall("search", {"query": "Flights to SFO"})
    for args, ast in (
        ({"query": "flights to sfo"}, True),
        ({"query": "flights to sfo", "limit": 10}, True),
        ({"query": "flights to sfo", "limit": 3}, False),
    ):
        assert score_output("tool_call", ToolCall("search", args), ref, tools).metrics["ast"] is ast, args


def test_ast_reads_nested_objects_one_level_deep() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "find",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "filters": {"type": "object"},
                        "stops": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["filters"],
                },
            },
        }
    ]
    ref = ToolCall(
        "find", {"filters": {"tags": ["a", "b"], "city": "San Francisco"}, "stops": [{"code": "JFK"}]}
    )
    pred = ToolCall(
        "find", {"filters": {"city": "san francisco", "tags": ["a", "b"]}, "stops": [{"code": "jfk"}]}
    )
    s = score_output("tool_call", pred, ref, tools)
    assert s.metrics["ast"] is True and s.metrics["exact"] is False
    other = ToolCall(
        "find", {"filters": {"tags": ["a"], "city": "San Francisco"}, "stops": [{"code": "JFK"}]}
    )
    assert score_output("tool_call", other, ref, tools).metrics["ast"] is False


def test_teacher_against_itself_on_real_tau_calls(
    tau_runs: list[dict[str, Any]], tau_tools: list[dict[str, Any]]
) -> None:
    """Every gpt-4o call of 40 tau-airline runs matches itself by every metric (the AST answer built from it included)."""
    messages = [
        m
        for run in tau_runs[:40]
        for m in run["traj"]
        if m.get("role") == "assistant" and m.get("tool_calls")
    ]
    assert len(messages) > 150
    scores = score_outputs("tool_call", messages, messages, [tau_tools] * len(messages))
    summary = summarize(scores)["by_kind"]["tool_call"]
    assert summary["agreement"] == summary["ast"] == summary["schema_valid"] == summary["argument_f1"] == 1.0
    # across trials of one task, the first call differs now and then: exact implies AST, and both imply the name
    firsts: dict[int, list[Any]] = {}
    for run in tau_runs:
        first = next((m for m in run["traj"] if m.get("role") == "assistant" and m.get("tool_calls")), None)
        if first is not None:
            firsts.setdefault(run["task_id"], []).append(first)
    pairs = [(calls[0], other) for calls in firsts.values() for other in calls[1:]]
    cross = score_outputs("tool_call", [p for _, p in pairs], [r for r, _ in pairs], [tau_tools] * len(pairs))
    assert 0 < sum(s.agrees for s in cross) < len(cross)
    for s in cross:
        assert not s.agrees or s.metrics["ast"]
        assert not s.metrics["ast"] or s.metrics["name_match"]


# -- JSON ------------------------------------------------------------------------------------------------


def test_json_field_match_hand_checked() -> None:
    ref = {"name": "Sara Doe", "age": 30, "tags": ["a", "b"], "address": {"city": "SF", "zip": "94103"}}
    pred = '{"name": "sara  doe", "age": 30.0, "tags": ["a"], "address": {"city": "LA", "zip": "94103"}, "extra": null}'
    # leaves: ref name, age, tags/0, tags/1, address/city, address/zip (6); pred name, age, tags/0,
    # address/city, address/zip, extra (6); matched name (case and spaces), age (30 == 30.0), tags/0, zip (4)
    s = score_output("json", pred, ref)
    assert (s.metrics["parses"], s.metrics["schema_valid"], s.metrics["exact"]) == (True, None, False)
    assert [s.metrics[k] for k in ("field_precision", "field_recall", "field_f1")] == pytest.approx(
        [4 / 6] * 3
    )
    assert s.score == pytest.approx(4 / 6) and not s.agrees and s.reason == "4 of 6 reference fields matched"
    assert sorted(flatten(ref)) == sorted(
        [
            (("name",), "Sara Doe"),
            (("age",), 30),
            (("tags", 0), "a"),
            (("tags", 1), "b"),
            (("address", "city"), "SF"),
            (("address", "zip"), "94103"),
        ]
    )
    m = field_match({"a": {}, "b": []}, {"a": {}, "b": [1]})  # empty containers are leaves
    assert (m.matched, m.predicted, m.reference) == (1, 2, 2)
    assert field_match({}, {}).f1 == 1.0 and field_match({"a": 1}, {}).f1 == 0.0


def test_json_exact_validity_and_schema() -> None:
    assert score_output(
        "json", '{"b": 2.0, "a": [1, "x"]}', {"a": [1, "x"], "b": 2}
    ).agrees  # key order, 2 == 2.0
    assert canonical_json({"b": 2.0, "a": 1}) == '{"a":1,"b":2}'
    bool_int = score_output("json", {"a": True}, {"a": 1})
    assert not bool_int.agrees and bool_int.score == 0.0  # true is not 1
    assert not score_output("json", '{"a": "X"}', {"a": "x"}).agrees  # exact keeps case; field match does not
    assert score_output("json", '{"a": "X"}', {"a": "x"}).score == 1.0
    broken = score_output("json", '{"a": 1', {"a": 1}, {"type": "object"})
    assert (
        broken.metrics["parses"] is False and broken.metrics["schema_valid"] is False and broken.score == 0.0
    )
    assert broken.reason.startswith("not JSON")
    assert parse_json('```json\n{"a": 1}\n```') == ({"a": 1}, "")
    assert parse_json("  ")[1] == "empty output"
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    bad = score_output("json", '{"age": "30"}', {"age": 30}, schema)
    assert bad.metrics["schema_valid"] is False and "age: '30' is not of type 'integer'" in bad.reason
    assert score_output("json", '{"age": 30}', {"age": 30}, schema).metrics["schema_valid"] is True
    assert score_output("json", "{}", "not json").error.startswith("the reference is not JSON")
    # the teacher's reply as a chat.completion: its content is the JSON
    reply = completion({"role": "assistant", "content": '{"age": 30}'}, "m", 0, "x")
    assert score_output("json", {"role": "assistant", "content": '{"age": 30}'}, reply).agrees
    request = {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    assert response_format_schema(request) == schema and response_format_schema({}) is None


# -- text ------------------------------------------------------------------------------------------------


def test_text_normalised_exact_and_similarity(
    minilm: Callable[[list[str]], np.ndarray], tau_runs: list[dict[str, Any]]
) -> None:
    assert normalise_text("  Hello,   WORLD!  ") == "hello world"
    # real gpt-4o replies: the first answer of two trials of task 3 (paraphrases), and an unrelated one
    first = [
        next(m["content"] for m in run["traj"] if m["role"] == "assistant" and m.get("content"))
        for run in tau_runs
        if run["task_id"] == 3
    ]
    paraphrase_a, paraphrase_b = first[0], first[1]
    assert paraphrase_a != paraphrase_b
    unrelated = "Your reservation has been cancelled and the refund will go to your credit card in 5 to 7 business days."
    minilm.calls.clear()  # type: ignore[attr-defined]
    preds = ["Hello, world!", paraphrase_b, unrelated, "", "", paraphrase_b]
    refs = ["hello world", paraphrase_a, paraphrase_a, "", "something", paraphrase_a]
    scores = score_outputs("text", preds, refs, embed=minilm)
    assert len(minilm.calls) == 1  # type: ignore[attr-defined]  # one batch for the whole evaluation
    assert sorted(minilm.calls[0]) == sorted({t for t in preds + refs if t})  # type: ignore[attr-defined]
    same, para, far, empty, one_empty, _ = scores
    assert same.agrees and same.metrics["exact"] is True and same.score == 1.0
    assert 0.8 < same.metrics["similarity"] < 1.0  # "Hello, world!" and "hello world" embed apart a little
    assert not para.agrees and para.score > 0.7 and para.score > far.score + 0.2
    assert para.reason == f"different text (similarity {para.score:.2f})"
    assert empty.agrees and empty.score == 1.0 and one_empty.score == 0.0
    summary = summarize(scores)["by_kind"]["text"]
    assert summary["exact"] == pytest.approx(2 / 6) and summary["similarity"] == pytest.approx(
        sum(s.metrics["similarity"] for s in scores) / 6
    )


def test_cosine_uses_any_embedder() -> None:
    table = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [1.0, 1.0]}

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([table[t] for t in texts])

    sims = cosine_similarities(["a", "a", "c"], ["a", "b", "a"], embed)
    assert sims == pytest.approx([1.0, 0.0, 1 / math.sqrt(2)])  # rows are normalised here
    with pytest.raises(ValueError, match="2 predicted texts for 1"):
        cosine_similarities(["a", "b"], ["a"], embed)


# -- exchanges and summaries -----------------------------------------------------------------------------


def _exchanges(runs: list[dict[str, Any]], tools: list[dict[str, Any]], n: int) -> list[Exchange]:
    out = []
    for run in runs[:3]:
        traj = run["traj"]
        for k, message in enumerate(traj):
            if message["role"] != "assistant" or k == 0:
                continue
            response = completion(message, "gpt-4o", 0, f"x{k}")
            kind, names = describe_response(response)
            if kind not in ("tool_call", "text"):
                continue
            out.append(
                Exchange(
                    request={"messages": traj[:k], "tools": tools},
                    response=response,
                    response_kind=kind,
                    tool_names=names,
                )
            )
    return out[:n]


def test_score_exchanges_by_kind(tau_runs: list[dict[str, Any]], tau_tools: list[dict[str, Any]]) -> None:
    exchanges = _exchanges(tau_runs, tau_tools, 30)
    kinds = {ex.response_kind for ex in exchanges}
    assert kinds == {"tool_call", "text"}

    def embed(texts: list[str]) -> np.ndarray:  # no model needed: the teacher is scored against itself
        return np.array([[float(len(t)), 1.0] for t in texts])

    scores = score_exchanges(exchanges, [ex.response for ex in exchanges], embed=embed)
    assert [s.kind for s in scores] == [ex.response_kind for ex in exchanges]
    assert all(s.agrees for s in scores)
    assert all(s.metrics["ast"] for s in scores if s.kind == "tool_call")
    with pytest.raises(ValueError, match="only tool_call, json, text"):
        score_exchanges([Exchange(request={}, response=None, response_kind="error")], [None])


def test_summarize_hand_checked() -> None:
    scores = [
        OutputScore("tool_call", True, 1.0, {"exact": True, "schema_valid": True}),
        OutputScore("tool_call", True, 1.0, {"exact": True, "schema_valid": None}),
        OutputScore("tool_call", False, 0.4, {"exact": False, "schema_valid": False}),
        OutputScore("json", False, 0.0, error="the reference is not JSON"),
    ]
    summary = summarize(scores)
    assert summary["calls"] == 4 and summary["agreement"] == 0.5
    assert summary["agreement_lower95"] == pytest.approx(wilson_lower(2, 4))
    tool = summary["by_kind"]["tool_call"]
    assert tool["agreement"] == pytest.approx(2 / 3) and tool["agreement_lower95"] == pytest.approx(
        wilson_lower(2, 3)
    )
    assert tool["score_mean"] == pytest.approx(0.8) and tool["exact"] == pytest.approx(2 / 3)
    assert tool["schema_valid"] == 0.5 and tool["schema_valid_n"] == 2 and "exact_n" not in tool
    assert summary["by_kind"]["json"]["errors"] == 1
    assert summarize([]) == {"calls": 0, "agreement": 0.0, "agreement_lower95": 0.0, "by_kind": {}}
    with pytest.raises(ValueError, match="unknown output kind 'yaml'"):
        score_output("yaml", "a", "a")


# -- curves ----------------------------------------------------------------------------------------------


def _report() -> dict[str, Any]:
    val = [Scored(-0.01, True, True, True)] * 30 + [Scored(-0.2, True, True, True)] * 8
    val += (
        [Scored(-0.2, True, False, True)] * 2
        + [Scored(-1.5, True, False, True)] * 10
        + [Scored(-3.0, True, False, False)] * 5
    )
    test = (
        [Scored(-0.01, True, True, True)] * 12
        + [Scored(-0.1, True, False, True)] * 2
        + [Scored(-0.5, True, True, True)] * 6
    )
    threshold = calibrate(val, 0.80)  # Learn-then-Test: 0.95 would need 118 calls at least
    return {
        "specialist": {"id": 1, "name": "airline<&>", "student": "smollm2-135m"},
        "target_agreement": 0.95,
        "threshold": threshold,
        "evaluated_at": "2025-01-01T00:00:00Z",
        "validation": {
            "calls": len(val),
            "at_threshold": {
                "calls": len(val),
                "served": 40,
                "served_share": 0.8,
                "agreement": 0.95,
                "agreement_lower95": 0.83,
            },
            "curve": [asdict(p) for p in curve(val)],
        },
        "test_tool_calls": {"calls": len(test), "curve": [asdict(p) for p in curve(test)]},
        "examples": [],
    }


def _svg(page: str) -> ET.Element:
    match = re.search(r"<svg.*</svg>", page, re.DOTALL)
    assert match is not None
    return ET.fromstring(match.group(0))


def test_curve_page_has_every_point_the_target_and_the_threshold(tmp_path: Path) -> None:
    report = _report()
    # Learn-then-Test at 0.80: 30/30, then 38/40 at -0.2 (p = 0.008) pass; 38/50 at -1.5 (p = 0.81) stops
    assert report["threshold"] == -0.2
    path = write_curve_html(report, tmp_path / "reports" / "curve.html")
    page = path.read_text()
    assert (
        page.startswith("<!DOCTYPE html>")
        and "<script" not in page
        and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    assert "airline&lt;&amp;&gt;" in page and "calibrated threshold -0.2" in page
    svg = _svg(page)
    for name, points in curve_series(report):
        circles = [
            c for c in svg.iter(f"{SVG}circle") if c.get("class") == "point" and c.get("data-split") == name
        ]
        assert [float(c.get("data-coverage", "nan")) for c in circles] == [p["coverage"] for p in points]
        assert [float(c.get("data-agreement", "nan")) for c in circles] == [p["agreement"] for p in points]
        assert [float(c.get("data-lower95", "nan")) for c in circles] == [
            p["agreement_lower95"] for p in points
        ]
        xs = [float(c.get("cx", "nan")) for c in circles]
        assert xs == sorted(xs)  # coverage grows left to right
        ys = {float(c.get("data-agreement", "nan")): float(c.get("cy", "nan")) for c in circles}
        assert ys[max(ys)] <= ys[min(ys)]  # higher agreement is higher up
        (group,) = [g for g in svg.iter(f"{SVG}g") if g.get("data-split") == name]
        assert {el.get("class") for el in group.iter(f"{SVG}polyline")} == {"agreement", "lower95"}
    val = curve_series(report)[0][1]
    assert [p["served"] for p in val] == [30, 40, 50, 55]
    markers = {
        m.get("data-split"): m for m in svg.iter(f"{SVG}circle") if m.get("class") == "threshold-marker"
    }
    assert set(markers) == {"validation", "test_tool_calls"}
    assert float(markers["validation"].get("data-coverage", "nan")) == pytest.approx(40 / 50)
    # on test, serving at -0.2 serves the -0.01 and -0.1 calls: 14 of 20 teacher calls
    assert float(markers["test_tool_calls"].get("data-coverage", "nan")) == pytest.approx(14 / 20)
    target = [el for el in svg.iter(f"{SVG}line") if el.get("class") == "target"]
    assert len(target) == 1 and target[0].get("data-target") == "0.95"
    assert "<td>validation</td><td>55</td><td>40</td><td>80.0%</td>" in page


def test_curve_page_without_a_threshold_or_points(tmp_path: Path) -> None:
    report = _report() | {"threshold": None}
    svg = _svg(write_curve_html(report, tmp_path / "c.html").read_text())
    assert not [m for m in svg.iter(f"{SVG}circle") if m.get("class") == "threshold-marker"]
    empty = {"target_agreement": 0.95, "threshold": None, "validation": {"curve": []}}
    page = write_curve_html(empty, tmp_path / "e.html").read_text()
    assert "no valid calls to plot" in page and "serves nothing" in page
    assert (
        point_at_threshold([], -1.0) is None
        and point_at_threshold(curve_series(_report())[0][1], None) is None
    )
