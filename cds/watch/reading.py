"""The watch's FHIR side, on CRS_WATCH_FHIR_SERVER with CRS_WATCH_FHIR_TOKEN.

- `changed`: a census patient's Observations, MedicationAdministrations, Conditions and
  QuestionnaireResponses (ICANS) changed since the newest `meta.lastUpdated` seen (one
  search of each, `_lastUpdated=gt…`);
- `patient_data`: everything the rules read for the patient — the service's own
  prefetch fallback (cds/fhir/gather.py, the same queries a hook call without prefetch
  makes), so that the watch reads exactly what a chart open would;
- `candidates`: the census search — administrations of the catalogue's CAR-T, TCR-T and
  T-cell-engager products (by code) since the longest risk window, paged, under a deadline;
- `touched`: the catch-up after a gap in subscription events — every patient whose
  resources of those types changed since a time;
- `subject_of`: the patient of a resource named by an id-only notification.

URLs hold patient ids: failures are named by the query's label, never by its URL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from cds.engine.exposure import EXPOSURE_CLASSES
from cds.evaluation import risk_data_since
from cds.fhir.client import (
    FhirQuery,
    FhirQueryFailed,
    FhirReader,
    QueriesTimedOut,
    best_effort,
    run_all,
)
from cds.fhir.gather import FHIR_ID, FhirAccess, gather
from cds.fhir.prefetch import PrefetchPlan, text_param
from cds.fhir.reading import ResourceCollector
from cds.fhir.references import patient_of
from cds.fhir.timing import TimeFormatError, parse_fhir_datetime
from cds.protocol import FhirAuthorization, HookRequest
from cds.runtime import Runtime
from cds.watch.config import CURSOR_OVERLAP, WatchConfig
from cds.watch.smart import Credentials

# What a change of starts a look: the types the rules read of a patient's chart. The CRS
# types must be searched; the ICANS ones are searched best effort (a server without them,
# or a token without their scopes, still has the CRS watch; the failure is logged).
CRS_TYPES = ("Observation", "MedicationAdministration")
ICANS_TYPES = ("Condition", "QuestionnaireResponse")
WATCHED_TYPES = CRS_TYPES + ICANS_TYPES
CENSUS_DEADLINE_SECONDS = 60.0  # the census search and the catch-up, all pages
MEDICATIONS_PER_SEARCH = 50  # Medication references per administration search (URL length)
log = logging.getLogger("cds.watch")


def fhir_instant(moment: datetime) -> str:
    """A FHIR instant in UTC with milliseconds (`2026-11-30T10:00:00.000Z`)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Seen:
    """A resource version seen by polling: `Type/id/version` and its lastUpdated."""

    version: str
    updated: datetime


@dataclass(frozen=True)
class Changed:
    """What polling found: the resources (`Type/id`) new or changed since the cursor,
    the cursor moved to the newest `lastUpdated`, and the versions seen within the
    overlap before it (so that the overlap does not find them again)."""

    refs: frozenset[str]
    cursor: datetime | None
    seen: tuple[Seen, ...]


def advance(
    resources: Iterable[dict[str, Any]], cursor: datetime | None, seen: Iterable[Seen]
) -> Changed:
    """Move the polling cursor over `resources` (those found since cursor − overlap)."""
    known = {s.version: s for s in seen}
    refs: set[str] = set()
    newest = cursor
    for resource in resources:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            continue
        raw_meta = resource.get("meta")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        updated = _instant(meta.get("lastUpdated")) or cursor
        if updated is None:
            continue
        if cursor is not None and updated <= cursor - CURSOR_OVERLAP:
            continue  # older than the overlap: seen before (a server matching coarsely)
        version = f"{rtype}/{rid}/{meta.get('versionId') or updated.isoformat()}"
        if version not in known:
            refs.add(f"{rtype}/{rid}")
            known[version] = Seen(version, updated)
        newest = updated if newest is None else max(newest, updated)
    kept = tuple(
        s for s in known.values() if newest is not None and s.updated > newest - CURSOR_OVERLAP
    )
    return Changed(frozenset(refs), newest, kept)


def _updated(resource: dict[str, Any]) -> datetime | None:
    meta = resource.get("meta")
    return _instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None


def _instant(value: object) -> datetime | None:
    try:
        return parse_fhir_datetime(value)
    except TimeFormatError:
        return None


def _resources(entries: Iterable[Any]) -> list[dict[str, Any]]:
    found = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and (entry.get("search") or {}).get("mode") != "outcome":
            found.append(resource)
    return found


def resource_ref(reference: object) -> tuple[str, str] | None:
    """`Observation/1` or an absolute URL of one -> ("Observation", "1")."""
    if not isinstance(reference, str):
        return None
    parts = reference.split("/_history/", 1)[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2].isalpha() and FHIR_ID.fullmatch(parts[-1]):
        return parts[-2], parts[-1]
    return None


class WatchReader:
    """Reads CRS_WATCH_FHIR_SERVER for the watch (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        config: WatchConfig,
        http: Callable[[], httpx.AsyncClient],
        plan: PrefetchPlan,
        credentials: Credentials,
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.http = http
        self.plan = plan
        self.credentials = credentials

    async def _reader(self, timeout: float | None = None) -> FhirReader:
        return FhirReader(
            self.http(),
            self.config.server,
            await self.credentials.bearer(),
            request_timeout=timeout or self.config.fhir_timeout_seconds,
        )

    async def changed(self, patient_id: str, cursor: datetime, seen: Iterable[Seen]) -> Changed:
        """The patient's resources new or changed since the cursor (one search per watched type)."""
        return advance(await self._since(patient_id, cursor), cursor, seen)

    async def settle(self, patient_id: str, first: Changed) -> Changed:
        """After a first look (whose cursor comes from the resources the rules read): the
        versions written up to that cursor are marked seen too — a heart rate the rules
        do not read would else look new at the next poll. Later ones stay new."""
        if first.cursor is None:
            return first
        cursor = first.cursor
        written = [
            r for r in await self._since(patient_id, cursor) if (_updated(r) or cursor) <= cursor
        ]
        settled = advance(written, cursor, first.seen)
        return Changed(frozenset(), settled.cursor, settled.seen)

    async def _since(self, patient_id: str, cursor: datetime) -> list[dict[str, Any]]:
        """The patient's resources of the watched types updated since the cursor, less
        the overlap."""
        since = fhir_instant(cursor - CURSOR_OVERLAP)
        reader = await self._reader()
        queries = {
            rtype: FhirQuery(
                f"{rtype} changes for the watch",
                rtype,
                (
                    ("patient", patient_id),
                    ("_lastUpdated", f"gt{since}"),
                    ("_count", str(self.config.page_size)),
                ),
            )
            for rtype in WATCHED_TYPES
        }

        deadline = self.config.fhir_timeout_seconds

        def search(query: FhirQuery) -> Callable[[], Any]:
            if query.path in ICANS_TYPES:
                return lambda: best_effort(reader.search(query), query.label, deadline * 0.9)
            return lambda: reader.search(query)

        results = await run_all({k: search(q) for k, q in queries.items()}, deadline)
        # (a server that ignores `patient` on a search answers everyone's: only this
        # patient's count as this patient's changes)
        return [
            r
            for rtype in WATCHED_TYPES
            for r in _resources(results[rtype])
            if patient_of(r) == patient_id
        ]

    async def patient_data(self, patient_id: str, at: datetime) -> ResourceCollector:
        """Everything the rules read for the patient at `at`, by the service's fallback
        queries (raises PrefetchUnavailable naming the query that failed)."""
        token = await self.credentials.bearer()
        request = HookRequest(
            hook="patient-view",
            hookInstance=f"watch-{uuid.uuid4()}",
            fhirServer=self.config.server,
            fhirAuthorization=FhirAuthorization(access_token=token) if token else None,
            context={"patientId": patient_id},
        )
        access = FhirAccess(
            http=self.http,
            allowed_servers=[self.config.server],
            timeout_seconds=self.config.fhir_timeout_seconds,
            page_size=self.config.page_size,
        )
        return await gather(
            request,
            self.plan,
            access,
            self.runtime.knowledge,
            risk_data_since(self.runtime, at),
            {"service": "watch"},
        )

    def exposure_codes(self) -> str:
        """`system|code,…` of every CAR-T, TCR-T and T-cell-engager product."""
        return ",".join(
            f"{c.system}|{c.code}"
            for m in self.runtime.knowledge.medications.values()
            if m.medication_class in EXPOSURE_CLASSES
            for c in m.codes
        )

    def exposure_names(self) -> str:
        """The names of every CAR-T, TCR-T and T-cell-engager product (generic, short and
        brand), comma-separated for a `:text` search."""
        names = sorted(
            {
                name
                for m in self.runtime.knowledge.medications.values()
                if m.medication_class in EXPOSURE_CLASSES
                for name in m.names
            }
        )
        return text_param(names)

    async def candidates(self, at: datetime, patient_id: str | None = None) -> dict[str, datetime]:
        """Patients with an administration of a risk product since the longest window
        (+ CRS-episode gap + look-back) before `at`: id -> the latest time one of them
        started or was written (a dose charted late counts from when it was charted).

        Found three ways: by the products' codes; by their names (`code:text`: a
        medication charted as text, or under a local code, whose text begins with a
        product's generic or brand name); and by reference to a Medication of a risk
        product (found by code or name). A server that cannot do the second or third
        search (a `:text` modifier or a reference search it does not support) still
        has the first: their failures are logged and passed over."""
        since = fhir_instant(risk_data_since(self.runtime, at))
        window: tuple[tuple[str, str], ...] = (
            ("effective-time", f"ge{since}"),
            ("_count", str(self.config.page_size)),
        )
        if patient_id is not None:
            window = (("patient", patient_id), *window)

        def administrations(how: str, param: tuple[str, str]) -> FhirQuery:
            label = f"census search {how} (MedicationAdministration)"
            return FhirQuery(label, "MedicationAdministration", (param, *window))

        codes, names = self.exposure_codes(), self.exposure_names()
        entries = await self._search_all([administrations("by code", ("code", codes))])
        try:
            entries += await self._search_all([administrations("by name", ("code:text", names))])
        except (FhirQueryFailed, QueriesTimedOut) as exc:
            log.warning("census search by name not done", extra={"reason": _why(exc)})
        try:
            entries += await self._by_medication(codes, names, administrations)
        except (FhirQueryFailed, QueriesTimedOut) as exc:
            log.warning("census search by Medication not done", extra={"reason": _why(exc)})
        found: dict[str, datetime] = {}
        for resource in _resources(entries):
            pid = patient_of(resource)
            if pid is None:
                continue
            meta = resource.get("meta")
            written = _instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None
            times = [t for t in (_administration_start(resource), written) if t is not None]
            latest = max(times, default=at)
            found[pid] = max(found.get(pid, latest), latest)
        return found

    async def _by_medication(
        self,
        codes: str,
        names: str,
        administrations: Callable[[str, tuple[str, str]], FhirQuery],
    ) -> list[Any]:
        """Administrations given by reference to a Medication of a risk product."""
        count = ("_count", str(self.config.page_size))
        medications = await self._search_all(
            [
                FhirQuery(
                    "risk Medications by code",
                    "Medication",
                    (("code", self.exposure_codes()), count),
                ),
                FhirQuery("risk Medications by name", "Medication", (("code:text", names), count)),
            ]
        )
        ids = sorted(
            {
                f"Medication/{r['id']}"
                for r in _resources(medications)
                if r.get("resourceType") == "Medication" and FHIR_ID.fullmatch(str(r.get("id", "")))
            }
        )
        found: list[Any] = []
        for start in range(0, len(ids), MEDICATIONS_PER_SEARCH):
            chunk = ",".join(ids[start : start + MEDICATIONS_PER_SEARCH])
            found += await self._search_all(
                [administrations("by Medication", ("medication", chunk))]
            )
        return found

    async def touched(self, since: datetime) -> set[str]:
        """Every patient whose resources of the watched types changed since `since` (the
        catch-up after missed subscription events)."""
        after = fhir_instant(since - CURSOR_OVERLAP)

        def catch_up(rtype: str) -> FhirQuery:
            return FhirQuery(
                f"{rtype} catch-up search",
                rtype,
                (("_lastUpdated", f"gt{after}"), ("_count", str(self.config.page_size))),
            )

        entries = await self._search_all([catch_up(rtype) for rtype in CRS_TYPES])
        try:
            entries += await self._search_all([catch_up(rtype) for rtype in ICANS_TYPES])
        except (FhirQueryFailed, QueriesTimedOut) as exc:
            log.warning("catch-up search of ICANS types not done", extra={"reason": _why(exc)})
        return {pid for r in _resources(entries) if (pid := patient_of(r)) is not None}

    async def subject_of(self, rtype: str, rid: str) -> str | None:
        """The patient of `rtype/rid` (read), or None."""
        query = FhirQuery.read(f"{rtype} read (notification focus)", rtype, rid)
        return patient_of(await (await self._reader()).read(query))

    async def _search_all(self, queries: list[FhirQuery]) -> list[Any]:
        reader = await self._reader(timeout=CENSUS_DEADLINE_SECONDS)

        def search(query: FhirQuery) -> Callable[[], Any]:
            return lambda: reader.search(query)

        results = await run_all({q.label: search(q) for q in queries}, CENSUS_DEADLINE_SECONDS)
        return [entry for q in queries for entry in results[q.label]]


def _why(exc: FhirQueryFailed | QueriesTimedOut) -> str:
    """Why a best-effort search was not done (never a URL: it can hold patient ids)."""
    return exc.reason if isinstance(exc, FhirQueryFailed) else "timed out"


def _administration_start(resource: dict[str, Any]) -> datetime | None:
    period = resource.get("effectivePeriod")
    value = period.get("start") if isinstance(period, dict) else resource.get("effectiveDateTime")
    return _instant(value)
