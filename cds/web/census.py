"""The watch list's rows: every patient in a CRS risk window, with the state the list
shows, behind a small interface (`CensusSource`).

The watch (issue #12) keeps a census and each patient's state; until it is wired in,
`AuditCensus` builds the rows from the decision records: the latest CRS card per patient
and exposure whose risk window is still open, the grade history of that exposure's cards,
and the last readings of the facts stored with the latest record.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
from sqlalchemy import Engine, select

from cds.store.records import facts_json
from cds.store.tables import audit_records, cards


@dataclass(frozen=True)
class Reading:
    """A last value and when it was taken (`text`: as shown, e.g. "38.6 °C")."""

    text: str
    at: datetime


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
UNITS = {"temperature": "°C", "systolic_bp": "mmHg", "oxygen_flow": "L/min"}


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
        readings = _READINGS.decode(facts_json(record.facts))
        temperature = _last(readings, "temperature", "{:.1f} °C")
        systolic = _last(readings, "systolic_bp", "{:.0f} mmHg")
        flow = _last(readings, "oxygen_flow", "{:g} L/min")
        device = readings.oxygen[-1] if readings.oxygen else None
        oxygen = flow
        if device is not None and (flow is None or device.at >= flow.at):
            oxygen = Reading(device.device, device.at)
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
            last_systolic=systolic,
            last_oxygen=oxygen,
            data_gap=temperature is None or now - temperature.at > self.data_gap,
            last_notified_at=None,  # notifications are the watch's (issue #12)
            history=tuple(
                GradePoint(
                    s.shown_at,
                    s.grade,
                    s.alert_grade
                    if s.alert_grade is not None and s.alert_grade > s.grade
                    else None,
                )
                for s in shown
            ),
            record_id=last.record_id,
        )


def _last(readings: _Readings, concept: str, form: str) -> Reading | None:
    # measurements are stored sorted by time: the last of a concept is the latest
    for m in reversed(readings.measurements):
        if m.concept == concept:
            return Reading(form.format(m.value), m.at)
    return None
