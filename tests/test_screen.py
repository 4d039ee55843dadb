"""The zero-/few-shot screen: shots come from training only and nearest first, schemas render compactly,
the several-calls grammar accepts and rejects what it should, and a tiny real screen on tau validation calls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from downsize.select.answers import answer_cases, score_answer
from downsize.select.call_sequence import CallSequenceGrammar, parse_calls, render_calls
from downsize.select.cases import CallCase, screen_cases, select_shots
from downsize.select.prompts import screen_messages
from downsize.select.tool_schemas import render_tool, tool_signature
from downsize.types import ToolCall

END = "<|im_end|>"
TOOLS = json.loads((Path(__file__).resolve().parents[2] / "shared/data/tau-airline/tools.json").read_text())
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city. " + "Very long detail. " * 30,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name, such as 'Paris'."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer"},
                "spots": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                        "required": ["lat"],
                    },
                },
            },
            "required": ["city"],
        },
    },
}


def case(key: str, text: str, role: str, call: ToolCall | None = None, tools: list | None = None) -> CallCase:
    return CallCase(
        key=key,
        messages=[{"role": "user", "content": text}],
        tools=tools or [WEATHER],
        gold=[call or ToolCall("get_weather", {"city": text})],
        role=role,
    )


# hand-made 2-d "embeddings": each text's vector is looked up, so nearness is known exactly
VECTORS = {
    "LAST user: paris": [1.0, 0.0],
    "LAST user: lyon": [0.9, 0.1],
    "LAST user: nice": [0.6, 0.4],
    "LAST user: oslo": [0.0, 1.0],
    "LAST user: query": [1.0, 0.05],
}


def fake_embed(texts: list[str]) -> np.ndarray:
    vectors = np.asarray([VECTORS[t] for t in texts], dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_shots_are_the_nearest_training_calls_nearest_first() -> None:
    pool = [case(f"t{i}", city, "train") for i, city in enumerate(["oslo", "nice", "paris", "lyon"])]
    (shots,) = select_shots([case("v", "query", "validation")], pool, k=3, embed=fake_embed)
    assert [s.messages[0]["content"] for s in shots] == ["paris", "lyon", "nice"]
    # in the prompt the nearest example sits last, next to the question
    chat = screen_messages(case("v", "query", "validation"), shots)
    assert [m["role"] for m in chat] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert "paris" in chat[-3]["content"] and "nice" in chat[1]["content"]
    assert chat[-2]["content"] == 'get_weather {"city":"paris"}'


@pytest.mark.parametrize("role", ["validation", "test"])
def test_shots_from_outside_the_training_split_are_refused(role: str) -> None:
    pool = [case("t0", "paris", "train"), case("leak", "lyon", role)]
    with pytest.raises(ValueError, match="training split only.*leak"):
        select_shots([case("v", "query", "validation")], pool, k=1, embed=fake_embed)


def test_screen_cases_keep_validation_and_training_apart(imported_db: str) -> None:
    from downsize.splits import workflow
    from downsize.store import Store

    store = Store.open(imported_db)
    cases, pool = screen_cases(store, limit=5)
    assert (
        len(cases) == 5 and {c.role for c in cases} == {"validation"} and {p.role for p in pool} == {"train"}
    )
    ids = {int(c.key.split(":")[1]) for c in cases} | {int(p.key.split(":")[1]) for p in pool}
    sessions = {
        ex.id: ex.session for ex in store.exchanges(source="tau-airline", split="dev") if ex.id in ids
    }
    validation_flows = {workflow(sessions[int(c.key.split(":")[1])]) for c in cases}
    training_flows = {workflow(sessions[int(p.key.split(":")[1])]) for p in pool}
    assert validation_flows and not validation_flows & training_flows
    assert all(len(c.gold) == 1 for c in cases + pool)
    store.close()


def test_schema_rendering_is_compact_and_keeps_what_a_model_needs() -> None:
    text = render_tool(WEATHER)
    lines = text.splitlines()
    assert lines[0].startswith("get_weather: Get the current weather for a city.") and lines[0].endswith("…")
    assert len(lines[0]) <= len("get_weather: ") + 121
    assert "  city*: string - The city name, such as 'Paris'." in lines
    assert '  unit: "celsius"|"fahrenheit" = "celsius"' in lines
    assert "  days: integer" in lines
    assert "  spots: array of {lat*: number, lon: number}" in lines
    assert tool_signature(WEATHER) == "get_weather(city*, unit, days, spots)"
    # the 14 tau-airline tools take about a quarter of their JSON's characters
    full = sum(len(render_tool(t)) for t in TOOLS)
    assert full < 0.5 * len(json.dumps(TOOLS))


def test_examples_with_other_tools_show_their_signatures() -> None:
    other = {
        "type": "function",
        "function": {"name": "add", "parameters": {"properties": {"a": {}, "b": {}}}},
    }
    shot = case("t", "paris", "train", ToolCall("add", {"a": 1, "b": 2}), tools=[other])
    chat = screen_messages(case("v", "query", "validation"), [shot])
    assert chat[1]["content"].startswith("Tools: add(a, b)\n")
    assert chat[-1]["content"].startswith("Tools: get_weather(city*, unit, days, spots)\n")
    assert "get_weather: Get the current weather" in chat[0]["content"]


def feed(grammar: CallSequenceGrammar, text: str) -> CallSequenceGrammar | None:
    g = grammar.copy()
    return g if g.feed(text) else None


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ('add {"a":1}' + END, 1),
        ('add {"a":1} ; mul {"b":[1,2]}' + END, 2),
        ('add {"a":1};add {"a":2} ;mul {}' + END, 3),
        ('add {"a": "x ; y"} ; add {}' + END, 2),
    ],
)
def test_call_sequence_grammar_accepts_calls_closed_by_the_end_token(text: str, calls: int) -> None:
    g = feed(CallSequenceGrammar(["add", "mul"], [END]), text)
    assert g is not None and g.done and g.calls == calls
    parsed = parse_calls(text, [END])
    assert parsed is not None and len(parsed) == calls


@pytest.mark.parametrize(
    "text",
    [
        'div {"a":1}',  # not an offered tool
        'add {"a":1} mul {}',  # no separator
        'add {"a":1} ;; mul {}',
        'add {"a":1} ; ' + END,  # a separator must be followed by a call
        'add {"a":1}  ; mul {}',  # at most one space around the separator
        "add [1]",  # arguments are an object
        END,  # at least one call
    ],
)
def test_call_sequence_grammar_rejects_malformed_sequences(text: str) -> None:
    assert feed(CallSequenceGrammar(["add", "mul"], [END]), text) is None


def test_call_sequence_grammar_waits_for_the_end_and_bounds_the_calls() -> None:
    g = feed(CallSequenceGrammar(["add"], [END], max_calls=2), "add {} ; add {}")
    assert g is not None and not g.done  # a closed call is not the end: the model may go on
    assert feed(g, " ; add {}") is None  # a third call is refused
    closed = feed(g, "<|im_")
    assert closed is not None and not closed.done and feed(closed, "end|>") is not None
    assert feed(CallSequenceGrammar(["add"], [END]), 'add {"a":1}').done is False  # type: ignore[union-attr]


def test_one_call_without_an_end_and_no_pretty_printing() -> None:
    single = feed(CallSequenceGrammar(["add"]), 'add {"a": 1, "b": "two  words\\n"}')
    assert single is not None and single.done and feed(single, " ") is None
    assert feed(CallSequenceGrammar(["add"]), 'add {\n  "a": 1}') is None  # no newline outside strings
    assert feed(CallSequenceGrammar(["add"]), 'add {"a":  1}') is None  # nor two spaces in a row


PARAMS = {"add": (("a", "b"), ("a",)), "mul": (("x",), ())}


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('add {"a":1}', True),
        ('add {"b":2,"a":1}', True),
        ('add {"a":{"anything":[1]},"b":"s"}', True),  # nested keys are free
        ('add {"c":1}', False),  # not a parameter
        ('add {"ab":1}', False),
        ('add {"a":1,"a":2}', False),  # repeated
        ('add {"b":2}', False),  # the required "a" is missing
        ("add {}", False),
        ('mul {"a":1}', False),  # add's parameter, not mul's
        ("mul {}", True),
    ],
)
def test_schema_keys_are_the_tools_parameters(text: str, ok: bool) -> None:
    g = feed(CallSequenceGrammar(["add", "mul"], params=PARAMS), text)
    assert (g is not None and g.done) is ok


def test_grammar_for_takes_the_keys_from_the_case_tools() -> None:
    from downsize.select.answers import grammar_for

    g = grammar_for(case("v", "paris", "validation"), [END])
    assert g.ends == () and g.params == {"get_weather": (("city", "unit", "days", "spots"), ("city",))}
    assert (
        feed(g, 'get_weather {"unit":"celsius"}') is None
        and feed(g, 'get_weather {"city":"Oslo"}') is not None
    )


def test_parse_calls_reads_back_what_render_calls_writes() -> None:
    calls = [ToolCall("a_b", {"x": [1, {"y": "z ; }"}]}), ToolCall("c", {})]
    assert parse_calls(render_calls(calls) + END, [END]) == calls
    assert (
        parse_calls('a {"x":1} ;') is None
        and parse_calls("a") is None
        and parse_calls('a {"x":1} junk') is None
    )


def test_scores_name_exact_and_ast() -> None:
    gold = ToolCall("get_weather", {"city": "Paris", "days": 3})
    c = CallCase("k", [{"role": "user", "content": "?"}], [WEATHER], [gold], "validation")
    exact = score_answer(c, "", [gold])
    assert exact.name_ok and exact.exact and exact.ast
    spaced = score_answer(c, "", [ToolCall("get_weather", {"city": "paris", "days": 3})])
    assert spaced.name_ok and not spaced.exact and spaced.ast  # BFCL normalises strings, exact match does not
    wrong = score_answer(c, "", [ToolCall("get_weather", {"city": "Paris", "days": 4})])
    assert wrong.name_ok and not wrong.exact and not wrong.ast
    missing = score_answer(c, "", None)
    assert not (missing.name_ok or missing.exact or missing.ast) and missing.ast_error == "no complete call"
    # several calls: any order, names compared with "." as "_"
    many = CallCase(
        "p",
        c.messages,
        [WEATHER],
        [ToolCall("get_weather", {"city": "A"}), ToolCall("get_weather", {"city": "B"})],
        "test",
        category="parallel",
    )
    both = score_answer(
        many, "", [ToolCall("get_weather", {"city": "B"}), ToolCall("get_weather", {"city": "A"})]
    )
    assert both.exact and both.ast
    assert not score_answer(many, "", [ToolCall("get_weather", {"city": "B"})]).name_ok


class EchoRuntime:
    """Answers every prompt with a fixed text; the grammar each case gets is recorded."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.grammars: list = []

        class Tok:
            eos_token = END

        self.tokenizer = Tok()

    def complete(self, prompts: list[str], grammars: list, stop_below: float | None = None) -> list:
        self.grammars += grammars

        class Out:
            text = self.text
            done = True

        return [Out() for _ in prompts]


def test_answer_cases_parses_single_and_several_calls() -> None:
    single = case("s", "paris", "validation")
    runtime = EchoRuntime('get_weather {"city":"paris"}')
    (answer,) = answer_cases(runtime, [single], ["prompt"])
    assert answer.exact and runtime.grammars[0].ends == ()
    many = CallCase(
        "p", single.messages, [WEATHER], [ToolCall("get_weather", {"city": "paris"})] * 2, "test", "parallel"
    )
    runtime = EchoRuntime('get_weather {"city":"paris"} ; get_weather {"city":"paris"}' + END)
    (answer,) = answer_cases(runtime, [many], ["prompt"])
    assert answer.ast and runtime.grammars[0].ends == (END,)


@pytest.mark.slow
def test_a_tiny_real_screen_on_tau_validation_calls(
    imported_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from downsize.select.screen import screen_students
    from downsize.store import Store

    os.environ.setdefault("DOWNSIZE_MODELS", str(tmp_path_factory.mktemp("models")))
    store = Store.open(imported_db)
    cases, pool = screen_cases(store, limit=4)
    store.close()
    pool = pool[::8]  # a spread-out eighth of the training calls: embedding them all is most of the time
    report = screen_students(
        cases, pool, ["smollm2-135m", "no-such-student"], k=2, batch_size=4, max_new_tokens=48
    )
    assert set(report.failed) == {"no-such-student"}
    assert [(r.student, r.n) for r in report.rows] == [("smollm2-135m", 4)] * 2
    assert {r.mode for r in report.rows} == {"zero_shot", "few_shot"}
    few = next(r for r in report.rows if r.mode == "few_shot")
    zero = next(r for r in report.rows if r.mode == "zero_shot")
    assert few.prompt_chars_mean > zero.prompt_chars_mean  # the examples are in the prompt
    names = {t["function"]["name"] for t in TOOLS}
    for row in report.rows:
        assert 0.0 <= row.ast_lower95 <= row.ast_accuracy <= row.ast_upper95 <= 1.0
        for a in row.answers:  # grammar-constrained: only offered tools are ever named
            assert a.text.split(" ", 1)[0] in names or not a.text
    assert "rank" in report.table() and "smollm2-135m" in report.table()


def test_cli_screen_needs_validation_calls(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from downsize.cli.main import main

    result = CliRunner().invoke(main, ["models", "--screen", "--db", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 1
    assert "no validation tool calls" in result.output and "downsize import openai-jsonl" in result.output
    assert "--screen" in CliRunner().invoke(main, ["models", "--help"]).output


def test_screen_names_come_from_the_offline_catalog() -> None:
    from downsize.cli.models import screen_name
    from downsize.select.catalog import CATALOG

    by_name = {e.name: e for e in CATALOG}
    assert screen_name(by_name["smollm2-135m"]) == "smollm2-135m"
    assert screen_name(by_name["xlam-2-8b"]) is None  # no weights here


def test_estimated_prompt_tokens_grow_with_the_examples() -> None:
    from downsize.select.prompts import estimate_prompt_tokens

    cases = [case("v", "paris", "validation", tools=TOOLS)]
    zero, three = estimate_prompt_tokens(cases, 0), estimate_prompt_tokens(cases, 3)
    assert 300 < zero < three < 3000


def test_bfcl_gold_calls_drop_optional_parameters_and_unwrap_nested_answers() -> None:
    from downsize.evaluate.bfcl import BfclQuestion

    functions = [
        {
            "name": "db.update",
            "description": "Update a user.",
            "parameters": {
                "type": "dict",
                "properties": {
                    "user_id": {"type": "integer"},
                    "info": {"type": "dict", "properties": {"name": {"type": "string"}}},
                    "database": {"type": "string"},
                    "force": {"type": "boolean"},
                },
                "required": ["user_id", "info", "force"],
            },
        }
    ]
    truth = [
        {
            "db.update": {
                "user_id": [7],
                "info": [{"name": ["Ann", "ann"]}],
                "database": ["main", ""],
                "force": ["", True],
            }
        }
    ]
    question = BfclQuestion("parallel_1", "parallel", [{"role": "user", "content": "?"}], functions, truth)
    # optional "database" is left out; "force" is required by the schema, so its value is kept despite the ""
    assert question.gold_calls() == [
        ToolCall("db_update", {"user_id": 7, "info": {"name": "Ann"}, "force": True})
    ]
    c = question.to_case("train")
    assert c.many and c.role == "train" and score_answer(c, "", c.gold).ast
