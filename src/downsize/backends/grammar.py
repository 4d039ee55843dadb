"""A character-level grammar for one tool call, `tool_name {JSON object}`, used to constrain decoding.

At each step the decoder takes the most likely token whose text keeps the output inside the grammar:
the name must be one of the offered tools, the arguments a JSON object (strings bounded in length so
a small model cannot loop inside one). It is a pushdown automaton with a cheap `copy()`, so candidate
tokens are tried on a copy and committed only when they fit.
"""

from __future__ import annotations

from collections.abc import Iterable

_WS = " \t\n\r"
_NUM_CHARS = set("0123456789+-.eE")
_LITERALS = ("true", "false", "null")


class JsonObjectState:
    """Incremental validator of a JSON object prefix. `feed` returns False on the first invalid char."""

    __slots__ = ("stack", "mode", "buf", "str_len", "is_key", "done", "max_string")

    def __init__(self, max_string: int = 160) -> None:
        self.stack: list[str] = []  # 'o' object, 'a' array
        self.mode = (
            "start"  # start|key_or_end|key|colon|value|value_or_end|after|string|escape|number|literal
        )
        self.buf = ""  # partial number or literal
        self.str_len = 0
        self.is_key = False
        self.done = False
        self.max_string = max_string

    def copy(self) -> JsonObjectState:
        new = JsonObjectState.__new__(JsonObjectState)
        new.stack = list(self.stack)
        new.mode, new.buf, new.str_len = self.mode, self.buf, self.str_len
        new.is_key, new.done, new.max_string = self.is_key, self.done, self.max_string
        return new

    def _close_value(self) -> None:
        self.mode = "after" if self.stack else "end"
        if not self.stack:
            self.done = True

    def _start_value(self, ch: str) -> bool:
        if ch == "{":
            self.stack.append("o")
            self.mode = "key_or_end"
        elif ch == "[":
            self.stack.append("a")
            self.mode = "value_or_end"
        elif ch == '"':
            self.mode, self.is_key, self.str_len = "string", False, 0
        elif ch in "-0123456789":
            self.mode, self.buf = "number", ch
        elif ch in "tfn":
            self.mode, self.buf = "literal", ch
        else:
            return False
        return True

    def _number_ok(self, text: str) -> bool:
        import re

        return re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", text) is not None

    def feed(self, ch: str) -> bool:  # noqa: C901 - a state machine reads best as one switch
        mode = self.mode
        if self.done:
            return False
        if mode == "string":
            if ch == "\\":
                self.mode = "escape"
            elif ch == '"':
                if self.is_key:
                    self.mode = "colon"
                else:
                    self._close_value()
            elif ch < " ":
                return False
            else:
                self.str_len += 1
                if self.str_len > self.max_string:
                    return False
            return True
        if mode == "escape":
            if ch not in '"\\/bfnrtu':
                return False
            self.mode = "string"
            return True
        if mode == "number":
            if ch in _NUM_CHARS:
                self.buf += ch
                return len(self.buf) < 32
            if not self._number_ok(self.buf):
                return False
            self._close_value()
            return self.feed(ch)
        if mode == "literal":
            candidate = self.buf + ch
            if any(lit.startswith(candidate) for lit in _LITERALS):
                self.buf = candidate
                if candidate in _LITERALS:
                    self._close_value()
                return True
            return False
        if ch in _WS:
            return mode != "end"
        if mode == "start":
            if ch != "{":
                return False
            self.stack.append("o")
            self.mode = "key_or_end"
            return True
        if mode in ("key_or_end", "key"):
            if ch == '"':
                self.mode, self.is_key, self.str_len = "string", True, 0
                return True
            if ch == "}" and mode == "key_or_end":
                self.stack.pop()
                self._close_value()
                return True
            return False
        if mode == "colon":
            if ch != ":":
                return False
            self.mode = "value"
            return True
        if mode in ("value", "value_or_end"):
            if ch == "]" and mode == "value_or_end":
                self.stack.pop()
                self._close_value()
                return True
            return self._start_value(ch)
        if mode == "after":
            top = self.stack[-1]
            if ch == ",":
                self.mode = "key" if top == "o" else "value"
                return True
            if (ch == "}" and top == "o") or (ch == "]" and top == "a"):
                self.stack.pop()
                self._close_value()
                return True
            return False
        return False


class ToolCallGrammar:
    """`name {object}` where name is one of the given tools. Feed text; `done` once the object closes."""

    __slots__ = ("names", "prefix", "json", "in_args")

    def __init__(self, names: Iterable[str], max_string: int = 160) -> None:
        self.names = tuple(sorted(set(names)))
        self.prefix = ""
        self.json = JsonObjectState(max_string)
        self.in_args = False

    def copy(self) -> ToolCallGrammar:
        new = ToolCallGrammar.__new__(ToolCallGrammar)
        new.names, new.prefix, new.in_args = self.names, self.prefix, self.in_args
        new.json = self.json.copy()
        return new

    @property
    def done(self) -> bool:
        return self.json.done

    def feed_char(self, ch: str) -> bool:
        if self.in_args:
            return self.json.feed(ch)
        if ch == " " and self.prefix in self.names:
            self.in_args = True
            return True
        candidate = self.prefix + ch
        if any(name.startswith(candidate) for name in self.names):
            self.prefix = candidate
            return True
        return False

    def feed(self, text: str) -> bool:
        """Feed a token's text; False (state undefined, use a copy) if any char leaves the grammar."""
        if not text:
            return False
        return all(self.feed_char(ch) for ch in text)
