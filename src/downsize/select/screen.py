"""The zero-shot and few-shot screen: how each candidate student does on a task's validation calls, untrained.

After the hard filters (`filters.py`), every surviving student that loads here answers the task's validation
calls twice: zero-shot (a short instruction, the tools rendered compactly, the pruned conversation) and k-shot
(the same, after the k training calls whose conversations are nearest by MiniLM embedding, shown as earlier
chat turns). Decoding is grammar-constrained to `name {json}` (or, for parallel calls, `name {json} ; name
{json}` closed by the end-of-turn token), so every answer parses and only offered tools are named; answers are
scored by tool-name accuracy, exact match (JSON-normalised) and BFCL-style AST match.

Few-shot examples come from the training split only, and that is checked rather than assumed: a validation
call must never see itself, or another run of its workflow, as an example.

Unlike the specialist's pruned prompt, the screen's prompt carries the tool schemas: an untrained student has
not learned them, and BFCL's tools change with every question. The same prompt is what the BFCL benchmark
fine-tunes on.

Layering note: scoring uses `evaluate.ast_match` and `evaluate.metrics` (pure Python, no torch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from downsize.backends.grammar import ToolCallGrammar
from downsize.errors import DownsizeError
from downsize.evaluate.ast_match import ast_match
from downsize.evaluate.metrics import wilson_lower
from downsize.prompting import PromptBudget, gate_text, parse_target, prune_messages, render_target
from downsize.shapes import response_message, tool_calls
from downsize.splits import dev_role
from downsize.types import ToolCall

INSTRUCTION_ONE = "You are a tool-calling assistant. Reply with the one next tool call, written as: tool_name {JSON arguments}"
INSTRUCTION_MANY = (
    "You are a tool-calling assistant. Reply with every tool call the request needs, separated by ' ; ', "
    "written as: tool_name {JSON arguments} ; tool_name {JSON arguments}"
)
SEPARATOR = " ; "
MODES = ("zero_shot", "few_shot")


# --- compact tool schemas -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaStyle:
    """How much of a tool schema the prompt keeps: descriptions are cut, enums shortened."""

    description_chars: int = 120
    param_description_chars: int = 80
    max_enum: int = 8


def shorten(text: Any, max_chars: int) -> str:
    """One line of at most about `max_chars`, cut at a word boundary with an ellipsis."""
    line = " ".join(str(text or "").split())
    if len(line) <= max_chars:
        return line
    cut = line[:max_chars].rsplit(" ", 1)[0] or line[:max_chars]
    return cut.rstrip(" ,.;:") + "…"


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The function of an OpenAI tool, or a bare function doc (BFCL's) as it is."""
    fn = tool.get("function")
    return fn if tool.get("type") == "function" and isinstance(fn, Mapping) else tool


def _parameters(fn: Mapping[str, Any]) -> Mapping[str, Any]:
    params = fn.get("parameters")
    return params if isinstance(params, Mapping) else {}


def _type_text(schema: Any, style: SchemaStyle, depth: int = 0) -> str:
    if not isinstance(schema, Mapping):
        return "any"
    if isinstance(schema.get("enum"), list):
        values = schema["enum"]
        shown = "|".join(json.dumps(v, ensure_ascii=False) for v in values[: style.max_enum])
        return shown + ("|…" if len(values) > style.max_enum else "")
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = "|".join(str(k) for k in kind)
    if kind == "array":
        items = schema.get("items")
        return f"array of {_type_text(items, style, depth + 1)}" if isinstance(items, Mapping) else "array"
    properties = schema.get("properties")
    if kind in ("object", "dict") and isinstance(properties, Mapping) and properties and depth < 2:
        required = set(schema.get("required") or [])
        inner = ", ".join(
            f"{name}{'*' if name in required else ''}: {_type_text(sub, style, depth + 1)}"
            for name, sub in properties.items()
        )
        return "{" + inner + "}"
    return str(kind or "any")


def render_tool(tool: Mapping[str, Any], style: SchemaStyle = SchemaStyle()) -> str:
    """A tool as a few lines: `name: description`, then `  param*: type = default - description` per parameter."""
    fn = _function(tool)
    description = shorten(fn.get("description"), style.description_chars)
    lines = [f"{fn.get('name', '')}: {description}" if description else str(fn.get("name", ""))]
    params = _parameters(fn)
    required = set(params.get("required") or [])
    for name, schema in (params.get("properties") or {}).items():
        line = f"  {name}{'*' if name in required else ''}: {_type_text(schema, style)}"
        if isinstance(schema, Mapping):
            if "default" in schema:
                line += f" = {json.dumps(schema['default'], ensure_ascii=False)}"
            text = shorten(schema.get("description"), style.param_description_chars)
            if text:
                line += f" - {text}"
        lines.append(line)
    return "\n".join(lines)


def render_tools(tools: Iterable[Mapping[str, Any]], style: SchemaStyle = SchemaStyle()) -> str:
    return "\n".join(render_tool(t, style) for t in tools)


def tool_signature(tool: Mapping[str, Any]) -> str:
    """`name(required*, optional)`: the one-line form shown with few-shot examples whose tools differ."""
    fn = _function(tool)
    params = _parameters(fn)
    required = set(params.get("required") or [])
    names = [f"{p}{'*' if p in required else ''}" for p in (params.get("properties") or {})]
    return f"{fn.get('name', '')}({', '.join(names)})"


def tool_name_set(tools: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    return frozenset(str(_function(t).get("name", "")) for t in tools)


# --- several calls: grammar, rendering, parsing --------------------------------------------------------


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


# --- the calls to screen -------------------------------------------------------------------------------


@dataclass
class CallCase:
    """One call to answer, or to show as an example: the conversation, the tools, the gold calls, its split role.

    `category` picks the AST rule (simple, multiple, parallel) and whether several calls are expected;
    `possible_answers` is BFCL's ground truth where there is one, else the gold calls are the only answers.
    """

    key: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    gold: list[ToolCall]
    role: str  # train | validation | test
    category: str = "multiple"
    possible_answers: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None  # for the AST check; default: the tools

    @property
    def many(self) -> bool:
        """Whether the answer may hold several calls (BFCL's parallel categories)."""
        return "parallel" in self.category

    @property
    def query_text(self) -> str:
        """What is embedded to find few-shot neighbours: the last two turns, cut short (MiniLM time grows with length)."""
        return gate_text(self.messages, max_messages=2, max_chars=240)

    def answers(self) -> list[dict[str, Any]]:
        if self.possible_answers is not None:
            return self.possible_answers
        return [{c.name: {k: [v] for k, v in c.arguments.items()}} for c in self.gold]


def tau_cases(
    store: Any,
    validation_fraction: float = 0.25,
    limit: int | None = None,
    source: str | None = "tau-airline",
) -> tuple[list[CallCase], list[CallCase]]:
    """(validation cases, training pool) from the store's dev split: machine-facing tool calls, first call only.

    The test split is never screened on. `limit` keeps that many validation calls, evenly spread over the
    validation workflows rather than the first few. Each case's answer is the teacher's first call (the router
    serves one call), checked with BFCL's "multiple" rule (one call chosen among the task's tools).
    """
    cases: list[CallCase] = []
    pool: list[CallCase] = []
    for ex in store.exchanges(source=source, split="dev", response_kind="tool_call"):
        if ex.is_hci:
            continue
        calls = tool_calls(response_message(ex.response))
        if not calls:
            continue
        role = dev_role(ex, validation_fraction)
        case = CallCase(
            key=f"exchange:{ex.id}",
            messages=list(ex.request.get("messages") or []),
            tools=list(ex.request.get("tools") or []),
            gold=[calls[0]],
            role=role,
            category="multiple",
        )
        (cases if role == "validation" else pool).append(case)
    if limit is not None and len(cases) > limit:
        step = len(cases) / limit
        cases = [cases[int(i * step)] for i in range(limit)]
    return cases, pool


# --- few-shot selection --------------------------------------------------------------------------------

Embed = Callable[[list[str]], np.ndarray]


def _default_embed(texts: list[str]) -> np.ndarray:
    from downsize.discover.embed import embed_texts

    return embed_texts(texts, "minilm")


def select_shots(
    cases: Sequence[CallCase], pool: Sequence[CallCase], k: int, embed: Embed | None = None
) -> list[list[CallCase]]:
    """For each case, the k pool calls nearest by embedding of the conversation (cosine), nearest first.

    Raises ValueError when the pool holds anything but training calls: examples drawn from validation or test
    would leak the answers being screened.
    """
    leaked = [p.key for p in pool if p.role != "train"]
    if leaked:
        raise ValueError(
            f"few-shot examples must come from the training split only; {len(leaked)} do not (e.g. {leaked[0]})"
        )
    if k <= 0 or not pool or not cases:
        return [[] for _ in cases]
    embed = embed or _default_embed
    queries = np.asarray(embed([c.query_text for c in cases]), dtype=np.float32)
    keys = np.asarray(embed([p.query_text for p in pool]), dtype=np.float32)
    similarity = queries @ keys.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return [[pool[int(j)] for j in row] for row in order]


# --- prompts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptConfig:
    """Budgets of the screen's prompt: the conversation asked about, each example's, and the schemas' detail."""

    budget: PromptBudget = PromptBudget(192, 96)
    shot_budget: PromptBudget = PromptBudget(96, 64)
    style: SchemaStyle = SchemaStyle()


Conversation = Callable[[list[dict[str, Any]], PromptBudget], str]


def char_conversation(messages: list[dict[str, Any]], budget: PromptBudget) -> str:
    """The pruned conversation with characters standing in for tokens (4 a token): for tests and token-free use."""
    return prune_messages(
        messages,
        lambda text: [ord(c) for c in text],
        lambda ids: "".join(chr(i) for i in ids),
        PromptBudget(budget.max_prompt_tokens * 4, budget.max_message_tokens * 4),
    )


def screen_messages(
    case: CallCase,
    shots: Sequence[CallCase],
    conversation: Conversation = char_conversation,
    config: PromptConfig = PromptConfig(),
) -> list[dict[str, str]]:
    """The chat for one case: instruction and compact schemas, the examples as earlier turns, then the case.

    Examples are ordered so that the nearest comes last, next to the question. When their tools differ from
    the case's (BFCL), every user turn starts with the tools' one-line signatures, so an example's call can
    be read against the tools it had.
    """
    instruction = INSTRUCTION_MANY if case.many else INSTRUCTION_ONE
    system = f"{instruction}\nTools (* marks a required parameter):\n{render_tools(case.tools, config.style)}"
    same_tools = all(tool_name_set(s.tools) == tool_name_set(case.tools) for s in shots)

    def user_turn(c: CallCase, budget: PromptBudget) -> str:
        text = conversation(c.messages, budget)
        if not same_tools:
            text = "Tools: " + "; ".join(tool_signature(t) for t in c.tools) + "\n" + text
        return text

    chat = [{"role": "system", "content": system}]
    for shot in reversed(list(shots)):
        chat.append({"role": "user", "content": user_turn(shot, config.shot_budget)})
        chat.append({"role": "assistant", "content": render_calls(shot.gold)})
    chat.append({"role": "user", "content": user_turn(case, config.budget)})
    return chat


def estimate_prompt_tokens(cases: Sequence[CallCase], k: int, config: PromptConfig = PromptConfig()) -> int:
    """The longest screen prompt in tokens, before any tokenizer is loaded (3 characters a token, plus k examples
    at their budget and a call each): what the context-window filter is given."""
    if not cases:
        return 0
    longest = max(
        sum(len(m["content"]) for m in screen_messages(c, (), char_conversation, config)) for c in cases
    )
    return longest // 3 + k * (config.shot_budget.max_prompt_tokens + 64) + 64


def token_conversation(tokenizer: Any) -> Conversation:
    """The pruned conversation counted in the student's own tokens."""

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def decode(ids: Any) -> str:
        return str(tokenizer.decode(list(ids)))

    return lambda messages, budget: prune_messages(messages, encode, decode, budget)


def chat_text(tokenizer: Any, chat: list[dict[str, str]]) -> str:
    """The chat in the student's template, ready for the assistant's reply; a plain layout when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    eot = end_of_turn_text(tokenizer)
    parts = [
        f"### {m['role'].capitalize()}\n{m['content']}{eot if m['role'] == 'assistant' else ''}" for m in chat
    ]
    return "\n\n".join(parts) + "\n\n### Assistant\n"


def end_of_turn_text(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "eos_token", None) or "")


def build_screen_prompt(
    tokenizer: Any, case: CallCase, shots: Sequence[CallCase] = (), config: PromptConfig = PromptConfig()
) -> str:
    return chat_text(tokenizer, screen_messages(case, shots, token_conversation(tokenizer), config))


def end_strings(tokenizer: Any) -> tuple[str, ...]:
    """What closes a sequence of calls: the end-of-turn token's text (a newline for a tokenizer without one)."""
    return (end_of_turn_text(tokenizer) or "\n",)


def tool_params(tools: Iterable[Mapping[str, Any]]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """{tool name: (property names, required names)}: what the grammar lets each tool's arguments hold."""
    out = {}
    for tool in tools:
        fn = _function(tool)
        params = _parameters(fn)
        known = tuple(str(k) for k in (params.get("properties") or {}))
        required = tuple(str(r) for r in (params.get("required") or []) if r in known)
        out[str(fn.get("name", ""))] = (known, required)
    return out


def grammar_for(
    case: CallCase, ends: Sequence[str], max_calls: int = 8, schema_keys: bool = True
) -> CallSequenceGrammar:
    """Several calls closed by the end of turn for a parallel case, else one call done at its `}`; with
    `schema_keys`, each call's top-level keys are its tool's parameters, the required ones all given."""
    names = [str(_function(t).get("name", "")) for t in case.tools]
    params = tool_params(case.tools) if schema_keys else None
    return CallSequenceGrammar(names, ends if case.many else (), max_calls, params=params)


def target_text(case: CallCase, tokenizer: Any) -> str:
    """What a fine-tuned student should write for a case: its gold calls, then the end-of-turn token."""
    return render_calls(case.gold) + end_of_turn_text(tokenizer)


# --- generation and scoring ----------------------------------------------------------------------------


class Completer(Protocol):
    """What the screen needs of a runtime (TransformersRuntime.complete): prompts in, constrained texts out."""

    tokenizer: Any

    def complete(
        self, prompts: list[str], grammars: list[Any], stop_below: float | None = None
    ) -> list[Any]: ...


@dataclass
class Answer:
    """A student's answer to one case, parsed and scored."""

    key: str
    text: str
    calls: list[ToolCall] | None
    name_ok: bool
    exact: bool
    ast: bool
    ast_error: str = ""


def _name_key(name: str) -> str:
    return name.replace(".", "_")


def score_answer(case: CallCase, text: str, calls: list[ToolCall] | None) -> Answer:
    """Name accuracy (the same multiset of tool names), exact match (the same calls, any order) and AST match."""
    predicted = calls or []
    names_ok = bool(predicted) and sorted(_name_key(c.name) for c in predicted) == sorted(
        _name_key(c.name) for c in case.gold
    )

    def canonical(c: ToolCall) -> str:
        return ToolCall(_name_key(c.name), c.arguments).canonical()

    exact = bool(predicted) and sorted(map(canonical, predicted)) == sorted(map(canonical, case.gold))
    if calls is None:
        ast_ok, error = False, "no complete call"
    else:
        result = ast_match(case.functions or case.tools, predicted, case.answers(), case.category)
        ast_ok, error = result.valid, result.error_type or result.error
    return Answer(case.key, text, calls, names_ok, exact, ast_ok, error)


def answer_cases(
    runtime: Completer,
    cases: Sequence[CallCase],
    prompts: Sequence[str],
    batch_size: int = 8,
    max_calls: int = 8,
    progress: bool = False,
    label: str = "screen",
) -> list[Answer]:
    """Generate (batched, prompts of similar length together) and score an answer for every case."""
    from tqdm import tqdm

    ends = end_strings(runtime.tokenizer)
    order = sorted(range(len(cases)), key=lambda i: len(prompts[i]))
    answers: dict[int, Answer] = {}
    with tqdm(total=len(order), desc=label, unit="call", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            grammars = [grammar_for(cases[i], ends, max_calls) for i in idx]
            outs = runtime.complete([prompts[i] for i in idx], grammars)
            for i, out in zip(idx, outs, strict=True):
                text = str(out.text)
                done = bool(getattr(out, "done", True))
                if not done:
                    calls = None
                elif cases[i].many:
                    calls = parse_calls(text, ends)
                else:
                    single = parse_target(text)
                    calls = [single] if single is not None else None
                answers[i] = score_answer(cases[i], text, calls)
            bar.update(len(idx))
    return [answers[i] for i in range(len(cases))]


def wilson_bounds(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval; (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    return wilson_lower(successes, n), 1.0 - wilson_lower(n - successes, n)


@dataclass
class ScreenRow:
    """One student in one mode over the screened cases."""

    student: str
    mode: str
    n: int
    name_accuracy: float
    exact_match: float
    ast_accuracy: float
    ast_lower95: float
    ast_upper95: float
    seconds: float
    seconds_per_call: float
    prompt_chars_mean: float
    answers: list[Answer] = field(default_factory=list, repr=False)

    def as_dict(self, with_answers: int = 0) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k != "answers"}
        if with_answers:
            row["examples"] = [
                {"key": a.key, "text": a.text, "ast": a.ast, "error": a.ast_error}
                for a in self.answers[:with_answers]
            ]
        return row


def summarise(
    student: str, mode: str, answers: Sequence[Answer], seconds: float, prompts: Sequence[str]
) -> ScreenRow:
    n = len(answers)
    ast_hits = sum(a.ast for a in answers)
    low, high = wilson_bounds(ast_hits, n)
    return ScreenRow(
        student=student,
        mode=mode,
        n=n,
        name_accuracy=sum(a.name_ok for a in answers) / n if n else 0.0,
        exact_match=sum(a.exact for a in answers) / n if n else 0.0,
        ast_accuracy=ast_hits / n if n else 0.0,
        ast_lower95=low,
        ast_upper95=high,
        seconds=seconds,
        seconds_per_call=seconds / n if n else 0.0,
        prompt_chars_mean=sum(map(len, prompts)) / len(prompts) if prompts else 0.0,
        answers=list(answers),
    )


@dataclass
class ScreenReport:
    """The ranked screen: best first (AST accuracy, then exact match, name accuracy, speed)."""

    rows: list[ScreenRow]
    k: int
    cases: int
    failed: dict[str, str] = field(default_factory=dict)  # student -> why it could not be screened
    load_seconds: dict[str, float] = field(default_factory=dict)
    select_seconds: float = 0.0

    @property
    def best(self) -> ScreenRow | None:
        return self.rows[0] if self.rows else None

    def table(self) -> str:
        return render_screen_table(self.rows)

    def as_dict(self, with_answers: int = 0) -> dict[str, Any]:
        return {
            "k": self.k,
            "cases": self.cases,
            "ranking": [r.as_dict(with_answers) for r in self.rows],
            "failed": self.failed,
            "load_seconds": self.load_seconds,
            "select_seconds": self.select_seconds,
        }


def rank(rows: Iterable[ScreenRow]) -> list[ScreenRow]:
    return sorted(rows, key=lambda r: (-r.ast_accuracy, -r.exact_match, -r.name_accuracy, r.seconds_per_call))


def render_screen_table(rows: Sequence[ScreenRow]) -> str:
    """The screen as an aligned text table."""
    header = ("rank", "student", "mode", "n", "name", "exact", "AST", "AST 95% CI", "s/call")
    table = [header]
    for i, r in enumerate(rows, 1):
        table.append(
            (
                str(i),
                r.student,
                r.mode,
                str(r.n),
                f"{r.name_accuracy:.2f}",
                f"{r.exact_match:.2f}",
                f"{r.ast_accuracy:.2f}",
                f"[{r.ast_lower95:.2f}, {r.ast_upper95:.2f}]",
                f"{r.seconds_per_call:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {0, 3, 4, 5, 6, 8}
    lines = []
    for row in table:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def load_runtime(student: str, max_new_tokens: int = 96) -> Any:
    """The student's TransformersRuntime (torch loads here, not at import)."""
    from downsize.backends.transformers_runtime import TransformersRuntime

    return TransformersRuntime(student, max_new_tokens=max_new_tokens)


def screen_students(
    cases: Sequence[CallCase],
    pool: Sequence[CallCase],
    students: Sequence[str],
    k: int = 3,
    modes: Sequence[str] = MODES,
    batch_size: int = 8,
    max_new_tokens: int = 96,
    prompt: PromptConfig = PromptConfig(),
    loader: Callable[[str, int], Any] = load_runtime,
    embed: Embed | None = None,
    progress: bool = False,
) -> ScreenReport:
    """Zero-shot and k-shot answers of each student on `cases`, scored and ranked.

    `pool` must hold training calls only (checked). A student that cannot be loaded here (weights not
    installed, no training extras) is listed in `failed` with the reason instead of stopping the screen.
    """
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown screen modes {sorted(unknown)}: use {', '.join(MODES)}")
    started = time.perf_counter()
    shots = select_shots(cases, pool, k, embed) if "few_shot" in modes else [[] for _ in cases]
    report = ScreenReport(rows=[], k=k, cases=len(cases), select_seconds=time.perf_counter() - started)
    for student in students:
        began = time.perf_counter()
        try:
            runtime = loader(student, max_new_tokens)
        except DownsizeError as exc:
            report.failed[student] = str(exc)
            continue
        report.load_seconds[student] = time.perf_counter() - began
        for mode in modes:
            chosen = shots if mode == "few_shot" else [[] for _ in cases]
            prompts = [
                build_screen_prompt(runtime.tokenizer, c, s, prompt)
                for c, s in zip(cases, chosen, strict=True)
            ]
            began = time.perf_counter()
            answers = answer_cases(
                runtime, cases, prompts, batch_size, progress=progress, label=f"{student} {mode}"
            )
            report.rows.append(summarise(student, mode, answers, time.perf_counter() - began, prompts))
        del runtime
    report.rows = rank(report.rows)
    return report
