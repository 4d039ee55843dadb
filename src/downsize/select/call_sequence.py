"""A sequence of tool calls as a student writes it: `name {json} ; name {json}`, its grammar, rendering and parsing.

The grammar constrains the screen's decoding so that every answer parses and only offered tools are named;
`render_calls` writes gold calls as examples and fine-tuning targets, and `parse_calls` reads answers back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from downsize.backends.grammar import ToolCallGrammar
from downsize.prompting import render_target
from downsize.types import ToolCall

SEPARATOR = " ; "


class CallSequenceGrammar:
    """`call ; call ; ...` (each call `name {object}` as in ToolCallGrammar) closed by one of `ends`; without
    `ends`, exactly one call, done at its closing `}`.

    One call alone can close at its `}`; several need an end marker, since after a call the model may go on
    (` ; `) or stop: the end is the student's end-of-turn token, which the decoder sees as that token's text.
    `max_calls` bounds a model that would repeat itself. Outside strings no newline or tab is accepted, nor two
    spaces in a row: small models pretty-print JSON, which costs tokens and changes nothing in the call.

    With `params` ({tool: (property names, required names)}), the top-level keys of a tool's arguments are
    its properties, each at most once, and the object closes only once every required one is given: an
    untrained model otherwise invents keys (the decoding the gateway does is constrained to the schema too).
    """

    __slots__ = (
        "names",
        "ends",
        "max_calls",
        "max_string",
        "params",
        "call",
        "calls",
        "mode",
        "buf",
        "last",
        "key",
        "used",
    )

    def __init__(
        self,
        names: Iterable[str],
        ends: Iterable[str] = (),
        max_calls: int = 8,
        max_string: int = 160,
        params: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
    ) -> None:
        self.params = params
        self.key: str | None = None  # the top-level key being written
        self.used: tuple[str, ...] = ()
        self.names = tuple(sorted(set(names)))
        self.ends = tuple(e for e in ends if e)
        self.max_calls = max_calls if self.ends else 1
        self.max_string = max_string
        self.call = ToolCallGrammar(self.names, max_string)
        self.calls = 0
        self.mode = "call"  # call | between | between_space | sep | sep_space | end | done
        self.buf = ""
        self.last = ""

    def copy(self) -> CallSequenceGrammar:
        new = CallSequenceGrammar.__new__(CallSequenceGrammar)
        new.names, new.ends, new.max_calls, new.max_string = (
            self.names,
            self.ends,
            self.max_calls,
            self.max_string,
        )
        new.call = self.call.copy()
        new.calls, new.mode, new.buf, new.last = self.calls, self.mode, self.buf, self.last
        new.params, new.key, new.used = self.params, self.key, self.used
        return new

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def _start_end(self, ch: str) -> bool:
        if not any(e.startswith(ch) for e in self.ends):
            return False
        self.buf = ch
        self.mode = "done" if ch in self.ends else "end"
        return True

    def _start_call(self, ch: str) -> bool:
        self.call = ToolCallGrammar(self.names, self.max_string)
        self.mode = "call"
        self.key, self.used = None, ()
        return self._feed_call(ch)

    def _keys_allow(self, ch: str) -> bool:
        """The schema's rule on top-level keys: known, not repeated, every required one before the close."""
        call = self.call
        if self.params is None or not call.in_args or len(call.json.stack) != 1:
            return True
        known, required = self.params.get(call.prefix, ((), ()))
        mode = call.json.mode
        if self.key is not None:  # inside a top-level key
            if ch == '"':
                if self.key not in known or self.key in self.used:
                    return False
                self.used, self.key = (*self.used, self.key), None
                return True
            candidate = self.key + ch
            if ch == "\\" or not any(k.startswith(candidate) and k not in self.used for k in known):
                return False
            self.key = candidate
            return True
        if mode in ("key_or_end", "key") and ch == '"':
            if not any(k not in self.used for k in known):
                return False
            self.key = ""
            return True
        ends_value = mode == "after" or mode == "number"  # a number closes on the char after it
        if ch == "}" and (mode == "key_or_end" or ends_value):
            return all(r in self.used for r in required)
        if ch == "," and ends_value:
            return any(k not in self.used for k in known)
        return True

    def _feed_call(self, ch: str) -> bool:
        call = self.call
        if ch in " \t\n\r" and call.in_args and call.json.mode not in ("string", "escape"):
            if ch != " " or self.last == " ":
                return False
        key, used = self.key, self.used
        if not self._keys_allow(ch):
            self.key, self.used = key, used
            return False
        if not call.feed_char(ch):
            return False
        if call.done:
            self.calls += 1
            self.mode = "between" if self.ends else "done"
        return True

    def feed_char(self, ch: str) -> bool:
        accepted = self._feed(ch)
        self.last = ch
        return accepted

    def _feed(self, ch: str) -> bool:
        mode = self.mode
        if mode == "call":
            return self._feed_call(ch)
        if mode in ("between", "between_space"):
            if ch == ";" and self.calls < self.max_calls:
                self.mode = "sep"
                return True
            if ch == " " and mode == "between":
                self.mode = "between_space"
                return True
            return mode == "between" and self._start_end(ch)
        if mode in ("sep", "sep_space"):
            if ch == " " and mode == "sep":
                self.mode = "sep_space"
                return True
            return self._start_call(ch)
        if mode == "end":
            candidate = self.buf + ch
            if not any(e.startswith(candidate) for e in self.ends):
                return False
            self.buf = candidate
            if candidate in self.ends:
                self.mode = "done"
            return True
        return False  # done

    def feed(self, text: str) -> bool:
        """Feed a token's text; False (state undefined, use a copy) if any char leaves the grammar."""
        if not text:
            return False
        return all(self.feed_char(ch) for ch in text)


def render_calls(calls: Sequence[ToolCall]) -> str:
    """Calls as the student writes them: `name {json} ; name {json}`."""
    return SEPARATOR.join(render_target(c) for c in calls)


def parse_calls(text: str, ends: Iterable[str] = ()) -> list[ToolCall] | None:
    """Inverse of render_calls (an end string at the end is dropped); None unless every part is `name {object}`."""
    text = text.strip()
    for end in ends:
        if end and text.endswith(end):
            text = text[: -len(end)].rstrip()
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    i = 0
    while i < len(text):
        space = text.find(" ", i)
        if space < 0:
            return None
        name = text[i:space]
        j = space
        while j < len(text) and text[j] == " ":
            j += 1
        try:
            args, i = decoder.raw_decode(text, j)
        except json.JSONDecodeError:
            return None
        if not name or not isinstance(args, dict):
            return None
        calls.append(ToolCall(name=name, arguments=args))
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text):
            if text[i] != ";":
                return None
            i += 1
            while i < len(text) and text[i] == " ":
                i += 1
            if i >= len(text):
                return None  # a dangling separator
    return calls or None
