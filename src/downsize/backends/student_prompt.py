"""The student's prompt for a request: the pruned conversation in its chat template (training and both engines).

One function, so the prompt a specialist is trained on is the prompt it is served with, on every engine.
"""

from __future__ import annotations

from typing import Any

from downsize.copying import Copied, options_line
from downsize.prompting import SYSTEM, PromptBudget, chat_messages, prune_messages

FALLBACK_TEMPLATE = "{system}\n\n### Conversation\n{user}\n\n### Next tool call\n"


def build_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    budget: PromptBudget,
    copied: Copied | None = None,
    instruction: str = SYSTEM,
) -> str:
    """The student's prompt text for a request's messages, in its chat template, pruned to budget.

    With `copied` (parameters copied from the conversation), a last line lists their candidate values
    (`copying.options_line`), within the same token budget. `instruction` is the one-line system prompt of
    the specialist's output contract (`contracts.INSTRUCTIONS`).
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
    chat = chat_messages(conversation, instruction)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    return FALLBACK_TEMPLATE.format(system=chat[0]["content"], user=chat[1]["content"])


def end_of_turn(tokenizer: Any) -> str:
    return str(tokenizer.eos_token or "")
