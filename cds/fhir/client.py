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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin

import httpx

# httpx logs every request URL at INFO, and these URLs hold patient ids: keep them out.
logging.getLogger("httpx").setLevel(logging.WARNING)

FHIR_JSON = "application/fhir+json"
MAX_PAGES = 100  # a search that pages further is a server bug, not data we need

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
            headers={"Accept": FHIR_JSON},
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
        if value_pattern is not None and not value_pattern.fullmatch(found):
            raise TemplateError(f"the value of {{{{{token}}}}} is not a FHIR id")
        return found

    return _TOKEN.sub(value, template)


class FhirQueryFailed(Exception):
    """A query to the FHIR server failed; `str()` names the query and the reason."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(f"{label} failed: {reason}")
        self.label = label
        self.reason = reason


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
        """A read of `resource_type/resource_id`."""
        return cls(label, f"{resource_type}/{resource_id}", search=False, expect=resource_type)


@dataclass
class FhirReader:
    """Reads and searches on one FHIR server with one token and a per-request timeout."""

    http: httpx.AsyncClient
    base_url: str
    token: str | None = None
    request_timeout: float = 3.0
    max_pages: int = MAX_PAGES
    pages: dict[str, int] = field(default_factory=dict)  # label -> pages read (for tests)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _get(
        self, label: str, url: str, params: Sequence[tuple[str, str]] | None
    ) -> dict[str, Any]:
        try:
            response = await self.http.get(
                url,
                params=list(params) if params else None,
                headers=self._headers(),
                timeout=self.request_timeout,
            )
        except httpx.TimeoutException as exc:
            raise FhirQueryFailed(label, f"timed out after {self.request_timeout:g} s") from exc
        except httpx.ConnectError as exc:
            raise FhirQueryFailed(label, "could not connect to the FHIR server") from exc
        except httpx.HTTPError as exc:
            # The exception text can hold the URL (and with it the patient id): name its type.
            raise FhirQueryFailed(label, f"HTTP error ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise FhirQueryFailed(label, _status_reason(response.status_code, self.token))
        try:
            body = response.json()
        except ValueError as exc:
            raise FhirQueryFailed(label, "the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise FhirQueryFailed(label, "the answer is not a FHIR resource (not a JSON object)")
        return body

    async def read(self, query: FhirQuery) -> dict[str, Any]:
        """The resource read by `query`."""
        body = await self._get(query.label, f"{self.base_url}/{query.path}", query.params)
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
        while url is not None:
            pages += 1
            if pages > self.max_pages:
                raise FhirQueryFailed(label, f"more than {self.max_pages} pages")
            bundle = await self._get(label, url, params)
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
        """`href` made absolute against the base URL, if it stays under it; else
        FhirQueryFailed (a link elsewhere must never receive the bearer token)."""
        absolute = urljoin(self.base_url + "/", href)
        if absolute != self.base_url and not absolute.startswith(
            (self.base_url + "/", self.base_url + "?")
        ):
            raise FhirQueryFailed(label, "the next-page link points outside fhirServer")
        return absolute

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
