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
import re
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


def chat_messages(conversation: str, instruction: str = SYSTEM) -> list[dict[str, str]]:
    """The chat the student sees: a one-line system prompt (its contract's instruction) and the pruned
    conversation."""
    return [{"role": "system", "content": instruction}, {"role": "user", "content": conversation}]


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


SIGNALS = "\x1f"  # separates the gate's text from its structural signals in one input string
_WORD = re.compile(r"[A-Za-z0-9_]+")


def token_shape(token: str) -> str | None:
    """A generic shape class for identifier-like tokens (ids, codes, numbers); None for plain words.

    Ids never repeat across conversations, so a gate that sees `ZFA04Y` learns nothing; the shape
    (`ID_UPPER_ALNUM`) and whether the id is new to the conversation generalise.
    """
    digits = any(ch.isdigit() for ch in token)
    upper = any(ch.isupper() for ch in token)
    lower = any(ch.islower() for ch in token)
    if token.isdigit():
        return f"NUM{min(len(token), 6)}"
    if digits and (upper or lower):
        if "_" in token:
            return "ID_SNAKE"
        return "ID_UPPER_ALNUM" if not lower else "ID_ALNUM"
    if token.isupper() and 3 <= len(token) <= 8:
        return f"UPPER{len(token)}"
    return None


def _called_values(messages: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(argument values, tool names) of every tool call made so far in the conversation."""
    values: set[str] = set()
    names: set[str] = set()
    for message in messages:
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            names.add(str(fn.get("name") or ""))
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except (json.JSONDecodeError, TypeError):
                continue
            if isinstance(args, dict):
                values.update(str(v) for v in args.values() if isinstance(v, str | int | float))
    return values, names


def conversation_signals(messages: list[dict[str, Any]]) -> list[str]:
    """Structural facts about where a conversation stands, as tokens a linear model can weigh.

    Who spoke last (and which tool answered), the agent's previous action, which tools it has called,
    how long the conversation is, and the shapes of identifier-like tokens in the last turn, marked NEW
    when no earlier tool call used that value (a user who just gave an id is usually about to be looked up).
    """
    turns = [m for m in messages if m.get("role") not in ("system", "developer")]
    if not turns:
        return ["EMPTY"]
    last = turns[-1]
    role = str(last.get("role"))
    out = [f"LAST_{role}" + (f"_{last.get('name') or ''}" if role == "tool" else "")]
    for prior in reversed(turns[:-1]):
        if prior.get("role") == "assistant":
            calls = prior.get("tool_calls") or []
            out.append("PREV_" + (str((calls[0].get("function") or {}).get("name")) if calls else "TEXT"))
            break
    used, called = _called_values(turns)
    out += [f"CALLED_{name}" for name in sorted(called)]
    out.append(f"TURNS_{min(len(turns) // 2, 10)}")
    for token in _WORD.findall(_content_text(last.get("content"))):
        shape = token_shape(token)
        if shape:
            out.append(("SEEN_" if token in used else "NEW_") + shape)
    return out


def gate_input(messages: list[dict[str, Any]]) -> str:
    """The task gate's input: the recent conversation's text, then its structural signals."""
    return gate_text(messages) + SIGNALS + " ".join(conversation_signals(messages))
