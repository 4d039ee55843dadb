"""The VCR (vcrpy) cassette importer and its CLI command, on real crewAI cassettes from ../shared/data.

Five real cassettes are copied into a temp folder in their crewAI layout (tool calls under a JSON-schema
`response_format`, a streamed tool call, an Azure stream, an Anthropic recording, an error), beside a
hand-written broken one.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from downsize.cli.main import main
from downsize.errors import ImportDataError
from downsize.importers.cassettes import (
    ANTHROPIC,
    TELEMETRY,
    UNDECODABLE,
    CassetteImport,
    error_reason,
    import_cassettes,
    read_exchanges,
)
from downsize.shapes import tool_calls
from downsize.store import Store
from downsize.types import Exchange

CASSETTES = Path(__file__).resolve().parents[2] / "shared" / "data" / "crewai-cassettes"
STRUCTURED = "llms/openai/test_openai_agent_kickoff_structured_output_with_tools.yaml"
STREAMED_TOOL = "test_handle_streaming_tool_calls.yaml"
AZURE_STREAM = "llms/azure/test_azure_streaming_completion.yaml"
ANTHROPIC_CALLS = "test_anthropic_function_calling.yaml"
ERROR = "test_llm_call_with_error.yaml"
BROKEN = "broken.yaml"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    if not CASSETTES.is_dir():
        pytest.fail(f"the crewAI cassettes are expected at {CASSETTES} (../shared/data beside the project)")
    root = tmp_path / "crewai-cassettes"
    for name in (STRUCTURED, STREAMED_TOOL, AZURE_STREAM, ANTHROPIC_CALLS, ERROR):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CASSETTES / name, root / name)
    (root / BROKEN).write_text(
        "interactions:\n- request: {uri: [https://api.openai.com/v1/chat\n  method: POST\n"
    )
    return root


def _body(exchange: Exchange) -> dict[str, Any]:
    assert exchange.response is not None
    return exchange.response


def _store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path / 'cassettes.db'}")


def test_import_folder_counts_and_fields(folder: Path, tmp_path: Path) -> None:
    store = _store(tmp_path)
    report = import_cassettes(store, [folder])
    assert (report.files, report.interactions, report.read, report.added, report.streamed) == (6, 9, 5, 5, 2)
    assert report.kinds == {"tool_call": 3, "json": 1, "text": 1}
    assert report.skipped == {ANTHROPIC: 2, error_reason(404): 1, TELEMETRY: 1}
    assert [Path(path).name for path, _ in report.bad_files] == [BROKEN]
    assert "not valid YAML" in report.bad_files[0][1] and "line" in report.bad_files[0][1]

    stored = {e.source_key: e for e in store.exchanges(source="cassettes")}
    assert len(stored) == 5
    session = STRUCTURED.removesuffix(".yaml")
    first, second, last = (stored[f"cassettes:crewai-cassettes/{STRUCTURED}#{i}"] for i in range(3))
    assert (first.agent, first.session) == ("crewai-cassettes", session)
    assert first.session == second.session == last.session  # one recorded scenario, one workflow
    assert (first.response_kind, first.tool_names, first.model) == (
        "tool_call",
        ["add_numbers"],
        "gpt-4o-mini-2024-07-18",
    )
    assert [c.arguments for c in tool_calls(_body(first)["choices"][0]["message"])] == [{"a": 15, "b": 27}]
    assert (first.prompt_tokens, first.completion_tokens, first.upstream_status) == (188, 18, 200)
    assert first.created_at == "2026-02-12T22:11:14.000+00:00" and first.latency_ms == 569.0
    assert first.request["response_format"]["type"] == "json_schema"
    assert first.request["messages"][0]["role"] == "system" and first.request["tools"]
    assert last.response_kind == "json" and json.loads(_body(last)["choices"][0]["message"]["content"]) == {
        "operation": "Addition",
        "result": 42,
        "explanation": "The sum of 15 and 27 is calculated as 15 + 27 = 42.",
    }
    assert last.is_hci is False and first.route == "upstream"


def test_import_twice_adds_nothing(folder: Path, tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert import_cassettes(store, [folder]).added == 5
    again = import_cassettes(store, [folder])
    assert (again.read, again.added, again.already_stored) == (5, 0, 5)
    other = import_cassettes(store, [folder], agent="crew-bot", source="crew-tests")
    assert other.added == 5 and {e.agent for e in store.exchanges(source="crew-tests")} == {"crew-bot"}
    assert store.count_exchanges(source="cassettes") == 5


def test_streams_are_reassembled(folder: Path) -> None:
    report = CassetteImport()
    by_file = {e.session: e for e in read_exchanges([folder], report=report)}
    streamed = by_file[STREAMED_TOOL.removesuffix(".yaml")]
    choice = _body(streamed)["choices"][0]
    assert streamed.request["stream"] is True and _body(streamed)["object"] == "chat.completion"
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "call_bCEixqN8Y40SUyius8ZfVErH"
    assert call["function"] == {"name": "get_weather", "arguments": '{"location":"New York, NY"}'}
    assert (streamed.response_kind, streamed.tool_names) == ("tool_call", ["get_weather"])
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (68, 18)

    azure = by_file[AZURE_STREAM.removesuffix(".yaml")]
    assert _body(azure)["choices"][0]["message"]["content"] == "Hello! How can I assist you today?"
    assert _body(azure)["choices"][0]["finish_reason"] == "stop" and azure.response_kind == "text"
    # Azure's first chunk carries empty id/created/model: filled from the chunks that have them
    assert azure.model == _body(azure)["model"] == "gpt-4o-mini-2024-07-18"
    assert _body(azure)["id"].startswith("chatcmpl-") and _body(azure)["created"] > 0
    assert (azure.prompt_tokens, azure.completion_tokens) == (9, 10)
    assert report.streamed == 2
    assert {e.split for e in by_file.values()} == {None}  # the store assigns splits, not the importer


def _interaction(
    uri: str, request: object, body: object, status: int = 200, **headers: str
) -> dict[str, Any]:
    return {
        "request": {"method": "POST", "uri": uri, "body": request, "headers": {}},
        "response": {
            "status": {"code": status, "message": "OK"},
            "headers": {name.replace("_", "-"): [value] for name, value in headers.items()},
            "body": {"string": body},
        },
    }


def test_binary_bodies_and_azure_deployments(tmp_path: Path) -> None:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    }
    request = json.dumps({"messages": [{"role": "user", "content": "hello"}]})
    azure = (
        "https://x.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-12-01"
    )
    cassette = {
        "version": 1,
        "interactions": [
            _interaction(
                azure, request, gzip.compress(json.dumps(completion).encode()), content_encoding="gzip"
            ),
            _interaction(azure, request.encode(), b"\xff\xfe not text"),
            _interaction("https://api.openai.com/v1/chat/completions", request, "<html>busy</html>"),
        ],
    }
    path = tmp_path / "recorded" / "binary.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(cassette))  # bytes become !!binary (base64), as vcrpy writes them
    assert "!!binary" in path.read_text()
    report = CassetteImport()
    (exchange,) = read_exchanges([path], report=report)
    assert _body(exchange)["choices"][0]["message"]["content"] == "hi"
    assert exchange.model == "gpt-4o-mini"  # the deployment in the URL, when nothing else names it
    assert (exchange.agent, exchange.session, exchange.created_at) == (
        "recorded",
        "binary",
        "2023-11-14T22:13:20.000+00:00",
    )
    assert report.skipped == {UNDECODABLE: 1, "chat completions: response body is not JSON": 1}


def test_missing_path_and_not_a_cassette(tmp_path: Path) -> None:
    with pytest.raises(ImportDataError, match="does not exist"):
        list(read_exchanges([tmp_path / "nowhere"]))
    (tmp_path / "settings.yaml").write_text("theme: dark\n")
    report = CassetteImport()
    assert list(read_exchanges([tmp_path], report=report)) == []
    assert report.bad_files == [
        (str(tmp_path / "settings.yaml"), "not a vcrpy cassette: no 'interactions' list at the top")
    ]


def test_cli_prints_what_was_skipped_and_why(folder: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    result = runner.invoke(main, ["import", "cassettes", str(folder), "--db", db])
    assert result.exit_code == 0, result.output
    assert "read 6 cassettes, 9 interactions: 5 chat completions (2 streamed), added 5 new" in result.output
    assert "by response kind: tool_call 3, json 1, text 1\n" in result.output
    assert f"  2  {ANTHROPIC}" in result.output and "error response (HTTP 404)" in result.output
    assert f"bad cassette {folder / BROKEN}: not valid YAML" in result.output
    assert "store: 5 cassettes exchanges" in result.output
    again = runner.invoke(main, ["import", "cassettes", str(folder), "--db", db])
    assert "added 0 new (5 already stored)" in again.output
    missing = runner.invoke(main, ["import", "cassettes", str(tmp_path / "none"), "--db", db])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert "Traceback" not in result.output + missing.output
