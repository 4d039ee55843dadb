"""The reference specialist runtime: transformers + peft, greedy decoding under the tool-call grammar.

One decoder serves both evaluation (batched, every call generated to the end) and the gateway
(batch of one, cut as soon as the confidence falls below the serving threshold: the confidence is
the lowest token log-probability, so once one token is below the floor the answer is known). The
log-probabilities are the model's own, before the grammar masks anything, so a call the grammar had
to force scores low and falls back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from downsize.backends.grammar import ToolCallGrammar
from downsize.backends.students import load_student
from downsize.config import TrainConfig, resolve
from downsize.prompting import PromptBudget, chat_messages, parse_target, prune_messages
from downsize.route.router import Generation
from downsize.shapes import tool_names
from downsize.types import Specialist

FALLBACK_TEMPLATE = "{system}\n\n### Conversation\n{user}\n\n### Next tool call\n"


def build_prompt(tokenizer: Any, messages: list[dict[str, Any]], budget: PromptBudget) -> str:
    """The student's prompt text for a request's messages, in its chat template, pruned to budget."""

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def decode(ids: Any) -> str:
        return str(tokenizer.decode(list(ids)))

    conversation = prune_messages(messages, encode, decode, budget)
    chat = chat_messages(conversation)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    return FALLBACK_TEMPLATE.format(system=chat[0]["content"], user=chat[1]["content"])


def end_of_turn(tokenizer: Any) -> str:
    return str(tokenizer.eos_token or "")


class TransformersRuntime:
    """A student with an optional LoRA adapter (merged for speed), ready to generate tool calls."""

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
            model, tokenizer = load_student(student)
            if adapter_path is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.budget = budget or PromptBudget()
        self.max_new_tokens = max_new_tokens
        self.top_k = top_k
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.vocab = [tokenizer.decode([i]) for i in range(min(vocab_size, len(tokenizer)))]
        self.vocab += [""] * (vocab_size - len(self.vocab))
        self._torch = torch

    def _first_grammatical(
        self, grammar: ToolCallGrammar, ids: list[int], logps: list[float] | None, row_logp: Any = None
    ) -> tuple[int, float, ToolCallGrammar] | None:
        """The first token of `ids` (ordered most likely first) whose text keeps the call grammatical."""
        for i, token_id in enumerate(ids):
            trial = grammar.copy()
            if trial.feed(self.vocab[token_id]):
                lp = logps[i] if logps is not None else float(row_logp[token_id])
                return token_id, lp, trial
        return None

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        return build_prompt(self.tokenizer, messages, self.budget)

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop_below: float | None = None,
        tool: str | None = None,
    ) -> Generation:
        return self.generate_batch([(messages, tools)], stop_below=stop_below, tools_chosen=[tool])[0]

    def generate_batch(
        self,
        requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
        stop_below: float | None = None,
        tools_chosen: list[str | None] | None = None,
    ) -> list[Generation]:
        """Greedy, grammar-constrained generation of one tool call per request.

        `tools_chosen[i]`, when given, fixes the tool of request i (chosen by the task gate): its name is
        written into the prompt and only the arguments are generated and scored.
        """
        torch = self._torch
        chosen_tools = tools_chosen or [None] * len(requests)
        prompts, grammars, texts = [], [], []
        for (messages, tools), tool in zip(requests, chosen_tools, strict=True):
            names = tool_names({"tools": tools})
            grammar = ToolCallGrammar([tool] if tool else names)
            prefix = ""
            if tool:
                prefix = tool  # no trailing space: the model writes " {" as it learned to
                if tool not in names or not grammar.feed(prefix):
                    raise ValueError(f"tool {tool!r} is not offered by the request")
            prompts.append(self.prompt(messages) + prefix)
            grammars.append(grammar)
            texts.append(prefix)
        enc = self.tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        input_ids = enc["input_ids"].to(self.device)
        attention = enc["attention_mask"].to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        n = len(requests)
        logps: list[list[float]] = [[] for _ in range(n)]
        finished = [False] * n
        stopped = [False] * n
        past = None
        with torch.inference_mode():
            for _ in range(self.max_new_tokens):
                out = self.model(
                    input_ids=input_ids,
                    attention_mask=attention,
                    position_ids=positions,
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
                step_logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
                top = torch.topk(step_logp, self.top_k, dim=-1)
                top_ids, top_lp = top.indices.tolist(), top.values.tolist()
                next_ids = []
                for row in range(n):
                    if finished[row]:
                        next_ids.append(self.pad_id)
                        continue
                    chosen = self._first_grammatical(grammars[row], top_ids[row], top_lp[row])
                    if chosen is None:  # rare: search the whole vocabulary, most likely first
                        ranked = torch.argsort(step_logp[row], descending=True)[self.top_k :]
                        chosen = self._first_grammatical(grammars[row], ranked.tolist(), None, step_logp[row])
                    # nothing in the vocabulary continues the call (cannot happen for JSON)
                    if chosen is None:
                        finished[row] = True
                        logps[row].append(-math.inf)
                        next_ids.append(self.pad_id)
                        continue
                    token_id, lp, grammars[row] = chosen
                    texts[row] += self.vocab[token_id]
                    logps[row].append(lp)
                    next_ids.append(token_id)
                    if grammars[row].done:
                        finished[row] = True
                    elif stop_below is not None and lp < stop_below:
                        finished[row] = stopped[row] = True
                if all(finished):
                    break
                input_ids = torch.tensor(next_ids, device=self.device).unsqueeze(-1)
                attention = torch.cat([attention, attention.new_ones((n, 1))], dim=-1)
                positions = positions[:, -1:] + 1
        results = []
        for row in range(n):
            lps = logps[row] or [-math.inf]
            call = parse_target(texts[row]) if grammars[row].done else None
            results.append(
                Generation(
                    text=texts[row],
                    call=call,
                    min_logprob=min(lps),
                    mean_logprob=sum(lps) / len(lps),
                    tokens=len(logps[row]),
                    stopped_early=stopped[row],
                )
            )
        return results


def runtime_for(specialist: Specialist, max_new_tokens: int = 64) -> TransformersRuntime:
    """The runtime of a stored specialist, with the prompt budget it was trained with."""
    train_cfg = resolve(TrainConfig, {k: v for k, v in specialist.config.items() if k != "task_tools"})
    budget = PromptBudget(train_cfg.max_prompt_tokens, train_cfg.max_message_tokens)
    return TransformersRuntime(
        specialist.base_model, specialist.adapter_path, budget, max_new_tokens=max_new_tokens
    )
