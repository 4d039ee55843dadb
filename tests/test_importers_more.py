"""The OpenAI-JSONL (Data Flywheel log shape) and simonw/llm logs.db importers, and their CLI commands.

The logs.db fixture is built with sqlite3 following llm's migrations (m010 onwards: `conversations`,
`responses`, the tool, fragment and schema tables), as llm itself would have written it.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from downsize.cli.main import main
from downsize.errors import ImportDataError
from downsize.importers.llm_logs import import_llm_logs
from downsize.importers.llm_logs import read_exchanges as read_llm
from downsize.importers.openai_jsonl import import_openai_jsonl
from downsize.importers.openai_jsonl import read_exchanges as read_jsonl
from downsize.store import Store

# -- OpenAI JSONL ---------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_user_details",
            "parameters": {"type": "object", "properties": {"user_id": {"type": "string"}}},
        },
    }
]


def _completion(message: dict[str, Any], usage: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1715854074,
        "model": "llama-3-70b-instruct",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    if usage:
        out["usage"] = usage
    return out


def _record(i: int, **extra: Any) -> dict[str, Any]:
    record = {
        "timestamp": 1715854074 + i,
        "workload_id": "hr_chat",
        "client_id": "acme-prod",
        "request": {
            "model": "llama-3-70b-instruct",
            "messages": [{"role": "user", "content": f"What approvals do I need for leave #{i}?"}],
            "temperature": 0.2,
        },
        "response": _completion(
            {"role": "assistant", "content": "According to the HR policy ..."},
            {"prompt_tokens": 15, "completion_tokens": 72, "total_tokens": 87},
        ),
    }
    record.update(extra)
    return record


def _tool_record() -> dict[str, Any]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_user_details", "arguments": '{"user_id": "sara_doe_496"}'},
    }
    return {
        "timestamp": "2025-05-16T10:07:54.250Z",
        "workload_id": "tool_router",
        "client_id": "acme-prod",
        "session_id": "order-1234#1",
        "request": {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "I am sara"}],
            "tools": TOOLS,
        },
        "response": _completion({"role": "assistant", "content": None, "tool_calls": [call]}),
    }


def _streamed_record() -> dict[str, Any]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "created": 1715854100,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    return {
        "timestamp": 1715854100123,  # epoch milliseconds
        "workload_id": "summary",
        "client_id": "acme-batch",
        "request": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "sum up"}],
            "stream": True,
        },
        "response": [
            chunk({"role": "assistant", "content": "Short"}),
            chunk({"content": " answer."}),
            chunk({}, "stop"),
        ],
    }


def _write_jsonl(path: Path, records: list[Any], extra_lines: tuple[str, ...] | list[str] = ()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_records_become_exchanges(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "log.jsonl", [_record(0), _tool_record(), _streamed_record()], [""])
    text, tool, streamed = list(read_jsonl(path))

    assert (text.source, text.agent, text.task_hint, text.session) == (
        "openai-jsonl",
        "acme-prod",
        "hr_chat",
        None,
    )
    assert text.created_at == "2024-05-16T10:07:54.000+00:00"
    assert text.request["temperature"] == 0.2 and text.request["messages"][0]["role"] == "user"
    assert (text.response_kind, text.is_hci, text.upstream_status, text.route) == (
        "text",
        True,
        200,
        "upstream",
    )
    assert (text.model, text.prompt_tokens, text.completion_tokens) == ("llama-3-70b-instruct", 15, 72)
    assert text.source_key is not None and text.source_key.startswith("openai-jsonl:")

    assert (tool.response_kind, tool.tool_names, tool.is_hci) == ("tool_call", ["get_user_details"], False)
    assert (tool.session, tool.task_hint) == ("order-1234#1", "tool_router")
    assert tool.created_at == "2025-05-16T10:07:54.250+00:00"

    assert streamed.created_at == "2024-05-16T10:08:20.123+00:00"
    assert streamed.response is not None and streamed.response["object"] == "chat.completion"
    assert streamed.response["choices"][0]["message"]["content"] == "Short answer."
    assert (streamed.response_kind, streamed.agent) == ("text", "acme-batch")


def test_jsonl_import_is_idempotent_and_gzip_works(tmp_path: Path) -> None:
    store = Store.open()
    records = [_record(i) for i in range(5)]
    plain = _write_jsonl(tmp_path / "log.jsonl", [*records, records[0]])  # one line logged twice
    report = import_openai_jsonl(store, plain)
    assert (report.read, report.added, report.skipped) == (6, 5, 0)
    again = import_openai_jsonl(store, plain)
    assert (again.read, again.added, again.already_stored) == (6, 0, 6)
    packed = tmp_path / "log.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert import_openai_jsonl(store, packed).added == 0, "the same records, compressed"
    assert store.count_exchanges(source="openai-jsonl") == 5


def test_jsonl_error_responses_and_status(tmp_path: Path) -> None:
    error = {"error": {"message": "rate limited", "type": "rate_limit_error", "code": None}}
    path = _write_jsonl(
        tmp_path / "log.jsonl",
        [_record(0, response=error), _record(1, response=error, status_code=429), _record(2, response=None)],
    )
    a, b, c = read_jsonl(path)
    assert (a.response_kind, a.upstream_status) == ("error", None)
    assert (b.response_kind, b.upstream_status) == ("error", 429)
    assert (c.response, c.response_kind) == (None, "empty")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"timestamp": 1, "request": {"messages": [{"role": "user"', "not valid JSON"),
        ("[1, 2]", "a JSON object"),
        ('{"response": {}}', "'request' is missing"),
        ('{"request": {"messages": []}}', "non-empty array"),
        ('{"request": {"messages": [{"role": "user"}]}, "response": "ok"}', "'response' must be"),
        ('{"request": {"messages": [{"role": "user"}]}, "timestamp": "yesterday"}', "ISO 8601"),
        (
            '{"request": {"messages": [{"role": "user"}]}, "client_id": {"a": 1}}',
            "'client_id' must be a string",
        ),
    ],
)
def test_jsonl_invalid_lines_name_the_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = _write_jsonl(tmp_path / "log.jsonl", [_record(0)], [line, json.dumps(_record(1))])
    with pytest.raises(ImportDataError, match=rf"line 2: .*{fragment}.*--skip-invalid"):
        list(read_jsonl(path))
    store = Store.open()
    report = import_openai_jsonl(store, path, skip_invalid=True)
    assert (report.read, report.added, report.skipped) == (2, 2, 1)
    assert len(report.problems) == 1 and report.problems[0].startswith("line 2: ")


def test_jsonl_bad_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ImportDataError, match="not a file"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage\n")
    with pytest.raises(ImportDataError, match="not UTF-8 JSON Lines"):
        list(read_jsonl(binary))


# -- simonw/llm logs.db ---------------------------------------------------------------------------------

# The tables as llm's migrations m010-m022 create them (sqlite-utils types: str -> TEXT, int -> INTEGER).
LLM_SCHEMA = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, name TEXT, model TEXT);
CREATE TABLE schemas (id TEXT PRIMARY KEY, content TEXT);
CREATE TABLE responses (
    id TEXT PRIMARY KEY, model TEXT, prompt TEXT, system TEXT, prompt_json TEXT, options_json TEXT,
    response TEXT, response_json TEXT, conversation_id TEXT REFERENCES conversations(id), duration_ms INTEGER,
    datetime_utc TEXT, input_tokens INTEGER, output_tokens INTEGER, token_details TEXT,
    schema_id TEXT REFERENCES schemas(id), resolved_model TEXT
);
CREATE TABLE fragments (id INTEGER PRIMARY KEY, hash TEXT, content TEXT, datetime_utc TEXT, source TEXT);
CREATE TABLE prompt_fragments (response_id TEXT, fragment_id INTEGER, "order" INTEGER,
    PRIMARY KEY (response_id, fragment_id, "order"));
CREATE TABLE system_fragments (response_id TEXT, fragment_id INTEGER, "order" INTEGER,
    PRIMARY KEY (response_id, fragment_id, "order"));
CREATE TABLE tools (id INTEGER PRIMARY KEY, hash TEXT, name TEXT, description TEXT, input_schema TEXT,
    plugin TEXT);
CREATE TABLE tool_responses (tool_id INTEGER, response_id TEXT, PRIMARY KEY (tool_id, response_id));
CREATE TABLE tool_calls (id INTEGER PRIMARY KEY, response_id TEXT, tool_id INTEGER, name TEXT, arguments TEXT,
    tool_call_id TEXT);
CREATE TABLE tool_results (id INTEGER PRIMARY KEY, response_id TEXT, tool_id INTEGER, name TEXT, output TEXT,
    tool_call_id TEXT, instance_id INTEGER, exception TEXT);
"""

# ULID-like ids that sort by time, as llm's do
C1, C2, C3 = "01jconv0000000000000000001", "01jconv0000000000000000002", "01jconv0000000000000000003"
R = [f"01jresp00000000000000000{i:02d}" for i in range(1, 9)]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def _response(conn: sqlite3.Connection, **values: Any) -> None:
    columns = ", ".join(values)
    conn.execute(
        f"INSERT INTO responses ({columns}) VALUES ({', '.join('?' * len(values))})", list(values.values())
    )


def make_logs_db(path: Path) -> Path:
    """A logs.db with a two-turn chat, an OpenAI-logged turn with condensed references, a tool-calling
    conversation, and a one-off prompt with fragments, options and a schema."""
    conn = sqlite3.connect(path)
    conn.executescript(LLM_SCHEMA)
    conn.executemany(
        "INSERT INTO conversations VALUES (?, ?, ?)",
        [(C1, "capital of France", "gpt-4o-mini"), (C2, "weather", "gpt-4o"), (C3, "notes", "claude-3.5")],
    )
    # Conversation 1: plain chat (no prompt_json: rebuilt), then a turn logged by the OpenAI plugin whose
    # prompt_json refers back to the first answer ({"$": "r:<id>"}) instead of repeating it.
    _response(
        conn, id=R[0], model="gpt-4o-mini", prompt="Capital of France?", system="Be brief.",
        response="Paris.", conversation_id=C1, duration_ms=812, datetime_utc="2025-01-02T03:04:05.678901",
        input_tokens=12, output_tokens=2, resolved_model="gpt-4o-mini-2024-07-18",
    )  # fmt: skip
    prompt_json = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": {"$r": [{"$": f"r:{R[0]}"}]}},
            {"role": "user", "content": "And of Italy?"},
        ]
    }
    _response(
        conn, id=R[1], model="gpt-4o-mini", prompt="And of Italy?", system="Be brief.",
        prompt_json=json.dumps(prompt_json), options_json=json.dumps({"temperature": 0.5, "max_tokens": None}),
        response="Rome.", conversation_id=C1, duration_ms=640, datetime_utc="2025-01-02T03:05:00+00:00",
    )  # fmt: skip
    # Conversation 2: a tool call, then the turn that carries its result, then the final answer.
    conn.execute(
        "INSERT INTO tools (id, hash, name, description, input_schema) VALUES (1, 'h', 'get_weather', ?, ?)",
        ["Current weather of a city", json.dumps(SCHEMA)],
    )
    _response(
        conn, id=R[2], model="gpt-4o", prompt="Weather in Oslo?", response="", conversation_id=C2,
        datetime_utc="2025-02-01T10:00:00+00:00", duration_ms=900,
    )  # fmt: skip
    conn.execute(
        "INSERT INTO tool_calls (response_id, tool_id, name, arguments, tool_call_id) VALUES (?, 1, ?, ?, ?)",
        [R[2], "get_weather", '{"city": "Oslo"}', "call_abc"],
    )
    _response(
        conn, id=R[3], model="gpt-4o", prompt="", response="It is 3 C and cloudy in Oslo.", conversation_id=C2,
        datetime_utc="2025-02-01T10:00:02+00:00",
    )  # fmt: skip
    conn.execute(
        "INSERT INTO tool_results (response_id, tool_id, name, output, tool_call_id) VALUES (?, 1, ?, ?, ?)",
        [R[3], "get_weather", '{"temp_c": 3, "sky": "cloudy"}', "call_abc"],
    )
    conn.executemany("INSERT INTO tool_responses VALUES (1, ?)", [(R[2],), (R[3],)])
    # Conversation 3: fragments before the prompt and the system prompt, options and a JSON schema.
    conn.executemany(
        "INSERT INTO fragments (id, hash, content, source) VALUES (?, ?, ?, ?)",
        [(7, "a", "NOTES: buy milk", "notes.txt"), (8, "b", "You summarise notes.", "sys.txt")],
    )
    conn.execute("INSERT INTO schemas VALUES ('s1', ?)", [json.dumps(SCHEMA)])
    _response(
        conn, id=R[4], model="claude-3.5", prompt="Summarise.", system="Answer in JSON.",
        options_json=json.dumps({"temperature": 0}), response='{"city": "none"}', conversation_id=C3,
        datetime_utc="2025-03-01T00:00:00", schema_id="s1",
        prompt_json=json.dumps({"messages": [{"role": "user", "content": [{"type": "tool_use"}]}]}),
    )  # fmt: skip
    conn.execute("INSERT INTO prompt_fragments VALUES (?, 7, 0)", [R[4]])
    conn.execute("INSERT INTO system_fragments VALUES (?, 8, 0)", [R[4]])
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def logs_db(tmp_path: Path) -> Path:
    return make_logs_db(tmp_path / "logs.db")


def test_llm_chat_turns_carry_their_history(logs_db: Path) -> None:
    by_key = {ex.source_key: ex for ex in read_llm(logs_db)}
    assert len(by_key) == 5
    first, second = by_key[f"llm-logs:{R[0]}"], by_key[f"llm-logs:{R[1]}"]
    assert first.request == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
        ],
    }
    assert first.response is not None
    assert first.response["choices"][0]["message"] == {"role": "assistant", "content": "Paris."}
    assert first.response["model"] == "gpt-4o-mini-2024-07-18"
    assert first.response["usage"] == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    assert (first.source, first.agent, first.session, first.model) == (
        "llm-logs",
        "llm",
        C1,
        "gpt-4o-mini-2024-07-18",
    )
    assert (first.created_at, first.latency_ms, first.prompt_tokens) == (
        "2025-01-02T03:04:05.678+00:00",
        812.0,
        12,
    )
    assert (first.response_kind, first.is_hci, first.upstream_status) == ("text", True, 200)
    # prompt_json as logged, its reference to the first answer expanded; options become parameters
    assert second.request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert second.request["temperature"] == 0.5 and "max_tokens" not in second.request


def test_llm_tool_calls_and_results(logs_db: Path) -> None:
    by_key = {ex.source_key: ex for ex in read_llm(logs_db)}
    call, answer = by_key[f"llm-logs:{R[2]}"], by_key[f"llm-logs:{R[3]}"]
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather of a city", "parameters": SCHEMA},
    }
    assert call.request["tools"] == [tool] and answer.request["tools"] == [tool]
    assert (call.response_kind, call.tool_names, call.is_hci) == ("tool_call", ["get_weather"], False)
    assert call.response is not None
    message = call.response["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == [
        {
            "id": "call_abc",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert call.response["choices"][0]["finish_reason"] == "tool_calls"
    assert answer.request["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        message,
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 3, "sky": "cloudy"}'},
    ]
    assert answer.response_kind == "text"


def test_llm_fragments_options_and_schema(logs_db: Path) -> None:
    [notes] = [ex for ex in read_llm(logs_db) if ex.session == C3]
    # prompt_json is not OpenAI-shaped (another plugin's format): the request is rebuilt from the columns
    assert notes.request["messages"] == [
        {"role": "system", "content": "You summarise notes.\n\nAnswer in JSON."},
        {"role": "user", "content": "NOTES: buy milk\nSummarise."},
    ]
    assert notes.request["temperature"] == 0
    assert notes.request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "llm_schema", "schema": SCHEMA},
    }
    assert (notes.response_kind, notes.created_at) == ("json", "2025-03-01T00:00:00.000+00:00")


def test_llm_import_is_idempotent_and_read_only(logs_db: Path) -> None:
    before = logs_db.read_bytes()
    store = Store.open()
    assert import_llm_logs(store, logs_db) == (5, 5)
    assert import_llm_logs(store, logs_db) == (5, 0)
    assert store.count_exchanges(source="llm-logs") == 5
    assert logs_db.read_bytes() == before
    conn = sqlite3.connect(logs_db)
    _response(conn, id=R[5], model="gpt-4o-mini", prompt="One more?", response="Sure.", conversation_id=None,
              datetime_utc="2025-04-01T00:00:00")  # fmt: skip
    conn.commit()
    conn.close()
    assert import_llm_logs(store, logs_db) == (6, 1), "only the new response is added"
    [lone] = [ex for ex in store.exchanges(source="llm-logs") if ex.source_key == f"llm-logs:{R[5]}"]
    assert lone.session is None and lone.request["messages"] == [{"role": "user", "content": "One more?"}]


def test_llm_older_database_without_side_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, name TEXT, model TEXT);"
        "CREATE TABLE responses (id TEXT PRIMARY KEY, model TEXT, prompt TEXT, system TEXT, prompt_json TEXT,"
        " options_json TEXT, response TEXT, response_json TEXT, conversation_id TEXT, duration_ms INTEGER,"
        " datetime_utc TEXT);"
    )
    _response(conn, id="r1", model="gpt-3.5-turbo", prompt="hi", response="hello", conversation_id="c1",
              datetime_utc="2023-07-01T12:00:00.000000")  # fmt: skip
    conn.commit()
    conn.close()
    [ex] = read_llm(path)
    assert ex.request == {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}
    assert ex.prompt_tokens is None and ex.response is not None and "usage" not in ex.response


def test_llm_bad_paths_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ImportDataError, match="llm logs path"):
        list(read_llm(tmp_path / "missing.db"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ImportDataError, match="not a SQLite database"):
        list(read_llm(junk))
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ImportDataError, match="no 'responses' table"):
        list(read_llm(other))


# -- the CLI --------------------------------------------------------------------------------------------


def test_cli_commands(tmp_path: Path, logs_db: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    log = _write_jsonl(tmp_path / "log.jsonl", [_record(0), _tool_record()], ["{broken"])
    runner = CliRunner()
    result = runner.invoke(main, ["import", "openai-jsonl", str(log), "--db", db])
    assert result.exit_code == 1 and "line 3" in result.output and "--skip-invalid" in result.output
    result = runner.invoke(main, ["import", "openai-jsonl", str(log), "--skip-invalid", "--db", db])
    assert result.exit_code == 0, result.output
    assert "read 2 records, added 2 new (0 already stored), skipped 1 invalid lines" in result.output
    result = runner.invoke(main, ["import", "llm-logs", str(logs_db), "--db", db])
    assert result.exit_code == 0, result.output
    assert "read 5 responses, added 5 new" in result.output and "store: 5 llm-logs exchanges" in result.output
    result = runner.invoke(
        main, ["import", "llm-logs", "--db", db], env={"LLM_USER_PATH": str(tmp_path / "none")}
    )
    assert result.exit_code == 1 and "none/logs.db is not a file" in result.output
