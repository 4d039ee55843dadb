"""Structured logs for the gateway: one JSON object per line, with anything that looks like a key masked.

The gateway never puts a key in a log message on purpose; the masking is the second line of defence, for
a library's message or exception text that might echo one (`Bearer ...`, `sk-...`, `api-key: ...`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_SECRET = re.compile(
    r"(?i)(bearer\s+|api[-_]?key[\"':=\s]+|authorization[\"':=\s]+)[^\s\"',;]+"
    r"|\b(sk|rk|pk)-[A-Za-z0-9_\-]{8,}"
)
# Attributes every LogRecord has; anything else on a record came in through `extra=` and is logged too.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured duplicate of msg
}


def mask_secrets(text: str) -> str:
    """The text with bearer tokens, api keys and `sk-...` style keys replaced by `***`."""
    return _SECRET.sub(lambda m: (m.group(1) or "") + "***", text)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra, "exc"}` on one line, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = mask_secrets(value) if isinstance(value, str) else value
        if record.exc_info:
            payload["exc"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(payload, default=str, ensure_ascii=False)


class MaskingFormatter(logging.Formatter):
    """The plain text format, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Send every log record of the process (uvicorn's included) to stderr in `fmt` (json or text)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
