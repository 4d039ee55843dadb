"""Names a person recognises a task by: who asks (the role line of the system prompt), and what it answers
(the tool it calls, the title of the JSON schema it fills, or a text reply).

The c-TF-IDF label (`label.py`) says which words set a cluster apart ("text: chinese dont elegant"); that
helps a clusterer, not a reader. An agent's step is named in its own prompt: "You are Crew Manager.",
"As an airline agent, ...", a `response_format` schema called `TaskEvaluation`. Tasks that still share a
name (one agent calls one tool in many situations) are told apart by where the conversation stands (after
the user's message, after a tool's result) and then by rank.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from downsize.curate.secrets import SecretScanner
from downsize.discover import runs
from downsize.sites import mask_variables, system_prompt
from downsize.store import Store

MAX_ROLE = 48
_YOU_ARE = re.compile(r"\byou are (?:an? |the )?(?P<role>[^.\n!?;:]{2,120})", re.IGNORECASE)
_AS_A = re.compile(r"\bas (?:an?|the) (?P<role>[a-z][\w -]{2,60}?)\s*,", re.IGNORECASE)
_HEADING = re.compile(r"^\s{0,3}#{1,3}\s+(?P<role>\S.{1,80}?)\s*#*\s*$", re.MULTILINE)
_SENTENCE = re.compile(r"^\s*(?P<role>[^\n.!?]{3,160})")
_SCAN = 1500  # a role is stated at the top of a prompt; never read the whole policy


def _short(text: str, width: int = MAX_ROLE) -> str:
    text = " ".join(text.split()).strip(" ,;:-")
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0]
    return (cut or text[: width - 1]) + "…"


def _without_secrets(text: str) -> str:
    """The text with every secret gitleaks' rules find replaced by `<SECRET>` (curation's scanner)."""
    for finding in sorted(SecretScanner.gitleaks().scan(text), key=lambda f: -f.start):
        text = text[: finding.start] + "<SECRET>" + text[finding.end :]
    return text


def role_line(system: str) -> str | None:
    """The role a system prompt gives the model: "You are X" (X), "As an X," (X), a markdown heading, else the
    first sentence; shortened, secrets (gitleaks' rules) and variables (ids, numbers, dates) masked.
    None for an empty prompt."""
    head = system[:_SCAN]
    if not head.strip():
        return None
    for pattern in (_YOU_ARE, _AS_A, _HEADING, _SENTENCE):
        found = pattern.search(head)
        if found:
            role = _short(mask_variables(_without_secrets(found.group("role"))))
            if role:
                return role[0].upper() + role[1:]
    return None


def schema_title(request: Mapping[str, Any]) -> str | None:
    """The name of the JSON schema a request asks its answer to follow (`response_format.json_schema.name`,
    else the schema's own `title`)."""
    fmt = request.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, Mapping) else None
    if not isinstance(spec, Mapping):
        return None
    schema = spec.get("schema")
    for value in (spec.get("name"), schema.get("title") if isinstance(schema, Mapping) else None):
        if isinstance(value, str) and value.strip():
            return _short(value, 40)
    return None


def conversation_step(messages: Iterable[Any]) -> str:
    """Where the conversation stands when the call is made: after the user's message, after a tool's
    result (named), after the agent's own reply, or at the start."""
    turns = [m for m in messages if isinstance(m, Mapping) and m.get("role") not in ("system", "developer")]
    if not turns:
        return "at the start"
    last = turns[-1]
    role = last.get("role")
    if role == "tool":
        name = last.get("name")
        if not name:  # OpenAI's tool message names only the call id: find the call it answers
            wanted = last.get("tool_call_id")
            for prior in reversed(turns[:-1]):
                for call in prior.get("tool_calls") or []:
                    if isinstance(call, Mapping) and call.get("id") == wanted:
                        name = (call.get("function") or {}).get("name")
        return f"after {name}'s result" if name else "after a tool's result"
    if role == "user":
        return "after the user's message" if len(turns) > 1 else "on the user's first message"
    return "after its own reply"


def task_name(role: str | None, kind: str, tool: str | None = None, schema: str | None = None) -> str:
    """`Airline agent · get_reservation_details`, `Crew Manager · TaskEvaluation`, `Researcher · text reply`."""
    if kind == "tool_call":
        what = tool or "tool call"
    elif kind == "json":
        what = schema or "JSON answer"
    else:
        what = f"{schema} (text)" if schema else "text reply"
    return f"{role} · {what}" if role else what


def _most(counter: Counter[str]) -> str | None:
    return counter.most_common(1)[0][0] if counter else None


def task_names(store: Store, run_id: int | None = None) -> dict[str, str]:
    """A readable, unique name for every task of a discovery run (default: the newest), read from its calls:
    the most common role line, schema title and (for tool calls) the run's dominant tool; tasks that share
    a name get their most common conversation step, then a rank by volume."""
    run_id = runs.require_run(store, run_id)
    tasks = runs.run_tasks(store, run_id)
    assigned = {ex_id: key for ex_id, (key, _conf) in runs.exchange_tasks(store, run_id).items() if key}
    roles: dict[str, Counter[str]] = {}
    schemas: dict[str, Counter[str]] = {}
    steps: dict[str, Counter[str]] = {}
    role_of: dict[str, str | None] = {}  # the same prompt is sent again and again: read it once
    for ex in store.exchanges():
        key = assigned.get(ex.id) if ex.id is not None else None
        if key is None:
            continue
        prompt = system_prompt(ex.request)[:_SCAN]
        if prompt not in role_of:
            role_of[prompt] = role_line(prompt)
        role = role_of[prompt] or (_short(ex.agent) if ex.agent else None)
        if role:
            roles.setdefault(key, Counter())[role] += 1
        title = schema_title(ex.request)
        if title:
            schemas.setdefault(key, Counter())[title] += 1
        steps.setdefault(key, Counter())[conversation_step(ex.request.get("messages") or [])] += 1
    base = {
        t["task_key"]: task_name(
            _most(roles.get(t["task_key"], Counter())),
            t["output_kind"],
            t.get("dominant_tool"),
            _most(schemas.get(t["task_key"], Counter())),
        )
        for t in tasks
    }
    return unique_names(
        base, {k: _most(c) for k, c in steps.items()}, {t["task_key"]: t["volume"] for t in tasks}
    )


def unique_names(
    base: Mapping[str, str], steps: Mapping[str, str | None], volumes: Mapping[str, int]
) -> dict[str, str]:
    """Names made unique: a shared name gets its task's conversation step, and one still shared a rank by
    volume (#1 the largest)."""
    shared = Counter(base.values())
    named = {
        key: f"{name}, {steps[key]}" if shared[name] > 1 and steps.get(key) else name
        for key, name in base.items()
    }
    groups: dict[str, list[str]] = {}
    for key, name in named.items():
        groups.setdefault(name, []).append(key)
    for name, keys in groups.items():
        if len(keys) > 1:
            for rank, key in enumerate(sorted(keys, key=lambda k: (-volumes.get(k, 0), k)), start=1):
                named[key] = f"{name} #{rank}"
    return named
