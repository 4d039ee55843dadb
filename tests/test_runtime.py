"""The transformers runtime on the real 135M student: grammar-constrained, early-stopping, batch-consistent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from downsize.decide.validate import validate_call
from downsize.prompting import PromptBudget

pytestmark = pytest.mark.slow

TOOLS = json.loads((Path(__file__).resolve().parents[2] / "shared/data/tau-airline/tools.json").read_text())
NAMES = {t["function"]["name"] for t in TOOLS}
CONVERSATIONS = [
    [{"role": "user", "content": "Hi, my user id is mia_li_3668. Please show my profile."}],
    [
        {"role": "user", "content": "I want to cancel reservation ZFA04Y."},
        {"role": "assistant", "content": "Sure, may I have your user id?"},
        {"role": "user", "content": "It's raj_sanchez_7340."},
    ],
    [{"role": "user", "content": "What is 23 * 19?"}],
]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory):
    import os

    os.environ.setdefault("DOWNSIZE_MODELS", str(tmp_path_factory.mktemp("models")))
    from downsize.backends.transformers_runtime import TransformersRuntime

    return TransformersRuntime("smollm2-135m", budget=PromptBudget(128, 64), max_new_tokens=48)


def test_output_stays_inside_the_tool_call_grammar(runtime) -> None:
    for gen in runtime.generate_batch([(m, TOOLS) for m in CONVERSATIONS]):
        name = gen.text.split(" ", 1)[0]
        assert any(n.startswith(name) for n in NAMES)  # even an untrained model only ever names real tools
        assert gen.tokens >= 1 and gen.min_logprob <= gen.mean_logprob <= 0.0
        if gen.call is not None:  # a finished call parsed as name + JSON object
            assert gen.call.name in NAMES and isinstance(gen.call.arguments, dict)
            problem = validate_call(gen.call, TOOLS)
            assert problem is None or problem.split(":")[0] in ("missing_required", "schema")


def test_batched_and_single_generation_agree(runtime) -> None:
    batched = runtime.generate_batch([(m, TOOLS) for m in CONVERSATIONS])
    for messages, together in zip(CONVERSATIONS, batched, strict=True):
        alone = runtime.generate(messages, TOOLS)
        assert alone.text == together.text
        assert alone.min_logprob == pytest.approx(together.min_logprob, abs=1e-3)


def test_generation_stops_as_soon_as_confidence_falls_below_the_floor(runtime) -> None:
    fulls = [runtime.generate(m, TOOLS) for m in CONVERSATIONS]
    messages, full = next((m, g) for m, g in zip(CONVERSATIONS, fulls, strict=True) if g.tokens > 1)
    cut = runtime.generate(messages, TOOLS, stop_below=0.0)  # no token can reach log-prob 0
    assert cut.stopped_early and cut.tokens == 1 and cut.call is None
    assert not full.stopped_early and math.isfinite(full.min_logprob)


def test_constrained_decoding_always_finds_a_grammatical_continuation(runtime) -> None:
    # the untrained base model almost never ranks a tool name in its top k; the decoder must still
    # produce a call inside the grammar, by searching the rest of the vocabulary
    for gen in runtime.generate_batch([(m, TOOLS) for m in CONVERSATIONS]):
        assert gen.tokens > 1 and math.isfinite(gen.min_logprob)
        assert gen.call is not None or gen.tokens == runtime.max_new_tokens


def test_a_chosen_tool_fixes_the_name_and_only_arguments_are_generated(runtime) -> None:
    free = runtime.generate(CONVERSATIONS[0], TOOLS)
    fixed = runtime.generate(CONVERSATIONS[0], TOOLS, tool="get_user_details")
    assert fixed.text.startswith("get_user_details ")
    assert fixed.call is None or fixed.call.name == "get_user_details"
    name_tokens = len(runtime.tokenizer.encode("get_user_details", add_special_tokens=False))
    assert fixed.tokens <= runtime.max_new_tokens and fixed.tokens >= 1
    assert free.tokens >= 1 and name_tokens >= 1
    with pytest.raises(ValueError, match="not offered"):
        runtime.generate(CONVERSATIONS[0], TOOLS, tool="no_such_tool")


def test_copied_arguments_can_only_be_ids_from_the_conversation(runtime) -> None:
    conversation = [
        {"role": "user", "content": "My reservations are ZFA04Y and 8JX2WO; please check the first one."}
    ]
    from downsize.backends.student_prompt import build_prompt

    copied = {"get_reservation_details": {"reservation_id": ["ID_UPPER_ALNUM", "UPPER6"]}}
    runtime.copied, runtime.copied_in_prompt = copied, True
    try:
        gen = runtime.generate(conversation, TOOLS, tool="get_reservation_details")
        prompt = runtime.prompt(conversation)
    finally:
        runtime.copied, runtime.copied_in_prompt = {}, False
    assert gen.call is not None and gen.call.arguments["reservation_id"] in ("ZFA04Y", "8JX2WO")
    assert validate_call(gen.call, TOOLS) is None
    # the prompt lists the options, exactly as training builds it
    assert "options reservation_id: ZFA04Y 8JX2WO" in prompt
    assert prompt == build_prompt(runtime.tokenizer, conversation, runtime.budget, copied)
    assert "options" not in runtime.prompt(conversation)


def test_sampled_answers_stay_grammatical_repeat_with_their_seed_and_vary_with_it(runtime) -> None:
    from downsize.backends.decoding import Sampling

    requests = [{"messages": CONVERSATIONS[0], "tools": TOOLS}]
    greedy = runtime.generate_requests(requests)[0]
    cold = runtime.generate_requests(requests, sampling=Sampling(temperature=1e-4, seed=1))[0]
    assert cold.text == greedy.text  # near zero temperature, sampling is greedy
    hot = [runtime.generate_requests(requests, sampling=Sampling(2.0, seed))[0] for seed in range(4)]
    assert runtime.generate_requests(requests, sampling=Sampling(2.0, 0))[0].text == hot[0].text
    assert len({g.text for g in hot}) > 1  # an untrained student at temperature 2 does not repeat itself
    for gen in hot:
        assert any(n.startswith(gen.text.split(" ", 1)[0]) for n in NAMES)
        assert gen.min_logprob <= gen.mean_logprob <= 0.0
