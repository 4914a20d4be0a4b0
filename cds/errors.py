"""Domain errors, raised where the problem is found and mapped to HTTP once, in app.py."""

from __future__ import annotations


class CdsError(Exception):
    """Base of the errors a client caused; `status` is the HTTP status app.py answers."""

    status = 400

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location


class InvalidRequest(CdsError):
    """The request body is malformed (400)."""

    status = 400


class UnknownService(CdsError):
    """No CDS service with that id (404)."""

    status = 404


class PrefetchUnavailable(CdsError):
    """Data needed is neither in prefetch nor obtainable from fhirServer (412)."""

    status = 412


class Unauthenticated(CdsError):
    """The client's JWT is missing or fails a check (401); `reason` names the check."""

    status = 401

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RequestTooLarge(CdsError):
    """The request is larger than the service takes (413); the connection is closed."""

    status = 413


class TooManyDraftOrders(CdsError):
    """More draft orders in one call than the service checks (413)."""

    status = 413


class UnsupportedEncoding(CdsError):
    """A request body in a content coding or media type the service does not read (415)."""

    status = 415


class RequestTimeout(CdsError):
    """The client did not send its request in time (408); the connection is closed."""

    status = 408


# What of a client's identifier an error repeats: enough to recognise it, never a page.
SHOWN_MAX_CHARS = 200


def shown(value: str) -> str:
    """`value` quoted for an error message, cut at SHOWN_MAX_CHARS characters."""
    if len(value) <= SHOWN_MAX_CHARS:
        return repr(value)
    return f"{value[:SHOWN_MAX_CHARS]!r}… ({len(value)} characters)"


def not_json(what: str, body: bytes, exc: Exception) -> str:
    """Why `body`, which the JSON parser refused with `exc`, is not JSON: where its UTF-8
    breaks (orjson says "surrogates not allowed" at column 1 for any bad byte), else the
    parser's message."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"{what} is not valid UTF-8: byte {bad.start} (0x{body[bad.start]:02x}) {bad.reason}"
    return f"{what} is not valid JSON: {exc}"
