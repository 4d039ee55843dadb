"""Output contracts: detection from the teacher's answers, targets, grammars, validation, serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from downsize.backends.contract_grammar import LabelGrammar, ReactGrammar, TextGrammar, grammar_for
from downsize.contracts import OutputContract, ReactStep, detect_contract, learn_schema, parse_react
from downsize.decide.decision import Decider, Plan
from downsize.route.router import Router
from downsize.shapes import completion
from downsize.sites import site_key
from downsize.types import Exchange, Generation, Specialist

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCHEMA = {
    "type": "object",
    "properties": {"scope": {"type": "string"}, "importance": {"type": "number"}},
    "required": ["scope", "importance"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "MemoryAnalysis", "schema": SCHEMA}}


def exchange(
    content: str | None, *, system: str = "Classify the request.", user: str = "hi", **request: Any
) -> Exchange:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}], **request}
    return Exchange(request=body, response=completion(message, "gpt-4o", 0, "c"), response_kind="text")


def feeds(grammar: Any, text: str) -> bool:
    trial = grammar.copy()
    return trial.feed(text)


def test_json_under_the_requests_schema_is_detected_and_served_under_it() -> None:
    answers = [{"scope": f"/s{i}", "importance": i / 10} for i in range(6)]
    found = detect_contract([exchange(json.dumps(a), response_format=FORMAT) for a in answers])
    assert found.kind == "json" and found.schema_source == "request" and found.conforming == 6
    request = {"messages": [], "response_format": FORMAT}
    assert found.schema_for(request) == SCHEMA
    assert found.validate({"scope": "/a", "importance": 0.5}, request) is None
    assert found.validate({"scope": "/a"}, request).startswith("schema:")
    grammar = grammar_for(found, request, "<eot>")
    assert feeds(grammar, '{"scope":"/x","importance":0.5}') and not feeds(grammar, '{"other"')
    assert found.target(exchange(json.dumps(answers[0])).response) == '{"scope":"/s0","importance":0.0}'


def test_learned_schema_keeps_keys_types_and_repeating_enums() -> None:
    values = [{"sentiment": s, "score": n, "note": f"text {n}"} for n, s in enumerate(["pos", "neg"] * 4)]
    values[0]["extra"] = True
    schema = learn_schema(values)
    assert schema["required"] == ["sentiment", "score", "note"]
    assert schema["properties"]["sentiment"] == {"type": "string", "enum": ["neg", "pos"]}
    assert schema["properties"]["note"] == {"type": "string"}  # never repeats: free text, not an enum
    assert schema["properties"]["score"] == {"type": "integer"} and schema["additionalProperties"] is False


def test_labels_need_few_short_values_that_repeat() -> None:
    labels = ["billing", "refund", "billing", "transfer", "refund", "billing", "transfer", "refund"]
    found = detect_contract([exchange(a) for a in labels])
    assert (
        found.kind == "label"
        and found.labels[0] in ("billing", "refund")
        and set(found.labels) == set(labels)
    )
    assert found.validate("refund", {}) is None and found.validate("cancel", {}) == "unknown_label"
    one_value = detect_contract([exchange("ok") for _ in range(6)])
    assert one_value.kind != "label"  # a constant is not a classification
    varied = detect_contract([exchange(f"the answer is {i}") for i in range(8)])
    assert varied.kind == "text"


def test_label_grammar_accepts_only_labels_and_ends_an_ambiguous_one_on_the_end_token() -> None:
    grammar = LabelGrammar(("yes", "yes please", "no"), end="<eot>")
    assert not feeds(grammar, "maybe")
    g = grammar.copy()
    assert g.feed("ye") and g.feed("s") and not g.done  # "yes please" still possible
    assert g.copy().feed("<eot>") and g.feed(" please") and g.done
    h = grammar.copy()
    assert h.feed("no") and h.done


def test_react_steps_parse_render_and_constrain() -> None:
    text = 'Thought: I need the user.\nAction: get_user\nAction Input: {"id": "u1"}\nObservation: ...'
    assert parse_react(text) == ReactStep("get_user", {"id": "u1"})
    assert parse_react("Final Answer: done") is None
    steps = [f'Thought: t\nAction: get_user\nAction Input: {{"id": "u{i}"}}' for i in range(5)]
    found = detect_contract([exchange(s, system="Tools: get_user, cancel") for s in steps])
    assert found.kind == "react" and list(found.actions) == ["get_user"]
    assert found.render(ReactStep("get_user", {"id": "u9"})) == 'Action: get_user\nAction Input: {"id":"u9"}'
    grammar = ReactGrammar(found.actions, 40)
    assert feeds(grammar, 'Action: get_user\nAction Input: {"id":"u2"}')
    assert not feeds(grammar, "Action: cancel")
    request = {"messages": [{"role": "system", "content": "Tools: cancel"}]}
    assert found.validate(ReactStep("get_user", {"id": "u1"}), request) == "action_not_offered"


def test_short_and_long_text() -> None:
    short = detect_contract([exchange(f"Hello number {i}!") for i in range(6)])
    assert short.kind == "text" and short.specialisable
    long = detect_contract([exchange("word " * 400) for _ in range(6)])
    assert long.kind == "long_text" and not long.specialisable and "stays with the LLM" in long.reason
    grammar = TextGrammar("<eot>", 10)
    g = grammar.copy()
    assert not g.copy().feed("<eot>")  # an empty answer is not one
    assert g.feed("Hello") and not g.copy().feed(" world, again") and g.feed("<eot>") and g.done


def test_tool_calls_win_when_most_answers_call() -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    calls = [Exchange({"messages": []}, completion(call, "m", 0, "c")) for _ in range(3)]
    assert detect_contract([*calls, exchange("text")]).kind == "tool_call"


def test_a_contract_round_trips_and_old_specialists_read_as_tool_calls() -> None:
    found = OutputContract("label", labels=("a", "b"), calls=4)
    assert OutputContract.from_dict(json.loads(json.dumps(found.to_dict()))) == found
    assert OutputContract.from_dict(None).kind == "tool_call"


def test_call_sites_split_by_tools_prompt_template_and_schema() -> None:
    a = exchange("x", system="You are agent 12 on 2024-01-01").request
    b = exchange("x", system="You are agent 99 on 2025-02-02").request
    assert site_key(a) == site_key(b) and site_key(a).startswith("prompt:")
    assert site_key({**a, "response_format": FORMAT}).endswith(":MemoryAnalysis")
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert site_key({**a, "tools": tools}) == "tools:f"
    assert site_key({**a, "tools": tools, "tool_choice": "none"}).startswith("prompt:")


def test_the_decision_validates_under_the_contract() -> None:
    decider = Decider(contract=OutputContract("label", labels=("a", "b")), threshold=-1.0)
    good = Generation("a", None, -0.1, -0.1, 1, value="a", complete=True)
    assert decider.after({}, Plan(), good).accepted
    worker = Generation("b", None, -0.1, -0.1, 1, complete=True)  # from a worker: read by the contract
    assert decider.after({}, Plan(), worker).value == "b"
    cut = Generation("a", None, -0.1, -0.1, 1)
    assert decider.after({}, Plan(), cut).reason == "invalid_output:incomplete"
    unsure = Generation("a", None, -3.0, -3.0, 1, value="a", complete=True)
    assert decider.after({}, Plan(), unsure).reason == "low_confidence"


class Scripted:
    def __init__(self, text: str, value: Any) -> None:
        self.text, self.value = text, value
        self.formats: list[Any] = []

    def generate(
        self, messages: Any, tools: Any, stop_below: Any = None, tool: Any = None, response_format: Any = None
    ) -> Generation:
        self.formats.append(response_format)
        return Generation(self.text, None, -0.1, -0.1, 3, value=self.value, complete=True)


def test_the_router_serves_a_json_answer_as_content_and_refuses_requests_offering_tools() -> None:
    contract = OutputContract("json", schema=SCHEMA, schema_source="request")
    runtime = Scripted('{"scope":"/a","importance":0.5}', {"scope": "/a", "importance": 0.5})
    specialist = Specialist("memory", "memory", "smollm2-135m", "/none", {}, "0", id=7)
    router = Router.single(specialist, runtime, -1.0, contract=contract, sites=frozenset({"prompt:x"}))
    request = {"messages": [{"role": "user", "content": "store this"}], "response_format": FORMAT}
    assert router.route(request).decision is None  # another call site: not this specialist's
    router.slots[0].scope = type(router.slots[0].scope)(kind="json")
    outcome = router.route(request)
    assert outcome.decision is not None and outcome.decision.served
    message = outcome.response["choices"][0]["message"]
    assert (
        json.loads(message["content"]) == {"scope": "/a", "importance": 0.5} and "tool_calls" not in message
    )
    assert runtime.formats == [FORMAT]
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert router.route({**request, "tools": tools}).decision is None
    runtime.value = {"scope": "/a"}  # breaks the request's schema: falls back with the reason
    assert router.route(request).decision.reason == "invalid_output:schema"


@pytest.mark.parametrize("kind", ["json", "label", "react", "text"])
def test_every_kind_has_an_instruction_of_its_own(kind: str) -> None:
    assert OutputContract(kind).instruction != OutputContract("tool_call").instruction


def _intent_log(path: Any, n: int = 60) -> None:
    """CLINC150 utterances of three intents as a classifier's logged calls (labels written by people)."""
    rows = json.loads((DATA / "intents" / "clinc150.json").read_text())["train"]
    kept = [
        r
        for intent in ("balance", "transfer", "pay_bill")
        for r in [x for x in rows if x[1] == intent][: n // 3]
    ]
    with open(path, "w") as out:
        for text, intent in kept:
            messages = [{"role": "system", "content": "Name the intent."}, {"role": "user", "content": text}]
            response = completion({"role": "assistant", "content": intent}, "gpt-4o", 0, "c")
            out.write(
                json.dumps({"client_id": "intents", "request": {"messages": messages}, "response": response})
            )
            out.write("\n")


def test_the_cli_lists_call_sites_with_their_kind_and_refuses_a_wrong_kind(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from downsize.cli.main import main

    _intent_log(tmp_path / "intents.jsonl")
    db = ["--db", f"sqlite:///{tmp_path / 'sites.db'}"]
    runner = CliRunner()
    assert (
        runner.invoke(main, ["import", "openai-jsonl", str(tmp_path / "intents.jsonl"), *db]).exit_code == 0
    )
    listed = runner.invoke(main, ["sites", "--json", *db])
    rows = json.loads(listed.output)
    assert len(rows) == 1 and rows[0]["kind"] == "label" and rows[0]["site"].startswith("prompt:")
    assert rows[0]["example"] == "Name the intent."  # what a person recognises the step by
    assert rows[0]["train"] + rows[0]["validation"] + rows[0]["test"] == 60
    table = runner.invoke(main, ["sites", *db]).output
    assert "label" in table and rows[0]["site"] in table
    wrong = runner.invoke(main, ["train", "--kind", "json", *db])
    assert wrong.exit_code == 1 and "label answers" in wrong.output and "--kind label" in wrong.output
    assert "Traceback" not in wrong.output
    unknown = runner.invoke(main, ["train", "--site", "prompt:nosuchsite", *db])
    assert (
        unknown.exit_code == 1
        and "prompt:nosuchsite" in unknown.output
        and "downsize sites" in unknown.output
    )


def test_a_teacher_that_writes_json_arrays_gets_an_array_rooted_contract() -> None:
    from downsize.backends.contract_grammar import grammar_for
    from downsize.contracts import detect_contract
    from downsize.shapes import completion
    from downsize.types import Exchange

    answers = ['[{"name": "a", "score": 1}]', '[{"name": "b", "score": 2}, {"name": "c", "score": 3}]'] * 5
    log = [
        Exchange(
            {"messages": [{"role": "user", "content": f"rank {i}"}]},
            completion({"role": "assistant", "content": a}, "m", 0, "c"),
        )
        for i, a in enumerate(answers)
    ]
    contract = detect_contract(log)
    assert contract.kind == "json" and contract.schema["type"] == "array"
    assert contract.schema["items"]["required"] == ["name", "score"]
    grammar = grammar_for(contract, {"messages": []}, end="<end>")
    assert not grammar.copy().feed("{")  # the root is an array
    ok = grammar.copy()
    assert ok.feed('[{"name": "b", "score": 4}]') and ok.done  # names repeat: an enum
    assert not grammar.copy().feed('[{"nome"')  # keys follow the learned schema
    assert contract.validate([{"name": "b", "score": 4}], {}) is None


def test_suitability_says_when_outputs_vary_too_much() -> None:
    from downsize.contracts import OutputContract
    from downsize.discover.suitability import verdict

    varied = OutputContract(
        "json", schema={"type": "object", "properties": {}, "required": []}, schema_source="learned"
    )
    assert verdict(varied, 100, 30).startswith("outputs vary too much")
    shaped = OutputContract("json", schema={"type": "object", "properties": {"a": {}}, "required": ["a"]})
    assert verdict(shaped, 100, 30) == "suitable"
    assert verdict(OutputContract("long_text", reason="long"), 100, 30).startswith("long")
    assert verdict(shaped, 3, 30).startswith("too few calls")


def test_react_keeps_a_short_thought_where_the_teacher_thinks_before_most_actions() -> None:
    thinking = [
        f"Thought: I should look up user u{i} before changing anything at all today\n"
        f'Action: get_user\nAction Input: {{"id": "u{i}"}}'
        for i in range(6)
    ]
    kept = detect_contract([exchange(s, system="Tools: get_user") for s in thinking])
    assert kept.kind == "react" and kept.thought_words == 12 and "kept, cut to 12 words" in kept.reason
    assert "short thought" in kept.instruction
    step = parse_react(thinking[0])
    assert step is not None and step.thought is not None and step.thought.startswith("I should look up")
    assert step == ReactStep("get_user", {"id": "u0"})  # agreement is on the action, never the thought
    long_step = ReactStep(
        "get_user", {"id": "u9"}, "one two three four five six seven eight nine ten 11 12 13"
    )
    rendered = kept.render(long_step)
    assert rendered == (
        "Thought: one two three four five six seven eight nine ten 11 12\n"
        'Action: get_user\nAction Input: {"id":"u9"}'
    )
    grammar = grammar_for(kept, {"messages": []}, "<eot>")
    assert feeds(grammar.copy(), rendered)
    assert feeds(grammar.copy(), 'Action: get_user\nAction Input: {"id":"u2"}')  # a thought may be left out
    assert not feeds(grammar.copy(), "Thought: " + " ".join(["w"] * 13) + "\n")  # past the kept words
    assert not feeds(grammar.copy(), "Thought:  double")  # no empty words
    assert not feeds(grammar.copy(), "Thought: x\nThought: again")
    # a teacher that seldom thinks: the thought is dropped from targets and decoding
    rare = thinking[:1] + [f'Action: get_user\nAction Input: {{"id": "v{i}"}}' for i in range(5)]
    dropped = detect_contract([exchange(s, system="Tools: get_user") for s in rare])
    assert dropped.thought_words == 0 and "a thought before 1 of them: dropped" in dropped.reason
    assert dropped.render(parse_react(thinking[0])) == 'Action: get_user\nAction Input: {"id":"u0"}'
    assert not feeds(grammar_for(dropped, {"messages": []}, "<eot>"), "Thought: x")
