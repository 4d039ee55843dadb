"""Risk tiers: a tool that changes the world (book, cancel, pay) answers to a stricter rule than a lookup.

A called tool's tier comes, in order, from the MCP-style annotations the agent sends with the tool
(`readOnlyHint`, `destructiveHint`: on the tool, on its `function`, or under either's `annotations`), else from
the user's config (`risk:` with glob patterns of tool names), else it is `strict`. Tiers:

- `read_only`: may be served under the promotion rule the user chose (at parity with the teacher included);
- `strict`: only under the strict rule (the lower bound of agreement reaches the fixed target, 0.95);
- `destructive`: only under the strict rule at `DESTRUCTIVE_TARGET` (0.99).

Answers that are not tool calls (JSON, labels, text) have no tier of their own (`answer`): the chosen rule
applies. The tier is decided per call, on the tool the specialist would call, by the router and by calibration
alike (`decide/decision.py`); a tier without a threshold falls back upstream with reason `risk_tier:<tier>`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

TIERS = ("read_only", "strict", "destructive")
ANSWER = "answer"  # a JSON, label, ReAct or text answer: no tool of its own
DESTRUCTIVE_TARGET = 0.99


@dataclass(frozen=True)
class RiskPolicy:
    """The user's tiers by tool-name glob (`risk:` in a config file); annotations in requests come first."""

    read_only: tuple[str, ...] = ()
    destructive: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> RiskPolicy:
        data = data if isinstance(data, dict) else {}
        unknown = set(data) - {"read_only", "destructive"}
        if unknown:
            from downsize.errors import ConfigError

            raise ConfigError(
                f"unknown risk tier(s) {', '.join(sorted(unknown))}: `risk:` takes read_only and destructive, "
                "each a list of tool-name patterns (every other tool is strict)"
            )
        return cls(
            read_only=tuple(str(p) for p in data.get("read_only") or ()),
            destructive=tuple(str(p) for p in data.get("destructive") or ()),
        )

    def to_dict(self) -> dict[str, list[str]]:
        return {"read_only": list(self.read_only), "destructive": list(self.destructive)}


def _hints(tool: dict[str, Any]) -> dict[str, Any]:
    """The MCP annotations of one OpenAI tool definition, wherever the agent put them."""
    found: dict[str, Any] = {}
    function: dict[str, Any] = tool["function"] if isinstance(tool.get("function"), dict) else {}
    for holder in (tool, function, tool.get("annotations"), function.get("annotations")):
        if isinstance(holder, dict):
            for key in ("readOnlyHint", "destructiveHint"):
                if key in holder and key not in found:
                    found[key] = holder[key]
    return found


def _tool(request: dict[str, Any], name: str) -> dict[str, Any] | None:
    for tool in request.get("tools") or []:
        if isinstance(tool, dict):
            function: dict[str, Any] = tool["function"] if isinstance(tool.get("function"), dict) else tool
            if function.get("name") == name:
                return tool
    return None


def tier_of(name: str | None, request: dict[str, Any], policy: RiskPolicy | None = None) -> str:
    """The tier of calling tool `name` in this request: annotations, else the policy's patterns, else strict."""
    if name is None:
        return ANSWER
    tool = _tool(request, name)
    hints = _hints(tool) if tool else {}
    if hints.get("readOnlyHint") is True:
        return "read_only"
    if hints.get("destructiveHint") is True:
        return "destructive"
    if hints.get("destructiveHint") is False and "readOnlyHint" in hints:
        return "strict"  # changes the world, but not destructively
    policy = policy or RiskPolicy()
    if any(fnmatch.fnmatchcase(name, p) for p in policy.destructive):
        return "destructive"
    if any(fnmatch.fnmatchcase(name, p) for p in policy.read_only):
        return "read_only"
    return "strict"
