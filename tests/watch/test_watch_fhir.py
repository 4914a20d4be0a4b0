"""The watch against the real FHIR server: a worker running, a fever then a pressor written
into the server, the state and the webhook changing once each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, func, select

from cds import fhirbuild as fb
from cds.runtime import Runtime
from cds.store.tables import watch_history, watch_notifications, watch_patients
from cds.watch.service import Watch
from cds.watch.status import patient_status
from cds.watch.worker import Worker
from tests.watch.support import (
    new_patient,
    now,
    open_watch,
    put,
    scenario_copy,
    watch_runtime,
    webhook_receiver,
)


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def _row(watch: Watch, pseudonym: str) -> Row[Any]:
    with watch.census.engine.connect() as connection:
        return connection.execute(
            select(watch_patients).where(watch_patients.c.patient == pseudonym)
        ).one()


def test_a_fever_then_a_pressor_are_each_notified_once(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path
) -> None:
    pid = new_patient("watch-fever")
    put(fhir_base_url, scenario_copy("g0-tisacel-afebrile", now(), pid))
    with webhook_receiver() as receiver:
        rt = watch_runtime(runtime, tmp_path, fhir_base_url, watch_webhook_urls=[receiver.url])
        store, watch = open_watch(rt)
        pseudonym = watch.census.enrol(pid, "cli", now())

        async def scenario() -> None:
            stop = asyncio.Event()
            worker = asyncio.create_task(Worker(watch).run(stop))
            await _until(lambda: _row(watch, pseudonym).evaluated_at is not None)
            assert _row(watch, pseudonym).grade == 0
            assert receiver.bodies(pseudonym) == []  # grade 0, afebrile: nothing to say

            put(fhir_base_url, [fb.temperature(pid, now() - timedelta(seconds=1), 38.6)])
            (fever,) = await asyncio.to_thread(receiver.wait_for, 1, pseudonym)
            assert fever["event"] == "crs.first-fever"
            assert (fever["grade"], fever["maxGrade"]) == (1, 1)
            assert fever["patient"] == {"pseudonym": pseudonym}  # no id by default
            assert fever["exposure"]["product"] == "tisagenlecleucel"
            assert fever["exposure"]["kind"] == "car-t"
            assert fever["ruleSetVersion"] == runtime.rules.version

            running = fb.administration(
                pid,
                now() - timedelta(seconds=1),
                rxnorm="7512",
                text="norepinephrine 0.05 mcg/kg/min",
                period=True,
                status="in-progress",
            )
            put(fhir_base_url, [running, fb.systolic(pid, now() - timedelta(seconds=1), 84)])
            bodies = await asyncio.to_thread(receiver.wait_for, 2, pseudonym)
            assert bodies[1]["event"] == "crs.escalation"
            assert (bodies[1]["grade"], bodies[1]["maxGrade"]) == (3, 3)

            await asyncio.sleep(3 * watch.config.poll.total_seconds())  # three more polls
            assert len(receiver.bodies(pseudonym)) == 2  # each change once
            stop.set()
            await worker

        asyncio.run(scenario())
        keys = [r.headers["idempotency-key"] for r in receiver.of(pseudonym)]
        assert keys == [b["id"] for b in receiver.bodies(pseudonym)]
        assert len(set(keys)) == 2
    row = _row(watch, pseudonym)
    assert (row.grade, row.max_grade) == (3, 3)
    # the last readings the worker kept for the watch list and the patient's status
    shown = patient_status(watch.census.engine, pseudonym)
    assert shown is not None
    assert shown["lastReadings"]["temperature"]["text"] == "38.6 °C"
    assert shown["lastReadings"]["systolic"]["text"] == "84 mmHg"
    with watch.census.engine.connect() as connection:
        assert (
            connection.execute(
                select(func.count())
                .select_from(watch_notifications)
                .where(watch_notifications.c.patient == pseudonym)
            ).scalar_one()
            == 2
        )
        grades: list[int] = list(
            connection.execute(
                select(watch_history.c.grade)
                .where(watch_history.c.patient == pseudonym)
                .order_by(watch_history.c.id)
            )
            .scalars()
            .all()
        )
    assert grades == [0, 1, 3]
    detail = patient_status(watch.census.engine, pseudonym)
    assert detail is not None
    assert [n["event"] for n in detail["notifications"]] == ["crs.escalation", "crs.first-fever"]
    assert all(d["status"] == "delivered" for n in detail["notifications"] for d in n["deliveries"])
    store.close()
