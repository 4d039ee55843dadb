"""Grammar-constrained greedy decoding, shared by every specialist runtime (transformers, llama.cpp).

A runtime supplies a `TokenScorer`: it evaluates prompts and then one token per row per step, and
returns the next-token log-probabilities under the model's own (unmasked) distribution. The loop here
does the rest the same way for every engine: at each step it takes the most likely of the top-k tokens
whose text keeps the output inside the grammar (searching the rest of the vocabulary, most likely first,
when none of the top k fits), records that token's unmasked log-probability, and stops a row when its
grammar is done, when the budget is spent, or (with `stop_below`) as soon as a token falls below the
floor: the confidence is the lowest token log-probability, so the answer is then already known.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from downsize.backends.contract_grammar import grammar_for
from downsize.backends.student_prompt import build_prompt, end_of_turn
from downsize.contracts import OutputContract
from downsize.copying import Copied, Spans
from downsize.prompting import PromptBudget
from downsize.shapes import tool_names
from downsize.types import Generation, ToolCall


class Grammar(Protocol):
    """What the decoder needs of a grammar: try text on a copy, commit when it fits."""

    def copy(self) -> Grammar: ...

    def feed(self, text: str) -> bool: ...

    @property
    def done(self) -> bool: ...


@dataclass
class Completion:
    """One constrained completion: the generated text and each generated token's unmasked log-probability."""

    text: str
    logprobs: list[float] = field(default_factory=list)
    stopped_early: bool = False  # cut because a token fell below `stop_below`
    done: bool = False  # the grammar accepted a complete output

    @property
    def min_logprob(self) -> float:
        return min(self.logprobs) if self.logprobs else -math.inf

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else -math.inf


@dataclass(frozen=True)
class Sampling:
    """Sample among the top-k grammatical tokens at `temperature` instead of taking the most likely: several
    samples of one call measure how sure the student is (sample agreement, `benchmarks/bench_signals.py`).
    The recorded log-probabilities stay the model's own; `seed` makes a run repeatable."""

    temperature: float = 1.0
    seed: int = 0


class StepScores(Protocol):
    """Next-token log-probabilities of each row of a batch."""

    def top(self, k: int) -> tuple[list[list[int]], list[list[float]]]:
        """Per row, the k most likely token ids and their log-probabilities, most likely first."""
        ...

    def ranked(self, row: int, ids: Sequence[int]) -> tuple[list[int], list[float]]:
        """The given token ids of one row ordered most likely first, with their log-probabilities."""
        ...


class TokenScorer(Protocol):
    """An engine's forward pass: prompts first, then one token per unfinished row (None for finished)."""

    def start(self, prompts: list[str]) -> StepScores: ...

    def advance(self, next_ids: list[int | None]) -> StepScores: ...


class TokenTexts:
    """The text of every token id, grouped by first character so the full-vocabulary search stays cheap."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.by_first: dict[str, list[int]] = {}
        for token_id, text in enumerate(texts):
            if text:
                self.by_first.setdefault(text[0], []).append(token_id)

    def __len__(self) -> int:
        return len(self.texts)

    def candidates(self, grammar: Grammar) -> list[int]:
        """Every token whose first character the grammar accepts (one grammar test per distinct character)."""
        ids: list[int] = []
        for first, group in self.by_first.items():
            if grammar.copy().feed(first):
                ids.extend(group)
        return ids


def first_grammatical(
    grammar: Grammar, ids: Sequence[int], logps: Sequence[float], vocab: TokenTexts
) -> tuple[int, float, Grammar] | None:
    """The first token of `ids` (ordered most likely first) whose text keeps the output grammatical."""
    for token_id, lp in zip(ids, logps, strict=True):
        trial = grammar.copy()
        if trial.feed(vocab.texts[token_id]):
            return token_id, lp, trial
    return None


def sample_grammatical(
    grammar: Grammar,
    ids: Sequence[int],
    logps: Sequence[float],
    vocab: TokenTexts,
    rng: random.Random,
    temperature: float,
) -> tuple[int, float, Grammar] | None:
    """A token of `ids` drawn among those whose text keeps the output grammatical, by probability at
    `temperature` renormalised over them."""
    fits = []
    for token_id, lp in zip(ids, logps, strict=True):
        trial = grammar.copy()
        if trial.feed(vocab.texts[token_id]):
            fits.append((token_id, lp, trial))
    if not fits:
        return None
    top = max(lp for _, lp, _ in fits)
    weights = [math.exp((lp - top) / max(temperature, 1e-6)) for _, lp, _ in fits]
    return rng.choices(fits, weights)[0]


def constrained_greedy(
    scorer: TokenScorer,
    prompts: list[str],
    grammars: Sequence[Grammar],
    vocab: TokenTexts,
    max_new_tokens: int,
    top_k: int = 32,
    stop_below: float | None = None,
    sampling: Sampling | None = None,
) -> list[Completion]:
    """Greedy decoding of each prompt under its grammar (copied: the caller's grammars are not changed);
    with `sampling`, each token is drawn among the grammatical top-k instead."""
    rng = random.Random(sampling.seed) if sampling is not None else None
    states = [g.copy() for g in grammars]
    results = [Completion(text="", done=g.done) for g in states]
    finished = [c.done for c in results]
    if all(finished) or max_new_tokens < 1:
        return results
    scores = scorer.start(prompts)
    for step in range(max_new_tokens):
        top_ids, top_lps = scores.top(top_k)
        next_ids: list[int | None] = []
        for row, result in enumerate(results):
            if finished[row]:
                next_ids.append(None)
                continue
            if sampling is not None and rng is not None:
                chosen = sample_grammatical(
                    states[row], top_ids[row], top_lps[row], vocab, rng, sampling.temperature
                )
            else:
                chosen = first_grammatical(states[row], top_ids[row], top_lps[row], vocab)
            if chosen is None:  # rare: search the rest of the vocabulary, most likely first
                ids, lps = scores.ranked(row, vocab.candidates(states[row]))
                chosen = first_grammatical(states[row], ids, lps, vocab)
            if chosen is None:  # nothing continues the output (the tool-call grammar never gets here)
                finished[row] = True
                result.logprobs.append(-math.inf)
                next_ids.append(None)
                continue
            token_id, lp, states[row] = chosen
            result.text += vocab.texts[token_id]
            result.logprobs.append(lp)
            next_ids.append(token_id)
            if states[row].done:
                finished[row] = result.done = True
            elif stop_below is not None and lp < stop_below:
                finished[row] = result.stopped_early = True
        if all(finished) or step + 1 == max_new_tokens:
            break
        scores = scorer.advance(next_ids)
    return results


class ToolCallRuntime:
    """`generate`/`generate_batch` on top of an engine's `prompt` and `complete`, for any output contract.

    Subclasses (the transformers and llama.cpp runtimes) supply the prompt text and the constrained
    completion; the grammar (`contract_grammar.grammar_for`), the chosen-tool prefix and the `Generation`
    they return are the same.
    """

    engine: str = ""  # the engine's name, as `runtime_for` takes it
    weights: str = ""  # the student weights it computes with (a GGUF file's name; fp32 for transformers)
    max_new_tokens: int = 64
    max_string: int = 160
    copied: Copied = {}  # noqa: RUF012 - replaced per instance (`runtime_for`), never mutated
    copied_in_prompt: bool = False  # the prompt lists the copied parameters' options (trained so)
    spans: Spans = {}  # noqa: RUF012 - parameters taken as spans of the conversation (`runtime_for`)
    contract: OutputContract = OutputContract("tool_call")  # replaced per instance (`runtime_for`)
    tokenizer: Any = None
    budget: PromptBudget = PromptBudget()

    def prompt(self, messages: list[dict[str, Any]]) -> str:
        """The student's prompt, as it was trained: pruned conversation, copied options, contract instruction."""
        copied = self.copied if self.copied_in_prompt else None
        return build_prompt(self.tokenizer, messages, self.budget, copied, self.contract.instruction)

    def complete(
        self,
        prompts: list[str],
        grammars: list[Any],
        stop_below: float | None = None,
        sampling: Sampling | None = None,
    ) -> list[Completion]:
        raise NotImplementedError

    def generate(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        stop_below: float | None = None,
        tool: str | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Generation:
        request = {"messages": messages, "tools": tools, "response_format": response_format}
        return self.generate_requests([request], stop_below=stop_below, tools_chosen=[tool])[0]

    def generate_batch(
        self,
        requests: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
        stop_below: float | None = None,
        tools_chosen: list[str | None] | None = None,
    ) -> list[Generation]:
        """`generate_requests` for (messages, tools) pairs."""
        bodies = [{"messages": messages, "tools": tools} for messages, tools in requests]
        return self.generate_requests(bodies, stop_below=stop_below, tools_chosen=tools_chosen)

    def generate_requests(
        self,
        requests: list[dict[str, Any]],
        stop_below: float | None = None,
        tools_chosen: list[str | None] | None = None,
        sampling: Sampling | None = None,
    ) -> list[Generation]:
        """Greedy (or, with `sampling`, sampled), grammar-constrained generation of one answer per request under the specialist's contract.

        Tool calls: the arguments follow the named tool's JSON schema. `tools_chosen[i]`, when given, fixes the
        tool of request i (chosen by the task gate): its name is written into the prompt and only the
        arguments are generated and scored. Parameters the teacher always copies from the conversation
        (`self.copied`, learned at training) may only take identifier tokens the conversation contains.
        Other contracts: JSON under the request's (or the learned) schema, one of the labels, an Action step,
        or short text ending on the end-of-turn token.
        """
        contract = self.contract
        end = end_of_turn(self.tokenizer) if self.tokenizer is not None else ""
        chosen_tools = tools_chosen or [None] * len(requests)
        prompts, grammars, prefixes = [], [], []
        for request, tool in zip(requests, chosen_tools, strict=True):
            messages = request.get("messages") or []
            grammar = grammar_for(contract, request, end, self.max_string, self.copied, tool, self.spans)
            prefix = ""
            if tool and contract.kind == "tool_call":
                prefix = tool  # no trailing space: the model writes " {" as it learned to
                if tool not in tool_names(request) or not grammar.feed(prefix):
                    raise ValueError(f"tool {tool!r} is not offered by the request")
            prompts.append(self.prompt(messages) + prefix)
            grammars.append(grammar)
            prefixes.append(prefix)
        results = []
        completions = self.complete(prompts, grammars, stop_below, sampling)
        for completion, prefix in zip(completions, prefixes, strict=True):
            text = prefix + completion.text
            if end and text.endswith(end):
                text = text[: -len(end)]
            lps = completion.logprobs or [-math.inf]
            value = contract.parse(text) if completion.done else None
            results.append(
                Generation(
                    text=text,
                    call=value if isinstance(value, ToolCall) else None,
                    min_logprob=min(lps),
                    mean_logprob=sum(lps) / len(lps),
                    tokens=len(completion.logprobs),
                    stopped_early=completion.stopped_early,
                    value=value,
                    complete=completion.done,
                )
            )
        return results
