"""Logging set-up on the standard library: one handler on the root logger, text or JSON lines.

text: `2026-01-26T08:00:00.123Z INFO    monitor.worker: polled chart=apple/us/top_free/iphone/all`
json: `{"ts": "...", "level": "INFO", "logger": "monitor.worker", "msg": "polled", "chart": ...}`

Fields passed with `extra={...}` become `key=value` pairs (text) or top-level keys (json);
exception text goes under `exc`. Timestamps are UTC. In text, the message and the values are
one line each whatever they hold: control characters (a newline, an escape sequence) are shown
escaped (`\\n`, `\\x1b`), so store-supplied text can neither forge a line nor drive a terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Literal, TextIO

from monitor.output import printable

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# At INFO these log every request (httpx, uvicorn.access) or every job run (apscheduler, each
# tick): the service's own lines would drown. DEBUG lets them through for troubleshooting.
NOISY_LOGGERS = ("httpx", "apscheduler", "uvicorn.access")

# Attributes every LogRecord has; anything else on a record came from `extra=`. uvicorn adds
# `color_message`, its message again with terminal colour codes: not a field anyone wants.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_CORE_KEYS = ("ts", "level", "logger", "msg", "exc", "stack")


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            # An extra must not overwrite a core field a log shipper relies on.
            payload[f"extra_{key}" if key in _CORE_KEYS else key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def _text_value(value: object) -> str:
    text = str(value)
    if not text or not text.isprintable() or any(c.isspace() or c in '"=' for c in text):
        # json.dumps escapes control characters: a value cannot end the line or drive the
        # terminal (JSON leaves U+2028 and bidirectional overrides alone, `printable` not).
        return printable(json.dumps(text, ensure_ascii=False))
    return text


class TextFormatter(logging.Formatter):
    """One line per record for people; the traceback, if any, on the lines after it."""

    def format(self, record: logging.LogRecord) -> str:
        # Messages carry store-supplied text (app names, feed errors): escaped, a name holding
        # a newline cannot forge a log line of its own, nor an escape sequence drive a terminal.
        message = printable(record.getMessage())
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {message}"
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in _extras(record).items())
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class _MonitorHandler(logging.StreamHandler[TextIO]):
    """Marks the handler this module installed, so a second call replaces it."""


def configure_logging(
    fmt: Literal["text", "json"], level: str, stream: TextIO | None = None
) -> None:
    """Send every log record at `level` or above to `stream` (default: stderr) as `fmt`."""
    name = level.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    handler = _MonitorHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _MonitorHandler)]:
        root.removeHandler(existing)
        existing.close()
    root.addHandler(handler)
    root.setLevel(name)
    for noisy in NOISY_LOGGERS:
        # NOTSET (inherit the root level) rather than DEBUG, so a later call at INFO quiets
        # them again.
        logging.getLogger(noisy).setLevel(logging.NOTSET if name == "DEBUG" else logging.WARNING)
