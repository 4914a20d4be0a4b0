"""The census and everything the watch keeps in the store (tables in cds/store/tables.py).

Who is watched: a row per patient, keyed by pseudonym, with the FHIR id sealed
(cds/watch/ids.py). A patient is *due* when `next_poll_at` has passed; a worker *claims*
due patients by writing its name and a lease time into their rows — on PostgreSQL the
rows are picked with `FOR UPDATE SKIP LOCKED`, so that concurrent workers never claim
the same patient and never wait for each other; on SQLite one UPDATE … RETURNING is
atomic. A worker that dies leaves its leases to expire (one poll interval): the rows are
then due and claimed by another worker.

What one cycle of a patient found is written in one transaction, and only while the
worker still holds the lease: the new state and history, the notifications (a unique
change key each: a change seen twice is stored once) with their deliveries, the polling
cursor, the next poll time. Synchronous SQLAlchemy Core; the worker calls it in threads.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from cds.fhir.timing import parse_fhir_datetime
from cds.readings import LastReadings
from cds.store.tables import (
    watch_deliveries,
    watch_history,
    watch_jobs,
    watch_notifications,
    watch_patients,
    watch_workers,
)
from cds.watch.changes import Change, ExposureRef, Notified, State, WatchEvent
from cds.watch.ids import PatientIds
from cds.watch.reading import Seen


@dataclass(frozen=True)
class CensusRow:
    """A claimed census patient: what a cycle needs to know about it."""

    patient: str  # pseudonym
    patient_ref: bytes  # the sealed FHIR id
    source: str
    next_poll_at: datetime
    cursor: datetime | None
    seen: tuple[Seen, ...]
    state: State | None  # the last evaluated state (None: never evaluated)


@dataclass(frozen=True)
class NewNotification:
    """A change to notify: its payload (without the patient id) and its targets."""

    change: Change
    payload: dict[str, Any]
    targets: tuple[str, ...]


@dataclass(frozen=True)
class CycleResult:
    """What one cycle of a patient found, written at once by `Census.finish`."""

    states: tuple[tuple[State, str], ...]  # evaluated states in order, with their trigger
    current: State | None  # the state now (None: nothing was evaluated this cycle)
    cursor: datetime | None
    seen: tuple[Seen, ...]
    notifications: tuple[NewNotification, ...]
    next_poll_at: datetime
    leave: bool  # the window closed with no CRS activity: the patient leaves the census


def _insert_ignoring_conflicts(connection: Connection, table: Any) -> Any:
    """INSERT … ON CONFLICT DO NOTHING in the connection's dialect."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def poll_offset(pseudonym: str, interval: timedelta) -> timedelta:
    """Where in the interval a patient is polled: spread evenly (by its pseudonym), so
    that 500 patients make a steady trickle of queries, not a burst every interval."""
    fraction = (zlib.crc32(pseudonym.encode()) % 10_000) / 10_000
    return interval * fraction


class Census:
    """The watch's tables, for the workers, the enrolment paths and status."""

    def __init__(self, engine: Engine, ids: PatientIds) -> None:
        self.engine = engine
        self.ids = ids

    # --- enrolment -------------------------------------------------------------------

    def enrol(self, patient_id: str, source: str, now: datetime, *, due_now: bool = True) -> str:
        """Put a patient in the census (or back in it); its pseudonym. A patient already
        in it is made due now when `due_now` (explicit enrolment, a notification)."""
        pseudonym = self.ids.pseudonym(patient_id)
        with self.engine.begin() as connection:
            self._enrol(connection, pseudonym, patient_id, source, now, due_now)
        return pseudonym

    def enrol_many(
        self, patients: Iterable[str], source: str, now: datetime, *, due_now: bool = True
    ) -> list[str]:
        with self.engine.begin() as connection:
            return [
                self._enrol(connection, self.ids.pseudonym(p), p, source, now, due_now)
                for p in patients
            ]

    def _enrol(
        self,
        connection: Connection,
        pseudonym: str,
        patient_id: str,
        source: str,
        now: datetime,
        due_now: bool,
    ) -> str:
        inserted = connection.execute(
            _insert_ignoring_conflicts(connection, watch_patients)
            .values(
                patient=pseudonym,
                patient_ref=self.ids.seal(patient_id),
                active=True,
                source=source,
                enrolled_at=now,
                next_poll_at=now,
                cursor_seen=[],
                failures=0,
            )
            .returning(watch_patients.c.patient)
        ).first()
        if inserted is not None:
            return pseudonym
        p = watch_patients.c
        # back into the census: polled again from a fresh look at its data
        connection.execute(
            update(watch_patients)
            .where(p.patient == pseudonym, p.active.is_(False))
            .values(
                active=True,
                left_at=None,
                source=source,
                enrolled_at=now,
                next_poll_at=now,
                patient_ref=self.ids.seal(patient_id),
                cursor=None,
                cursor_seen=[],
                failures=0,
                last_error=None,
            )
        )
        if due_now:
            connection.execute(
                update(watch_patients)
                .where(p.patient == pseudonym, p.next_poll_at > now)
                .values(next_poll_at=now)
            )
        return pseudonym

    def known(self) -> dict[str, tuple[bool, datetime | None]]:
        """Every census patient: pseudonym -> (active, left_at)."""
        p = watch_patients.c
        with self.engine.connect() as connection:
            return {
                row.patient: (row.active, row.left_at)
                for row in connection.execute(select(p.patient, p.active, p.left_at))
            }

    def mark_due(self, pseudonyms: Iterable[str], now: datetime) -> int:
        """Make census patients due now (new data announced); how many were."""
        wanted = list(pseudonyms)
        if not wanted:
            return 0
        p = watch_patients.c
        with self.engine.begin() as connection:
            result = connection.execute(
                update(watch_patients)
                .where(p.patient.in_(wanted), p.active.is_(True), p.next_poll_at > now)
                .values(next_poll_at=now)
            )
            return result.rowcount or 0

    # --- claiming and finishing cycles -------------------------------------------------

    def claim(self, owner: str, now: datetime, lease: timedelta, limit: int) -> list[CensusRow]:
        """Lease up to `limit` due patients to `owner` (none another worker holds)."""
        p = watch_patients.c
        due = (
            select(p.patient)
            .where(
                p.active.is_(True),
                p.next_poll_at <= now,
                or_(p.lease_until.is_(None), p.lease_until < now),
            )
            .order_by(p.next_poll_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.engine.begin() as connection:
            rows = connection.execute(
                update(watch_patients)
                .where(p.patient.in_(due.scalar_subquery()))
                .values(lease_owner=owner, lease_until=now + lease)
                .returning(*watch_patients.c)
            ).all()
        return [_census_row(r) for r in rows]

    def renew(self, owner: str, patients: Iterable[str], until: datetime) -> int:
        """Extend `owner`'s leases on patients whose cycles are still under way (a slow
        FHIR server does not hand them to another worker); how many it still held."""
        wanted = list(patients)
        if not wanted:
            return 0
        p = watch_patients.c
        with self.engine.begin() as connection:
            result = connection.execute(
                update(watch_patients)
                .where(p.patient.in_(wanted), p.lease_owner == owner)
                .values(lease_until=until)
            )
            return result.rowcount or 0

    def release(
        self, owner: str, patient: str, next_poll_at: datetime, error: str | None = None
    ) -> None:
        """Give a patient back without a result (a failed cycle: counted, retried)."""
        p = watch_patients.c
        values: dict[str, Any] = {
            "lease_owner": None,
            "lease_until": None,
            "next_poll_at": next_poll_at,
        }
        if error is not None:
            values["failures"] = p.failures + 1
            values["last_error"] = error[:300]
        with self.engine.begin() as connection:
            connection.execute(
                update(watch_patients)
                .where(p.patient == patient, p.lease_owner == owner)
                .values(**values)
            )

    def notified(self, patient: str) -> dict[str, Notified]:
        """What was notified for the patient, by exposure key."""
        n = watch_notifications.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(n.exposure, n.event, n.grade, n.possible_grade, n.change_key)
                .where(n.patient == patient)
                .order_by(n.created_at)
            ).all()
        memory: dict[str, Notified] = {}
        for row in rows:
            before = memory.get(row.exposure, Notified())
            memory[row.exposure] = before.after(
                WatchEvent(row.event), row.grade, row.possible_grade, row.change_key
            )
        return memory

    def finish(
        self, owner: str, row: CensusRow, result: CycleResult, now: datetime
    ) -> list[str] | None:
        """Write a cycle's result, if `owner` still holds the patient's lease; the ids of
        the notifications newly stored (None when the lease was lost: nothing written)."""
        p = watch_patients.c
        values: dict[str, Any] = {
            "lease_owner": None,
            "lease_until": None,
            "next_poll_at": result.next_poll_at,
            "cursor": result.cursor,
            "cursor_seen": [[s.version, s.updated.isoformat()] for s in result.seen],
            "failures": 0,
            "last_error": None,
        }
        if result.current is not None:
            values.update(_state_values(result.current))
        if result.leave:
            values.update(active=False, left_at=now)
        stored: list[str] = []
        with self.engine.begin() as connection:
            held = connection.execute(
                update(watch_patients)
                .where(p.patient == row.patient, p.lease_owner == owner)
                .values(**values)
            )
            if held.rowcount != 1:
                return None  # another worker took the patient over: it writes the result
            previous = row.state
            for state, trigger in result.states:
                if not state.same_as(previous):
                    connection.execute(
                        insert(watch_history).values(
                            patient=row.patient,
                            recorded_at=now,
                            trigger=trigger,
                            **_history_values(state),
                        )
                    )
                previous = state
            for new in result.notifications:
                if self._store_notification(connection, new, now):
                    stored.append(new.change.id)
        return stored

    def _store_notification(
        self, connection: Connection, new: NewNotification, now: datetime
    ) -> bool:
        change, state = new.change, new.change.state
        inserted = connection.execute(
            _insert_ignoring_conflicts(connection, watch_notifications)
            .values(
                id=change.id,
                change_key=change.key,
                patient=change.patient,
                exposure=change.exposure.key,
                event=change.event.value,
                grade=state.grade,
                max_grade=state.max_grade,
                possible_grade=change.possible,
                at=state.at,
                created_at=now,
                payload=new.payload,
            )
            .returning(watch_notifications.c.id)
        ).first()
        if inserted is None:
            return False  # the same change, already stored (by another worker, or before)
        if new.targets:
            connection.execute(
                insert(watch_deliveries),
                [
                    {
                        "notification_id": change.id,
                        "target": target,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                    }
                    for target in new.targets
                ],
            )
        return True

    # --- jobs only one worker runs at a time (the census search) ----------------------

    def claim_job(
        self, name: str, owner: str, now: datetime, lease: timedelta, every: timedelta
    ) -> bool:
        """True when `owner` may run job `name` now (due, and no other worker on it)."""
        j = watch_jobs.c
        with self.engine.begin() as connection:
            connection.execute(_insert_ignoring_conflicts(connection, watch_jobs).values(name=name))
            claimed = connection.execute(
                update(watch_jobs)
                .where(
                    j.name == name,
                    or_(j.lease_until.is_(None), j.lease_until < now),
                    or_(j.last_run_at.is_(None), j.last_run_at <= now - every),
                )
                .values(lease_owner=owner, lease_until=now + lease)
            )
            return claimed.rowcount == 1

    def finish_job(self, name: str, owner: str, now: datetime, *, ran: bool = True) -> None:
        j = watch_jobs.c
        values: dict[str, Any] = {"lease_owner": None, "lease_until": None}
        if ran:
            values["last_run_at"] = now
        with self.engine.begin() as connection:
            connection.execute(
                update(watch_jobs).where(j.name == name, j.lease_owner == owner).values(**values)
            )

    def request_job(self, name: str) -> None:
        """Make a job due at once (a gap in subscription events asks for a census search)."""
        j = watch_jobs.c
        with self.engine.begin() as connection:
            connection.execute(update(watch_jobs).where(j.name == name).values(last_run_at=None))

    # --- workers ---------------------------------------------------------------------

    def beat(self, worker: str, host: str, pid: int, now: datetime, started: datetime) -> None:
        w = watch_workers.c
        with self.engine.begin() as connection:
            updated = connection.execute(
                update(watch_workers).where(w.id == worker).values(beat_at=now)
            )
            if not updated.rowcount:
                try:
                    with connection.begin_nested():
                        connection.execute(
                            insert(watch_workers).values(
                                id=worker, host=host, pid=pid, started_at=started, beat_at=now
                            )
                        )
                except IntegrityError:
                    pass

    def forget_workers(self, before: datetime) -> None:
        """Workers silent since `before` (stopped or dead) leave the list."""
        with self.engine.begin() as connection:
            connection.execute(delete(watch_workers).where(watch_workers.c.beat_at < before))

    def stop_worker(self, worker: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(watch_workers).where(watch_workers.c.id == worker))
            connection.execute(
                update(watch_patients)
                .where(watch_patients.c.lease_owner == worker)
                .values(lease_owner=None, lease_until=None)
            )

    def due_count(self, now: datetime) -> int:
        p = watch_patients.c
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count())
                    .select_from(watch_patients)
                    .where(and_(p.active.is_(True), p.next_poll_at <= now))
                ).scalar_one()
            )


def _state_values(state: State) -> dict[str, Any]:
    """A census row's state: as history keeps it, and what only the row keeps."""
    return {
        **_history_values(state),
        "watch_until": state.watch_until,
        "temperature_since": state.temperature_since,
        "readings": state.readings.json(),
    }


def _history_values(state: State) -> dict[str, Any]:
    exposure = state.exposure
    return {
        "evaluated_at": state.at,
        "grade": state.grade,
        "max_grade": state.max_grade,
        "possible_grade": state.possible_grade,
        "exposure": exposure.key if exposure else None,
        "product": exposure.product if exposure else None,
        "kind": exposure.kind if exposure else None,
        "exposure_at": exposure.at if exposure else None,
        "rule_set_version": state.rule_set_version,
    }


def stored_state(row: Row[Any]) -> State | None:
    """The state kept in a census row (None: never evaluated)."""
    if row.evaluated_at is None:
        return None
    exposure = (
        ExposureRef(row.exposure, row.product, row.kind, row.exposure_at)
        if row.exposure is not None
        else None
    )
    return State(
        at=row.evaluated_at,
        exposure=exposure,
        grade=row.grade,
        max_grade=row.max_grade,
        possible_grade=row.possible_grade,
        fever=False,  # not kept: only a fresh evaluation decides about a first fever
        watch_until=row.watch_until,
        temperature_since=row.temperature_since,
        rule_set_version=row.rule_set_version or "",
        readings=LastReadings.from_json(row.readings),
    )


def _census_row(row: Row[Any]) -> CensusRow:
    return CensusRow(
        patient=row.patient,
        patient_ref=row.patient_ref,
        source=row.source,
        next_poll_at=row.next_poll_at,
        cursor=row.cursor,
        seen=_seen(row.cursor_seen),
        state=stored_state(row),
    )


def _seen(value: Sequence[Any] | None) -> tuple[Seen, ...]:
    return tuple(Seen(str(v), parse_fhir_datetime(u)) for v, u in value or ())
