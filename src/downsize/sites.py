"""Where a call comes from: its call site, the key a specialist's scope and training selection share.

A request that offers tools belongs to the call site of that tool set. One that offers none belongs to its
system prompt's template (variables masked: dates, ids, numbers, ...) and, when it asks for JSON under a
schema, that schema's name: the same agent step asks with the same template every time. Discovery's
signature (`discover/signature.py`) refines this with templates merged by word diff.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from downsize.shapes import tool_names

# Order matters: the specific shapes first, bare numbers last.
_MASKS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
        "<UUID>",
    ),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<EMAIL>"),
    (re.compile(r"\bhttps?://[^\s\"'<>]+"), "<URL>"),
    (
        re.compile(
            r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
            r"|\b\d{1,2}/\d{1,2}/\d{2,4}\b"
            r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}\b"
            r"|\b\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]* \d{4}\b"
        ),
        "<DATE>",
    ),
    (re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp][Mm])?\b"), "<TIME>"),
    (re.compile(r"\b[0-9a-fA-F]{16,}\b"), "<HEX>"),
    (re.compile(r"\b(?=[A-Za-z_]*\d)(?=\d*[A-Za-z_])[A-Za-z0-9_-]{5,}\b"), "<ID>"),  # letters and digits
    (re.compile(r"[$€£]?\b\d+(?:[.,]\d+)*\b%?"), "<NUM>"),
]
WORD = re.compile(r"\S+")


def mask_variables(text: str) -> str:
    """The template of a text: dates, times, ids, emails, URLs and numbers replaced by placeholders."""
    for pattern, placeholder in _MASKS:
        text = pattern.sub(placeholder, text)
    return text


def short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def system_prompt(request: dict[str, Any]) -> str:
    """Every system (or developer) message of a request, joined."""
    messages = request.get("messages") or []
    return "\n".join(
        _content(m) for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")
    )


def site_key(request: dict[str, Any]) -> str:
    """`tools:a,b,...` for a request offering tools; else `prompt:<template hash>[:<schema name>]`."""
    names = sorted(set(tool_names(request)))
    if names and request.get("tool_choice") != "none":
        return "tools:" + ",".join(names)
    key = "prompt:" + short_hash(mask_variables(system_prompt(request)))
    fmt = request.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        key += ":" + spec["name"][:64]
    return key


def site_example(request: dict[str, Any], width: int = 60) -> str:
    """A few words that tell a person which agent step a call site is: its system prompt's opening, else the
    user's first words, else its tools."""
    text = " ".join(system_prompt(request).split())
    if not text:
        for m in request.get("messages") or []:
            if isinstance(m, dict) and m.get("role") == "user":
                text = "user: " + " ".join(_content(m).split())
                break
    if not text:
        text = "tools: " + ", ".join(sorted(set(tool_names(request))))
    return text if len(text) <= width else text[: width - 1] + "…"
