"""The structural signature of a call, and the text of what varies in it.

Two calls can only be the same task if they come from the same call site, with the same system-prompt
template, the same tools on offer and the same kind of answer. That is cheap to compute, exact, and
splits an agent's log before any embedding: clustering then only has to separate what varies inside
one signature (the recent conversation). A system prompt is a template when its variables are masked
(dates, ids, numbers, emails ...); templates that still differ by a few words are merged by word diff.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from downsize.prompting import cut_chars, render_message
from downsize.shapes import tool_names
from downsize.sites import WORD, mask_variables, short_hash, system_prompt


@dataclass
class TemplateIndex:
    """Maps system prompts to template ids; prompts whose masked text is alike share one id.

    Kept inside the task assigner so serving computes exactly the signature discovery did. Raw prompts
    seen before hit a small cache, so the masking and the word diff run once per distinct prompt.
    """

    similarity: float = 0.9
    templates: dict[str, str] = field(default_factory=dict)  # template id -> masked text of its first prompt
    _by_masked: dict[str, str] = field(default_factory=dict)  # hash of a masked text -> template id
    _cache: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)
    cache_size: int = 4096
    max_compare: int = 200  # past this many templates a new one is not diffed against them all

    def template_id(self, prompt: str, learn: bool = True) -> str | None:
        """The template id of a system prompt ('' for none); None when unknown and `learn` is off."""
        if not prompt.strip():
            return ""
        raw = short_hash(prompt, 16)
        cached = self._cache.get(raw)
        if cached is not None:
            self._cache.move_to_end(raw)
            return cached
        masked = mask_variables(prompt)
        found = self._by_masked.get(short_hash(masked, 16)) or self._closest(masked)
        if found is None:
            if not learn:
                return None
            found = short_hash(masked)
            self.templates[found] = masked
        self._by_masked[short_hash(masked, 16)] = found
        self._cache[raw] = found
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    def _closest(self, masked: str) -> str | None:
        if self.similarity >= 1.0 or not self.templates:
            return None
        words = WORD.findall(masked)
        best, best_ratio = None, self.similarity
        for template_id, text in list(self.templates.items())[: self.max_compare]:
            other = WORD.findall(text)
            matcher = difflib.SequenceMatcher(None, words, other, autojunk=False)
            if matcher.real_quick_ratio() < best_ratio or matcher.quick_ratio() < best_ratio:
                continue
            ratio = matcher.ratio()
            if ratio >= best_ratio:
                best, best_ratio = template_id, ratio
        return best

    def to_dict(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "templates": self.templates, "by_masked": self._by_masked}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemplateIndex:
        index = cls(similarity=float(data["similarity"]), templates=dict(data["templates"]))
        index._by_masked = dict(data["by_masked"])
        return index


@dataclass(frozen=True)
class Signature:
    """Where a call comes from and what shape it has; `request_key` is what a new request can be matched on."""

    call_site: str  # agent and task-hint headers ("" when none)
    template: str  # template id of the system prompt ("" when none)
    tools: str  # hash of the sorted tool names offered ("" when none)
    kind: str  # tool_call | json | text: what the teacher answered (unknown for a new request)

    @property
    def request_key(self) -> str:
        return f"{self.call_site}|{self.template}|{self.tools}"

    @property
    def key(self) -> str:
        return f"{self.request_key}|{self.kind}"


def call_site(agent: str | None, task_hint: str | None) -> str:
    return "/".join(part for part in (agent or "", task_hint or "") if part)


def tools_key(request: dict[str, Any]) -> str:
    names = sorted(set(tool_names(request)))
    return short_hash(",".join(names)) if names else ""


def request_key(
    request: dict[str, Any],
    templates: TemplateIndex,
    agent: str | None = None,
    task_hint: str | None = None,
    use_call_site: bool = True,
    learn: bool = False,
) -> str | None:
    """The signature of a request without its answer; None when its system prompt is an unknown template."""
    template = templates.template_id(system_prompt(request), learn=learn)
    if template is None:
        return None
    site = call_site(agent, task_hint) if use_call_site else ""
    return f"{site}|{template}|{tools_key(request)}"


def signature(
    request: dict[str, Any],
    kind: str,
    templates: TemplateIndex,
    agent: str | None = None,
    task_hint: str | None = None,
    use_call_site: bool = True,
) -> Signature:
    """The full signature of a logged call (learning new templates as it goes)."""
    template = templates.template_id(system_prompt(request), learn=True) or ""
    site = call_site(agent, task_hint) if use_call_site else ""
    return Signature(site, template, tools_key(request), kind)


def varying_text(messages: list[dict[str, Any]], max_messages: int = 3, max_chars: int = 600) -> str:
    """What varies in a call: the last few turns, newest first (an embedder's truncation drops the oldest).

    Each turn is cut to `max_chars`, head and tail kept. A lone user turn is returned bare, without its
    role, so a one-shot request embeds as what the user wrote.
    """
    lines: list[str] = []
    roles: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, dict):
            continue
        line = render_message(message)
        if line is None:
            continue
        lines.append(cut_chars(line, max_chars))
        roles.append(str(message.get("role")))
        if len(lines) == max_messages:
            break
    if len(lines) == 1 and roles[0] == "user":
        return lines[0].removeprefix("user: ")
    return "\n".join(lines)
