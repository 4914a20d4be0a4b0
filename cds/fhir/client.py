"""Read from the EHR's FHIR server: searches that follow `next` links, reads, one deadline.

Used by the service's prefetch fallback (cds/fhir/gather.py) and by the `crs-cds` tools.
Every failure becomes a `FhirQueryFailed` that says which query failed and why in words
that carry no patient data and never the access token: the query is named by its label
("Observation search"), not by its URL, because the URL holds the patient id.

One `httpx.AsyncClient` (one connection pool) is shared by every request of the running
service; `http_client()` creates it lazily, one per event loop, and `close_http_clients()`
closes them at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx
import orjson

# httpx logs every request URL at INFO, and these URLs hold patient ids: keep them out
# (cds.logs also drops what third-party loggers say below WARNING).
logging.getLogger("httpx").setLevel(logging.WARNING)
log = logging.getLogger("cds.fhir.client")

FHIR_JSON = "application/fhir+json"
MAX_PAGES = 100  # a search that pages further is a server bug, not data we need
MAX_QUERY_BYTES = 16 * 1024 * 1024  # defaults of CRS_FHIR_MAX_QUERY_BYTES / …_REQUEST_BYTES
MAX_REQUEST_BYTES = 32 * 1024 * 1024
# Bodies are inflated in slices of this size, so that a small compressed answer that
# inflates to gigabytes is stopped at the cap, never held whole.
INFLATE_SLICE = 64 * 1024
# What the service decodes itself (bounded); an answer in any other coding is refused.
ACCEPT_ENCODING = "gzip, deflate"

# FHIR R4 id (http://hl7.org/fhir/R4/datatypes.html#id); "." and ".." match it but are
# path segments that climb, never ids.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
DOT_SEGMENTS = frozenset({".", ".."})


def is_fhir_id(value: str) -> bool:
    """Whether `value` may stand as one path segment of a FHIR URL (a FHIR id, and not a
    dot segment)."""
    return FHIR_ID.fullmatch(value) is not None and value not in DOT_SEGMENTS


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def http_client() -> httpx.AsyncClient:
    """The shared client of the running event loop (created on first use).

    No redirects (a redirect could leave the allow-listed server) and no proxy settings
    from the environment (the allow-list is about where the service connects).
    """
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            headers={"Accept": FHIR_JSON, "Accept-Encoding": ACCEPT_ENCODING},
        )
        _clients[loop] = client
    return client


async def close_http_clients() -> None:
    """Close the shared client of the running event loop (call at application shutdown)."""
    loop = asyncio.get_running_loop()
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()


def normalise_base_url(url: str) -> str:
    """A FHIR base URL without its trailing slash(es)."""
    return url.strip().rstrip("/")


def allowed_base_url(server: str, allowed: Sequence[str]) -> str | None:
    """`server` normalised if it is exactly one of the `allowed` base URLs, else None."""
    wanted = normalise_base_url(server)
    return wanted if wanted in {normalise_base_url(a) for a in allowed} else None


def split_query(relative: str) -> tuple[str, list[tuple[str, str]]]:
    """`Observation?patient=1&code=a|b` → ("Observation", [("patient", "1"), ("code", "a|b")]).

    Values are percent-decoded (but `+` stays a plus), so that httpx encodes them once.
    """
    path, _, query = relative.partition("?")
    params: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.append((unquote(name), unquote(value)))
    return path.strip("/"), params


_TOKEN = re.compile(r"\{\{\s*([A-Za-z][\w.]*)\s*\}\}")


class TemplateError(ValueError):
    """A prefetch template names a token that the hook's context does not provide."""


def resolve_template(
    template: str, context: Mapping[str, Any], value_pattern: re.Pattern[str] | None = None
) -> str:
    """Fill a CDS Hooks prefetch template from the hook context.

    Supports `{{context.<field>}}` and the user tokens `{{userPractitionerId}}`,
    `{{userPractitionerRoleId}}`, `{{userPatientId}}`, `{{userRelatedPersonId}}`
    (taken from `context.userId`, e.g. `Practitioner/123`). With `value_pattern`, every
    value must match it in full (e.g. a FHIR id), so that no value can change the path.
    """
    user = context.get("userId")
    user_type, _, user_id = user.partition("/") if isinstance(user, str) else ("", "", "")

    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        found: str | None = None
        if token.startswith("context."):
            item = context.get(token.removeprefix("context."))
            if isinstance(item, str | int) and str(item):
                found = str(item)
        elif user_id and token == f"user{user_type}Id":
            found = user_id
        if found is None:
            raise TemplateError(f"token {{{{{token}}}}} has no value in this hook's context")
        if found in DOT_SEGMENTS or (
            value_pattern is not None and not value_pattern.fullmatch(found)
        ):
            raise TemplateError(f"the value of {{{{{token}}}}} is not a FHIR id")
        return found

    return _TOKEN.sub(value, template)


class FhirQueryFailed(Exception):
    """A query to the FHIR server failed; `str()` names the query and the reason."""

    def __init__(self, label: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{label} failed: {reason}")
        self.label = label
        self.reason = reason
        self.status = status  # the server's HTTP status, when it answered with an error


@dataclass(frozen=True)
class FhirQuery:
    """One read (`Patient/123`) or search (`Observation` + params) against the server."""

    label: str  # how messages name it: "Observation search for prefetch 'observations'"
    path: str  # relative to the base URL
    params: tuple[tuple[str, str], ...] = ()
    search: bool = True
    expect: str | None = None  # the resourceType a read must return
    first_page_only: bool = False  # e.g. `_sort=-date&_count=1`: the latest one is enough

    @classmethod
    def read(cls, label: str, resource_type: str, resource_id: str) -> FhirQuery:
        """A read of `resource_type/resource_id`; FhirQueryFailed when the id is not a FHIR
        id (so that no value can change the path the URL is built with)."""
        if not is_fhir_id(resource_id):
            raise FhirQueryFailed(label, "the id is not a FHIR id ([A-Za-z0-9-.], 1-64)")
        return cls(label, f"{resource_type}/{resource_id}", search=False, expect=resource_type)


class _QueryBytes:
    """The bytes one query (a read, or a search with all its pages) has read, against the
    cap per query and the reader's cap for the whole request."""

    def __init__(self, reader: FhirReader, label: str) -> None:
        self.reader = reader
        self.label = label
        self.read = 0

    def room(self) -> int:
        """How many more bytes this query may read."""
        reader = self.reader
        return min(reader.max_query_bytes - self.read, reader.max_request_bytes - reader.bytes_read)

    def take(self, size: int) -> None:
        """Count `size` bytes read, or FhirQueryFailed naming the cap they would pass."""
        reader = self.reader
        self.read += size
        reader.bytes_read += size
        if self.read > reader.max_query_bytes:
            raise self.over_query_cap()
        if reader.bytes_read > reader.max_request_bytes:
            raise FhirQueryFailed(
                self.label,
                f"the answers to this request's queries are larger than "
                f"{_size(reader.max_request_bytes)}, the cap per request "
                "(setting CRS_FHIR_MAX_REQUEST_BYTES)",
            )

    def over_query_cap(self) -> FhirQueryFailed:
        """The failure of a query whose answer passes the cap per query."""
        return FhirQueryFailed(
            self.label,
            f"the answer is larger than {_size(self.reader.max_query_bytes)}, the cap per "
            "query (setting CRS_FHIR_MAX_QUERY_BYTES)",
        )


def _size(n: int) -> str:
    """1048576 -> "1 MiB", 1500 -> "1500 bytes"."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


class _Inflater:
    """A body's content coding undone in bounded slices (identity, gzip, deflate)."""

    def __init__(self, label: str, coding: str) -> None:
        self.label = label
        self.coding = coding
        self._zlib: Any = None
        self._first = True
        if coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._zlib = zlib.decompressobj()
        elif coding not in ("", "identity"):
            raise FhirQueryFailed(
                label, f"the answer is in a coding not supported ({coding[:40]!r})"
            )

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of `data`, at most INFLATE_SLICE at a time."""
        if self._zlib is None:
            yield data
            return
        try:
            while True:
                out = self._decompress(data)
                data = self._zlib.unconsumed_tail
                if out:
                    yield out
                if not data and len(out) < INFLATE_SLICE:
                    return
        except zlib.error as exc:
            raise FhirQueryFailed(self.label, f"the {self.coding} answer is corrupt") from exc

    def _decompress(self, data: bytes) -> bytes:
        if not self._first:
            return bytes(self._zlib.decompress(data, INFLATE_SLICE))
        self._first = False
        try:
            return bytes(self._zlib.decompress(data, INFLATE_SLICE))
        except zlib.error:
            if self.coding != "deflate":
                raise
            # "deflate" is sent raw by some servers (without the zlib wrapper), as httpx knows
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return bytes(self._zlib.decompress(data, INFLATE_SLICE))


@dataclass
class FhirReader:
    """Reads and searches on one FHIR server with one token and a per-request timeout."""

    http: httpx.AsyncClient
    base_url: str
    token: str | None = None
    request_timeout: float = 3.0
    max_pages: int = MAX_PAGES
    max_query_bytes: int = MAX_QUERY_BYTES
    max_request_bytes: int = MAX_REQUEST_BYTES
    pages: dict[str, int] = field(default_factory=dict)  # label -> pages read (for tests)
    bytes_read: int = 0  # by every query of this reader (one hook call's)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _get(
        self,
        spent: _QueryBytes,
        url: str,
        params: Sequence[tuple[str, str]] | None,
    ) -> dict[str, Any]:
        """The JSON object at `url`, read as a stream within `request_timeout` (however
        slowly it drips) and within the byte caps (however large, or inflated)."""
        label = spent.label
        try:
            async with asyncio.timeout(self.request_timeout):
                async with self.http.stream(
                    "GET",
                    url,
                    params=list(params) if params else None,
                    headers=self._headers(),
                    timeout=self.request_timeout,
                ) as response:
                    if response.status_code != 200:
                        raise FhirQueryFailed(
                            label,
                            _status_reason(response.status_code, self.token),
                            response.status_code,
                        )
                    body = await _read_body(spent, response)
        except TimeoutError as exc:
            raise FhirQueryFailed(label, f"timed out after {self.request_timeout:g} s") from exc
        except httpx.TimeoutException as exc:
            raise FhirQueryFailed(label, f"timed out after {self.request_timeout:g} s") from exc
        except httpx.ConnectError as exc:
            raise FhirQueryFailed(label, "could not connect to the FHIR server") from exc
        except httpx.HTTPError as exc:
            # The exception text can hold the URL (and with it the patient id): name its type.
            raise FhirQueryFailed(label, f"HTTP error ({type(exc).__name__})") from exc
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FhirQueryFailed(label, "the answer is not JSON") from exc
        if not isinstance(parsed, dict):
            raise FhirQueryFailed(label, "the answer is not a FHIR resource (not a JSON object)")
        return parsed

    async def read(self, query: FhirQuery) -> dict[str, Any]:
        """The resource read by `query`."""
        spent = _QueryBytes(self, query.label)
        body = await self._get(spent, f"{self.base_url}/{query.path}", query.params)
        found = body.get("resourceType")
        if query.expect and found != query.expect:
            raise FhirQueryFailed(query.label, f"expected a {query.expect}, got {found!r}")
        return body

    async def search(self, query: FhirQuery) -> list[dict[str, Any]]:
        """Every entry of every page of the search (outcome entries included; readers skip
        them), following `next` links as given by the server."""
        return await self._pages(
            query.label, f"{self.base_url}/{query.path}", query.params, query.first_page_only
        )

    async def rest_of(self, label: str, next_url: str) -> list[dict[str, Any]]:
        """The entries of a search from its `next` link on (a prefetch Bundle the client
        sent with its first page only). The link must lead back into this server."""
        return await self._pages(label, self.within(label, next_url), None, False)

    async def _pages(
        self,
        label: str,
        url: str | None,
        params: Sequence[tuple[str, str]] | None,
        first_page_only: bool,
    ) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        pages = 0
        spent = _QueryBytes(self, label)  # every page of the search counts
        while url is not None:
            pages += 1
            if pages > self.max_pages:
                raise FhirQueryFailed(label, f"more than {self.max_pages} pages")
            bundle = await self._get(spent, url, params)
            if bundle.get("resourceType") != "Bundle":
                raise FhirQueryFailed(
                    label, f"expected a Bundle, got {bundle.get('resourceType')!r}"
                )
            page_entries = bundle.get("entry", [])
            if not isinstance(page_entries, list):
                raise FhirQueryFailed(label, "Bundle.entry is not an array")
            entries.extend(page_entries)
            if first_page_only:
                break
            url, params = self._next(label, bundle), None
        self.pages[label] = pages
        return entries

    def within(self, label: str, href: str) -> str:
        """`href` made absolute against the base URL, its dot segments resolved, if it
        stays under the base URL; else FhirQueryFailed (a link elsewhere must never
        receive the bearer token). The URL returned is the resolved one, so that what is
        fetched is what was checked."""
        outside = FhirQueryFailed(label, "the next-page link points outside fhirServer")
        link = urlsplit(urljoin(self.base_url + "/", href))
        base = urlsplit(self.base_url)
        if (link.scheme.lower(), link.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
            raise outside
        path = _resolved_path(link.path)
        root = _resolved_path(base.path)
        if path is None or root is None:
            raise outside
        root = root.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            raise outside
        return urlunsplit((base.scheme, base.netloc, path, link.query, ""))

    def _next(self, label: str, bundle: Mapping[str, Any]) -> str | None:
        links = bundle.get("link", [])
        if not isinstance(links, list):
            return None
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next":
                href = link.get("url")
                if not isinstance(href, str) or not href:
                    return None
                return self.within(label, href)
        return None


async def _read_body(spent: _QueryBytes, response: httpx.Response) -> bytearray:
    """The decoded body, read chunk by chunk and counted against the caps as it comes
    (the bytes on the wire and the bytes they inflate to, each)."""
    label = spent.label
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > spent.room():
        spent.take(int(length))  # refused before reading any of it
    inflater = _Inflater(label, response.headers.get("Content-Encoding", "").strip().lower())
    wire = 0
    body = bytearray()
    chunks: AsyncIterator[bytes] = response.aiter_raw()
    try:
        async for chunk in chunks:
            wire += len(chunk)
            if wire > spent.reader.max_query_bytes:
                raise spent.over_query_cap()  # compressed, yet endless (or inflating to nothing)
            for piece in inflater.feed(chunk):
                spent.take(len(piece))
                body += piece
    except BaseException:
        # freed now, not when the exception's traceback (which holds this frame) goes
        body.clear()
        raise
    return body


def _resolved_path(path: str) -> str | None:
    """A URL path with its dot segments removed (RFC 3986, 5.2.4), percent-encoded dots
    read as dots; None for a path that a server could read as climbing in other ways (an
    encoded slash or a backslash)."""
    lowered = path.lower()
    if "\\" in path or "%2f" in lowered or "%5c" in lowered:
        return None
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments):
        # "..;x" is ".." to some servers (path parameters): read it as such
        bare = segment.split(";", 1)[0].replace("%2e", ".").replace("%2E", ".")
        last = i == len(segments) - 1
        if bare == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        elif bare == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    resolved = "/".join(out)
    return resolved if resolved.startswith("/") or not resolved else "/" + resolved


def _status_reason(status: int, token: str | None) -> str:
    phrase = _PHRASES.get(status, "")
    text = f"HTTP {status}{' ' + phrase if phrase else ''}"
    if status == 401:
        text += (
            ": the FHIR server refused the access token"
            if token
            else ": the FHIR server wants a token and the request has no fhirAuthorization"
        )
    elif status == 403:
        text += ": the access token does not allow this read"
    return text


_PHRASES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class QueriesTimedOut(Exception):
    """The overall deadline passed; `labels` are the queries still running, `results`
    those that had finished."""

    def __init__(self, labels: list[str], seconds: float, results: dict[str, Any]) -> None:
        super().__init__(f"{', '.join(labels)} timed out after {seconds:g} s")
        self.labels = labels
        self.seconds = seconds
        self.results = results


async def best_effort(search: Awaitable[list[Any]], label: str, seconds: float) -> list[Any]:
    """A search whose failure, or lateness past `seconds`, is logged (by its label, never
    its URL) and read as nothing found."""
    try:
        async with asyncio.timeout(seconds):
            return await search
    except FhirQueryFailed as exc:
        log.warning(f"{label} not done", extra={"reason": exc.reason})
    except TimeoutError:
        log.warning(f"{label} not done", extra={"reason": f"slower than {seconds:g} s"})
    return []


async def run_all(
    jobs: Mapping[str, Callable[[], Awaitable[Any]]], deadline_seconds: float | None
) -> dict[str, Any]:
    """Run the jobs concurrently under one deadline (None: the caller's); results by name.

    The first `FhirQueryFailed` cancels the others and is raised; when the deadline
    passes, `QueriesTimedOut` names the jobs that had not finished.
    """
    results: dict[str, Any] = {}
    pending = set(jobs)

    async def run(name: str, job: Callable[[], Awaitable[Any]]) -> None:
        results[name] = await job()
        pending.discard(name)

    try:
        async with asyncio.timeout(deadline_seconds):
            async with asyncio.TaskGroup() as group:
                for name, job in jobs.items():
                    group.create_task(run(name, job))
    except TimeoutError as exc:
        if deadline_seconds is None:
            raise
        raise QueriesTimedOut(sorted(pending), deadline_seconds, results) from exc
    except BaseExceptionGroup as group_error:
        failed = _first_failure(group_error)
        if failed is None:
            raise
        raise failed from None
    return results


def _first_failure(group: BaseExceptionGroup[BaseException]) -> FhirQueryFailed | None:
    for exc in group.exceptions:
        if isinstance(exc, FhirQueryFailed):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_failure(exc)
            if found is not None:
                return found
    return None
