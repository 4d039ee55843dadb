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

from downsize.backends.decoding import Completion, Sampling, TokenTexts, ToolCallRuntime, constrained_greedy
from downsize.backends.students import load_specialist_model
from downsize.prompting import PromptBudget


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
        self.weights = str(next(model.parameters()).dtype).removeprefix("torch.")
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

    def complete(
        self,
        prompts: list[str],
        grammars: list[Any],
        stop_below: float | None = None,
        sampling: Sampling | None = None,
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
            sampling=sampling,
        )
