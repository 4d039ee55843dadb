"""Several specialists on one student in memory (llama.cpp): one model, an adapter each, selected per call.

Two LoRAs are overfitted in a few steps on SmolLM2-135M, each on different real tau-airline calls, then
served through one `StudentPool` in the order A, B, A, bare student, A: every generation must equal,
text and log-probabilities exactly, what a dedicated runtime of the same specialist gives (greedy decoding
is deterministic), so no KV cache or adapter state leaks from one specialist into the next.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from downsize.prompting import PromptBudget
from downsize.types import Specialist
from tiny_adapters import TAU, overfit_adapter, tau_calls

TOOLS = json.loads((TAU / "tools.json").read_text())
BUDGET = PromptBudget(64, 32)
CONFIG = {"max_prompt_tokens": BUDGET.max_prompt_tokens, "max_message_tokens": BUDGET.max_message_tokens}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRAs (A: get_user_details calls, B: get_reservation_details calls), a few steps each."""
    pytest.importorskip("llama_cpp")
    os.environ.setdefault("DOWNSIZE_MODELS", str(tmp_path_factory.mktemp("models")))
    from downsize.backends.students import load_student

    base, tokenizer = load_student("smollm2-135m")
    folders = {}
    for key, name in (("a", "get_user_details"), ("b", "get_reservation_details")):
        samples = tau_calls(3, (name,))
        folder = tmp_path_factory.mktemp(f"adapter-{key}")
        folders[key] = overfit_adapter(copy.deepcopy(base), tokenizer, samples, BUDGET, 6, folder)
    return folders


@pytest.mark.slow
def test_specialists_sharing_one_student_generate_what_dedicated_ones_do(adapters: dict[str, Path]) -> None:
    from downsize.backends.engines import runtime_for
    from downsize.backends.llamacpp_runtime import LlamaCppRuntime, StudentPool

    def specialist(key: str) -> Specialist:
        return Specialist(key, "t", "smollm2-135m", str(adapters[key]), config=CONFIG, data_hash="")

    pool = StudentPool(threads=2)
    shared = {key: runtime_for(specialist(key), engine="llamacpp", pool=pool) for key in ("a", "b")}
    shared["base"] = LlamaCppRuntime("smollm2-135m", None, BUDGET, pool=pool)
    dedicated = {key: runtime_for(specialist(key), engine="llamacpp") for key in ("a", "b")}
    dedicated["base"] = LlamaCppRuntime("smollm2-135m", None, BUDGET, threads=2)
    try:
        # one student in memory for the three: one Llama, one context, an adapter per specialist
        assert len(pool.students) == 1
        (student,) = pool.students.values()
        assert all(isinstance(rt, LlamaCppRuntime) and rt.llm is student.llm for rt in shared.values())
        assert sorted(student.adapters) == sorted(rt.lora_path for rt in dedicated.values() if rt.lora_path)
        assert len({id(rt.llm) for rt in dedicated.values()}) == 3

        samples = tau_calls(2, ("get_user_details",), skip=3) + tau_calls(
            2, ("get_reservation_details",), skip=3
        )
        differ = 0
        for messages, _ in samples:
            seen = {}
            for key in ("a", "b", "a", "base", "a"):
                got = shared[key].generate(messages, TOOLS)
                assert got == dedicated[key].generate(messages, TOOLS)  # text and log-probabilities, exactly
                assert seen.setdefault(key, got) == got
            differ += seen["a"] != seen["b"]
        assert differ >= 2  # the adapters really differ, so a leak would show

        # every generated token's log-probability, under a fixed grammar, after a switch of adapter
        from downsize.backends.grammar import ToolCallGrammar

        grammar = ToolCallGrammar.for_tools(TOOLS)
        prompt = shared["a"].prompt(samples[-1][0])
        for key in ("b", "a"):
            got_c = shared[key].complete([prompt], [grammar])[0]
            want = dedicated[key].complete([prompt], [grammar])[0]
            assert got_c.text == want.text and got_c.logprobs == want.logprobs

        # a specialist needing a longer context reloads the shared student; the others still generate alike
        wide = LlamaCppRuntime("smollm2-135m", None, PromptBudget(1024, 96), pool=pool)
        assert len(pool.students) == 1 and wide.llm is shared["a"].llm and wide.llm.n_ctx() > 1024
        messages = samples[0][0]
        assert shared["a"].generate(messages, TOOLS) == dedicated["a"].generate(messages, TOOLS)
    finally:
        pool.close()
        for rt in dedicated.values():
            rt.close()
    assert not pool.students
