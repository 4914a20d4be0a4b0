"""The replay: 100 synthetic patient trajectories streamed into the real FHIR server,
three `crs-cds watch run` processes sharing one PostgreSQL, one of them killed (SIGKILL)
half-way. The changes notified must be those of a batch re-evaluation of every
trajectory at each of its steps — none missed, none doubled — and nothing else, except
what a step seen half-written gives (see `_half_written`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from bench.watch_support import Process, cli_env
from cds import fhirbuild as fb
from cds.evaluation import evaluate
from cds.fhir.reading import ResourceCollector
from cds.runtime import Runtime
from cds.store.tables import (
    watch_deliveries,
    watch_history,
    watch_notifications,
    watch_patients,
)
from cds.watch.changes import Thresholds, replay
from cds.watch.service import Watch
from tests.conftest import new_postgres_database
from tests.watch.support import (
    PSEUDONYM_KEY,
    new_patient,
    now,
    open_watch,
    put,
    watch_runtime,
    webhook_receiver,
)
from tests.watch.trajectories import Trajectory, timed, trajectories

PATIENTS = 100
STEPS = 4
POLL_SECONDS = 2.0
WORKERS = 3
PER_TRANSACTION = 25  # patients per transaction (each patient's step is written at once)
# The deadline of a patient's FHIR queries: 10 s, so that a loaded machine does not fail
# them; a killed worker's leases (2 deadlines) then expire within 20 s, well inside WAIT.
FHIR_TIMEOUT_SECONDS = 10.0
WAIT = 300  # seconds, at most, for the baselines and for the last steps


@pytest.fixture()
def postgres() -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped after the test."""
    with new_postgres_database(migrated=True) as url:
        yield url


def _write(fhir: str, steps: list[list[dict[str, object]]]) -> None:
    for i in range(0, len(steps), PER_TRANSACTION):
        put(fhir, [r for step in steps[i : i + PER_TRANSACTION] for r in step])


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert callable(condition)
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what}: not reached in {timeout} s")


def test_100_trajectories_3_workers_one_killed_notify_exactly_the_batch_changes(
    runtime: Runtime, fhir_base_url: str, postgres: str, tmp_path: Path
) -> None:
    patients = trajectories(PATIENTS, seed=20261130, prefix=new_patient("replay"))
    with webhook_receiver() as receiver:
        settings = {
            "database_url": postgres,
            "watch_webhook_urls": [receiver.url],
            "watch_poll_seconds": POLL_SECONDS,
            "fhir_timeout_seconds": FHIR_TIMEOUT_SECONDS,
            "watch_census_seconds": 86_400.0,
        }
        rt = watch_runtime(runtime, tmp_path, fhir_base_url, **settings)
        store, watch = open_watch(rt)
        census = watch.census
        # the census search is not under test here: it counts as run just now
        census.claim_job("census-search", "test", now(), timedelta(0), timedelta(0))
        census.finish_job("census-search", "test", now())
        _write(fhir_base_url, [p.start(now()) for p in patients])
        pseudonyms = {p.patient_id: watch.ids.pseudonym(p.patient_id) for p in patients}
        census.enrol_many(pseudonyms, "cli", now())

        env = cli_env(
            CRS_DATABASE_URL=postgres,
            CRS_PSEUDONYM_KEY=PSEUDONYM_KEY,
            CRS_DATA_DIR=str(tmp_path),
            CRS_FHIR_ALLOWED_SERVERS=fhir_base_url,
            CRS_WATCH_FHIR_SERVER=fhir_base_url,
            CRS_WATCH_WEBHOOK_URLS=receiver.url,
            CRS_WATCH_POLL_SECONDS=str(POLL_SECONDS),
            CRS_FHIR_TIMEOUT_SECONDS=str(FHIR_TIMEOUT_SECONDS),
            CRS_WATCH_CENSUS_SECONDS="86400",
            CRS_LOG_LEVEL="INFO",
        )
        workers = [
            Process(["watch", "run"], env, tmp_path / f"worker-{i}.log").start()
            for i in range(WORKERS)
        ]
        try:
            p = watch_patients.c

            def evaluated_after(moments: dict[str, datetime]) -> bool:
                """Every patient evaluated after its moment (its step was seen)."""
                with store.engine.connect() as connection:
                    rows = connection.execute(select(p.patient, p.evaluated_at)).all()
                done: dict[str, datetime] = {
                    r.patient: r.evaluated_at for r in rows if r.evaluated_at is not None
                }
                return all(
                    pseudonyms[pid] in done and done[pseudonyms[pid]] > moment
                    for pid, moment in moments.items()
                )

            _wait(
                lambda: evaluated_after({t.patient_id: t.times[0] for t in patients}),
                WAIT,
                "baselines",
            )
            killed_at = STEPS // 2
            for k in range(1, STEPS + 1):
                _write(fhir_base_url, [t.step(now()) for t in patients])
                if k == killed_at:
                    workers[0].kill()  # half-way, holding leases and perhaps a delivery
                time.sleep(POLL_SECONDS * 1.5)
            _wait(
                lambda: evaluated_after({t.patient_id: t.times[-1] for t in patients}),
                WAIT,
                "last steps",
            )

            def delivered() -> bool:
                with store.engine.connect() as connection:
                    statuses: list[str] = list(
                        connection.execute(select(watch_deliveries.c.status)).scalars()
                    )
                return all(s == "delivered" for s in statuses)

            _wait(delivered, 60, "deliveries")
            time.sleep(POLL_SECONDS * 2)  # room for anything doubled to show
        except AssertionError:
            logs = [tmp_path / f"worker-{i}.log" for i in range(WORKERS)]
            print(_diagnosis(store.engine, logs, watch, fhir_base_url, patients))
            raise
        finally:
            for worker in workers:
                worker.stop()

        expected = _batch(rt, patients, pseudonyms, watch.limits)
        with store.engine.connect() as connection:
            notified = connection.execute(
                select(watch_notifications.c.change_key, watch_notifications.c.id)
            ).all()
        mine = {
            r.change_key: r.id
            for r in notified
            if r.change_key.split("|")[0] in pseudonyms.values()
        }
        allowed = expected | _half_written(rt, patients, pseudonyms, watch.limits)
        if not expected <= set(mine) <= allowed:
            logs = [tmp_path / f"worker-{i}.log" for i in range(WORKERS)]
            odd = (expected - set(mine)) | (set(mine) - allowed)
            print(_history(store.engine, odd, patients, pseudonyms, logs))
        assert expected <= set(mine) <= allowed, _difference(set(mine), expected, allowed)
        assert len(expected) > PATIENTS  # the trajectories do escalate
        posted = [
            b["id"] for b in receiver.bodies() if b["patient"]["pseudonym"] in pseudonyms.values()
        ]
        assert set(posted) == set(mine.values())  # every notification reached the webhook
        # a notification posted twice has the same id (the receiver can tell): only a
        # worker killed between sending and recording does that
        assert len(posted) - len(set(posted)) <= 20  # at most one claim of deliveries in flight
        kinds = sorted({key.split("|")[2] for key in expected})
        repeated = len(posted) - len(set(posted))
        print(
            f"\nreplay: {PATIENTS} trajectories, {STEPS} steps, {WORKERS} workers (one killed "
            f"after step {killed_at}): {len(expected)} changes expected, {len(mine)} notified "
            f"({len(set(mine) - expected)} of a step read half-written, {len(allowed - expected)} "
            "possible), "
            f"{len(posted)} webhook POSTs ({repeated} repeated); kinds {kinds}"
        )
        store.close()


def _batch(
    rt: Runtime, patients: list[Trajectory], pseudonyms: dict[str, str], limits: Thresholds
) -> set[str]:
    """Every trajectory evaluated at each of its steps, in one batch: the change keys."""
    keys: set[str] = set()
    for t in patients:
        final = t.times[-1] + timedelta(seconds=1)
        keys |= _changes(rt, t, t.written, [*t.times, final], pseudonyms, limits)
    return keys


def _half_written(
    rt: Runtime, patients: list[Trajectory], pseudonyms: dict[str, str], limits: Thresholds
) -> set[str]:
    """The change keys of a two-resource step read half-written: a watch that looks while
    a step is being written can see one of its resources and not yet the other (the FHIR
    server applies a transaction entry by entry, and the observations and administrations
    are read by different searches). That state was, for that moment, the data: e.g. a
    low blood pressure without the vasopressor started with it is a grade 2, notified,
    before the grade 3. Modelled as the other resource dated a millisecond later."""
    keys: set[str] = set()
    for t in patients:
        final = t.times[-1] + timedelta(seconds=1)
        for k, when in enumerate(t.times):
            stamp = when.isoformat(timespec="milliseconds")
            step = [r for r in t.written if _time_of(r) == stamp]
            if len(step) < 2:
                continue
            later = when + timedelta(milliseconds=1)
            times = [*t.times[: k + 1], later, *t.times[k + 1 :], final]
            for late in step:
                written = [timed(copy.deepcopy(r), later) if r is late else r for r in t.written]
                keys |= _changes(rt, t, written, times, pseudonyms, limits)
    return keys


def _changes(
    rt: Runtime,
    t: Trajectory,
    written: list[dict[str, Any]],
    times: list[datetime],
    pseudonyms: dict[str, str],
    limits: Thresholds,
) -> set[str]:
    """The change keys of `written` (a trajectory's resources) evaluated at each of
    `times` in turn, the facts read as at the last."""
    collected = ResourceCollector()
    collected.add(fb.collection(written), "trajectory")
    facts = evaluate(rt, collected, t.patient_id, times[-1]).facts
    return {c.key for c in replay(rt, facts, pseudonyms[t.patient_id], times, limits)}


def _time_of(resource: dict[str, Any]) -> str | None:
    period = resource.get("effectivePeriod")
    when = period.get("start") if isinstance(period, dict) else resource.get("effectiveDateTime")
    return when if isinstance(when, str) else None


def _diagnosis(
    engine: Engine, logs: list[Path], watch: Watch, fhir: str, patients: list[Trajectory]
) -> str:
    """What the census, the FHIR server and the workers say, when the test fails."""
    p = watch_patients.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                p.patient,
                p.evaluated_at,
                p.cursor,
                p.failures,
                p.last_error,
                p.lease_owner,
                p.next_poll_at,
            )
        ).all()
    lines = [f"now {now()}", *(str(r) for r in rows[:5])]
    lines += [f"errors {sorted({str(r.last_error) for r in rows})}"]
    behind = [t for t in patients if t.times[-1] >= _evaluated(rows, watch, t)]
    for t in behind[:2]:
        found = httpx.get(f"{fhir}/Observation", params={"patient": t.patient_id}).json()
        updated = sorted(e["resource"]["meta"]["lastUpdated"] for e in found.get("entry", []))
        row = next(r for r in rows if r.patient == watch.ids.pseudonym(t.patient_id))
        lines.append(
            f"behind {t.patient_id}: cursor {row.cursor}, steps {t.times}, server {updated}"
        )
    lines += [f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists()]
    return "\n".join(lines)


def _evaluated(rows: Sequence[Any], watch: Watch, t: Trajectory) -> datetime:
    pseudonym = watch.ids.pseudonym(t.patient_id)
    found = next((r.evaluated_at for r in rows if r.patient == pseudonym), None)
    return found or datetime.min.replace(tzinfo=t.times[0].tzinfo)


def _history(
    engine: Engine,
    keys: set[str],
    patients: list[Trajectory],
    pseudonyms: dict[str, str],
    logs: list[Path],
) -> str:
    """For the patients of the change keys that differ: the step times, what the watch
    evaluated (history) and notified, and the lines of the worker logs."""
    by_pseudonym = {pseudonyms[t.patient_id]: t for t in patients}
    h, n = watch_history.c, watch_notifications.c
    lines = []
    for pseudonym in sorted({key.split("|")[0] for key in keys})[:3]:
        t = by_pseudonym[pseudonym]
        with engine.connect() as connection:
            history = connection.execute(
                select(h.evaluated_at, h.recorded_at, h.grade, h.possible_grade, h.trigger)
                .where(h.patient == pseudonym)
                .order_by(h.id)
            ).all()
            notes = connection.execute(
                select(n.change_key, n.at, n.created_at).where(n.patient == pseudonym)
            ).all()
        lines += [f"patient {pseudonym}: steps {[x.isoformat() for x in t.times]}"]
        lines += [f"  history {tuple(r)}" for r in history]
        lines += [f"  notified {tuple(r)}" for r in notes]
    for log in logs:
        if log.exists():
            lines.append(f"--- {log.name}\n{log.read_text()[-4000:]}")
    return "\n".join(lines)


def _difference(got: set[str], want: set[str], allowed: set[str]) -> str:
    return f"missed {sorted(want - got)[:5]}, unexpected {sorted(got - allowed)[:5]}"
