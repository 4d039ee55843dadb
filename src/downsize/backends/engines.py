"""Which engine runs a stored specialist, and the runtime for it (transformers reference path or llama.cpp)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from downsize.artifacts import EvalReport
from downsize.backends.decoding import ToolCallRuntime
from downsize.config import train_config_of
from downsize.contracts import OutputContract
from downsize.copying import load_copied, load_spans
from downsize.errors import ConfigError
from downsize.prompting import PromptBudget
from downsize.types import Specialist

if TYPE_CHECKING:
    from downsize.backends.llamacpp_runtime import StudentPool

ENGINES = ("auto", "transformers", "llamacpp")


def resolve_engine(engine: str, specialist: Specialist) -> str:
    """`auto`: the engine the specialist's threshold was calibrated on (`downsize eval` records it); else
    llama.cpp (1.8x faster per call on 2 cores, docs/log.md) when it is installed and the specialist is an
    adapter on a GGUF student; else the transformers reference path."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    evaluated = EvalReport.of(specialist)  # evaluations before the engine was recorded ran on transformers
    if evaluated is not None and evaluated.engine in ENGINES[1:]:
        return evaluated.engine
    import importlib.util

    from downsize.backends.llamacpp_runtime import base_gguf
    from downsize.backends.students import specialist_artifact

    if importlib.util.find_spec("llama_cpp") is None:
        return "transformers"
    try:
        base_gguf(specialist.base_model)
    except ConfigError:
        return "transformers"
    adapter = specialist.adapter_path
    return "llamacpp" if adapter is None or specialist_artifact(adapter) == "adapter" else "transformers"


def runtime_for(
    specialist: Specialist,
    max_new_tokens: int = 64,
    engine: str = "transformers",
    pool: StudentPool | None = None,
) -> ToolCallRuntime:
    """The runtime of a stored specialist on an engine, with the prompt budget it was trained with.

    `transformers` is the reference path (torch, the adapter merged); `llamacpp` serves the student's
    shipped GGUF with the adapter converted to a GGUF LoRA (needs the `serve` extra); `auto` picks
    llama.cpp where it can serve the specialist (`resolve_engine`).

    `pool`, kept by a process serving several specialists: on llama.cpp, specialists on the same student
    share its weights and context, each adding only its adapter. The transformers engine ignores it and keeps
    one merged copy of the student per specialist (no sharing): it is the reference, not the serving path.
    """
    engine = resolve_engine(engine, specialist)
    contract = OutputContract.from_dict(specialist.config.get("contract"))
    if contract.kind != "tool_call":  # a JSON object or a sentence needs the budget it was trained for
        max_new_tokens = max(max_new_tokens, contract.max_tokens)
    train_cfg = train_config_of(specialist.config)
    budget = PromptBudget(train_cfg.max_prompt_tokens, train_cfg.max_message_tokens)
    runtime: ToolCallRuntime
    if engine == "llamacpp":
        from downsize.backends.llamacpp_runtime import LlamaCppRuntime

        runtime = LlamaCppRuntime(
            specialist.base_model, specialist.adapter_path, budget, max_new_tokens=max_new_tokens, pool=pool
        )
    else:
        from downsize.backends.transformers_runtime import TransformersRuntime

        runtime = TransformersRuntime(
            specialist.base_model, specialist.adapter_path, budget, max_new_tokens=max_new_tokens
        )
    runtime.copied, runtime.copied_in_prompt = load_copied(specialist.adapter_path)
    runtime.spans = load_spans(specialist.adapter_path)
    runtime.contract = contract
    return runtime
