"""Request bodies read with limits: at most so many bytes (413 as soon as the limit is
passed, never after buffering the rest), within so many seconds (408), however slowly the
client sends. Both answers close the connection."""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.requests import ClientDisconnect

from cds.errors import InvalidRequest, RequestTimeout, RequestTooLarge, UnsupportedEncoding
from cds.settings import Settings

# Feedback is a few items (at most 100, each comment at most 4,000 characters).
FEEDBACK_MAX_BYTES = 1024 * 1024

# The media types a web page may POST to another origin without a CORS preflight: never
# JSON, refused so that no page can make the service evaluate (and record) a call; a
# missing Content-Type, application/json and application/fhir+json are read.
NOT_JSON_MEDIA_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)


# UTF-8, and ASCII (a subset of it); an empty charset says nothing
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii", ""})


def check_content_type(value: str | None) -> None:
    """UnsupportedEncoding (415) for a body labelled as a form or text, or in a charset
    other than UTF-8 (JSON is UTF-8: RFC 8259 section 8.1)."""
    if not value:
        return
    media_type, _, parameters = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type in NOT_JSON_MEDIA_TYPES:
        raise UnsupportedEncoding(
            f"Content-Type {media_type!r} is not read: send the body as application/json"
        )
    for parameter in parameters.split(";"):
        name, _, charset = parameter.partition("=")
        charset = charset.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in UTF8_CHARSETS:
            raise UnsupportedEncoding(
                f"charset {charset!r} is not read: send the JSON body in UTF-8"
            )


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


async def read_body(request: Request, settings: Settings, limit: int | None = None) -> bytes:
    """The body of `request`, at most `limit` bytes (default CRS_MAX_REQUEST_BYTES), all
    of it within CRS_BODY_TIMEOUT_SECONDS."""
    if limit is None:
        limit = settings.max_request_bytes
        why = (
            f"({_size(limit)}, setting CRS_MAX_REQUEST_BYTES): send fewer resources (the "
            "prefetch templates ask only for what the rules read), or ask the service's "
            "operator to raise the limit"
        )
    else:
        why = f"({_size(limit)} for this endpoint)"
    check_content_type(request.headers.get("content-type"))
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # (read as it came, a compressed body is "not valid JSON"; a plain one labelled
        # compressed would be read against its label)
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
        )
    too_large = RequestTooLarge(f"the request body is larger than this service accepts {why}")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large  # refused before any of it is read
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the request body did not arrive within {settings.body_timeout_seconds:g} s "
            "(setting CRS_BODY_TIMEOUT_SECONDS)"
        ) from exc
    except ClientDisconnect as exc:
        raise InvalidRequest("the client closed the connection before sending its body") from exc
    return b"".join(chunks)
