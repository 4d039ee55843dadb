"""Import VCR (vcrpy) YAML cassettes: every recorded OpenAI chat completion becomes one exchange.

Test suites that record their HTTP traffic with vcrpy (pytest-recording, crewAI, LangChain, ...) keep one
YAML file per scenario: `interactions: [{request: {method, uri, body, headers}, response: {status, headers,
body: {string}}}]`. An interaction is imported when it is a POST to a URL ending in `/chat/completions`
(OpenAI, Azure OpenAI deployments, any OpenAI-compatible host) answered 2xx with a JSON body or an SSE
stream; a stream is reassembled into the `chat.completion` it stands for. Every other interaction
(Anthropic Messages, Gemini, the Responses API, embeddings, telemetry, errors, ...) is skipped and counted
by reason, so a user sees what was left out and why. A file that is not a cassette is counted and named.

Bodies come as vcrpy writes them: text, or bytes (YAML `!!binary`, base64) when they were not UTF-8; bytes
are gunzipped or inflated when the response's `content-encoding` (or gzip's magic number) says so.

A session is a cassette (its path relative to the folder imported, without suffix): one recorded scenario,
one workflow. `source_key` is that relative path, the folder's name and the interaction's index, so
importing the same folder again adds nothing; import a folder always from the same root to keep it so.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from downsize.backends.upstream import reassemble_stream, sse_data
from downsize.errors import ImportDataError
from downsize.shapes import describe_response
from downsize.store import Store
from downsize.types import Exchange

SOURCE = "cassettes"
SUFFIXES = (".yaml", ".yml")
_ID_MAX = 200  # the store's column width for agent, session, task hint and model
_AZURE_DEPLOYMENT = re.compile(r"/deployments/([^/?#]+)/")
# libyaml's parser when PyYAML was built with it: the 589 crewAI cassettes (22 MB) parse in 2.2 s with it,
# 27.9 s with the pure-Python SafeLoader (measured on 2 shared cores, 2026-08).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Why an interaction was not imported: the reasons the CLI's table shows.
ANTHROPIC = "Anthropic Messages: not yet supported"
GEMINI = "Gemini generateContent: not yet supported"
RESPONSES = "OpenAI Responses API: not yet supported"
BEDROCK = "Bedrock (Converse / InvokeModel): not yet supported"
OLLAMA = "Ollama native API: not yet supported"
EMBEDDINGS = "embeddings: not a chat call"
FILES = "file uploads: not an LLM call"
TELEMETRY = "telemetry and tracing: not an LLM call"
A2A = "agent-to-agent (A2A JSON-RPC): not an LLM call"
OTHER_HTTP = "other HTTP (tools, web pages, auth, package index): not an LLM call"
MALFORMED = "malformed interaction (no request, response or uri)"
NOT_POST = "chat completions: not a POST"
UNDECODABLE = "chat completions: binary body that is not gzip/deflate UTF-8 text"
BAD_REQUEST = "chat completions: request body is not a JSON chat payload with messages"
NOT_JSON = "chat completions: response body is not JSON"
NO_CHOICES = "chat completions: response holds no choices"


def error_reason(status: int) -> str:
    """The skip reason of a chat completion answered with a non-2xx status (errors are not imported)."""
    return f"chat completions: error response (HTTP {status})"


@dataclass
class CassetteImport:
    """What an import did: files and interactions read, chat completions imported, the rest and why."""

    files: int = 0
    interactions: int = 0
    read: int = 0
    added: int = 0
    streamed: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    bad_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def already_stored(self) -> int:
        return self.read - self.added


class _Skip(Exception):
    """An interaction is not an importable chat completion; the message is the reason counted."""


def _headers(message: dict[str, Any]) -> dict[str, list[str]]:
    """vcrpy's headers (name -> list of values, any case) with lower-case names."""
    raw = message.get("headers")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, list[str]] = {}
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        out[str(name).lower()] = [str(v) for v in values]
    return out


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0].strip().lower() if values else ""


def _text(body: Any, encoding: str) -> str | None:
    """A recorded body as text: bytes gunzipped/inflated as `encoding` (or the gzip magic) says, then UTF-8."""
    if isinstance(body, dict):  # responses keep it under 'string'
        body = body.get("string")
    if body is None or isinstance(body, str):
        return body
    if not isinstance(body, bytes):
        raise _Skip(UNDECODABLE)
    try:
        if body[:2] == b"\x1f\x8b" or encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        return body.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise _Skip(UNDECODABLE) from exc


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def skip_reason(method: str, uri: str, request_body: Any) -> str | None:
    """Why an interaction is not a chat completion to import, from its method and URL; None if it may be one."""
    parts = urlsplit(uri)
    host, path = parts.netloc.lower(), parts.path.rstrip("/")
    if path.endswith("/chat/completions"):
        return None if method == "POST" else NOT_POST
    if path.endswith(("/files", "/uploads")):
        return FILES
    if "anthropic.com" in host or path.endswith("/v1/messages"):
        return ANTHROPIC
    if "bedrock" in host or path.endswith(("/converse", "/converse-stream", "/invoke")):
        return BEDROCK
    if ":generatecontent" in path.lower() or ":streamgeneratecontent" in path.lower():
        return GEMINI
    if path.endswith("/responses"):
        return RESPONSES
    if "embed" in path.lower():  # OpenAI /embeddings, Gemini :embedContent, Vertex embedding models
        return EMBEDDINGS
    if path.startswith("/api/") and host.endswith(":11434"):
        return OLLAMA
    if (
        "telemetry" in host
        or "agentops" in host
        or "scarf" in host
        or "/tracing" in path
        or path.endswith("/v1/traces")
    ):
        return TELEMETRY
    if path.endswith("/agent-card.json") or '"jsonrpc"' in str(request_body)[:200]:
        return A2A
    return OTHER_HTTP


def _created_at(headers: dict[str, list[str]], response: dict[str, Any]) -> str | None:
    """ISO 8601 (UTC, milliseconds) from the recorded `date` header, else the completion's `created`."""
    moment: datetime | None = None
    if headers.get("date"):
        try:
            moment = parsedate_to_datetime(headers["date"][0])
        except (TypeError, ValueError, IndexError):
            moment = None
    created = response.get("created")
    if moment is None and isinstance(created, int | float) and not isinstance(created, bool) and created > 0:
        try:
            moment = datetime.fromtimestamp(created, UTC)
        except (OverflowError, OSError, ValueError):
            moment = None
    if moment is None:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _latency_ms(headers: dict[str, list[str]]) -> float | None:
    """OpenAI's `openai-processing-ms`: the upstream's own time on the call (the only latency recorded)."""
    try:
        return float(headers["openai-processing-ms"][0])
    except (KeyError, IndexError, ValueError):
        return None


def _fill_stream_ids(body: dict[str, Any], text: str) -> None:
    """Fill id, created and model left empty by a stream's first chunk from the first chunk that has them.

    Azure's first chunk (prompt filter results) carries `"id": ""`, `"created": 0`, `"model": ""`, and
    reassembly keeps the first value it sees.
    """
    missing = [key for key in ("id", "created", "model") if not body.get(key)]
    for payload in sse_data(text.encode("utf-8")) if missing else []:
        chunk = _json(payload)
        if isinstance(chunk, dict):
            for key in [k for k in missing if chunk.get(k)]:
                body[key] = chunk[key]
                missing.remove(key)
        if not missing:
            break


def parse_interaction(
    interaction: Any, source: str, source_key: str, agent: str | None, session: str | None
) -> tuple[Exchange, bool]:
    """One recorded interaction as an Exchange and whether it was streamed; _Skip says why it cannot be."""
    if not isinstance(interaction, dict):
        raise _Skip(MALFORMED)
    request, response = interaction.get("request"), interaction.get("response")
    if (
        not isinstance(request, dict)
        or not isinstance(response, dict)
        or not isinstance(request.get("uri"), str)
    ):
        raise _Skip(MALFORMED)
    reason = skip_reason(str(request.get("method", "")).upper(), request["uri"], request.get("body"))
    if reason is not None:
        raise _Skip(reason)
    status_field = response.get("status")
    status = _int_or_none(status_field.get("code") if isinstance(status_field, dict) else status_field)
    if status is None or not 200 <= status < 300:
        raise _Skip(error_reason(status) if status is not None else MALFORMED)
    payload = _json(_text(request.get("body"), ""))
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
        raise _Skip(BAD_REQUEST)
    headers = _headers(response)
    text = _text(response.get("body"), _first(headers, "content-encoding"))
    streamed = "text/event-stream" in _first(headers, "content-type") or (text or "").lstrip().startswith(
        "data:"
    )
    body = reassemble_stream(text.encode("utf-8")) if streamed and text else _json(text)
    if not isinstance(body, dict):
        raise _Skip(NOT_JSON)
    if not isinstance(body.get("choices"), list) or not body["choices"]:
        raise _Skip(NO_CHOICES)
    if streamed and text:
        _fill_stream_ids(body, text)
    kind, names = describe_response(body, status)
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    deployment = _AZURE_DEPLOYMENT.search(request["uri"])
    model = body.get("model") or payload.get("model") or (deployment.group(1) if deployment else None)
    exchange = Exchange(
        request=payload,
        response=body,
        created_at=_created_at(headers, body),
        source=source,
        source_key=source_key,
        agent=agent,
        session=session,
        model=str(model)[:_ID_MAX] if isinstance(model, str) else None,
        response_kind=kind,
        tool_names=names,
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        latency_ms=_latency_ms(headers),
        upstream_status=status,
        route="upstream",
        is_hci=kind == "text",
    )
    return exchange, streamed


def load_cassette(path: Path) -> list[Any]:
    """The interactions of one cassette file; ImportDataError says what is wrong with it."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except UnicodeDecodeError as exc:
        raise ImportDataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ImportDataError(f"not valid YAML: {exc.problem or exc.context}{where}") from exc
    except (yaml.YAMLError, ValueError, RecursionError, OSError) as exc:
        raise ImportDataError(
            f"not readable YAML ({type(exc).__name__}: {' '.join(str(exc).split())})"[:200]
        ) from exc
    if isinstance(data, list):  # vcrpy's format before version 1: the interactions themselves
        return data
    if isinstance(data, dict) and isinstance(data.get("interactions"), list):
        return list(data["interactions"])
    raise ImportDataError("not a vcrpy cassette: no 'interactions' list at the top")


def cassette_files(path: Path) -> tuple[Path, list[Path]]:
    """The folder keys and sessions are relative to, and the cassettes under `path` (itself, if a file)."""
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        return path, files
    raise ImportDataError(
        f"{path} does not exist: point `downsize import cassettes PATH` at a folder of vcrpy cassettes "
        "(*.yaml) or at cassette files"
    )


def read_exchanges(
    paths: Iterable[str | Path],
    agent: str | None = None,
    source: str = SOURCE,
    report: CassetteImport | None = None,
) -> Iterator[Exchange]:
    """Yield one Exchange per imported chat completion of every cassette under `paths`, counting the rest.

    `agent` defaults to the name of the folder imported (a file's parent folder). A path that does not
    exist raises ImportDataError before anything is read; a bad cassette is counted and named in `report`.
    """
    report = report if report is not None else CassetteImport()
    roots = [cassette_files(Path(p)) for p in paths]
    for root, files in roots:
        name = root.resolve().name
        who = (agent or name)[:_ID_MAX]
        for file in files:
            relative = file.relative_to(root).as_posix()
            report.files += 1
            try:
                interactions = load_cassette(file)
            except ImportDataError as exc:
                report.bad_files.append((str(file), str(exc)))
                continue
            session = relative.rsplit(".", 1)[0][:_ID_MAX]
            for index, interaction in enumerate(interactions):
                report.interactions += 1
                key = f"{source}:{name}/{relative}#{index}"
                try:
                    exchange, streamed = parse_interaction(interaction, source, key, who, session)
                except _Skip as skip:
                    report.skipped[str(skip)] += 1
                    continue
                report.read += 1
                report.streamed += streamed
                report.kinds[exchange.response_kind or "empty"] += 1
                yield exchange


def import_cassettes(
    store: Store,
    paths: Iterable[str | Path],
    agent: str | None = None,
    source: str = SOURCE,
    batch: int = 500,
) -> CassetteImport:
    """Import the chat completions of vcrpy cassettes into the store. Idempotent per folder imported."""
    report = CassetteImport()
    _, report.added = store.add_exchanges_batched(read_exchanges(paths, agent, source, report), batch)
    return report
