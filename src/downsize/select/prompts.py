"""The screen's prompt: instruction and compact tool schemas, the few-shot examples as earlier chat turns, the case.

Unlike the specialist's pruned prompt, the screen's prompt carries the tool schemas: an untrained student has
not learned them, and BFCL's tools change with every question. The same prompt is what the BFCL benchmark
fine-tunes on (`target_text` is what it learns to write).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from downsize.prompting import PromptBudget, prune_messages
from downsize.select.call_sequence import render_calls
from downsize.select.cases import CallCase
from downsize.select.tool_schemas import SchemaStyle, render_tools, tool_name_set, tool_signature

INSTRUCTION_ONE = "You are a tool-calling assistant. Reply with the one next tool call, written as: tool_name {JSON arguments}"
INSTRUCTION_MANY = (
    "You are a tool-calling assistant. Reply with every tool call the request needs, separated by ' ; ', "
    "written as: tool_name {JSON arguments} ; tool_name {JSON arguments}"
)


@dataclass(frozen=True)
class PromptConfig:
    """Budgets of the screen's prompt: the conversation asked about, each example's, and the schemas' detail."""

    budget: PromptBudget = PromptBudget(192, 96)
    shot_budget: PromptBudget = PromptBudget(96, 64)
    style: SchemaStyle = SchemaStyle()


Conversation = Callable[[list[dict[str, Any]], PromptBudget], str]


def char_conversation(messages: list[dict[str, Any]], budget: PromptBudget) -> str:
    """The pruned conversation with characters standing in for tokens (4 a token): for tests and token-free use."""
    return prune_messages(
        messages,
        lambda text: [ord(c) for c in text],
        lambda ids: "".join(chr(i) for i in ids),
        PromptBudget(budget.max_prompt_tokens * 4, budget.max_message_tokens * 4),
    )


def screen_messages(
    case: CallCase,
    shots: Sequence[CallCase],
    conversation: Conversation = char_conversation,
    config: PromptConfig = PromptConfig(),
) -> list[dict[str, str]]:
    """The chat for one case: instruction and compact schemas, the examples as earlier turns, then the case.

    Examples are ordered so that the nearest comes last, next to the question. When their tools differ from
    the case's (BFCL), every user turn starts with the tools' one-line signatures, so an example's call can
    be read against the tools it had.
    """
    instruction = INSTRUCTION_MANY if case.many else INSTRUCTION_ONE
    system = f"{instruction}\nTools (* marks a required parameter):\n{render_tools(case.tools, config.style)}"
    same_tools = all(tool_name_set(s.tools) == tool_name_set(case.tools) for s in shots)

    def user_turn(c: CallCase, budget: PromptBudget) -> str:
        text = conversation(c.messages, budget)
        if not same_tools:
            text = "Tools: " + "; ".join(tool_signature(t) for t in c.tools) + "\n" + text
        return text

    chat = [{"role": "system", "content": system}]
    for shot in reversed(list(shots)):
        chat.append({"role": "user", "content": user_turn(shot, config.shot_budget)})
        chat.append({"role": "assistant", "content": render_calls(shot.gold)})
    chat.append({"role": "user", "content": user_turn(case, config.budget)})
    return chat


def estimate_prompt_tokens(cases: Sequence[CallCase], k: int, config: PromptConfig = PromptConfig()) -> int:
    """The longest screen prompt in tokens, before any tokenizer is loaded (3 characters a token, plus k examples
    at their budget and a call each): what the context-window filter is given."""
    if not cases:
        return 0
    longest = max(
        sum(len(m["content"]) for m in screen_messages(c, (), char_conversation, config)) for c in cases
    )
    return longest // 3 + k * (config.shot_budget.max_prompt_tokens + 64) + 64


def token_conversation(tokenizer: Any) -> Conversation:
    """The pruned conversation counted in the student's own tokens."""

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def decode(ids: Any) -> str:
        return str(tokenizer.decode(list(ids)))

    return lambda messages, budget: prune_messages(messages, encode, decode, budget)


def chat_text(tokenizer: Any, chat: list[dict[str, str]]) -> str:
    """The chat in the student's template, ready for the assistant's reply; a plain layout when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    eot = end_of_turn_text(tokenizer)
    parts = [
        f"### {m['role'].capitalize()}\n{m['content']}{eot if m['role'] == 'assistant' else ''}" for m in chat
    ]
    return "\n\n".join(parts) + "\n\n### Assistant\n"


def end_of_turn_text(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "eos_token", None) or "")


def build_screen_prompt(
    tokenizer: Any, case: CallCase, shots: Sequence[CallCase] = (), config: PromptConfig = PromptConfig()
) -> str:
    return chat_text(tokenizer, screen_messages(case, shots, token_conversation(tokenizer), config))


def end_strings(tokenizer: Any) -> tuple[str, ...]:
    """What closes a sequence of calls: the end-of-turn token's text (a newline for a tokenizer without one)."""
    return (end_of_turn_text(tokenizer) or "\n",)


def target_text(case: CallCase, tokenizer: Any) -> str:
    """What a fine-tuned student should write for a case: its gold calls, then the end-of-turn token."""
    return render_calls(case.gold) + end_of_turn_text(tokenizer)
