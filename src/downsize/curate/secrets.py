"""Secrets found by gitleaks' maintained rule set (vendored `gitleaks.toml`, MIT), run in Python.

Hand-written key patterns match what their author thought of; gitleaks' ~220 rules are kept up to date
by the scanner's maintainers, each with its own keywords (a cheap prefilter), an entropy floor for
generic or loosely shaped keys, and allowlists for placeholders and variable references. This module
reads the rules file shipped beside it, translates Go's RE2 syntax to Python's `re` where they differ,
and applies gitleaks' own acceptance steps (secret group, entropy, global and per-rule allowlists and
stopwords). Paths and commits in allowlists are ignored: a logged LLM call has neither.

Updating: replace `gitleaks.toml` with a newer release's file (its header says how) and bump
`GITLEAKS_VERSION`; `tests/test_pii_secrets.py` pins the behaviour on hand-written examples.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

GITLEAKS_VERSION = "8.30.1"
RULES_FILE = Path(__file__).with_name("gitleaks.toml")
SECRET_ENTITIES = ("API_KEY", "CLOUD_KEY", "BEARER_TOKEN", "PRIVATE_KEY", "PASSWORD")

# gitleaks rule ids -> the entity a masked secret is labelled with (every secret becomes a placeholder)
_CLOUD = ("aws-", "gcp-", "azure-", "alibaba-", "yandex-aws", "digitalocean-", "heroku-", "flyio-")
_TOKEN = ("jwt", "curl-auth-header", "bearer", "authress", "vault-")


def secret_entity(rule_id: str) -> str:
    """The entity name a gitleaks rule's finding is masked as."""
    if "private-key" in rule_id:
        return "PRIVATE_KEY"
    if "password" in rule_id or rule_id == "curl-auth-user":
        return "PASSWORD"
    if rule_id.startswith(_CLOUD):
        return "CLOUD_KEY"
    if rule_id.startswith(_TOKEN):
        return "BEARER_TOKEN"
    return "API_KEY"


def translate_go_regex(pattern: str) -> str:
    """RE2 to Python `re`. A flag group such as `(?i)` in mid-pattern holds in RE2 to the end of its
    enclosing group, across `|`; here it becomes a scoped `(?i:...)`, closed before each `|` and reopened
    after it. `\\z` becomes `\\Z`, and a `[` inside a class is escaped."""
    out: list[str] = []
    scopes: list[list[str]] = [[]]  # per open group: the scoped flag groups opened inside it
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            pair = pattern[i : i + 2]
            out.append("\\Z" if pair == "\\z" else pair)
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
            out.append("\\[" if ch == "[" else ch)
        elif ch == "[":
            in_class = True
            out.append(ch)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a literal ] first in a class
                out.append("\\]")
                i += 1
        elif ch == "(":
            flags = re.match(r"\(\?([imsU-]+)\)", pattern[i:])
            if flags and i > 0:
                out.append(f"(?{flags.group(1)}:")
                scopes[-1].append(flags.group(1))
                i += len(flags.group(0))
                continue
            scopes.append([])
            out.append(ch)
        elif ch == "|":
            open_flags = scopes[-1]
            out.append(")" * len(open_flags) + "|" + "".join(f"(?{f}:" for f in open_flags))
        elif ch == ")":
            out.append(")" * len(scopes.pop() if len(scopes) > 1 else []) + ")")
        else:
            out.append(ch)
        i += 1
    return "".join(out) + ")" * len(scopes[0])


# gitleaks ends 150-odd rules with this group: a key stops at a quote, a semicolon, whitespace, an escaped
# newline or the end of the line, which is how keys sit in source files. In logged chat and tool calls a
# key also ends at `&` in a URL's query string (`?key=AIza...&v=3`), at a comma or bracket of prose or a
# list, or at a sentence's last punctuation ("my key is sk_live_...!"). Found 2026-12 when the switch to
# gitleaks' rules lost every Google key written inside a URL.
_GO_TERMINATOR = r"""(?:[\x60'"\s;]|\\[nr]|$)"""
_CHAT_TERMINATOR = r"""(?:[\x60'"\s;&,)\]}>|<]|[.!?:](?:\s|$)|\\[nr]|$)"""


def widen_terminator(pattern: str) -> str:
    """A gitleaks rule (Go syntax) whose key may also end where chat text and URLs end it (see above)."""
    return pattern.replace(_GO_TERMINATOR, _CHAT_TERMINATOR)


def shannon_entropy(value: str) -> float:
    """Bits per character, as gitleaks computes it on a candidate secret."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_PLACEHOLDER = re.compile(
    r"^[$<{%@\[(]|^(?:your|my|the|some|example|changeme|placeholder|redacted|secret|password|token)\b"
    r"|(?i:x{6,}|\*{4,}|#{4,}|\.{3})|^(?i:true|false|null|none|undefined)$"
)


def placeholder(value: str) -> bool:
    """A stand-in, not a secret: `<your key here>`, `${DB_PASSWORD}`, `xxxxxx`, or what gitleaks' global
    allowlist lets through."""
    return bool(_PLACEHOLDER.search(value)) or _default_scanner().global_allow.allows(value, value, value)


def plausible_secret(value: str, min_entropy: float = 3.0) -> bool:
    """A hand-written pattern's match is kept when it is not a placeholder or a variable reference and
    looks random enough: gitleaks' global allowlist, then an entropy floor (the one gitleaks' generic rule
    uses is 3.5; 3.0 keeps short passwords). Short passwords in prose ("my password is tulip77") pass
    the entropy check at lengths where 3.0 bits per character is not reachable."""
    if placeholder(value):
        return False
    return shannon_entropy(value) > min(min_entropy, math.log2(len(value)) - 0.5)


@dataclass(frozen=True)
class Allowlist:
    """One gitleaks allowlist: a finding is dropped when its regexes or stopwords match (OR), or all do (AND)."""

    regexes: tuple[re.Pattern[str], ...]
    stopwords: tuple[str, ...]
    target: str  # secret | match | line
    require_all: bool
    unusable: bool  # needs a path or commit, which a logged call does not have

    def allows(self, secret: str, match: str, line: str) -> bool:
        if self.unusable:
            return False
        subject = {"match": match, "line": line}.get(self.target, secret)
        checks = []
        if self.regexes:
            checks.append(any(r.search(subject) for r in self.regexes))
        if self.stopwords:
            lower = secret.lower()
            checks.append(any(w in lower for w in self.stopwords))
        if not checks:
            return False
        return all(checks) if self.require_all else any(checks)


@dataclass(frozen=True)
class SecretRule:
    id: str
    entity: str
    regex: re.Pattern[str]
    keywords: tuple[str, ...]
    entropy: float
    secret_group: int
    allowlists: tuple[Allowlist, ...]


@dataclass(frozen=True)
class SecretFinding:
    start: int
    end: int
    rule: str
    entity: str


def _allowlist(raw: dict[str, Any]) -> Allowlist:
    return Allowlist(
        regexes=tuple(re.compile(translate_go_regex(r)) for r in raw.get("regexes", ())),
        stopwords=tuple(w.lower() for w in raw.get("stopwords", ())),
        target=str(raw.get("regexTarget", "secret")),
        require_all=str(raw.get("condition", "OR")).upper() == "AND",
        unusable=bool(raw.get("paths") or raw.get("commits"))
        and str(raw.get("condition", "OR")).upper() == "AND",
    )


class SecretScanner:
    """gitleaks' rules over a text: the span of each accepted secret, with the rule that found it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.rules: list[SecretRule] = []
        for raw in config.get("rules", ()):
            if "regex" not in raw:
                continue  # path-only rules (files that are secrets by name) do not apply to logged text
            self.rules.append(
                SecretRule(
                    id=raw["id"],
                    entity=secret_entity(raw["id"]),
                    regex=re.compile(translate_go_regex(widen_terminator(raw["regex"]))),
                    keywords=tuple(k.lower() for k in raw.get("keywords", ())),
                    entropy=float(raw.get("entropy", 0.0)),
                    secret_group=int(raw.get("secretGroup", 0)),
                    allowlists=tuple(_allowlist(a) for a in raw.get("allowlists", ())),
                )
            )
        self.global_allow = _allowlist(config.get("allowlist", {}))

    @classmethod
    def gitleaks(cls) -> SecretScanner:
        return _default_scanner()

    def scan(self, text: str) -> list[SecretFinding]:
        lower = text.lower()
        out: list[SecretFinding] = []
        for rule in self.rules:
            if rule.keywords and not any(k in lower for k in rule.keywords):
                continue
            for m in rule.regex.finditer(text):
                group = rule.secret_group
                if not group:  # gitleaks: the first non-empty group, else the whole match
                    group = next((g for g in range(1, (m.re.groups or 0) + 1) if m.group(g)), 0)
                secret = m.group(group)
                if not secret:
                    continue
                start, end = m.span(group)
                if rule.entropy and shannon_entropy(secret) <= rule.entropy:
                    continue
                line_start = text.rfind("\n", 0, start) + 1
                line_end = text.find("\n", end)
                line = text[line_start : line_end if line_end >= 0 else len(text)]
                allowlists = (self.global_allow, *rule.allowlists)
                if any(a.allows(secret, m.group(0), line) for a in allowlists):
                    continue
                out.append(SecretFinding(start, end, rule.id, rule.entity))
        return out


@lru_cache(maxsize=1)
def _default_scanner() -> SecretScanner:
    with RULES_FILE.open("rb") as f:
        return SecretScanner(tomllib.load(f))
