"""The specialist's view of a call: a pruned prompt and a short target.

Prompt pruning is where CPU training becomes affordable. What is constant across a task (the system
policy, the tool schemas) is dropped: the specialist learns it from the data. What varies (the recent
conversation) is rendered compactly, newest turns first until a token budget is spent, each turn cut
to its own budget (head and tail kept, since ids sit at both ends of tool results). The target is the
teacher's tool call as `name {json-arguments}`, a third the tokens of the OpenAI wrapper.

Stdlib only: the tokenizer's encode/decode come in as functions, so the router can share this code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from downsize.types import ToolCall

SYSTEM = "You are a tool-calling specialist. Reply with the next tool call as: tool_name {JSON arguments}"

Encode = Callable[[str], Sequence[int]]
Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class PromptBudget:
    max_prompt_tokens: int = 192
    max_message_tokens: int = 96


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def render_target(call: ToolCall) -> str:
    return f"{call.name} {compact_json(call.arguments)}"


def parse_target(text: str) -> ToolCall | None:
    """Inverse of render_target; None when the text is not `name {object}`."""
    name, _, rest = text.strip().partition(" ")
    if not name or not rest:
        return None
    try:
        args = json.loads(rest)
    except json.JSONDecodeError:
        return None
    return ToolCall(name=name, arguments=args) if isinstance(args, dict) else None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def render_message(message: dict[str, Any]) -> str | None:
    """One conversation turn as a line of text; None for turns the specialist never sees (system)."""
    role = message.get("role")
    if role in ("system", "developer"):
        return None
    if role == "assistant" and message.get("tool_calls"):
        calls = []
        for c in message["tool_calls"]:
            fn = c.get("function") or {}
            calls.append(f"{fn.get('name', '')} {fn.get('arguments', '')}")
        return "assistant called: " + " ; ".join(calls)
    if role == "tool":
        return f"tool {message.get('name') or ''} returned: {_content_text(message.get('content'))}"
    return f"{role}: {_content_text(message.get('content'))}"


def cut_chars(text: str, max_chars: int) -> str:
    """Text cut to about `max_chars`, head (two thirds) and tail kept: ids sit at both ends of tool results."""
    if len(text) <= max_chars:
        return text
    head = (max_chars * 2) // 3
    return text[:head] + " … " + text[-(max_chars - head) :]


def _cut(ids: Sequence[int], budget: int, decode: Decode) -> str:
    if len(ids) <= budget:
        return decode(ids)
    head = (budget * 2) // 3
    tail = budget - head - 1
    return decode(ids[:head]) + " … " + decode(ids[len(ids) - tail :])


def prune_messages(
    messages: list[dict[str, Any]], encode: Encode, decode: Decode, budget: PromptBudget
) -> str:
    """The recent conversation, newest first until the budget is spent, returned oldest first."""
    kept: list[str] = []
    used = 0
    for message in reversed(messages):
        line = render_message(message)
        if line is None:
            continue
        ids = encode(line)
        room = min(budget.max_message_tokens, budget.max_prompt_tokens - used)
        if room < 8:
            break
        text = _cut(ids, room, decode)
        used += min(len(ids), room)
        kept.append(text)
    return "\n".join(reversed(kept))


def chat_messages(conversation: str) -> list[dict[str, str]]:
    """The chat the student sees: a one-line system prompt and the pruned conversation."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": conversation}]


TEXT_REPLY = "<text>"  # the gate's label for "the teacher answered in text": never served by a specialist


def gate_text(messages: list[dict[str, Any]], max_messages: int = 3, max_chars: int = 600) -> str:
    """The recent conversation for the task gate: the last few turns, each cut to `max_chars` (head and tail)."""
    lines: list[str] = []
    for message in reversed(messages):
        line = render_message(message)
        if line is None:
            continue
        lines.append(cut_chars(line, max_chars))
        if len(lines) == max_messages:
            break
    # the newest turn is marked so that a linear model can tell "the user just said X" from older context
    if lines:
        lines[0] = "LAST " + lines[0]
    return "\n".join(reversed(lines))
