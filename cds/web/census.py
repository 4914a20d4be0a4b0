"""The watch list's rows: every patient in a CRS risk window, with the state the list
shows, behind a small interface (`CensusSource`).

Two sources. With the watch on (issue #12), `WatchCensus` reads its census: every patient
it watches whose window is open, with the state, history and notifications the workers
keep — patients whose chart nobody opened included. With the watch off, `AuditCensus`
builds the rows from the decision records: the latest CRS card per patient and exposure
whose risk window is still open, the grade history of that exposure's cards, and the last
readings of the facts stored with the latest record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
from sqlalchemy import Engine, func, select

from cds.readings import LastReadings, last_readings
from cds.readings import Reading as Reading  # re-exported: the rows' readings
from cds.store.records import facts_json
from cds.store.tables import (
    audit_records,
    cards,
    watch_history,
    watch_notifications,
    watch_patients,
)


@dataclass(frozen=True)
class GradePoint:
    """The grade (and possible grade) the patient was given at a time."""

    at: datetime
    grade: int
    possible: int | None = None


@dataclass(frozen=True)
class CensusRow:
    """One patient and exposure on the watch list."""

    patient: str  # the pseudonym (the pages never see a patient id)
    product: str
    exposure_at: datetime
    window_ends: datetime
    evaluated_at: datetime  # the time of the state shown
    grade: int
    max_grade: int
    possible_grade: int | None
    last_temperature: Reading | None
    last_systolic: Reading | None
    last_oxygen: Reading | None
    data_gap: bool  # no temperature for longer than the data-gap setting
    last_notified_at: datetime | None
    history: tuple[GradePoint, ...]
    record_id: str | None  # the stored evaluation the row's timeline opens

    def day(self, now: datetime) -> int:
        """Whole days since the exposure (day 0 = the day of infusion/dose)."""
        return int((now - self.exposure_at) // timedelta(days=1))


class CensusSource(Protocol):
    """Where the watch list's rows come from."""

    def rows(self, now: datetime) -> list[CensusRow]:
        """Every patient whose risk window contains `now`, unordered."""
        ...


def _key(row: CensusRow) -> tuple[int, int, datetime]:
    # worst first: grade, then possible grade, then the longest without a temperature
    last = row.last_temperature.at if row.last_temperature is not None else _NEVER
    return (-row.grade, -(row.possible_grade if row.possible_grade is not None else -1), last)


_NEVER = datetime.min.replace(tzinfo=UTC)


def ordered(rows: list[CensusRow]) -> list[CensusRow]:
    """The watch list's order: by grade, then possible grade (highest first), then by
    the time since the last temperature (longest first; none at all before any)."""
    return sorted(rows, key=_key)


# --- from the decision records --------------------------------------------------------


class _Value(msgspec.Struct):
    concept: str
    value: float
    unit: str
    at: datetime


class _Device(msgspec.Struct):
    device: str
    at: datetime


class _Readings(msgspec.Struct):
    """The part of a stored FactsSnapshot the list reads (the rest is skipped)."""

    measurements: list[_Value]
    oxygen: list[_Device] = []


_READINGS = msgspec.json.Decoder(_Readings)


@dataclass(frozen=True)
class _Shown:
    record_id: str
    patient: str
    exposure: str
    grade: int
    alert_grade: int | None
    shown_at: datetime


class AuditCensus:
    """The census as the decision records know it: patients whose chart was opened (a
    CRS card was shown) and whose risk window is open now."""

    def __init__(self, engine: Engine, horizon: timedelta, data_gap: timedelta) -> None:
        self.engine = engine
        self.horizon = horizon  # how far back a card may have been shown
        self.data_gap = data_gap

    def rows(self, now: datetime) -> list[CensusRow]:
        query = (
            select(
                cards.c.record_id,
                cards.c.patient,
                cards.c.exposure,
                cards.c.grade,
                cards.c.alert_grade,
                cards.c.shown_at,
            )
            .where(cards.c.kind == "crs", cards.c.shown_at >= now - self.horizon)
            .order_by(cards.c.shown_at)
        )
        groups: dict[tuple[str, str], list[_Shown]] = defaultdict(list)
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                if row.exposure is None or row.grade is None:
                    continue
                groups[(row.patient, row.exposure)].append(
                    _Shown(
                        row.record_id,
                        row.patient,
                        row.exposure,
                        row.grade,
                        row.alert_grade,
                        row.shown_at,
                    )
                )
            latest = {key: shown[-1].record_id for key, shown in groups.items()}
            records = (
                {
                    r.id: r
                    for r in connection.execute(
                        select(
                            audit_records.c.id,
                            audit_records.c.evaluated_at,
                            audit_records.c.cards,
                            audit_records.c.facts,
                        ).where(audit_records.c.id.in_(list(latest.values())))
                    )
                }
                if latest
                else {}
            )
        found: list[CensusRow] = []
        for key, shown in groups.items():
            record = records.get(latest[key])
            if record is None:
                continue
            made = self._row(shown, record, now)
            if made is not None:
                found.append(made)
        return found

    def _row(self, shown: list[_Shown], record: Any, now: datetime) -> CensusRow | None:
        card = next((c for c in record.cards if c.get("kind") == "crs"), None)
        crs = ((card or {}).get("extension") or {}).get("crs") or {}
        exposure = crs.get("exposure") or {}
        if not exposure:
            return None
        ends = max(
            datetime.fromisoformat(t)
            for t in (exposure.get("windowEnds"), exposure.get("extendedUntil"))
            if t
        )
        if ends < now:
            return None
        facts = _READINGS.decode(facts_json(record.facts))
        readings = last_readings(facts.measurements, facts.oxygen, record.evaluated_at)
        temperature = readings.temperature
        last = shown[-1]
        possible = crs.get("possibleGrade")
        return CensusRow(
            patient=last.patient,
            product=str(exposure.get("display") or exposure.get("product") or ""),
            exposure_at=datetime.fromisoformat(exposure["at"]),
            window_ends=ends,
            evaluated_at=record.evaluated_at,
            grade=last.grade,
            max_grade=max(int(crs.get("maxGrade") or 0), *(s.grade for s in shown)),
            possible_grade=int(possible) if possible is not None else None,
            last_temperature=temperature,
            last_systolic=readings.systolic,
            last_oxygen=readings.oxygen,
            data_gap=temperature is None or now - temperature.at > self.data_gap,
            last_notified_at=None,  # notifications are the watch's (issue #12)
            history=tuple(_point(s.shown_at, s.grade, s.alert_grade) for s in shown),
            record_id=last.record_id,
        )


# --- from the watch's census ----------------------------------------------------------


class WatchCensus:
    """The census the watch keeps: every active patient whose window (or the CRS activity
    keeping it open) lasts past now and who has been evaluated in one. The grade history
    is the watch's, the last notification its own, and a row opens the timeline of the
    patient's latest CRS card for that exposure when a chart was opened (else none)."""

    def __init__(self, engine: Engine, data_gap: timedelta, display: Callable[[str], str]) -> None:
        self.engine = engine
        self.data_gap = data_gap
        self.display = display  # product code -> the name the list shows

    def rows(self, now: datetime) -> list[CensusRow]:
        p, h, n, c = watch_patients.c, watch_history.c, watch_notifications.c, cards.c
        with self.engine.connect() as connection:
            patients = connection.execute(
                select(
                    p.patient,
                    p.evaluated_at,
                    p.grade,
                    p.max_grade,
                    p.possible_grade,
                    p.exposure,
                    p.product,
                    p.exposure_at,
                    p.watch_until,
                    p.readings,
                ).where(
                    p.active.is_(True),
                    p.exposure.is_not(None),
                    p.grade.is_not(None),
                    p.watch_until >= now,
                )
            ).all()
            if not patients:
                return []
            wanted = [row.patient for row in patients]
            history: dict[tuple[str, str], list[GradePoint]] = defaultdict(list)
            for point in connection.execute(
                select(h.patient, h.exposure, h.evaluated_at, h.grade, h.possible_grade)
                .where(h.patient.in_(wanted), h.exposure.is_not(None), h.grade.is_not(None))
                .order_by(h.evaluated_at, h.id)
            ):
                history[(point.patient, point.exposure)].append(
                    _point(point.evaluated_at, point.grade, point.possible_grade)
                )
            notified = {
                (row.patient, row.exposure): row.last
                for row in connection.execute(
                    select(n.patient, n.exposure, func.max(n.created_at).label("last"))
                    .where(n.patient.in_(wanted))
                    .group_by(n.patient, n.exposure)
                )
            }
            shown: dict[tuple[str, str], tuple[datetime, str]] = {}
            for card in connection.execute(
                select(c.patient, c.exposure, c.shown_at, c.record_id).where(
                    c.kind == "crs", c.patient.in_(wanted), c.exposure.is_not(None)
                )
            ):
                key = (card.patient, card.exposure)
                if key not in shown or card.shown_at >= shown[key][0]:
                    shown[key] = (card.shown_at, card.record_id)
        found = []
        for row in patients:
            key = (row.patient, row.exposure)
            readings = LastReadings.from_json(row.readings)
            temperature = readings.temperature
            points = history.get(key) or [_point(row.evaluated_at, row.grade, row.possible_grade)]
            found.append(
                CensusRow(
                    patient=row.patient,
                    product=self.display(row.product),
                    exposure_at=row.exposure_at,
                    window_ends=row.watch_until,
                    evaluated_at=row.evaluated_at,
                    grade=row.grade,
                    max_grade=max(row.max_grade or 0, row.grade, *(g.grade for g in points)),
                    possible_grade=row.possible_grade,
                    last_temperature=temperature,
                    last_systolic=readings.systolic,
                    last_oxygen=readings.oxygen,
                    data_gap=temperature is None or now - temperature.at > self.data_gap,
                    last_notified_at=notified.get(key),
                    history=tuple(points),
                    record_id=shown[key][1] if key in shown else None,
                )
            )
        return found


def _point(at: datetime, grade: int, possible: int | None) -> GradePoint:
    """A history point; a possible grade only where it is above the grade."""
    return GradePoint(at, grade, possible if possible is not None and possible > grade else None)
