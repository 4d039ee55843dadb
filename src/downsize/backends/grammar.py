"""A character-level grammar for one tool call, `tool_name {JSON object}`, used to constrain decoding.

At each step the decoder takes the most likely token whose text keeps the output inside the grammar:
the name must be one of the offered tools and, once it is known, the arguments must follow that tool's
JSON schema: keys from its `properties` (each at most once, the object closes only when the `required`
ones are present), values of the declared type, `enum` values only, strings bounded in length (the
schema's `maxLength`, else `max_string`) so a small model cannot loop inside one. Schema features it
does not model (`anyOf`, `$ref`, type unions, ...) fall back to any JSON value there; the router's
validator still checks the whole schema afterwards. Without schemas the arguments are any JSON object.

It is a pushdown automaton with a cheap `copy()` (frames are immutable tuples, the stack is copied
shallowly), so candidate tokens are tried on a copy and committed only when they fit. Every prefix it
accepts can still be completed, so constrained decoding never walks into a dead end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from downsize.copying import SPAN_KEY

_WS = " \t\n\r"
_DIGITS = "0123456789"
_HEX = set("0123456789abcdefABCDEF")
_ANY_LITERALS = ("true", "false", "null")
_UNSUPPORTED = ("anyOf", "oneOf", "allOf", "not", "$ref", "if", "patternProperties", "dependentSchemas")
_MAX_NUMBER_CHARS = 32

# number automaton: state -> (char class -> next state); accepting states end a number
_NUMBER_STEPS: dict[str, dict[str, str]] = {
    "": {"-": "sign", "0": "zero", "1": "int"},
    "sign": {"0": "zero", "1": "int"},
    "zero": {".": "dot", "e": "e"},
    "int": {"0": "int", "1": "int", ".": "dot", "e": "e"},
    "dot": {"0": "frac", "1": "frac"},
    "frac": {"0": "frac", "1": "frac", "e": "e"},
    "e": {"+": "esign", "-": "esign", "0": "exp", "1": "exp"},
    "esign": {"0": "exp", "1": "exp"},
    "exp": {"0": "exp", "1": "exp"},
}
_NUMBER_ACCEPTING = frozenset({"zero", "int", "frac", "exp"})


class SchemaNode(NamedTuple):
    """A JSON schema compiled to what the grammar enforces (kind `any` accepts every JSON value)."""

    kind: str  # any | object | array | string | integer | number | boolean | null | enum
    props: Mapping[str, SchemaNode] = {}  # object: the declared keys
    open: bool = True  # object: other keys allowed (their values follow `extra`)
    extra: SchemaNode | None = None  # object: schema of undeclared keys (None: any value)
    required: frozenset[str] = frozenset()
    items: SchemaNode | None = None  # array: schema of the items (None: any value)
    min_items: int = 0
    max_items: int | None = None
    min_len: int = 0  # string
    max_len: int = 160
    choices: tuple[str, ...] = ()  # enum: the compact JSON texts allowed
    corpus: str = ""  # span: the text whose word-aligned spans the string may take


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"  # regex's \w, as `copying.is_span` reads a word


def span_starts(corpus: str, text: str) -> bool:
    """`text` occurs in `corpus` where a word starts (or `text` starts with a non-word character)."""
    at = corpus.find(text)
    while at >= 0:
        if at == 0 or not (_word_char(corpus[at - 1]) and _word_char(text[0])):
            return True
        at = corpus.find(text, at + 1)
    return False


def span_ends(corpus: str, text: str) -> bool:
    """`text` occurs in `corpus` as a whole span: word-aligned at both ends."""
    at = corpus.find(text)
    while at >= 0:
        end = at + len(text)
        starts = at == 0 or not (_word_char(corpus[at - 1]) and _word_char(text[0]))
        ends = end == len(corpus) or not (_word_char(corpus[end]) and _word_char(text[-1]))
        if starts and ends:
            return True
        at = corpus.find(text, at + 1)
    return False


ANY = SchemaNode("any")


def _int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def compile_schema(schema: Any, max_string: int = 160) -> SchemaNode:
    """The grammar's view of a JSON schema; unsupported parts become `any` (validated after decoding)."""
    if not isinstance(schema, dict) or any(key in schema for key in _UNSUPPORTED):
        return SchemaNode("any", max_len=max_string)
    values = schema.get("enum")
    if "const" in schema:
        values = [schema["const"]]
    if isinstance(values, list) and values:
        try:
            texts = tuple(sorted({json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values}))
        except (TypeError, ValueError):
            return SchemaNode("any", max_len=max_string)
        return SchemaNode("enum", choices=texts)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 and len(kind) == 1 else None
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "any"
    if kind == "object":
        declared = schema.get("properties")
        additional = schema.get("additionalProperties")
        if not isinstance(declared, dict):
            extra = compile_schema(additional, max_string) if isinstance(additional, dict) else None
            return SchemaNode("object", props={}, open=additional is not False, extra=extra)
        props = {str(k): compile_schema(v, max_string) for k, v in declared.items()}
        is_open = additional is True or isinstance(additional, dict)
        extra = compile_schema(additional, max_string) if isinstance(additional, dict) else None
        required = frozenset(
            r for r in schema.get("required", []) or [] if isinstance(r, str) and (r in props or is_open)
        )
        return SchemaNode("object", props=props, open=is_open, extra=extra, required=required)
    if kind == "array":
        items = schema.get("items")
        min_items = _int(schema.get("minItems"), 0) or 0
        max_items = _int(schema.get("maxItems"), None)
        if max_items is not None and max_items < min_items:
            return SchemaNode("any", max_len=max_string)
        return SchemaNode(
            "array",
            items=compile_schema(items, max_string) if isinstance(items, dict) else None,
            min_items=min_items,
            max_items=max_items,
        )
    if kind == "string":
        max_len = _int(schema.get("maxLength"), max_string) or 0
        min_len = _int(schema.get("minLength"), 0) or 0
        if min_len > max_len:
            return SchemaNode("any", max_len=max_string)
        corpus = schema.get(SPAN_KEY)
        if isinstance(corpus, str) and corpus.strip() and min_len <= 1:
            return SchemaNode("span", max_len=max_len, corpus=corpus)
        return SchemaNode("string", min_len=min_len, max_len=max_len)
    if kind in ("integer", "number", "boolean", "null"):
        return SchemaNode(kind)
    return SchemaNode("any", max_len=max_string)


GENERIC_OBJECT = SchemaNode("object")


class _Obj(NamedTuple):
    node: SchemaNode
    seen: frozenset[str]


class _Arr(NamedTuple):
    node: SchemaNode
    items_seen: int


class JsonSchemaState:
    """Incremental validator of a JSON object (or array, when the schema's root is one) prefix under a compiled
    schema. `feed` is False on a bad char."""

    __slots__ = ("stack", "mode", "node", "buf", "str_len", "done", "max_string")

    def __init__(self, node: SchemaNode | None = None, max_string: int = 160) -> None:
        self.stack: list[_Obj | _Arr] = []
        # start|value|value_or_end|key_or_end|key|key_string|key_escape|colon|string|escape|unicode|
        # number|literal|enum|after|end
        self.mode = "start"
        self.node = node if node is not None and node.kind in ("object", "array") else GENERIC_OBJECT
        self.buf = ""  # partial key, number state, literal, enum text or unicode escape
        self.str_len = 0
        self.done = False
        self.max_string = max_string

    def copy(self) -> JsonSchemaState:
        new = type(self).__new__(type(self))
        new.stack = list(self.stack)
        new.mode, new.node, new.buf, new.str_len = self.mode, self.node, self.buf, self.str_len
        new.done, new.max_string = self.done, self.max_string
        return new

    # -- helpers -------------------------------------------------------------------------------------

    def _max_len(self, node: SchemaNode) -> int:
        return node.max_len if node.kind == "string" else self.max_string

    def _close_value(self) -> None:
        if not self.stack:
            self.mode, self.done = "end", True
            return
        top = self.stack[-1]
        if isinstance(top, _Arr):
            self.stack[-1] = _Arr(top.node, top.items_seen + 1)
        self.mode = "after"

    def _key_possible(self, frame: _Obj) -> bool:
        return frame.node.open or any(k not in frame.seen for k in frame.node.props)

    def _key_prefix_ok(self, frame: _Obj, text: str) -> bool:
        if frame.node.open:
            return True
        return any(k.startswith(text) and k not in frame.seen for k in frame.node.props)

    def _start_value(self, ch: str) -> bool:  # noqa: C901 - one branch per JSON kind
        node = self.node
        kind = node.kind
        if kind == "enum":
            if not any(c.startswith(ch) for c in node.choices):
                return False
            self.mode, self.buf = "enum", ""
            return self._feed_enum(ch)
        if ch == "{" and kind in ("object", "any"):
            self.stack.append(_Obj(node if kind == "object" else GENERIC_OBJECT, frozenset()))
            self.mode = "key_or_end"
            return True
        if ch == "[" and kind in ("array", "any"):
            self.stack.append(_Arr(node if kind == "array" else SchemaNode("array"), 0))
            self.mode = "value_or_end"
            return True
        if ch == '"' and kind in ("string", "any"):
            self.mode, self.str_len = "string", 0
            return True
        if ch == '"' and kind == "span":
            self.mode, self.buf = "span", ""
            return True
        if ch in "-0123456789" and kind in ("integer", "number", "any"):
            self.mode, self.buf = "number", ""
            return self._feed_number(ch)
        if ch in "tfn":
            literals = {"boolean": ("true", "false"), "null": ("null",), "any": _ANY_LITERALS}.get(kind, ())
            if any(lit[0] == ch for lit in literals):
                self.mode, self.buf = "literal", ch
                return True
        return False

    def _feed_number(self, ch: str) -> bool:
        cls = "1" if ch in "123456789" else "e" if ch in "eE" else ch
        if self.node.kind == "integer" and cls in (".", "e"):
            return False
        state, _, length = self.buf.partition(":")
        following = _NUMBER_STEPS.get(state, {}).get(cls)
        count = int(length or 0) + 1
        if following is None or count > _MAX_NUMBER_CHARS:
            return False
        self.buf = f"{following}:{count}"
        return True

    def _feed_enum(self, ch: str) -> bool:
        candidate = self.buf + ch
        if any(c.startswith(candidate) for c in self.node.choices):
            self.buf = candidate
            if candidate in self.node.choices and not any(
                c != candidate and c.startswith(candidate) for c in self.node.choices
            ):
                self._close_value()
            return True
        if self.buf in self.node.choices:  # a number choice that another one extends: ends here
            self._close_value()
            return self.feed(ch)
        return False

    def _value_node_for_key(self, frame: _Obj, key: str) -> SchemaNode | None:
        if key in frame.seen:
            return None
        if key in frame.node.props:
            return frame.node.props[key]
        if frame.node.open:
            return frame.node.extra or SchemaNode("any", max_len=self.max_string)
        return None

    # -- the automaton ---------------------------------------------------------------------------------

    def feed(self, ch: str) -> bool:  # noqa: C901 - a state machine reads best as one switch
        mode = self.mode
        if self.done:
            return False
        if mode == "string":
            if ch == "\\":
                self.mode = "escape"
                return self.str_len < self._max_len(self.node)  # room for the escaped character
            if ch == '"':
                if self.str_len < (self.node.min_len if self.node.kind == "string" else 0):
                    return False
                self._close_value()
                return True
            if ch < " ":
                return False
            self.str_len += 1
            return self.str_len <= self._max_len(self.node)
        if mode == "span":  # buf: the span so far, always word-aligned at its start in the corpus
            corpus = self.node.corpus
            if ch == '"':
                if not self.buf or not (span_ends(corpus, self.buf) or len(self.buf) >= self.node.max_len):
                    return False
                self._close_value()
                return True
            candidate = self.buf + ch
            if (
                ch < " "
                or ch == "\\"
                or len(candidate) > self.node.max_len
                or not span_starts(corpus, candidate)
            ):
                return False
            self.buf = candidate
            return True
        if mode == "escape":
            if ch not in '"\\/bfnrtu':
                return False
            self.mode, self.buf = ("unicode", "") if ch == "u" else ("string", "")
            self.str_len += 1
            return self.str_len <= self._max_len(self.node)
        if mode == "unicode":  # buf counts the hex digits of a \\uXXXX escape
            if ch not in _HEX:
                return False
            self.buf += "x"
            if len(self.buf) == 4:
                self.mode, self.buf = "string", ""
            return True
        if mode == "key_escape":  # only undeclared keys (open objects) may hold escapes
            if ch not in '"\\/bfnrtu':
                return False
            self.mode, self.str_len = ("key_unicode", 0) if ch == "u" else ("key_string", 0)
            self.buf += "\\" + ch
            return True
        if mode == "key_unicode":  # str_len counts the hex digits
            if ch not in _HEX:
                return False
            self.buf += ch
            self.str_len += 1
            if self.str_len == 4:
                self.mode = "key_string"
            return True
        if mode == "key_string":
            frame = self.stack[-1]
            assert isinstance(frame, _Obj)
            if ch == '"':
                node = self._value_node_for_key(frame, self.buf)
                if node is None:
                    return False
                self.stack[-1] = _Obj(frame.node, frame.seen | {self.buf})
                self.mode, self.node, self.buf = "colon", node, ""
                return True
            if ch < " ":
                return False
            if ch == "\\":
                if not frame.node.open:
                    return False  # declared keys are plain names
                self.mode = "key_escape"
                return True
            if len(self.buf) >= self.max_string or not self._key_prefix_ok(frame, self.buf + ch):
                return False
            self.buf += ch
            return True
        if mode == "number":
            if ch in "-+.eE0123456789" and self._feed_number(ch):
                return True
            if self.buf.partition(":")[0] not in _NUMBER_ACCEPTING:
                return False
            self._close_value()
            return self.feed(ch)
        if mode == "literal":
            candidate = self.buf + ch
            if not any(lit.startswith(candidate) for lit in _ANY_LITERALS):
                return False
            self.buf = candidate
            if candidate in _ANY_LITERALS:
                self._close_value()
            return True
        if mode == "enum":
            return self._feed_enum(ch)
        if ch in _WS:
            return mode != "end"
        if mode == "start":
            return ch == ("[" if self.node.kind == "array" else "{") and self._start_value(ch)
        if mode in ("key_or_end", "key"):
            frame = self.stack[-1]
            assert isinstance(frame, _Obj)
            if ch == '"' and self._key_possible(frame):
                self.mode, self.buf = "key_string", ""
                return True
            if ch == "}" and mode == "key_or_end" and frame.node.required <= frame.seen:
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
            if mode == "value_or_end":
                frame = self.stack[-1]
                assert isinstance(frame, _Arr)
                if ch == "]":
                    if frame.items_seen < frame.node.min_items:
                        return False
                    self.stack.pop()
                    self._close_value()
                    return True
                if frame.node.max_items == 0:
                    return False
                self.node = frame.node.items or SchemaNode("any", max_len=self.max_string)
            return self._start_value(ch)
        if mode == "after":
            top = self.stack[-1]
            if isinstance(top, _Obj):
                if ch == "," and self._key_possible(top):
                    self.mode = "key"
                    return True
                if ch == "}" and top.node.required <= top.seen:
                    self.stack.pop()
                    self._close_value()
                    return True
                return False
            if ch == "," and (top.node.max_items is None or top.items_seen < top.node.max_items):
                self.mode = "value"
                self.node = top.node.items or SchemaNode("any", max_len=self.max_string)
                return True
            if ch == "]" and top.items_seen >= top.node.min_items:
                self.stack.pop()
                self._close_value()
                return True
            return False
        return False


class JsonObjectState(JsonSchemaState):
    """Any JSON object (no schema), strings bounded to `max_string` characters."""

    __slots__ = ()

    def __init__(self, max_string: int = 160) -> None:
        super().__init__(None, max_string)


def tool_schemas(tools: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{tool name: parameters schema} for OpenAI-style tool definitions."""
    schemas: dict[str, dict[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            schemas[fn["name"]] = params if isinstance(params, dict) else {"type": "object", "properties": {}}
    return schemas


class ToolCallGrammar:
    """`name {object}` where name is one of the given tools. Feed text; `done` once the object closes.

    With `schemas` ({name: parameters schema}) the object follows the named tool's schema.
    """

    __slots__ = ("names", "prefix", "json", "in_args", "schemas", "max_string")

    def __init__(
        self,
        names: Iterable[str],
        max_string: int = 160,
        schemas: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.names = tuple(sorted(set(names)))
        self.prefix = ""
        self.json = JsonSchemaState(None, max_string)
        self.in_args = False
        self.schemas = schemas
        self.max_string = max_string

    @classmethod
    def for_tools(
        cls, tools: list[dict[str, Any]], only: str | None = None, max_string: int = 160
    ) -> ToolCallGrammar:
        """The grammar of a call to one of the tools (or to `only`), arguments under its schema."""
        schemas = tool_schemas(tools)
        return cls([only] if only else list(schemas), max_string, schemas)

    def copy(self) -> ToolCallGrammar:
        new = ToolCallGrammar.__new__(ToolCallGrammar)
        new.names, new.prefix, new.in_args = self.names, self.prefix, self.in_args
        new.schemas, new.max_string = self.schemas, self.max_string
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
            if self.schemas is not None and self.prefix in self.schemas:
                self.json = JsonSchemaState(
                    compile_schema(self.schemas[self.prefix], self.max_string), self.max_string
                )
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
