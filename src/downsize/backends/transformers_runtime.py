"""The reference specialist runtime: transformers + peft, greedy decoding under the tool-call grammar.

One decoder serves both evaluation (batched, every call generated to the end) and the gateway
(batch of one, cut as soon as the confidence falls below the serving threshold: the confidence is
the lowest token log-probability, so once one token is below the floor the answer is known). The
log-probabilities are the model's own, before the grammar masks anything, so a call the grammar had
to force scores low and falls back. The decoding loop is shared with the llama.cpp runtime
(`decoding.constrained_greedy`); this module supplies the batched torch forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from downsize.backends.decoding import Completion, TokenTexts, ToolCallRuntime, constrained_greedy
from downsize.backends.students import load_specialist_model
from downsize.config import TrainConfig, resolve
from downsize.copying import Copied, load_copied, options_line
from downsize.errors import ConfigError
from downsize.prompting import PromptBudget, chat_messages, prune_messages
from downsize.types import Specialist

FALLBACK_TEMPLATE = "{system}\n\n### Conversation\n{user}\n\n### Next tool call\n"


def build_prompt(
    tokenizer: Any, messages: list[dict[str, Any]], budget: PromptBudget, copied: Copied | None = None
) -> str:
    """The student's prompt text for a request's messages, in its chat template, pruned to budget.

    With `copied` (parameters copied from the conversation), a last line lists their candidate values
    (`copying.options_line`), within the same token budget.
    """

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def decode(ids: Any) -> str:
        return str(tokenizer.decode(list(ids)))

    line = options_line(messages, copied) if copied else ""
    if line:
        line = "options " + line
        spent = min(len(encode(line)), budget.max_prompt_tokens // 3)
        line = decode(encode(line)[:spent])
        budget = PromptBudget(budget.max_prompt_tokens - spent, budget.max_message_tokens)
    conversation = prune_messages(messages, encode, decode, budget)
    if line:
        conversation = f"{conversation}\n{line}"
    chat = chat_messages(conversation)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    return FALLBACK_TEMPLATE.format(system=chat[0]["content"], user=chat[1]["content"])


def end_of_turn(tokenizer: Any) -> str:
    return str(tokenizer.eos_token or "")


class _TorchScores:
    """One step's next-token log-probabilities of a batch, as a torch tensor."""

    def __init__(self, logp: Any) -> None:
        self.logp = logp

    def top(self, k: int) -> tuple[list[list[int]], list[list[float]]]:
        top = self.logp.topk(min(k, self.logp.shape[-1]), dim=-1)
        return top.indices.tolist(), top.values.tolist()

    def ranked(self, row: int, ids: Sequence[int]) -> tuple[list[int], list[float]]:
        if not ids:
            return [], []
        import torch

        index = torch.tensor(list(ids), dtype=torch.long, device=self.logp.device)
        values = self.logp[row].index_select(0, index)
        order = values.argsort(descending=True)
        return index[order].tolist(), values[order].tolist()


class _TorchScorer:
    """The batched forward pass: left-padded prompts, then one token per row with the KV cache."""

    def __init__(self, runtime: TransformersRuntime) -> None:
        self.runtime = runtime
        self.past: Any = None
        self.attention: Any = None
        self.positions: Any = None

    def _forward(self, input_ids: Any) -> _TorchScores:
        torch = self.runtime._torch
        with torch.inference_mode():
            out = self.runtime.model(
                input_ids=input_ids,
                attention_mask=self.attention,
                position_ids=self.positions,
                past_key_values=self.past,
                use_cache=True,
            )
            self.past = out.past_key_values
            return _TorchScores(torch.log_softmax(out.logits[:, -1, :].float(), dim=-1))

    def start(self, prompts: list[str]) -> _TorchScores:
        rt = self.runtime
        enc = rt.tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        self.attention = enc["attention_mask"].to(rt.device)
        self.positions = (self.attention.cumsum(-1) - 1).clamp(min=0)
        return self._forward(enc["input_ids"].to(rt.device))

    def advance(self, next_ids: list[int | None]) -> _TorchScores:
        rt = self.runtime
        torch = rt._torch
        ids = [rt.pad_id if i is None else i for i in next_ids]
        self.attention = torch.cat([self.attention, self.attention.new_ones((len(ids), 1))], dim=-1)
        self.positions = self.positions[:, -1:] + 1
        return self._forward(torch.tensor(ids, device=rt.device).unsqueeze(-1))


class TransformersRuntime(ToolCallRuntime):
    """The reference runtime: a student with its trained weights (a LoRA merged for speed), on torch."""

    engine = "transformers"

    def __init__(
        self,
        student: str,
        adapter_path: str | Path | None = None,
        budget: PromptBudget | None = None,
        max_new_tokens: int = 64,
        top_k: int = 32,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        import torch

        if model is None:
            model, tokenizer = load_specialist_model(student, adapter_path)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.budget = budget or PromptBudget()
        self.max_new_tokens = max_new_tokens
        self.top_k = top_k
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        vocab = [tokenizer.decode([i]) for i in range(min(vocab_size, len(tokenizer)))]
        self.token_texts = TokenTexts(vocab + [""] * (vocab_size - len(vocab)))
        self._torch = torch

    @property
    def vocab(self) -> list[str]:
        return self.token_texts.texts

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        return build_prompt(
            self.tokenizer, messages, self.budget, self.copied if self.copied_in_prompt else None
        )

    def complete(
        self, prompts: list[str], grammars: list[Any], stop_below: float | None = None
    ) -> list[Completion]:
        """Greedy completion of each prompt (batched) under its grammar: any object with copy/feed/done.

        Each token's log-probability is the model's own before the grammar masks anything; with
        `stop_below`, a row stops at the first token under it.
        """
        if not prompts:
            return []
        return constrained_greedy(
            _TorchScorer(self),
            prompts,
            grammars,
            self.token_texts,
            self.max_new_tokens,
            top_k=self.top_k,
            stop_below=stop_below,
        )


ENGINES = ("auto", "transformers", "llamacpp")


def resolve_engine(engine: str, specialist: Specialist) -> str:
    """`auto`: the engine the specialist's threshold was calibrated on (`downsize eval` records it); else
    llama.cpp (1.8x faster per call on 2 cores, docs/log.md) when it is installed and the specialist is an
    adapter on a GGUF student; else the transformers reference path."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    evaluated = specialist.metrics.get("eval")
    if evaluated:  # evaluations before the engine was recorded ran `downsize eval`, on transformers
        calibrated = evaluated.get("engine") or "transformers"
        if calibrated in ENGINES[1:]:
            return str(calibrated)
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
    specialist: Specialist, max_new_tokens: int = 64, engine: str = "transformers"
) -> ToolCallRuntime:
    """The runtime of a stored specialist on an engine, with the prompt budget it was trained with.

    `transformers` is the reference path (torch, the adapter merged); `llamacpp` serves the student's
    shipped GGUF with the adapter converted to a GGUF LoRA (needs the `serve` extra); `auto` picks
    llama.cpp where it can serve the specialist (`resolve_engine`).
    """
    engine = resolve_engine(engine, specialist)
    train_cfg = resolve(TrainConfig, {k: v for k, v in specialist.config.items() if k != "task_tools"})
    budget = PromptBudget(train_cfg.max_prompt_tokens, train_cfg.max_message_tokens)
    runtime: ToolCallRuntime
    if engine == "llamacpp":
        from downsize.backends.llamacpp_runtime import LlamaCppRuntime

        runtime = LlamaCppRuntime(
            specialist.base_model, specialist.adapter_path, budget, max_new_tokens=max_new_tokens
        )
    else:
        runtime = TransformersRuntime(
            specialist.base_model, specialist.adapter_path, budget, max_new_tokens=max_new_tokens
        )
    runtime.copied, runtime.copied_in_prompt = load_copied(specialist.adapter_path)
    return runtime
