"""Import simonw/llm's `logs.db`: every logged prompt/response becomes one exchange.

llm (the command-line tool and library) logs each call to SQLite: a `responses` row per call (`prompt`,
`system`, `response`, `model`, `datetime_utc`, `conversation_id`, `prompt_json`, `options_json`,
`duration_ms`, `input_tokens`, `output_tokens`, ...), grouped by `conversations`, with optional side
tables for tools (`tools`, `tool_responses`, `tool_calls`, `tool_results`), fragments (`fragments`,
`prompt_fragments`, `system_fragments`) and JSON schemas (`schemas`). This reads that schema as llm's
migrations leave it (m010 onwards); side tables that an older database lacks are simply absent.

The request an exchange stores is what the model was sent, in OpenAI chat form:

- when `prompt_json` holds OpenAI-shaped `messages` (llm's OpenAI models log exactly what they send), those,
  with llm's condensed references (`{"$r": [...]}`, `{"$": "r:<id>"}` for an earlier response's text,
  `{"$": "f<id>"}` for a fragment) expanded back into text;
- otherwise the conversation rebuilt the way llm's OpenAI plugin builds it: a system message whenever the
  system prompt changes, then per earlier response its tool results, its prompt and its answer (with the
  tool calls it made), then this response's tool results and prompt. Fragments are joined before the
  prompt (`\\n`) and the system prompt (`\\n\\n`), as llm joins them.

The tools offered (`tool_responses`) become `tools`, the options (`options_json`) request parameters,
and a schema `response_format`. Sessions are conversation ids; `source_key` is `llm-logs:<response id>`,
so importing the same database again adds only new calls. The database is opened read-only.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

from downsize.errors import ImportDataError
from downsize.shapes import completion, describe_response
from downsize.store import Store
from downsize.types import Exchange

SOURCE = "llm-logs"
AGENT = "llm"
_ID_MAX = 200
_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_OPENAI_PARTS = frozenset({"text", "image_url", "input_audio", "file", "refusal"})


class _Unresolved(ValueError):
    """A condensed reference in prompt_json points at text this database does not hold."""


def _loads(value: Any) -> Any:
    """A JSON column's value (None when empty or not JSON: llm stores some columns as plain text)."""
    if not isinstance(value, str | bytes) or not value:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _created_at(value: Any) -> str | None:
    """llm's `datetime_utc` (ISO, with or without an offset) as UTC ISO 8601 with milliseconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")


class _LogsDb:
    """The side tables of one logs.db, read once (they are small next to `responses`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        }
        self.tool_calls: dict[str, list[sqlite3.Row]] = defaultdict(list)
        self.tool_results: dict[str, list[sqlite3.Row]] = defaultdict(list)
        self.tools: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.prompt_fragments: dict[str, list[int]] = defaultdict(list)
        self.system_fragments: dict[str, list[int]] = defaultdict(list)
        self._fragments: dict[int, str] = {}
        if "tool_calls" in self.tables:
            for row in conn.execute("SELECT * FROM tool_calls ORDER BY id"):
                self.tool_calls[row["response_id"]].append(row)
        if "tool_results" in self.tables:
            for row in conn.execute("SELECT * FROM tool_results ORDER BY id"):
                self.tool_results[row["response_id"]].append(row)
        if {"tools", "tool_responses"} <= self.tables:
            query = (
                "SELECT tool_responses.response_id, tools.name, tools.description, tools.input_schema "
                "FROM tool_responses JOIN tools ON tools.id = tool_responses.tool_id ORDER BY tools.id"
            )
            for row in conn.execute(query):
                function: dict[str, Any] = {"name": row["name"]}
                if row["description"]:
                    function["description"] = row["description"]
                schema = _loads(row["input_schema"])
                function["parameters"] = schema if isinstance(schema, dict) else {"type": "object"}
                self.tools[row["response_id"]].append({"type": "function", "function": function})
        for table, into in (
            ("prompt_fragments", self.prompt_fragments),
            ("system_fragments", self.system_fragments),
        ):
            if table in self.tables and "fragments" in self.tables:
                for row in conn.execute(f'SELECT response_id, fragment_id FROM {table} ORDER BY "order"'):
                    into[row["response_id"]].append(row["fragment_id"])

    def fragment(self, fragment_id: int) -> str:
        if fragment_id not in self._fragments:
            row = self.conn.execute("SELECT content FROM fragments WHERE id = ?", [fragment_id]).fetchone()
            if row is None:
                raise _Unresolved(f"fragment {fragment_id}")
            self._fragments[fragment_id] = row["content"] or ""
        return self._fragments[fragment_id]

    def schema(self, schema_id: Any) -> Any:
        if not schema_id or "schemas" not in self.tables:
            return None
        row = self.conn.execute("SELECT content FROM schemas WHERE id = ?", [schema_id]).fetchone()
        return _loads(row["content"]) if row is not None else None

    def prompt_text(self, row: sqlite3.Row) -> str:
        """The prompt as the model saw it: the prompt's fragments, then the prompt (llm joins them with \\n)."""
        bits = [self.fragment(f) for f in self.prompt_fragments.get(row["id"], [])]
        if row["prompt"]:
            bits.append(row["prompt"])
        return "\n".join(bits)

    def system_text(self, row: sqlite3.Row) -> str:
        """The system prompt: its fragments, then the system text, blank-line separated (as llm does)."""
        bits = [self.fragment(f) for f in self.system_fragments.get(row["id"], [])]
        bits.append(row["system"] or "")
        return "\n\n".join(bit.strip() for bit in bits if bit and bit.strip())


def _tool_calls(db: _LogsDb, row: sqlite3.Row) -> list[dict[str, Any]]:
    """The tool calls a response made, in OpenAI form (arguments as a JSON string)."""
    calls = []
    for i, call in enumerate(db.tool_calls.get(row["id"], [])):
        arguments = call["arguments"]
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        calls.append(
            {
                "id": call["tool_call_id"] or f"call_{row['id']}_{i}",
                "type": "function",
                "function": {"name": call["name"] or "", "arguments": arguments},
            }
        )
    return calls


def _tool_messages(db: _LogsDb, row: sqlite3.Row, calls_before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool results sent with a response's prompt, as `tool` messages answering the previous calls."""
    ids = [call["id"] for call in calls_before]
    out = []
    for i, result in enumerate(db.tool_results.get(row["id"], [])):
        call_id = result["tool_call_id"] or (ids[i] if i < len(ids) else f"call_result_{row['id']}_{i}")
        out.append({"role": "tool", "tool_call_id": call_id, "content": result["output"] or ""})
    return out


def _assistant(db: _LogsDb, row: sqlite3.Row) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": row["response"] or None}
    calls = _tool_calls(db, row)
    if calls:
        message["tool_calls"] = calls
    return message


def _rebuilt_messages(db: _LogsDb, history: list[sqlite3.Row], row: sqlite3.Row) -> list[dict[str, Any]]:
    """The conversation up to `row`, the way llm's OpenAI plugin sends it."""
    messages: list[dict[str, Any]] = []
    current_system: str | None = None
    previous_calls: list[dict[str, Any]] = []
    for turn in [*history, row]:
        system = db.system_text(turn)
        if system and system != current_system:
            messages.append({"role": "system", "content": system})
            current_system = system
        messages.extend(_tool_messages(db, turn, previous_calls))
        prompt = db.prompt_text(turn)
        if prompt:
            messages.append({"role": "user", "content": prompt})
        if turn is not row:
            assistant = _assistant(db, turn)
            messages.append(assistant)
            previous_calls = assistant.get("tool_calls", [])
    return messages


def _expand(value: Any, texts: dict[str, str], db: _LogsDb) -> Any:
    """Undo llm's condense_json: `{"$r": [parts]}` strings and `{"$": key}` references become text again."""
    if isinstance(value, list):
        return [_expand(v, texts, db) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == "$r" and isinstance(inner, list):
            return "".join(str(_expand(part, texts, db)) for part in inner)
        if key == "$" and isinstance(inner, str):
            return _reference(inner, texts, db)
        if key == "$raw":
            return inner
    return {k: _expand(v, texts, db) for k, v in value.items()}


def _reference(key: str, texts: dict[str, str], db: _LogsDb) -> str:
    if key.startswith("r:"):
        if key[2:] in texts:
            return texts[key[2:]]
        raise _Unresolved(key)
    digits = key[2:] if key.startswith("f:") else key[1:] if key.startswith("f") else ""
    if digits.isascii() and digits.isdigit():
        return db.fragment(int(digits))
    raise _Unresolved(key)


def _openai_messages(value: Any) -> list[dict[str, Any]] | None:
    """prompt_json's `messages` when they are OpenAI chat messages (other plugins log other shapes)."""
    messages = value.get("messages") if isinstance(value, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in _OPENAI_ROLES:
            return None
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") in _OPENAI_PARTS for p in content):
                return None
        elif content is not None and not isinstance(content, str):
            return None
    return messages


def _request(
    db: _LogsDb, history: list[sqlite3.Row], row: sqlite3.Row, texts: dict[str, str]
) -> dict[str, Any]:
    messages: list[dict[str, Any]] | None = None
    logged = _openai_messages(_loads(row["prompt_json"]))
    if logged is not None:
        try:
            messages = _expand(logged, texts, db)
        except _Unresolved:
            messages = None
    if messages is None:
        messages = _rebuilt_messages(db, history, row)
    elif not any(m.get("role") in ("system", "developer") for m in messages):
        system = db.system_text(row)
        if system:
            messages = [{"role": "system", "content": system}, *messages]
    request: dict[str, Any] = {"model": row["model"], "messages": messages}
    options = _loads(row["options_json"])
    if isinstance(options, dict):
        request.update({k: v for k, v in options.items() if v is not None and k not in request})
    tools = db.tools.get(row["id"])
    if tools:
        request["tools"] = tools
    schema = db.schema(row["schema_id"]) if "schema_id" in row.keys() else None
    if isinstance(schema, dict):
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "llm_schema", "schema": schema},
        }
    return request


def _exchange(db: _LogsDb, history: list[sqlite3.Row], row: sqlite3.Row, texts: dict[str, str]) -> Exchange:
    keys = row.keys()
    model = (row["resolved_model"] if "resolved_model" in keys else None) or row["model"] or "unknown"
    created_at = _created_at(row["datetime_utc"])
    created = int(datetime.fromisoformat(created_at).timestamp()) if created_at else 0
    response = completion(_assistant(db, row), model, created, f"llm-{row['id']}")
    input_tokens = row["input_tokens"] if "input_tokens" in keys else None
    output_tokens = row["output_tokens"] if "output_tokens" in keys else None
    if input_tokens is not None or output_tokens is not None:
        response["usage"] = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": (input_tokens or 0) + (output_tokens or 0),
        }
    kind, names = describe_response(response)
    duration = row["duration_ms"]
    return Exchange(
        request=_request(db, history, row, texts),
        response=response,
        created_at=created_at,
        source=SOURCE,
        source_key=f"{SOURCE}:{row['id']}",
        agent=AGENT,
        session=str(row["conversation_id"])[:_ID_MAX] if row["conversation_id"] else None,
        model=str(model)[:_ID_MAX],
        response_kind=kind,
        tool_names=names,
        prompt_tokens=input_tokens if isinstance(input_tokens, int) else None,
        completion_tokens=output_tokens if isinstance(output_tokens, int) else None,
        latency_ms=float(duration) if isinstance(duration, int | float) else None,
        upstream_status=200,
        route="upstream",
        is_hci=kind == "text",
    )


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ImportDataError(
            f"{path} is not a file: point `downsize import llm-logs PATH` at llm's logs.db "
            "(`llm logs path` prints where it is)"
        )
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ImportDataError(f"{path} is not a SQLite database ({exc}): expected llm's logs.db") from exc
    if "responses" not in names:
        conn.close()
        raise ImportDataError(
            f"{path} has no 'responses' table: it is not an llm logs.db, or one from before llm 0.5 "
            "(run any `llm` command once to migrate it)"
        )
    return conn


def read_exchanges(path: str | Path) -> Iterator[Exchange]:
    """Yield one Exchange per logged response, conversation by conversation, oldest first in each."""
    conn = _connect(Path(path))
    try:
        db = _LogsDb(conn)
        # ULID ids sort by creation time, which breaks ties between equal datetimes.
        rows = conn.execute(
            "SELECT * FROM responses ORDER BY conversation_id IS NULL, conversation_id, datetime_utc, id"
        )
        for conversation, turns in groupby(rows, key=lambda r: r["conversation_id"]):
            history: list[sqlite3.Row] = []
            texts: dict[str, str] = {}
            for row in turns:
                yield _exchange(db, history, row, texts)
                texts[row["id"]] = row["response"] or ""
                if conversation is not None:
                    history.append(row)
                else:
                    history = []
    except sqlite3.DatabaseError as exc:
        raise ImportDataError(f"{path}: cannot read llm's tables ({exc})") from exc
    finally:
        conn.close()


def import_llm_logs(store: Store, path: str | Path, batch: int = 500) -> tuple[int, int]:
    """Import an llm logs.db into the store; returns (responses read, exchanges added). Idempotent."""
    return store.add_exchanges_batched(read_exchanges(path), batch)
