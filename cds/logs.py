"""Logs: one JSON object a line on stderr, with a fixed list of fields that carry no
patient data (service, hookInstance, counts, timings, rule version, error types and
code locations). Configured in the serving process and in every worker.

Other libraries log what they handle: httpx the URLs it requests (which hold patient
ids), httpcore the headers it sends and receives (the bearer token, `Content-Location:
…/Patient/<id>`), SQLAlchemy its statements and parameters, uvicorn client addresses.
Their records are therefore kept only from WARNING up, whatever the level, and written as
their message template without its arguments (first line only; exceptions by type)."""

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
    # the watch (cds/watch/): which worker, what kind of event, how many (never who)
    "worker",
    "event",
    "count",
    "port",
)
# Libraries whose records never get below WARNING (so they are not even made at DEBUG).
QUIET_LOGGERS = (
    "httpx",
    "httpcore",
    "h11",
    "hpack",
    "sqlalchemy",
    "alembic",
    "uvicorn",
    "asyncio",
    "multipart",
    "python_multipart",
    "watchfiles",
)
THIRD_PARTY_MESSAGE_CHARS = 200


def ours(record: logging.LogRecord) -> bool:
    """Whether the record comes from this service's code (logger `cds` or below)."""
    return record.name == "cds" or record.name.startswith("cds.")


class ThirdPartyFilter(logging.Filter):
    """Drops what other libraries log below WARNING (at DEBUG they log URLs, headers,
    statements), whatever level their loggers are set to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return ours(record) or record.levelno >= logging.WARNING


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the allowed extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage() if ours(record) else _template(record),
        }
        if ours(record):
            for name in LOG_FIELDS:
                if hasattr(record, name):
                    entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry)


def _template(record: logging.LogRecord) -> str:
    """A third-party record's message without the values put into it."""
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    return template.split("\n", 1)[0][:THIRD_PARTY_MESSAGE_CHARS]


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(ThirdPartyFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
