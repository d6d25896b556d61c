"""Structured logs: one JSON object per line, through the standard ``logging`` module.

A record's fields are passed as ``extra={"fields": {...}}``; the line is ``{"time", "level", "logger", "event",
...fields}``. Text values are masked (``masking.mask_text``) on the way out, so an e-mail address or phone number
that slips into a message (a campaign file's error, a driver's message) never reaches the log unmasked.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from orchestrator.masking import mask_text

LOGGER_NAME = "orchestrator"


class JsonFormatter(logging.Formatter):
    """``{"time": ISO 8601 UTC, "level", "logger", "event": the message, **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _masked(record.getMessage()),
        }
        line.update({key: _masked(value) for key, value in getattr(record, "fields", {}).items()})
        if record.exc_info:
            line["error"] = _masked(f"{record.exc_info[0].__name__}: {record.exc_info[1]}")
        return json.dumps(line, ensure_ascii=False, default=_json_value)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def configure_json_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send the package's logs as JSON lines to ``log_file`` (appended) or to stderr; returns the handler (the
    caller removes it when done, so in-process callers such as tests do not pile handlers up)."""
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    logging.getLogger(LOGGER_NAME).removeHandler(handler)
    handler.close()
