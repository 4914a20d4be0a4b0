"""`crs-cds watch run`: one worker. Several share the work through the database.

Each tick (at most a second apart, sooner when woken by a stored notification) a worker:
1. processes the subscription notifications stored since (inbox): the patients they
   name are made due now; an administration of an unknown patient is checked against
   the catalogue (one search) and enrolled when it is a risk product;
2. runs the catch-up asked for by a gap in event numbers, and the periodic census search
   — each a job one worker at a time runs (a job lease);
3. claims due census patients (row leases) up to its concurrency, and runs a cycle for
   each: what changed since the cursor (one search per watched type); if anything did, or the window
   has passed, the patient's data by the service's fallback queries, evaluated by the
   service's engine at the time of each new piece of data and at now; the changes that
   matter; everything written at once while the lease is held;
4. sends the notifications due (webhooks, write-back), new ones at once.

A patient is polled at its own phase of the interval (spread by pseudonym), so that the
FHIR server sees a steady trickle. The engine runs in a thread: a worker inside
`crs-cds serve` never holds the event loop for an evaluation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cds.engine.facts import Facts
from cds.errors import PrefetchUnavailable
from cds.evaluation import Evaluation, evaluate, judge
from cds.fhir.client import FhirQueryFailed, QueriesTimedOut
from cds.metrics import NOTIFICATIONS
from cds.watch.census import CensusRow, CycleResult, NewNotification, poll_offset
from cds.watch.changes import Change, Notified, State, detect_all, gap_change, state_of
from cds.watch.delivery import SEND_TIMEOUT_SECONDS, DueDelivery, payload
from cds.watch.ids import SealedIdUnreadable
from cds.watch.reading import WATCHED_TYPES, advance
from cds.watch.service import Watch

log = logging.getLogger("cds.watch")
K = TypeVar("K")
V = TypeVar("V")

CENSUS_JOB = "census-search"
CATCH_UP_JOB = "catch-up"
JOB_LEASE = timedelta(minutes=5)
# The longest a worker waits to try a job again after its FHIR read failed (operational: a
# server back up is searched within a minute; one down is not searched every tick)
JOB_RETRY_MAX = timedelta(seconds=60)
DELIVERY_LEASE = timedelta(seconds=SEND_TIMEOUT_SECONDS + 5)  # a sender that died: resent after
BEAT_EVERY = timedelta(seconds=5)
FORGET_WORKERS_AFTER = timedelta(minutes=10)
INBOX_KEEP = timedelta(days=7)
EMPTY_NOTIFICATION_LOOKBACK = timedelta(minutes=2)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
FHIR_FAILURES = (PrefetchUnavailable, FhirQueryFailed, QueriesTimedOut)


# How far ahead of the watch's clock a new datum may be dated and still be waited for
# (looked at again until its time has come), rather than taken as a charting error.
AHEAD_HELD = timedelta(hours=1)


def next_poll(pseudonym: str, now: datetime, interval: timedelta) -> datetime:
    """The patient's next turn after `now`: its own phase of the interval."""
    phase = _EPOCH + poll_offset(pseudonym, interval)
    turns = math.floor((now - phase) / interval) + 1
    return phase + interval * turns


def dated(facts: Facts, refs: frozenset[str]) -> Iterator[datetime]:
    """When what the resources `refs` say happened, as the facts read them."""
    yield from (m.at for m in facts.measurements if m.source in refs)
    yield from (o.at for o in facts.oxygen if o.source in refs)
    yield from (a.start for a in facts.administrations if a.source in refs)
    yield from (n.at for n in facts.neuro if n.source in refs)


def data_times(
    facts: Facts, refs: frozenset[str], now: datetime, lookback: timedelta
) -> list[datetime]:
    """When the new or changed resources `refs` say something happened (within the
    look-back, before now): the times the watch evaluates at."""
    return sorted({t for t in dated(facts, refs) if now - lookback <= t < now})


def ahead_of(facts: Facts, refs: frozenset[str], at: datetime) -> bool:
    """Whether any of the new or changed resources `refs` is dated after `at`, by no
    more than AHEAD_HELD (a clock a little ahead of ours: looked at again until then;
    further ahead is an error of the chart, not of a clock, and is not waited for)."""
    return any(at < t <= at + AHEAD_HELD for t in dated(facts, refs))


class Worker:
    """One watch worker (see the module docstring)."""

    def __init__(self, watch: Watch, name: str | None = None) -> None:
        self.watch = watch
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started = watch.clock()
        self.running: set[asyncio.Task[None]] = set()
        self.in_flight: set[str] = set()  # patients whose cycles are under way
        self._beat_at: datetime | None = None
        self._renewed_at: datetime | None = None
        self._delivering: asyncio.Task[None] | None = None
        self._deliver_again = False
        # a job whose FHIR read failed: how often in a row, and not before when again
        self._job_failures: dict[str, int] = {}
        self._job_retry_at: dict[str, datetime] = {}

    @property
    def lease(self) -> timedelta:
        """A patient's lease: one interval, or two FHIR deadlines (a cycle's two round
        trips) when the interval is shorter. A cycle that outlives its lease writes
        nothing: the worker that took the patient over does."""
        c = self.watch.config
        return max(c.poll, timedelta(seconds=2 * c.fhir_timeout_seconds))

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; then finish the cycles under way and give back the
        leases (a worker stopped in order leaves nothing to expire)."""
        watch = self.watch
        log.info("watch worker started", extra={"worker": self.name})
        try:
            while not stop.is_set():
                watch.wakeup.clear()  # a wake-up during the tick makes the next one at once
                try:
                    await self.tick()
                except Exception as exc:  # a database or server hiccup: next tick
                    log.warning("watch tick failed", extra={"error": type(exc).__name__})
                waiters = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(watch.wakeup.wait()),
                ]
                await asyncio.wait(
                    waiters, timeout=watch.config.tick_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in waiters:
                    waiter.cancel()
        finally:
            busy = [*self.running, *([self._delivering] if self._delivering else [])]
            if busy:
                await asyncio.wait(busy, timeout=10)
            await asyncio.to_thread(watch.census.stop_worker, self.name)
            log.info("watch worker stopped", extra={"worker": self.name})

    async def tick(self) -> None:
        """One round of everything a worker does (the module docstring's 1–4)."""
        await self._beat()
        await self._renew()
        await self.inbox()
        await self.catch_up()
        await self.census_search()
        await self.patients()
        self.deliver_soon()

    async def drain(self) -> None:
        """Tick until no patient is due or under way, and the deliveries due are sent
        (tests, the benchmark)."""
        while True:
            await self.tick()
            if self.running:
                await asyncio.wait(self.running)
                continue
            due = await asyncio.to_thread(self.watch.census.due_count, self.watch.clock())
            if not due:
                if self._delivering is not None:
                    await self._delivering
                await self.deliver()
                return

    def deliver_soon(self) -> None:
        """Send the deliveries due in the background (one sender task at a time): a slow
        or failing receiver never holds up the polling."""
        if self._delivering is None or self._delivering.done():
            self._delivering = asyncio.create_task(self._deliveries())
        else:
            self._deliver_again = True  # the sender looks once more before it stops

    async def _deliveries(self) -> None:
        while True:
            self._deliver_again = False
            try:
                await self.deliver()
            except Exception as exc:  # the database: the next tick tries again
                log.warning("watch deliveries failed", extra={"error": type(exc).__name__})
                return
            if not self._deliver_again:
                return

    async def _beat(self) -> None:
        now = self.watch.clock()
        if self._beat_at is not None and now - self._beat_at < BEAT_EVERY:
            return
        self._beat_at = now
        census = self.watch.census
        await asyncio.to_thread(
            census.beat, self.name, socket.gethostname(), os.getpid(), now, self.started
        )
        await asyncio.to_thread(census.forget_workers, now - FORGET_WORKERS_AFTER)

    async def _renew(self) -> None:
        """Every third of a lease, the leases of the cycles under way are extended: a
        worker alive keeps its patients, a dead one loses them within one lease."""
        now = self.watch.clock()
        if self._renewed_at is not None and now - self._renewed_at < self.lease / 3:
            return
        self._renewed_at = now
        if self.in_flight:
            await asyncio.to_thread(
                self.watch.census.renew, self.name, set(self.in_flight), now + self.lease
            )

    # --- patients ------------------------------------------------------------------

    async def patients(self) -> None:
        """Claim due patients up to the free slots and start their cycles."""
        self.running = {t for t in self.running if not t.done()}
        free = self.watch.config.concurrency - len(self.running)
        if free <= 0:
            return
        now = self.watch.clock()
        rows = await asyncio.to_thread(self.watch.census.claim, self.name, now, self.lease, free)
        for row in rows:
            task = asyncio.create_task(self.cycle(row))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def cycle(self, row: CensusRow) -> None:
        """One patient: look, evaluate if anything is new, write, notify."""
        self.in_flight.add(row.patient)
        try:
            await self._cycle(row)
        finally:
            self.in_flight.discard(row.patient)

    async def _cycle(self, row: CensusRow) -> None:
        watch = self.watch
        now = watch.clock()
        interval = watch.config.poll
        try:
            patient_id = watch.ids.open(row.patient_ref)
        except SealedIdUnreadable:
            await asyncio.to_thread(
                watch.census.release,
                self.name,
                row.patient,
                next_poll(row.patient, now, interval),
                "the patient id cannot be read (sealed with another CRS_WATCH_ID_KEY?)",
            )
            return
        try:
            result = await self._look(row, patient_id, now)
        except FHIR_FAILURES as exc:
            self._refused(exc)
            reason = exc.message if isinstance(exc, PrefetchUnavailable) else str(exc)
            log.warning("watch cycle failed", extra={"error": type(exc).__name__})
            await asyncio.to_thread(
                watch.census.release,
                self.name,
                row.patient,
                next_poll(row.patient, now, interval),
                reason,
            )
            return
        except Exception as exc:
            log.error("watch cycle failed", extra={"error": type(exc).__name__})
            await asyncio.to_thread(
                watch.census.release,
                self.name,
                row.patient,
                next_poll(row.patient, now, interval),
                f"internal error ({type(exc).__name__})",
            )
            return
        stored = await asyncio.to_thread(watch.census.finish, self.name, row, result, watch.clock())
        if stored is None:
            log.warning("watch cycle outlived its lease: another worker took the patient over")
        elif stored:
            log.info("watch notifications", extra={"worker": self.name, "count": len(stored)})
            self.deliver_soon()

    async def _look(self, row: CensusRow, patient_id: str, now: datetime) -> CycleResult:
        watch = self.watch
        version = watch.runtime.rules.version
        states: list[tuple[State, str]] = []
        current: State | None = None
        cursor, seen = row.cursor, row.seen
        if row.state is None or row.cursor is None:
            # first look: the patient's data as they are now (no history replayed)
            evaluation, resources = await self._evaluate(patient_id)
            current = state_of(evaluation, version)
            states.append((current, "enrol"))
            changed = await watch.reader.settle(patient_id, advance(resources, None, ()))
            cursor, seen = changed.cursor, changed.seen
        else:
            changed = await watch.reader.changed(patient_id, row.cursor, row.seen)
            passed = row.state.exposure is None or (
                row.state.watch_until is not None and now >= row.state.watch_until
            )
            held = False
            if changed.refs or passed:
                evaluation, _ = await self._evaluate(patient_id)
                at = evaluation.at
                lookback = watch.runtime.rules.grading.lookback
                for t in data_times(evaluation.facts, changed.refs, at, lookback):
                    earlier = await asyncio.to_thread(
                        judge, watch.runtime, evaluation.facts, t, patient_id=patient_id
                    )
                    states.append((state_of(earlier, version), "data"))
                current = state_of(evaluation, version)
                states.append((current, "data" if changed.refs else "window"))
                # data dated after the evaluation (a clock ahead of ours) are not marked
                # seen, so that the next look evaluates them again at their time
                held = ahead_of(evaluation.facts, changed.refs, at)
            if not held:
                cursor, seen = changed.cursor or row.cursor, changed.seen
        changes: list[Change] = []
        if states:
            memory = await asyncio.to_thread(watch.census.notified, row.patient)
            changes = detect_all(row.patient, [s for s, _ in states], memory, watch.limits)
        elif row.state is not None and row.state.exposure is not None:
            # nothing new: only time moved, and with it a data gap may have opened
            still = replace(row.state, at=now)
            if gap_change(row.patient, still, Notified(), watch.limits) is not None:
                memory = await asyncio.to_thread(watch.census.notified, row.patient)
                notified = memory.get(row.state.exposure.key, Notified())
                gap = gap_change(row.patient, still, notified, watch.limits)
                changes += [gap] if gap is not None else []
        return CycleResult(
            states=tuple(states),
            current=current,
            cursor=cursor,
            seen=seen,
            notifications=tuple(self._new(c) for c in changes),
            next_poll_at=next_poll(row.patient, now, watch.config.poll),
            leave=current is not None and current.exposure is None,
        )

    async def _evaluate(self, patient_id: str) -> tuple[Evaluation, list[dict[str, Any]]]:
        """The patient's data read, then evaluated at the time they were read (not when
        the cycle began: what was written meanwhile, and read, is judged too); with the
        resources polling watches (their `meta.lastUpdated` set the cursor of a first
        look)."""
        watch = self.watch
        collected = await watch.reader.patient_data(patient_id, watch.clock())
        resources = [r.json() for r in collected.of_type(*WATCHED_TYPES)]
        at = watch.clock()
        evaluation = await asyncio.to_thread(evaluate, watch.runtime, collected, patient_id, at)
        return evaluation, resources

    def _new(self, change: Change) -> NewNotification:
        config = self.watch.config
        return NewNotification(change, payload(change, config), config.targets())

    # --- notifications out ----------------------------------------------------------------

    async def deliver(self) -> None:
        """Send the deliveries due (each claimed by this worker alone)."""
        watch = self.watch
        while True:
            now = watch.clock()
            due = await asyncio.to_thread(watch.deliveries.claim, now, DELIVERY_LEASE, 20)
            if not due:
                return
            await asyncio.gather(*(self._send(d) for d in due))

    async def _send(self, due: DueDelivery) -> None:
        watch = self.watch
        error = await watch.sender.send(due, watch.clock())
        if error is not None:
            log.warning("watch delivery failed", extra={"error": error})
        outcome = await asyncio.to_thread(watch.deliveries.record, due, error, watch.clock())
        channel = "fhir" if due.target.startswith("fhir:") else "webhook"
        NOTIFICATIONS.labels(channel, outcome).inc()

    # --- subscription notifications, catch-up, census search -----------------------------

    async def inbox(self) -> None:
        """The stored subscription notifications: the patients they name made due."""
        watch = self.watch
        now = watch.clock()
        claimed = await asyncio.to_thread(
            watch.subscriptions.claim_inbox, self.name, now, self.lease
        )
        if not claimed:
            return
        known = await asyncio.to_thread(watch.census.known)
        events = [
            (item, e) for item in claimed if item.kind == "event-notification" for e in item.events
        ]
        try:
            # an id-only event without the patient in its context: read its focus
            subjects = await self._each(
                [e.focus for _, e in events if e.patient is None and e.focus is not None],
                lambda focus: watch.reader.subject_of(*focus),
            )
        except FHIR_FAILURES as exc:
            self._refused(exc)
            log.warning("notification focus not read", extra={"error": type(exc).__name__})
            return  # the rows stay leased, and are processed again after the lease
        due: set[str] = set()
        candidates: set[str] = set()
        empty_in: set[str] = set()
        for item, event in events:
            patient = event.patient or (subjects.get(event.focus) if event.focus else None)
            if patient is None:
                empty_in.add(item.subscription)  # empty payload: ask what changed
                continue
            pseudonym = watch.ids.pseudonym(patient)
            if known.get(pseudonym, (False, None))[0]:
                due.add(pseudonym)
            elif event.focus is None or event.focus[0] == "MedicationAdministration":
                candidates.add(patient)
        try:
            found = await self._each(list(candidates), lambda p: watch.reader.candidates(now, p))
        except FHIR_FAILURES as exc:
            self._refused(exc)
            log.warning("candidate not checked", extra={"error": type(exc).__name__})
            return
        enrol = [p for p, administrations in found.items() if p in administrations]
        if enrol:
            await asyncio.to_thread(watch.census.enrol_many, enrol, "subscription", now)
        await asyncio.to_thread(watch.census.mark_due, due, now)
        for subscription in empty_in:
            await asyncio.to_thread(
                watch.subscriptions.ask_catch_up, subscription, now - EMPTY_NOTIFICATION_LOOKBACK
            )
        await asyncio.to_thread(
            watch.subscriptions.processed, self.name, [item.id for item in claimed], now
        )

    def _refused(self, exc: BaseException) -> None:
        """A FHIR answer 401: the token is no longer good (a SMART token is asked for
        anew at the next look)."""
        seen: BaseException | None = exc
        while seen is not None:
            if isinstance(seen, FhirQueryFailed) and seen.status == 401:
                self.watch.credentials.expire()
                return
            seen = seen.__cause__

    async def _each(self, keys: list[K], read: Callable[[K], Awaitable[V]]) -> dict[K, V]:
        """`read` of every key, concurrently (at most the worker's concurrency at once)."""
        limit = asyncio.Semaphore(self.watch.config.concurrency)

        async def one(key: K) -> tuple[K, V]:
            async with limit:
                return key, await read(key)

        return dict(await asyncio.gather(*(one(k) for k in dict.fromkeys(keys))))

    async def _job_read(
        self,
        job: str,
        now: datetime,
        every: timedelta,
        read: Callable[[], Awaitable[V]],
        what: str,
    ) -> V | None:
        """Claim a job (one worker at a time, at most once per `every`) and do its FHIR
        read; None when another worker holds the job, or when the read failed (the job is
        then released as not run, and logged) — after a failure this worker tries it again
        only after a backoff (1 s, doubling to JOB_RETRY_MAX), so an unreachable server is
        neither searched nor logged every tick."""
        retry_at = self._job_retry_at.get(job)
        if retry_at is not None and now < retry_at:
            return None
        census = self.watch.census
        if not await asyncio.to_thread(census.claim_job, job, self.name, now, JOB_LEASE, every):
            return None
        try:
            found = await read()
        except FHIR_FAILURES as exc:
            self._refused(exc)
            failures = self._job_failures[job] = self._job_failures.get(job, 0) + 1
            backoff = min(timedelta(seconds=2 ** min(failures - 1, 16)), JOB_RETRY_MAX)
            self._job_retry_at[job] = now + backoff
            log.warning(
                f"{what} failed",
                extra={
                    "error": type(exc).__name__,
                    "failures": failures,
                    "retryInSeconds": backoff.total_seconds(),
                },
            )
            await asyncio.to_thread(census.finish_job, job, self.name, now, ran=False)
            return None
        self._job_failures.pop(job, None)
        self._job_retry_at.pop(job, None)
        return found

    async def catch_up(self) -> None:
        """After missed events: every census patient whose data changed since is due."""
        watch = self.watch
        since = await asyncio.to_thread(watch.subscriptions.catch_up_since)
        if since is None:
            return
        now = watch.clock()
        census = watch.census
        touched = await self._job_read(
            CATCH_UP_JOB, now, timedelta(0), lambda: watch.reader.touched(since), "catch-up"
        )
        if touched is None:
            return
        due = {watch.ids.pseudonym(p) for p in touched}
        await asyncio.to_thread(census.mark_due, due, now)
        await asyncio.to_thread(census.request_job, CENSUS_JOB)  # new exposures, too
        await asyncio.to_thread(watch.subscriptions.caught_up, since)
        await asyncio.to_thread(census.finish_job, CATCH_UP_JOB, self.name, now)
        log.info("subscription catch-up", extra={"worker": self.name, "count": len(due)})

    async def census_search(self) -> None:
        """The periodic census search (one worker at a time, every CRS_WATCH_CENSUS_SECONDS)."""
        watch = self.watch
        now = watch.clock()
        census = watch.census
        found = await self._job_read(
            CENSUS_JOB,
            now,
            watch.config.census_every,
            lambda: watch.reader.candidates(now),
            "census search",
        )
        if found is None:
            return
        known = await asyncio.to_thread(census.known)
        enrol = []
        for patient, latest in found.items():
            active, left_at = known.get(watch.ids.pseudonym(patient), (False, None))
            # a patient who left stays out until an administration newer than that
            if active or (left_at is not None and left_at >= latest):
                continue
            enrol.append(patient)
        if enrol:
            await asyncio.to_thread(census.enrol_many, enrol, "census-search", now)
        await asyncio.to_thread(watch.subscriptions.prune_inbox, now - INBOX_KEEP)
        await asyncio.to_thread(census.finish_job, CENSUS_JOB, self.name, now)
        log.info("census search", extra={"worker": self.name, "count": len(enrol)})
