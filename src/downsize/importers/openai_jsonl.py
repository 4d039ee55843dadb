"""Import OpenAI-format request/response logs written as JSON Lines, one logged LLM call per line.

The shape is the one NVIDIA's Data Flywheel blueprint asks applications to write, so logs an application
already keeps for it come in unchanged:

    {"timestamp": 1715854074, "workload_id": "tool_router", "client_id": "acme-prod",
     "request": {<the chat.completions.create payload>}, "response": {<the chat.completion returned>}}

`workload_id` (one kind of call: an agent node, a route) becomes the exchange's task hint and `client_id`
(the application or deployment) its agent. Optional `session_id` / `session` fields group a workflow's
calls as the gateway's `X-Downsize-Session` does. A streamed call may be logged with `response` as the
list of `chat.completion.chunk` objects received; it is reassembled into one `chat.completion`.
`timestamp` may be epoch seconds (or milliseconds) or an ISO 8601 string. Files may be gzip-compressed.

Each record's `source_key` is a hash of its canonical JSON, so importing a file twice (or two files that
overlap) adds each call once. A line that is not a valid record stops the import with its line number,
or is skipped and counted with `skip_invalid` (a log cut off mid-line by a crash is the common case).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from downsize.backends.upstream import reassemble_stream
from downsize.errors import ImportDataError
from downsize.shapes import describe_response
from downsize.store import Store
from downsize.types import Exchange

SOURCE = "openai-jsonl"
_ID_MAX = 200  # the store's column width for agent, session, task hint and model
_PROBLEMS_KEPT = 20


@dataclass
class JsonlImport:
    """What an import did: records read (valid ones), exchanges added, lines skipped and why (the first few)."""

    read: int = 0
    added: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def already_stored(self) -> int:
        return self.read - self.added


class InvalidRecord(ValueError):
    """One line is not a usable log record; the message says what is wrong with it."""


def _open(path: Path) -> IO[str]:
    """The file as text, transparently gunzipped (by magic number, not by name)."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    return path.open("r", encoding="utf-8", errors="strict")


def _created_at(value: Any) -> str | None:
    """ISO 8601 (UTC, milliseconds) from epoch seconds, epoch milliseconds or an ISO string; None if absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRecord("'timestamp' must be epoch seconds or an ISO 8601 string, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
        if seconds > 1e11:  # epoch milliseconds: 1e11 s is the year 5138
            seconds /= 1000
        try:
            moment = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidRecord(f"'timestamp' {value!r} is out of range") from exc
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidRecord(f"'timestamp' {value[:40]!r} is not an ISO 8601 date-time") from exc
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    else:
        raise InvalidRecord("'timestamp' must be epoch seconds or an ISO 8601 string")
    return moment.isoformat(timespec="milliseconds")


def _text_field(record: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = record.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidRecord(f"'{name}' must be a string")
        return str(value)[:_ID_MAX]
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _response(value: Any) -> dict[str, Any] | None:
    """The logged response as one chat.completion (chunks reassembled), an error object, or None."""
    if value is None:
        return None
    if isinstance(value, list):
        if not all(isinstance(chunk, dict) for chunk in value):
            raise InvalidRecord("'response' as a list must hold chat.completion.chunk objects")
        events = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in value)
        return reassemble_stream(events)
    if not isinstance(value, dict):
        raise InvalidRecord("'response' must be a chat.completion object (or a list of its chunks)")
    return value


def parse_record(record: Any) -> Exchange:
    """One log record as an Exchange; InvalidRecord says what is wrong with it."""
    if not isinstance(record, dict):
        raise InvalidRecord("a line must hold a JSON object with 'request' and 'response'")
    request = record.get("request")
    if not isinstance(request, dict):
        raise InvalidRecord("'request' is missing or not an object (the chat.completions.create payload)")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRecord("'request.messages' must be a non-empty array of message objects")
    response = _response(record.get("response"))
    status = _int_or_none(record.get("status_code", record.get("status")))
    if status is None and response is not None and "choices" in response:
        status = 200  # a logged completion was a success; a logged error's status is unknown
    kind, names = describe_response(response, status)
    usage = response.get("usage") if response is not None else None
    usage = usage if isinstance(usage, dict) else {}
    model = (response or {}).get("model") or request.get("model")
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    latency = record.get("latency_ms")
    return Exchange(
        request=request,
        response=response,
        created_at=_created_at(record.get("timestamp")),
        source=SOURCE,
        source_key=f"{SOURCE}:{digest}",
        agent=_text_field(record, "client_id"),
        session=_text_field(record, "session_id", "session"),
        task_hint=_text_field(record, "workload_id"),
        model=str(model)[:_ID_MAX] if isinstance(model, str) else None,
        response_kind=kind,
        tool_names=names,
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        latency_ms=float(latency)
        if isinstance(latency, int | float) and not isinstance(latency, bool)
        else None,
        upstream_status=status,
        route="upstream",
        is_hci=kind == "text",
    )


def read_exchanges(
    path: str | Path, skip_invalid: bool = False, report: JsonlImport | None = None
) -> Iterator[Exchange]:
    """Yield one Exchange per record of a JSONL log (blank lines ignored).

    An invalid line raises ImportDataError naming the file and line, unless `skip_invalid`: then it is
    counted (and its problem kept, for the first few) in `report`.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportDataError(
            f"{path} is not a file: point `downsize import openai-jsonl PATH` at a .jsonl log "
            "(one {timestamp, workload_id, client_id, request, response} object per line)"
        )
    report = report if report is not None else JsonlImport()
    try:
        with _open(path) as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    try:
                        record = json.loads(line)
                    except (ValueError, RecursionError) as exc:
                        raise InvalidRecord(f"not valid JSON ({type(exc).__name__}: {exc})"[:200]) from exc
                    exchange = parse_record(record)
                except InvalidRecord as exc:
                    if not skip_invalid:
                        raise ImportDataError(
                            f"{path}, line {number}: {exc}; fix the line, or pass --skip-invalid to skip "
                            "such lines and count them"
                        ) from exc
                    report.skipped += 1
                    if len(report.problems) < _PROBLEMS_KEPT:
                        report.problems.append(f"line {number}: {exc}")
                    continue
                report.read += 1
                yield exchange
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise ImportDataError(
            f"{path} is not UTF-8 JSON Lines text (or a gzip of it): {type(exc).__name__}: {exc}"
        ) from exc


def import_openai_jsonl(
    store: Store, path: str | Path, skip_invalid: bool = False, batch: int = 500
) -> JsonlImport:
    """Import a JSONL log into the store. Idempotent: records already stored are not added again."""
    report = JsonlImport()
    _, report.added = store.add_exchanges_batched(read_exchanges(path, skip_invalid, report), batch)
    return report
