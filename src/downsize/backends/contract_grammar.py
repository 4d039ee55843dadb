"""The grammar of each output contract (`contracts.py`), for the same constrained decoder as tool calls.

- tool_call: `ToolCallGrammar` (the request's tools, copied arguments narrowed to the conversation);
- json: the request's `response_format` schema when it carries one, else the schema learned in training;
- label: one of the labels, character by character (a label another extends ends on the end-of-turn token);
- react: `Action: NAME` (a learned action) then `Action Input: ` and a JSON value under that action's schema,
  after a one-line `Thought: ` of at most `thought_words` words where the contract keeps thoughts;
- text: any text up to the end-of-turn token, at most `max_chars` characters.
"""

from __future__ import annotations

from typing import Any

from downsize.backends.grammar import JsonSchemaState, ToolCallGrammar, compile_schema, tool_schemas
from downsize.contracts import OutputContract
from downsize.copying import Copied, Spans, restrict_schemas
from downsize.shapes import tool_names


class JsonGrammar:
    """A JSON object under a compiled schema, fed whole token texts (`JsonSchemaState` reads a character)."""

    __slots__ = ("state",)

    def __init__(self, state: JsonSchemaState) -> None:
        self.state = state

    def copy(self) -> JsonGrammar:
        return JsonGrammar(self.state.copy())

    @property
    def done(self) -> bool:
        return self.state.done

    def feed(self, text: str) -> bool:
        return bool(text) and all(self.state.feed(ch) for ch in text)


class LabelGrammar:
    """Exactly one of `labels`; `done` when the text is a label no other label extends, or after `end`."""

    __slots__ = ("labels", "text", "end", "done")

    def __init__(self, labels: tuple[str, ...], end: str = "") -> None:
        self.labels, self.end, self.text, self.done = labels, end, "", False

    def copy(self) -> LabelGrammar:
        new = LabelGrammar.__new__(LabelGrammar)
        new.labels, new.end, new.text, new.done = self.labels, self.end, self.text, self.done
        return new

    def feed(self, text: str) -> bool:
        if self.done or not text:
            return False
        if self.end and text == self.end:
            if self.text in self.labels:
                self.done = True
                return True
            return False
        candidate = self.text + text
        if not any(label.startswith(candidate) for label in self.labels):
            return False
        self.text = candidate
        if candidate in self.labels and not any(
            label != candidate and label.startswith(candidate) for label in self.labels
        ):
            self.done = True
        return True


class TextGrammar:
    """Any text ending with the end-of-turn token; after `max_chars` characters only the end is accepted."""

    __slots__ = ("end", "max_chars", "chars", "done")

    def __init__(self, end: str, max_chars: int) -> None:
        self.end, self.max_chars, self.chars, self.done = end, max_chars, 0, False

    def copy(self) -> TextGrammar:
        new = TextGrammar.__new__(TextGrammar)
        new.end, new.max_chars, new.chars, new.done = self.end, self.max_chars, self.chars, self.done
        return new

    def feed(self, text: str) -> bool:
        if self.done or not text:
            return False
        if text == self.end:
            self.done = self.chars > 0  # an empty answer is not one
            return self.done
        if (self.end and self.end in text) or self.chars + len(text) > self.max_chars:
            return False
        self.chars += len(text)
        return True


class ReactGrammar:
    """`Action: NAME\nAction Input: {JSON}` with NAME one of `actions` and the input under its schema; with
    `thought_words`, optionally after `Thought: ` and at most that many words on one line."""

    HEAD = "Action: "
    MIDDLE = "\nAction Input: "
    THOUGHT = "Thought: "
    WORD_CHARS = 24  # a thought's word at most this long (no run-on token soup)
    __slots__ = ("actions", "max_string", "thought_words", "text", "json", "thought", "thought_done")

    def __init__(self, actions: dict[str, dict[str, Any]], max_string: int, thought_words: int = 0) -> None:
        self.actions, self.max_string, self.thought_words = actions, max_string, thought_words
        self.text = ""
        self.json: JsonSchemaState | None = None
        self.thought: list[int] | None = None  # in a thought: [words begun, chars of the current word]
        self.thought_done = False  # a thought was written: the action follows, no second thought

    def copy(self) -> ReactGrammar:
        new = ReactGrammar.__new__(ReactGrammar)
        new.actions, new.max_string, new.thought_words = self.actions, self.max_string, self.thought_words
        new.text = self.text
        new.json = self.json.copy() if self.json is not None else None
        new.thought = list(self.thought) if self.thought is not None else None
        new.thought_done = self.thought_done
        return new

    @property
    def done(self) -> bool:
        return self.json is not None and self.json.done

    def _feed_thought(self, ch: str) -> bool:
        assert self.thought is not None
        words, chars = self.thought
        if ch == "\n":  # the thought ends; the action follows
            if words == 0:
                return False
            self.thought, self.thought_done = None, True
            return True
        if ch.isspace():  # one space between words, none first
            if chars == 0:
                return False
            self.thought[1] = 0
            return True
        if chars == 0:
            if words >= self.thought_words:
                return False
            self.thought[0] += 1
        if chars >= self.WORD_CHARS:
            return False
        self.thought[1] += 1
        return True

    def _feed_char(self, ch: str) -> bool:
        if self.json is not None:
            return self.json.feed(ch)
        if self.thought is not None:
            return self._feed_thought(ch)
        candidate = self.text + ch
        if self.thought_words and not self.thought_done and self.THOUGHT.startswith(candidate):
            self.text = candidate
            if candidate == self.THOUGHT:
                self.thought, self.text = [0, 0], ""
            return True
        heads = [f"{self.HEAD}{name}{self.MIDDLE}" for name in self.actions]
        if not any(head.startswith(candidate) for head in heads):
            return False
        self.text = candidate
        if candidate in heads:
            name = candidate[len(self.HEAD) : -len(self.MIDDLE)]
            self.json = JsonSchemaState(compile_schema(self.actions[name], self.max_string), self.max_string)
        return True

    def feed(self, text: str) -> bool:
        return bool(text) and all(self._feed_char(ch) for ch in text)


def grammar_for(
    contract: OutputContract,
    request: dict[str, Any],
    end: str,
    max_string: int = 160,
    copied: Copied | None = None,
    tool: str | None = None,
    spans: Spans | None = None,
) -> Any:
    """A fresh grammar for one request's answer under the contract (`end`: the student's end-of-turn text)."""
    messages = request.get("messages") or []
    if contract.kind == "tool_call":
        schemas = restrict_schemas(tool_schemas(request.get("tools") or []), copied or {}, messages, spans)
        return ToolCallGrammar([tool] if tool else tool_names(request), max_string, schemas)
    if contract.kind == "json":
        schema = contract.schema_for(request)
        return JsonGrammar(JsonSchemaState(compile_schema(schema, contract.max_string), contract.max_string))
    if contract.kind == "label":
        return LabelGrammar(contract.labels, end)
    if contract.kind == "react":
        return ReactGrammar(contract.actions, contract.max_string, contract.thought_words)
    if contract.kind == "text":
        return TextGrammar(end, int(contract.max_tokens * 4))
    raise ValueError(f"a specialist does not answer {contract.kind!r} outputs")
