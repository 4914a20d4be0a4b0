"""Gather a hook's data: prefetch first, then (for what is missing) the EHR's FHIR server.

For every prefetch key that is absent, or whose value reports an error in fetching (an
OperationOutcome), the service queries `fhirServer` itself (a `null` value means "no
data": nothing to fetch); and so for a key that holds something else than its template
asks for (a Patient where Observations were searched, a string): that is no more the
data than an error is, and read as "nothing found" it would understate the grade. It
queries with `Authorization: Bearer` from `fhirAuthorization`, asking only for what the
rules read since the earliest start of any risk window (`since`):

- `patient`: `Patient/{patientId}`;
- `observations`: `Observation?patient=…&code=<mapped codes and panels>&date=ge…&_count=…`,
  merged with the latest body weight however old (`_sort=-date&_count=1`);
- `medicationAdministrations`: `MedicationAdministration?patient=…&effective-time=ge…`,
  then a read of every `Medication/x` they reference that is not already at hand;
- any other key (e.g. `oxygenDevices`, by `value-concept`; `conditions`, `assessments`):
  the service's own prefetch template, filled from the context.

A prefetch Bundle sent with its first page only (a `next` link) is completed from the
same server. All queries run at once on the shared connection pool, under one deadline
(`CRS_FHIR_TIMEOUT_SECONDS`). `fhirServer` must be on `CRS_FHIR_ALLOWED_SERVERS`. A
query for a missing key that fails makes the answer 412 with a message naming the query
and the reason — except for the ICANS keys (`prefetch.TOLERATED`): their failure is a
data issue saying what was not read; further pages that cannot be had leave the data
marked incomplete. A key the call can do without that held something else and is not
fetched is a data issue naming the key and what it held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import httpx

from cds.allocator import TRIM_AFTER_BYTES, release_free_memory
from cds.engine.facts import CONCEPTS_READ
from cds.errors import InvalidRequest, PrefetchUnavailable
from cds.fhir.client import (
    FHIR_ID,
    MAX_QUERY_BYTES,
    MAX_REQUEST_BYTES,
    FhirQuery,
    FhirQueryFailed,
    FhirReader,
    QueriesTimedOut,
    TemplateError,
    allowed_base_url,
    best_effort,
    is_fhir_id,
    resolve_template,
    run_all,
    split_query,
)
from cds.fhir.prefetch import (
    CONDITIONS,
    TOLERATED,
    PrefetchPlan,
    condition_code_param,
    observation_code_param,
    text_param,
)
from cds.fhir.reading import Issue, ResourceCollector, Truncated, not_as_asked, reports_failure
from cds.fhir.references import patient_of
from cds.knowledge import Knowledge
from cds.metrics import FHIR_QUERIES
from cds.protocol import HookRequest

log = logging.getLogger("cds.fhir.gather")

__all__ = [
    "FHIR_ID",
    "FhirAccess",
    "SentPrefetch",
    "collect_prefetch",
    "gather",
]

ROOT = "fhirServer"

Job = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class FhirAccess:
    """How the service may read an EHR's FHIR server: where its HTTP client comes from
    (injected: the shared pool of the running event loop, or in tests a client with an
    `httpx.MockTransport`), the allow-list, the deadline of one request's queries, the
    page size of its searches, and the bytes a query and a request may read."""

    http: Callable[[], httpx.AsyncClient]
    allowed_servers: Sequence[str]
    timeout_seconds: float
    page_size: int
    max_query_bytes: int = MAX_QUERY_BYTES
    max_request_bytes: int = MAX_REQUEST_BYTES


def _unsent(plan: PrefetchPlan, request: HookRequest) -> tuple[list[str], dict[str, str]]:
    """Prefetch keys the service asked for that must be fetched (CDS Hooks 2.0): a key
    that is **absent** (the client did not fetch it), or whose value reports an error in
    fetching (an OperationOutcome), or holds something else than its template asks for
    (the client's error as much). A key whose value is `null` was fetched and holds no
    data: nothing to fetch. And of those keys, the ones that hold something else than
    asked, each with what it holds and what was asked."""
    prefetch = request.prefetch or {}
    unsent: list[str] = []
    misfilled: dict[str, str] = {}
    for key in plan.templates:
        if key not in prefetch:
            unsent.append(key)
            continue
        value = prefetch[key]
        if value is None:
            continue
        if reports_failure(value):
            unsent.append(key)
            continue
        asked = plan.asks(key)
        if asked is None:
            continue
        found = not_as_asked(value, asked.resource_type)
        if found is not None:
            unsent.append(key)
            misfilled[key] = f"{found}, where {asked.describe()} was expected"
    return unsent, misfilled


@dataclass(frozen=True)
class SentPrefetch:
    """What `collect_prefetch` made of a request's prefetch: the resources of the values
    taken as sent, and the keys not taken (absent, reporting an error, or holding
    something else than asked: to be fetched); of these, `misfilled` says what the
    latter held, by key ("a Patient resource, where a Bundle of Observation search
    results was expected")."""

    collected: ResourceCollector
    unsent: tuple[str, ...]
    misfilled: Mapping[str, str]

    def needs_fetching(self) -> bool:
        """Whether `gather` has anything to do beyond this: keys to fetch (or refuse), or
        further pages of a prefetch Bundle. (The keys as found once: every entry of a
        chart is not read twice.)"""
        return bool(self.unsent) or any(t.next_url for t in self.collected.truncated)


def collect_prefetch(request: HookRequest, plan: PrefetchPlan) -> SentPrefetch:
    """The resources of the prefetch values the service will use as sent, and the keys
    to be fetched again (absent, reporting an error, or holding something else than asked)."""
    collected = ResourceCollector()
    missing, misfilled = _unsent(plan, request)
    for key, value in (request.prefetch or {}).items():
        if value is not None and key not in missing:
            collected.add(value, f"prefetch.{key}")
    return SentPrefetch(collected, tuple(missing), misfilled)


async def gather(
    request: HookRequest,
    plan: PrefetchPlan,
    access: FhirAccess,
    knowledge: Knowledge,
    since: datetime,
    log_extra: Mapping[str, Any] | None = None,
    *,
    fetch_allowed: bool = True,
    sent: SentPrefetch | None = None,
) -> ResourceCollector:
    """Collect the resources: prefetch values; what is missing, and the further pages of a
    prefetch Bundle sent with its first page only, from fhirServer.

    A missing key the service needs that cannot be fetched is a 412. Further pages that
    cannot be fetched are not: they stay in `collected.truncated`, and the cards say the
    data are incomplete. Without `fetch_allowed` (a caller not authenticated while
    authentication is on) nothing is fetched: a needed key is a 412. `sent` is what
    `collect_prefetch` made of the prefetch already (e.g. in a worker thread).
    """
    if sent is None:
        sent = collect_prefetch(request, plan)
    collected = sent.collected
    missing = list(sent.unsent)
    pages = [t for t in collected.truncated if t.next_url]
    if not missing and not pages:
        return collected
    needed = [key for key in missing if key in plan.required]
    what = _unsent_text(needed, sent.misfilled)
    if sent.misfilled:
        # (the keys only: what they held came from the client, and may be anything)
        log.warning(
            f"prefetch {', '.join(sent.misfilled)}: not what the template asks for, "
            "taken as absent",
            extra=dict(log_extra or {}),
        )
    if not request.fhirServer:
        if needed:
            raise PrefetchUnavailable(
                f"{what} and the request has no fhirServer to fetch it from", "prefetch"
            )
        _misfilled_not_read(collected, sent.misfilled, missing)
        return collected
    if not fetch_allowed:
        if not needed:
            _misfilled_not_read(collected, sent.misfilled, missing)
            return collected
        raise PrefetchUnavailable(
            f"{what}, and the service reads fhirServer only for an authenticated client",
            "fhirServer",
        )
    allowed = access.allowed_servers
    base_url = allowed_base_url(request.fhirServer, allowed)
    if base_url is None:
        if not needed:
            # only optional data or further pages missing: go on without
            _misfilled_not_read(collected, sent.misfilled, missing)
            return collected
        if not allowed:
            raise PrefetchUnavailable(
                f"{what} and fetching from fhirServer is disabled on this service "
                "(setting CRS_FHIR_ALLOWED_SERVERS is empty): send the prefetch, or ask the "
                "service's operator to allow this FHIR server",
                "fhirServer",
            )
        raise PrefetchUnavailable(
            f"{what} and fhirServer {request.fhirServer!r} is not on this service's allow-list "
            "(setting CRS_FHIR_ALLOWED_SERVERS): send the prefetch, or ask the service's "
            "operator to allow this FHIR server",
            "fhirServer",
        )
    if not needed and not _searchable_patient(request):
        # Only keys the call can do without are missing, and the patient id cannot go into
        # a search: they are not read (the call is answered from the rest); further pages
        # of the prefetch are still fetched.
        why = "context.patientId is not a FHIR id, so the FHIR server was not searched"
        collected.issues.extend(_not_read(key, why) for key in missing if key in TOLERATED)
        _misfilled_not_read(collected, sent.misfilled, missing)
        missing = []
        if not pages:
            return collected
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    timeout = access.timeout_seconds
    reader = FhirReader(
        access.http(),
        base_url,
        token,
        request_timeout=timeout,
        max_query_bytes=access.max_query_bytes,
        max_request_bytes=access.max_request_bytes,
    )
    # The searches by name, best effort, read with their own reader: their bytes never
    # count against the searches the call needs, and they get half the deadline.
    by_name = ByName(
        FhirReader(
            access.http(),
            base_url,
            token,
            request_timeout=timeout / 2,
            max_query_bytes=access.max_query_bytes,
            max_request_bytes=access.max_query_bytes,
        ),
        timeout / 2,
    )
    extra = dict(log_extra or {})
    jobs = _jobs(
        knowledge, plan, request, missing, reader, by_name, collected, since, access.page_size
    )
    page_jobs = {_page_label(t): _rest_job(reader, t) for t in pages}
    started = time.perf_counter()
    try:
        results = await run_all({**jobs, **page_jobs}, timeout)
    except FhirQueryFailed as exc:
        await _release_memory(reader)
        _log_failure(extra, missing, started, exc.reason)
        FHIR_QUERIES.labels("failed").inc()
        raise PrefetchUnavailable(f"{ROOT}: {exc}", ROOT) from exc
    except QueriesTimedOut as exc:
        await _release_memory(reader)
        late = [label for label in exc.labels if label in jobs and label not in TOLERATED]
        if late:
            _log_failure(extra, missing, started, f"timed out after {timeout:g} s")
            FHIR_QUERIES.labels("timeout").inc()
            raise PrefetchUnavailable(
                f"{ROOT}: the queries for prefetch {', '.join(late)} timed out after "
                f"{timeout:g} s (the overall deadline for fhirServer queries, setting "
                "CRS_FHIR_TIMEOUT_SECONDS)",
                ROOT,
            ) from exc
        # only further pages or tolerated keys were late: the data stay incomplete
        results = exc.results
        for label in exc.labels:
            if label in TOLERATED:
                results[label] = NotRead(f"timed out after {timeout:g} s")
    for key in missing:
        result = results.get(key)
        if isinstance(result, NotRead):
            collected.issues.append(_not_read(key, result.reason))
            _misfilled_not_read(collected, sent.misfilled, [key])
        elif isinstance(result, OthersDropped):
            collected.issues.append(
                Issue(
                    f"{ROOT}.{key}",
                    f"the server answered {result.dropped} "
                    f"{'resource' if result.dropped == 1 else 'resources'} about other "
                    "patients (it may not support this search by patient): not read",
                )
            )
            collected.add(result.bundle, f"{ROOT}.{key}")
        elif result is not None:
            collected.add(result, f"{ROOT}.{key}")
    for truncated in pages:
        entries = results.get(_page_label(truncated))
        if entries is not None:
            collected.truncated.remove(truncated)
            collected.add(_searchset(entries), f"{truncated.location}.next")
    FHIR_QUERIES.labels("ok").inc()
    log.info(
        "fhirServer fallback",
        extra={
            **extra,
            "query": ",".join([*missing, *(t.location for t in pages)]),
            "ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return collected


def _unsent_text(keys: list[str], misfilled: Mapping[str, str]) -> str:
    """Why `keys` were not taken from the prefetch, for a 412."""
    parts = []
    absent = [key for key in keys if key not in misfilled]
    if absent:
        parts.append(
            f"prefetch {', '.join(absent)} is absent or reports an error (OperationOutcome)"
        )
    parts.extend(f"prefetch.{key} holds {misfilled[key]}" for key in keys if key in misfilled)
    return "; ".join(parts)


def _misfilled_not_read(
    collected: ResourceCollector, misfilled: Mapping[str, str], keys: list[str]
) -> None:
    """Of `keys`, not fetched, those that held something else than asked: data issues."""
    collected.issues.extend(
        Issue(f"prefetch.{key}", f"{misfilled[key]}; not read") for key in keys if key in misfilled
    )


@dataclass(frozen=True)
class NotRead:
    """What a tolerated key's query gave when it failed: why."""

    reason: str


def _not_read(key: str, reason: str) -> Issue:
    return Issue(f"{ROOT}.{key}", f"{reason}: {TOLERATED[key]} were not read")


@dataclass(frozen=True)
class ByName:
    """Where the searches by name read, and how long they may take."""

    reader: FhirReader
    seconds: float


def _searchable_patient(request: HookRequest) -> bool:
    value = request.context.get("patientId")
    return isinstance(value, str) and is_fhir_id(value)


@dataclass(frozen=True)
class OthersDropped:
    """A tolerated key's answer less the entries about other patients (a server that
    does not support the search by patient answers everyone's, with a warning)."""

    bundle: dict[str, Any]
    dropped: int


def _tolerant(job: Job, patient_id: str) -> Job:
    """A tolerated key's query: its failure is data not read, not the call's failure;
    entries about another patient than the hook's are left out (and counted)."""

    async def tolerant() -> Any:
        try:
            bundle = await job()
        except FhirQueryFailed as exc:
            log.warning(f"optional prefetch not fetched: {exc.reason}")
            return NotRead(exc.reason)
        entries = bundle.get("entry") or []
        kept = [e for e in entries if _outcome(e) or _about(e, patient_id)]
        if len(kept) == len(entries):
            return bundle
        return OthersDropped({**bundle, "entry": kept}, len(entries) - len(kept))

    return tolerant


def _outcome(entry: Any) -> bool:
    """Whether an entry is the search's own outcome (an OperationOutcome, not data)."""
    search = entry.get("search") if isinstance(entry, dict) else None
    resource = entry.get("resource") if isinstance(entry, dict) else None
    return (isinstance(search, dict) and search.get("mode") == "outcome") or (
        isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome"
    )


def _about(entry: Any, patient_id: str) -> bool:
    """Whether an entry's resource names `patient_id` as the patient it is about."""
    resource = entry.get("resource") if isinstance(entry, dict) else None
    return isinstance(resource, dict) and patient_of(resource) == patient_id


async def _release_memory(reader: FhirReader) -> None:
    """After queries that failed having read megabytes (a body cut at its cap), the
    memory they took goes back to the system, not only to the allocator."""
    if reader.bytes_read >= TRIM_AFTER_BYTES:
        await anyio.to_thread.run_sync(release_free_memory)


def _page_label(truncated: Truncated) -> str:
    return f"further pages of {truncated.location}"


def _rest_job(reader: FhirReader, truncated: Truncated) -> Job:
    """The rest of a prefetch search, or None when it cannot be had (the data then stay
    incomplete, which the card says; never a 412: what was sent is still read)."""

    async def job() -> list[dict[str, Any]] | None:
        assert truncated.next_url is not None
        try:
            return await reader.rest_of(_page_label(truncated), truncated.next_url)
        except FhirQueryFailed as exc:
            log.warning(f"further prefetch pages not fetched: {exc.reason}")
            return None

    return job


def _log_failure(extra: dict[str, Any], missing: list[str], started: float, reason: str) -> None:
    # `reason` is a status or a timeout, never a URL (URLs hold the patient id).
    log.warning(
        f"fhirServer fallback failed: {reason}",
        extra={
            **extra,
            "query": ",".join(missing),
            "ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )


def _patient_id(request: HookRequest) -> str:
    value = request.context.get("patientId")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("context.patientId is required to fetch from fhirServer", "context")
    if not is_fhir_id(value):
        raise InvalidRequest(
            "context.patientId is not a FHIR id ([A-Za-z0-9-.], at most 64 characters; "
            "not . or ..)",
            "context.patientId",
        )
    return value


def _jobs(
    knowledge: Knowledge,
    plan: PrefetchPlan,
    request: HookRequest,
    missing: list[str],
    reader: FhirReader,
    by_name: ByName,
    collected: ResourceCollector,
    since: datetime,
    page_size: int,
) -> dict[str, Job]:
    """One job per missing key: a coroutine factory that returns a resource or a Bundle."""
    if not missing:
        return {}
    pid = _patient_id(request)
    after = since.isoformat(timespec="seconds")
    count = str(page_size)
    jobs: dict[str, Job] = {}
    for key in missing:
        template = plan.templates[key]
        target = template.split("?", 1)[0].split("/", 1)[0]
        if key == "patient" and target == "Patient":
            query = FhirQuery.read(f"Patient read for prefetch '{key}'", "Patient", pid)
            jobs[key] = _read_job(reader, query)
        elif key == "observations" and target == "Observation":
            jobs[key] = _searches_job(
                reader,
                _observation_searches(knowledge, key, pid, after, count),
                by_name,
                _by_name(
                    key,
                    "Observation",
                    knowledge.observation_names.names(CONCEPTS_READ),
                    (("patient", pid), ("date", f"ge{after}"), ("_count", count)),
                ),
            )
        elif key == CONDITIONS and target == "Condition":
            query = FhirQuery(
                f"Condition search for prefetch '{key}'",
                "Condition",
                (("patient", pid), ("code", condition_code_param(knowledge)), ("_count", count)),
            )
            jobs[key] = _searches_job(
                reader,
                [query],
                by_name,
                _by_name(
                    key,
                    "Condition",
                    knowledge.neuro_condition_names.names(),
                    (("patient", pid), ("_count", count)),
                ),
            )
        elif key == "medicationAdministrations" and target == "MedicationAdministration":
            query = FhirQuery(
                f"MedicationAdministration search for prefetch '{key}'",
                "MedicationAdministration",
                (("patient", pid), ("effective-time", f"ge{after}"), ("_count", count)),
            )
            jobs[key] = _administrations_job(reader, query, key, collected)
        else:
            jobs[key] = _template_job(reader, key, template, request)
        if key in TOLERATED:
            jobs[key] = _tolerant(jobs[key], pid)
    return jobs


def _observation_searches(
    knowledge: Knowledge, key: str, pid: str, after: str, count: str
) -> list[FhirQuery]:
    """By code (the codes the rules read, and panels), and the latest weight however old."""
    codes = observation_code_param(knowledge)
    weights = ",".join(f"{s}|{c}" for s, c in knowledge.codes_of("body_weight"))
    searches = [
        FhirQuery(
            f"Observation search for prefetch '{key}'",
            "Observation",
            (("patient", pid), ("code", codes), ("date", f"ge{after}"), ("_count", count)),
        ),
        # the dose needs the latest weight, however old (it may predate the risk window)
        FhirQuery(
            f"latest body weight for prefetch '{key}'",
            "Observation",
            (("patient", pid), ("code", weights), ("_sort", "-date"), ("_count", "1")),
            first_page_only=True,
        ),
    ]
    return searches


def _read_job(reader: FhirReader, query: FhirQuery) -> Job:
    async def job() -> dict[str, Any]:
        return await reader.read(query)

    return job


def _searchset(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def _by_name(
    key: str, rtype: str, names: list[str], params: tuple[tuple[str, str], ...]
) -> FhirQuery | None:
    """The search by name beside a search by code: resources charted under a local code
    with text only, whose text begins with a name the rules know (`code:text`)."""
    if not names:
        return None
    return FhirQuery(
        f"{rtype} search by name for prefetch '{key}'",
        rtype,
        (*params, ("code:text", text_param(names))),
    )


def _searches_job(
    reader: FhirReader,
    queries: list[FhirQuery],
    by_name: ByName | None = None,
    name_query: FhirQuery | None = None,
) -> Job:
    """Several searches for one key, merged into one searchset (duplicates dropped); and
    the search by name, best effort: a server that refuses it (a `:text` modifier it does
    not support), is slower than half the deadline, or answers more than the caps of its
    own reader, leaves the key to the searches by code (logged, not an error — the data
    charted with known codes are all there)."""

    async def job() -> dict[str, Any]:
        jobs = {q.label: _search(reader, q) for q in queries}
        if by_name is not None and name_query is not None:
            jobs[name_query.label] = _named(by_name, name_query)
        results = await run_all(jobs, None)
        merged: list[dict[str, Any]] = []
        seen: set[str] = set()
        for label in jobs:  # the searches by code first, then the one by name
            for entry in results[label]:
                ref = _entry_reference(entry)
                if ref is not None and ref in seen:
                    continue
                if ref is not None:
                    seen.add(ref)
                merged.append(entry)
        return _searchset(merged)

    return job


def _named(by_name: ByName, query: FhirQuery) -> Job:
    """The search by name: its own reader and time, and nothing found when it fails."""
    return lambda: best_effort(by_name.reader.search(query), query.label, by_name.seconds)


def _search(reader: FhirReader, query: FhirQuery) -> Job:
    async def job() -> list[dict[str, Any]]:
        return await reader.search(query)

    return job


def _entry_reference(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        return None
    rtype, rid = resource.get("resourceType"), resource.get("id")
    return f"{rtype}/{rid}" if isinstance(rtype, str) and isinstance(rid, str) else None


def _administrations_job(
    reader: FhirReader, query: FhirQuery, key: str, collected: ResourceCollector
) -> Job:
    """The administrations, then every referenced Medication not yet at hand (concurrently)."""

    async def job() -> dict[str, Any]:
        entries = await reader.search(query)
        have = {r.reference for r in collected.of_type("Medication")}
        have.update(ref for e in entries if (ref := _entry_reference(e)) is not None)
        wanted: list[str] = []
        for entry in entries:
            mid = _medication_id(entry, reader.base_url)
            if mid is not None and f"Medication/{mid}" not in have:
                have.add(f"Medication/{mid}")
                wanted.append(mid)
        reads = {
            mid: _read_job(
                reader, FhirQuery.read(f"Medication read for prefetch '{key}'", "Medication", mid)
            )
            for mid in wanted
        }
        medications = await run_all(reads, None) if reads else {}
        entries = entries + [
            {"resource": medications[mid], "search": {"mode": "include"}} for mid in wanted
        ]
        return _searchset(entries)

    return job


def _medication_id(entry: Any, base_url: str) -> str | None:
    """The id of the Medication an administration references on this server, if any."""
    if not isinstance(entry, dict):
        return None
    resource = entry.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != (
        "MedicationAdministration"
    ):
        return None
    reference = resource.get("medicationReference")
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str):
        return None
    ref = ref.removeprefix(base_url + "/").split("/_history", 1)[0]
    kind, _, mid = ref.partition("/")
    return mid if kind == "Medication" and is_fhir_id(mid) else None


def _template_job(reader: FhirReader, key: str, template: str, request: HookRequest) -> Job:
    """A key this module has no query of its own for: the service's prefetch template."""
    try:
        relative = resolve_template(template, request.context, value_pattern=FHIR_ID)
    except TemplateError as exc:
        raise PrefetchUnavailable(f"prefetch {key}: {exc}", f"prefetch.{key}") from exc
    path, params = split_query(relative)
    if "?" in relative:
        query = FhirQuery(f"{path} search for prefetch '{key}'", path, tuple(params))

        async def search() -> dict[str, Any]:
            return _searchset(await reader.search(query))

        return search
    rtype = path.split("/", 1)[0]
    return _read_job(reader, FhirQuery(f"{rtype} read for prefetch '{key}'", path, expect=rtype))
