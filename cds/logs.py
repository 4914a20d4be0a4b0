"""Logs: one JSON object a line on stderr, with a fixed list of fields that carry no
patient data (service, hookInstance, counts, timings, rule version, error types and
code locations). Configured in the serving process and in every worker."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FIELDS = (
    "service",
    "hookInstance",
    "cards",
    "grades",
    "ruleSetVersion",
    "ms",
    "query",
    "error",
    "frames",
    "unconfirmed",
    "reason",
)


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the allowed extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
