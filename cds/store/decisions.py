"""The decision store the service runs with: records every call, quiets cards already
acted on, takes feedback, and remembers token ids. Database work runs in worker threads
(synchronous SQLAlchemy Core); the event loop only waits for it."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from sqlalchemy import Connection, Dialect, Engine, Table, delete, insert, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from cds import cards
from cds.clock import Clock
from cds.decision import DecidedCard, Decision
from cds.errors import CdsError
from cds.evaluation import Evaluation
from cds.metrics import DATABASE_SECONDS, RECORDS_SPOOLED, Timer
from cds.pipeline import HookCall
from cds.runtime import Runtime
from cds.store import database, records
from cds.store.pseudonym import Pseudonyms, key_from_file
from cds.store.records import AuditRecord
from cds.store.spool import Spool
from cds.store.tables import acknowledgements, audit_records, seen_tokens
from cds.store.tables import cards as cards_table

log = logging.getLogger("cds.store")


def refuses(exc: Exception) -> bool:
    """The database refused the values themselves (too long, a duplicate key…): trying
    again later will not help, unlike a lost connection or a database that is away."""
    return isinstance(exc, DataError | IntegrityError)


class RecordUnavailable(CdsError):
    """Neither the database nor the spool can take the record: no answer without one."""

    status = 503


class ReplayCheckUnavailable(CdsError):
    """The database that remembers token ids cannot be reached: a token is not accepted
    unchecked (a replay would pass), nor refused as the client's fault."""

    status = 503


@dataclass(frozen=True)
class Acknowledgement:
    """A clinician accepted or overrode a CRS card of this exposure at `grade`."""

    grade: int
    outcome: str
    acted_at: datetime
    card_uuid: str


# How stale this process's list of acknowledged patients may be: feedback stored by
# another replica quiets its cards here at most this much later (until then they are
# shown in full: the safe side). Feedback stored by this process applies at once.
ACKNOWLEDGED_REFRESH_SECONDS = 2.0


class AcknowledgedPatients:
    """The patients (pseudonyms) with an acknowledgement still in force, so that a chart
    opening for anyone else — nearly every one — reads no acknowledgement at all."""

    def __init__(self, period: timedelta) -> None:
        self.period = period
        self._patients: frozenset[str] = frozenset()
        self._read_at = -math.inf
        self._lock = threading.Lock()

    def expire(self) -> None:
        """Read them again at the next use (feedback was just stored)."""
        self._read_at = -math.inf

    def holds(self, connection: Connection, patient: str, now: datetime) -> bool:
        with self._lock:
            if time.monotonic() - self._read_at > ACKNOWLEDGED_REFRESH_SECONDS:
                self._patients = frozenset(
                    connection.scalars(
                        select(acknowledgements.c.patient)
                        .where(acknowledgements.c.acted_at >= now - self.period)
                        .distinct()
                    )
                )
                self._read_at = time.monotonic()
            return patient in self._patients


class DecisionStore:
    """Records, acknowledgements, feedback and token ids, in one database."""

    def __init__(
        self,
        engine: Engine,
        url: str,
        pseudonyms: Pseudonyms,
        spool: Spool,
        runtime: Runtime,
        acknowledgement_period: timedelta,
        new_id: Callable[[], str],
        clock: Clock,
    ) -> None:
        self.engine = engine
        self.url = url
        self.pseudonyms = pseudonyms
        self.spool = spool
        self.runtime = runtime
        self.acknowledgement_period = acknowledgement_period
        self.acknowledged = AcknowledgedPatients(acknowledgement_period)
        self.new_id = new_id
        self.clock = clock

    @classmethod
    def open(cls, runtime: Runtime, new_id: Callable[[], str], clock: Clock) -> DecisionStore:
        """The store of the settings: SQLite in the data directory is created and migrated
        here; PostgreSQL must be migrated already (`crs-cds db upgrade`) and have a shared
        pseudonym key (`CRS_PSEUDONYM_KEY`)."""
        settings = runtime.settings
        url = settings.database
        sqlite = database.is_sqlite(url)
        if sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            database.upgrade(url)
        elif not settings.pseudonym_key:
            raise database.StoreUnavailable(
                "setting CRS_PSEUDONYM_KEY is required with a shared database: every replica "
                "must pseudonymise patients alike (at least 16 characters, kept secret)"
            )
        engine = database.create(url, durable_commit=settings.database_durable_commit)
        if not sqlite:
            database.check_migrated(engine, url)
        key = (
            settings.pseudonym_key.encode()
            if settings.pseudonym_key
            else key_from_file(settings.data_dir)
        )
        return cls(
            engine,
            url,
            Pseudonyms(key),
            Spool(settings.data_dir / "spool"),
            runtime,
            runtime.rules.acknowledgement,
            new_id,
            clock,
        )

    def close(self) -> None:
        self.engine.dispose()

    # --- the pipeline's memory: suppress, then record ---------------------------------

    def remember(
        self,
        call: HookCall,
        evaluation: Evaluation,
        decision: Decision,
        input_digest: str,
        started: float,
    ) -> Decision:
        """Suppress, then record, in one transaction: CRS cards a
        clinician already acted on (at no higher grade, within the acknowledgement
        period) are made quiet, and the call's record is written before the answer — to
        the database, else to the spool; RecordUnavailable when neither can take it.
        Order checks are never quieted; if the acknowledgements cannot be read, cards are
        shown in full (a full card is the safe side). Synchronous: the pipeline calls it in
        the thread that evaluated the call (or on the loop for a small one)."""
        patient = self.pseudonyms.of(call.context.patientId)
        quieted = [c for c in decision.cards if c.kind == "crs" and c.exposure is not None]
        answered = decision
        try:
            with self.engine.begin() as connection:
                if quieted and self.acknowledged.holds(connection, patient, evaluation.at):
                    found = self._acknowledgements(connection, patient)
                    if found:
                        answered = decision.with_cards(
                            tuple(self._quiet(c, found, evaluation.at) for c in decision.cards)
                        )
                record = self._record(call, evaluation, answered, patient, input_digest, started)
                with Timer(DATABASE_SECONDS.labels("record")):
                    _insert(connection, [record])
            return answered
        except SQLAlchemyError as exc:
            if refuses(exc):  # not an outage: kept all the same, and said louder
                log.error(
                    "database refused the record: spooled", extra={"error": type(exc).__name__}
                )
            else:
                log.warning(
                    "database unavailable: record spooled", extra={"error": type(exc).__name__}
                )
            RECORDS_SPOOLED.inc()
            record = self._record(call, evaluation, decision, patient, input_digest, started)
            try:
                self.spool.append(record)
            except OSError as spool_error:
                log.error(
                    "neither the database nor the spool took the record",
                    extra={"error": type(spool_error).__name__},
                )
                raise RecordUnavailable(
                    "the decision could not be recorded (database and local spool both "
                    "unavailable); no answer is given without a record: try again"
                ) from spool_error
            return decision

    def _record(
        self,
        call: HookCall,
        evaluation: Evaluation,
        decision: Decision,
        patient: str,
        input_digest: str,
        started: float,
    ) -> AuditRecord:
        client = call.client
        return records.build(
            record_id=self.new_id(),
            recorded_at=self.clock(),
            service=call.service.id,
            hook=call.request.hook,
            hook_instance=call.request.hookInstance,
            client_iss=client.iss if client else None,
            client_sub=client.sub if client else None,
            tenant=client.tenant if client else None,
            patient=patient,
            evaluation=evaluation,
            decision=decision,
            rule_set_version=self.runtime.rules.version,
            rule_set_digest=self.runtime.knowledge.digest,
            input_digest=input_digest,
            facts=None,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def write(self, batch: list[AuditRecord], skip_existing: bool = False) -> None:
        """Insert records and their cards; with `skip_existing` (a spool drain, which may
        be repeated) records already stored are left out."""
        with self.engine.begin() as connection:
            if skip_existing:
                ids = [r.id for r in batch]
                have: set[str] = set(
                    connection.scalars(
                        select(audit_records.c.id).where(audit_records.c.id.in_(ids))
                    )
                )
                batch = [r for r in batch if r.id not in have]
                if not batch:
                    return
            _insert(connection, batch)

    def move_spooled(self) -> int:
        """Move spooled records into the database (when it is back); those it refuses
        are kept aside (see `Spool.drain`). Returns how many were moved."""
        return self.spool.drain(lambda batch: self.write(batch, skip_existing=True), refuses)

    async def drain_spool(self) -> int:
        """`move_spooled`, in a worker thread."""
        return await anyio.to_thread.run_sync(self.move_spooled)

    # --- suppression (the pipeline's Suppressor) ------------------------------------

    def _quiet(
        self, decided: DecidedCard, found: dict[str, Acknowledgement], at: datetime
    ) -> DecidedCard:
        ack = found.get(decided.exposure or "")
        grade = decided.alert_grade
        if ack is None or grade is None or decided.kind != "crs" or decided.data_missing:
            return decided  # (a card saying data are missing alerts until they are charted)
        until = ack.acted_at + self.acknowledgement_period
        if grade > ack.grade or not (ack.acted_at <= at <= until):
            return decided
        quiet = cards.acknowledged_card(decided.card, ack.outcome, ack.grade, ack.acted_at, until)
        return DecidedCard(
            quiet,
            decided.kind,
            grade=decided.grade,
            possible_grade=decided.possible_grade,
            exposure=decided.exposure,
            acknowledged=True,
        )

    def acknowledgements(self, patient: str) -> dict[str, Acknowledgement]:
        """The acknowledgements of a patient's exposures, by exposure."""
        with self.engine.connect() as connection:
            return self._acknowledgements(connection, patient)

    def _acknowledgements(self, connection: Connection, patient: str) -> dict[str, Acknowledgement]:
        with Timer(DATABASE_SECONDS.labels("acknowledgements")):
            rows = connection.execute(
                select(acknowledgements).where(acknowledgements.c.patient == patient)
            )
            return {
                row.exposure: Acknowledgement(row.grade, row.outcome, row.acted_at, row.card_uuid)
                for row in rows
            }

    # --- token ids (the authentication's ReplayGuard) --------------------------------

    async def first_use(self, issuer: str, jti: str, expires: datetime) -> bool:
        """True the first time this (issuer, jti) is presented, on any replica (or again
        once its earlier use has expired); False for a replay. Atomic: of concurrent
        uses, exactly one is first."""

        def work() -> bool:
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        insert(seen_tokens).values(issuer=issuer, jti=jti, expires_at=expires)
                    )
                return True
            except IntegrityError:
                pass
            with self.engine.begin() as connection:
                renewed = connection.execute(
                    update(seen_tokens)
                    .where(
                        seen_tokens.c.issuer == issuer,
                        seen_tokens.c.jti == jti,
                        seen_tokens.c.expires_at < self.clock(),
                    )
                    .values(expires_at=expires)
                )
                return renewed.rowcount == 1

        try:
            return await anyio.to_thread.run_sync(work)
        except SQLAlchemyError as exc:
            log.warning("token ids cannot be checked", extra={"error": type(exc).__name__})
            raise ReplayCheckUnavailable(
                "the token could not be checked against replay (the service's database is "
                "unavailable); try again"
            ) from exc

    def forget_expired_tokens(self, now: datetime) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(delete(seen_tokens).where(seen_tokens.c.expires_at < now))
            return result.rowcount or 0


class _RowInsert:
    """An INSERT of whole rows into `table`: compiled once for the dialect, each value
    bound by its column's own type (stored exactly as SQLAlchemy stores it) and executed
    on the driver's cursor. A record is written at every hook call, before its answer, and
    SQLAlchemy's work per execution cost about as much as the write itself (one record of
    a 1,000-resource chart, `bench.records.record_write_cost`, p50: SQLite 0.53 -> 0.33 ms,
    PostgreSQL 1.9 -> 1.36 ms with the pipeline below)."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        compiled = insert(table).compile(dialect=dialect)
        self.sql = compiled.string
        self.order = compiled.positiontup  # a positional paramstyle's order (SQLite), or None
        self.binds = [
            (c.key, c.type.dialect_impl(dialect).bind_processor(dialect)) for c in table.c
        ]

    def parameters(
        self, rows: Iterable[Mapping[str, object]]
    ) -> Sequence[Sequence[object]] | Sequence[Mapping[str, object]]:
        """The rows' values, bound, in the paramstyle of the dialect."""
        bound = [
            {key: row[key] if bind is None else bind(row[key]) for key, bind in self.binds}
            for row in rows
        ]
        if self.order is None:
            return bound
        return [tuple(values[key] for key in self.order) for values in bound]


@functools.lru_cache(maxsize=16)  # one per dialect (engine) in use
def _row_inserts(dialect: Dialect) -> tuple[_RowInsert, _RowInsert]:
    return _RowInsert(audit_records, dialect), _RowInsert(cards_table, dialect)


def _insert(connection: Connection, batch: list[AuditRecord]) -> None:
    """Insert records and their cards, in the connection's transaction. PostgreSQL gets
    them in one round trip (a pipeline: BEGIN, the inserts, then one sync) instead of one
    per statement. A driver error is raised as SQLAlchemy's (a lost connection is
    invalidated, so the pool does not hand it out again)."""
    record_insert, card_insert = _row_inserts(connection.dialect)
    record_rows = record_insert.parameters(_record_row(r) for r in batch)
    card_rows = card_insert.parameters(_card_row(r, c) for r in batch for c in r.cards)
    dbapi_connection = connection.connection
    driver = dbapi_connection.driver_connection
    pipeline = getattr(driver, "pipeline", None)  # psycopg's; SQLite has none (nor needs it)
    statement = record_insert.sql
    try:
        cursor = dbapi_connection.cursor()
        try:
            with pipeline() if pipeline is not None else contextlib.nullcontext():
                cursor.executemany(statement, record_rows)
                if card_rows:
                    statement = card_insert.sql
                    cursor.executemany(statement, card_rows)
        finally:
            cursor.close()
    except connection.dialect.loaded_dbapi.Error as exc:
        disconnected = connection.dialect.is_disconnect(exc, dbapi_connection, None)
        if disconnected:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement,
            None,
            exc,
            connection.dialect.loaded_dbapi.Error,
            connection_invalidated=disconnected,
            dialect=connection.dialect,
        ) from exc


def _record_row(record: AuditRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "recorded_at": record.recorded_at,
        "service": record.service,
        "hook": record.hook,
        "hook_instance": record.hook_instance,
        "client_iss": record.client_iss,
        "client_sub": record.client_sub,
        "tenant": record.tenant,
        "patient": record.patient,
        "evaluated_at": record.evaluated_at,
        "rule_set_version": record.rule_set_version,
        "rule_set_digest": record.rule_set_digest,
        "input_digest": record.input_digest,
        "data_issues": record.data_issues,
        "data_complete": record.data_complete,
        "cards": [records.card_json(c) for c in record.cards],
        "facts": record.facts,
        "latency_ms": record.latency_ms,
    }


def _card_row(record: AuditRecord, card: records.CardRecord) -> dict[str, object]:
    return {
        "uuid": card.uuid,
        "record_id": record.id,
        "service": record.service,
        "kind": card.kind,
        "indicator": card.indicator,
        "grade": card.grade,
        "alert_grade": card.alertGrade,
        "acknowledged": card.acknowledged,
        "patient": record.patient,
        "exposure": card.exposure,
        "suggestions": list(card.suggestions),
        "override_reasons": list(card.overrideReasons),
        "shown_at": record.recorded_at,
    }
