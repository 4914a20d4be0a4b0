"""Who is watched, against the real FHIR server: the census search finds the patients
given a catalogue product (by code) in the longest window; a patient leaves when the
window closes with no CRS activity, and is not searched back in without a new dose; no
temperature for longer than the gap is one data-gap notification; the logs never carry
a patient id."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cds import fhirbuild as fb
from cds.clock import utc_now
from cds.evaluation import evaluate
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from cds.watch.reading import fhir_instant
from cds.watch.service import Watch
from cds.watch.worker import CENSUS_JOB, Worker
from tests.watch.support import (
    new_patient,
    now,
    open_watch,
    put,
    scenario_copy,
    watch_runtime,
    webhook_receiver,
)

KIMMTRAK = ("2590748", "Kimmtrak (tebentafusp-tebn) 68 mcg IV")


class Clock:
    """Real time, plus what the test adds (the window closes without waiting a week)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


def test_the_census_search_enrols_patients_in_a_window_and_they_leave_when_it_closes(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    in_window = new_patient("census-tecartus")
    put(fhir_base_url, scenario_copy("g2-brexucel-bp-panel", now(), in_window))
    closing = new_patient("census-kimmtrak")
    dose = fb.administration(
        closing, now() - timedelta(hours=160), rxnorm=KIMMTRAK[0], text=KIMMTRAK[1]
    )
    put(
        fhir_base_url,
        [fb.patient(closing), dose, fb.temperature(closing, now() - timedelta(hours=1), 36.9)],
    )
    with webhook_receiver() as receiver:
        rt = watch_runtime(runtime, tmp_path, fhir_base_url, watch_webhook_urls=[receiver.url])
        store, watch = open_watch(rt, clock)
        worker = Worker(watch)
        asyncio.run(worker.drain())  # the census search runs first (never ran), then cycles
        known = watch.census.known()
        tecartus, kimmtrak = watch.ids.pseudonym(in_window), watch.ids.pseudonym(closing)
        assert known[tecartus][0] and known[kimmtrak][0]
        assert [(b["event"], b["grade"]) for b in receiver.bodies(tecartus)] == [
            ("crs.escalation", 2)
        ]
        assert receiver.bodies(kimmtrak) == []

        clock.ahead = timedelta(hours=10)  # Kimmtrak's 168 h window has closed
        asyncio.run(worker.drain())
        known = watch.census.known()
        assert known[kimmtrak][0] is False and known[kimmtrak][1] is not None
        assert known[tecartus][0] is True  # Tecartus' window is still open

        watch.census.request_job(CENSUS_JOB)
        asyncio.run(worker.drain())
        assert watch.census.known()[kimmtrak][0] is False  # no new dose: stays out

        clock.ahead = timedelta(hours=12)
        next_dose = fb.administration(
            closing, clock() - timedelta(hours=1), rxnorm=KIMMTRAK[0], text=KIMMTRAK[1]
        )
        put(fhir_base_url, [next_dose])
        watch.census.request_job(CENSUS_JOB)
        asyncio.run(worker.drain())
        assert watch.census.known()[kimmtrak][0] is True  # the next dose: back in
        store.close()


def test_no_temperature_for_longer_than_the_gap_is_notified_once(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path
) -> None:
    pid = new_patient("gap")
    # g0 timed 7 h earlier: its last temperature is 9 h old (the gap is 8 h)
    put(fhir_base_url, scenario_copy("g0-tisacel-afebrile", now() - timedelta(hours=7), pid))
    with webhook_receiver() as receiver:
        rt = watch_runtime(
            runtime,
            tmp_path,
            fhir_base_url,
            watch_webhook_urls=[receiver.url],
            watch_census_seconds=86_400.0,
        )
        store, watch = open_watch(rt)
        pseudonym = watch.census.enrol(pid, "cli", now())
        worker = Worker(watch)
        asyncio.run(worker.drain())
        (gap,) = receiver.bodies(pseudonym)
        assert (gap["event"], gap["grade"]) == ("data.gap", 0)
        watch.census.mark_due([pseudonym], now())
        asyncio.run(worker.drain())
        assert len(receiver.bodies(pseudonym)) == 1  # the same gap: once
        put(fhir_base_url, [fb.temperature(pid, now() - timedelta(seconds=1), 37.0)])
        watch.census.mark_due([pseudonym], now())
        asyncio.run(worker.drain())
        assert len(receiver.bodies(pseudonym)) == 1  # charted again: no gap
        store.close()


def test_the_logs_never_carry_a_patient_id(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid = new_patient("logs")
    put(fhir_base_url, scenario_copy("g1-axicel-fever-f", now(), pid))
    with webhook_receiver() as receiver:
        rt = watch_runtime(
            runtime, tmp_path, fhir_base_url, watch_webhook_urls=[receiver.url + "/broken?token=x"]
        )
        store, watch = open_watch(rt)
        watch.census.enrol(pid, "cli", now())
        with caplog.at_level(logging.DEBUG):
            asyncio.run(Worker(watch).drain())
        assert caplog.records
        for record in caplog.records:
            text = record.getMessage() + str(record.__dict__)
            assert pid not in text
            assert "token=x" not in text
        store.close()


def test_the_census_search_finds_products_charted_by_name_or_by_medication_reference(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path
) -> None:
    """Real charts name a CAR-T product in text or a local code, or give it by reference
    to a Medication: the census search finds those patients too (`code:text`, and a
    search of the risk products' Medications)."""
    by_text = new_patient("census-text")
    by_medication_code = new_patient("census-med-code")
    by_medication_name = new_patient("census-med-name")
    not_a_risk = new_patient("census-other")
    coded = f"{by_medication_code}-yescarta"
    named = f"{by_medication_name}-kymriah"
    two_days_ago = now() - timedelta(days=2)
    put(
        fhir_base_url,
        [
            fb.medication(coded, "axicabtagene ciloleucel", rxnorm="1987407"),
            fb.medication(named, "Kymriah (tisagenlecleucel) suspension, local formulary"),
            fb.administration(
                by_text, two_days_ago, text="Abecma (idecabtagene vicleucel) infusion"
            ),
            fb.administration(
                by_medication_code,
                two_days_ago,
                text="CAR-T infusion",
                medication_reference=f"Medication/{coded}",
            ),
            fb.administration(
                by_medication_name,
                two_days_ago,
                text="CAR-T infusion",
                medication_reference=f"Medication/{named}",
            ),
            fb.administration(not_a_risk, two_days_ago, rxnorm="7512", text="norepinephrine"),
        ],
    )
    rt = watch_runtime(runtime, tmp_path, fhir_base_url)
    store, watch = open_watch(rt)
    found = asyncio.run(watch.reader.candidates(now()))
    assert {by_text, by_medication_code, by_medication_name} <= set(found)
    assert not_a_risk not in found
    store.close()


def test_a_datum_dated_after_the_look_is_judged_when_its_time_has_come(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path
) -> None:
    """A fever read in a look that began before the fever's time (an EHR clock a little
    ahead of the watch's, or a write landing during the look) is not marked seen: it is
    judged at the next look after its time — never silently passed over."""
    clock = Clock()
    pid = new_patient("ahead")
    put(fhir_base_url, scenario_copy("g0-tisacel-afebrile", now(), pid))
    with webhook_receiver() as receiver:
        rt = watch_runtime(runtime, tmp_path, fhir_base_url, watch_webhook_urls=[receiver.url])
        store, watch = open_watch(rt, clock)
        pseudonym = watch.census.enrol(pid, "cli", clock())
        worker = Worker(watch)
        asyncio.run(worker.drain())  # first look: afebrile, grade 0
        assert receiver.bodies(pseudonym) == []

        # charted by an EHR whose clock is two minutes ahead of the watch's
        put(fhir_base_url, [fb.temperature(pid, clock() + timedelta(minutes=2), 38.7)])
        watch.census.mark_due([pseudonym], clock())
        asyncio.run(worker.drain())
        assert receiver.bodies(pseudonym) == []  # its time has not come

        clock.ahead += timedelta(minutes=3)
        watch.census.mark_due([pseudonym], clock())
        asyncio.run(worker.drain())
        (fever,) = receiver.wait_for(1, pseudonym)
        assert (fever["event"], fever["grade"]) == ("crs.first-fever", 1)
        store.close()


def test_a_server_refusing_the_name_searches_still_has_the_code_search(
    runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fhir = "https://ehr.example.org/fhir"
    coded = fb.administration("coded-1", now() - timedelta(days=1), rxnorm="1987407", text="x")

    def answer(status: int, body: object) -> httpx.Response:
        # a streamed body, as a real server's (the reader reads answers as streams)
        return httpx.Response(status, stream=httpx.ByteStream(orjson.dumps(body)))

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        if request.url.path.endswith("/MedicationAdministration") and "code" in params:
            return answer(200, fb.searchset([coded]))
        return answer(400, {"resourceType": "OperationOutcome"})  # :text, references

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    rt = watch_runtime(runtime, tmp_path, fhir)
    store = DecisionStore.open(rt, new_uuid, utc_now)
    watch = Watch.open(rt, store, utc_now, fhir_http=lambda: client)
    assert watch is not None
    with caplog.at_level(logging.WARNING, logger="cds.watch"):
        found = asyncio.run(watch.reader.candidates(now()))
    assert set(found) == {"coded-1"}
    warned = {r.getMessage() for r in caplog.records}
    assert {"census search by name not done", "census search by Medication not done"} <= warned
    store.close()


def test_the_watch_reads_vitals_charted_under_local_codes(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path
) -> None:
    """The watch reads a patient's data by the service's fallback, which searches by name
    beside the search by code: vitals charted under a local code with text only ("Temp
    38.3") give the grade that a full prefetch gives (grade 1), not grade 0."""
    patient = new_patient("watch-local-codes")
    anchor = now()
    put(fhir_base_url, scenario_copy("local-codes-obecel", anchor, patient))
    # 20 s: the search by name gets half the deadline and, late, is dropped without an
    # error (grade 0, not 1); 5 s can pass on a loaded machine
    rt = watch_runtime(runtime, tmp_path, fhir_base_url, fhir_timeout_seconds=20.0)
    store, watch = open_watch(rt)
    collected = asyncio.run(watch.reader.patient_data(patient, anchor))
    evaluation = evaluate(rt, collected, patient, anchor)
    assert evaluation.crs is not None
    assert (evaluation.crs.grade, evaluation.crs.max_grade) == (1, 1)
    store.close()


def test_polling_reads_only_the_patients_changes_and_survives_the_icans_searches(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path
) -> None:
    """The Condition search refused (a token without its scope: 403) and the
    QuestionnaireResponse search answering another patient's response (a server that
    ignores `patient`): the poll still finds this patient's new Observation, and only it."""
    patient = new_patient("watch-poll-icans")
    written = fhir_instant(now())

    def bundle(*resources: dict[str, Any]) -> httpx.Response:
        entries = [{"resource": r} for r in resources]
        body = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        return httpx.Response(200, stream=httpx.ByteStream(orjson.dumps(body)))

    def answer(request: httpx.Request) -> httpx.Response:
        kind = request.url.path.rsplit("/", 1)[-1]
        meta = {"lastUpdated": written, "versionId": "1"}
        if kind == "Observation":
            return bundle(
                {**fb.temperature(patient, now(), 38.6, oid=f"{patient}-t"), "meta": meta}
            )
        if kind == "Condition":
            return httpx.Response(403, stream=httpx.ByteStream(b"{}"))
        if kind == "QuestionnaireResponse":
            other = {"reference": "Patient/someone-else"}
            qr = {"resourceType": "QuestionnaireResponse", "id": "x", "subject": other}
            return bundle({**qr, "status": "completed", "meta": meta})
        return bundle()

    rt = watch_runtime(runtime, tmp_path, fhir_base_url)
    store = DecisionStore.open(rt, new_uuid, utc_now)
    watch = Watch.open(
        rt,
        store,
        utc_now,
        fhir_http=lambda: httpx.AsyncClient(transport=httpx.MockTransport(answer)),
    )
    assert watch is not None
    changed = asyncio.run(watch.reader.changed(patient, now() - timedelta(hours=1), []))
    assert changed.refs == {f"Observation/{patient}-t"}
    store.close()


def test_a_failing_census_search_is_retried_with_a_backoff(
    runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the FHIR server down, the census search was tried (and logged) every tick,
    once a second. After a failure a worker waits 1 s, then 2, 4… (at most a minute)
    before trying again; a success resets it."""
    fhir = "https://ehr.example.org/fhir"
    searches: list[str] = []
    down = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        searches.append(request.url.path)
        if down[0]:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, stream=httpx.ByteStream(orjson.dumps(fb.searchset([]))))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    moment = [now()]
    rt = watch_runtime(runtime, tmp_path, fhir)
    store = DecisionStore.open(rt, new_uuid, lambda: moment[0])
    watch = Watch.open(rt, store, lambda: moment[0], fhir_http=lambda: client)
    assert watch is not None
    worker = Worker(watch)

    def search_at(seconds: float) -> int:
        """The census search at `seconds` after the start: how many FHIR requests."""
        moment[0] = now_at + timedelta(seconds=seconds)
        before = len(searches)
        asyncio.run(worker.census_search())
        return len(searches) - before

    now_at = moment[0]
    with caplog.at_level(logging.WARNING, logger="cds.watch"):
        assert search_at(0) > 0  # fails
        assert search_at(0.5) == 0  # within 1 s: not tried
        assert search_at(1) > 0  # fails again: next after 2 s
        assert search_at(2.9) == 0
        assert search_at(3) > 0  # fails a third time: next after 4 s
        assert search_at(6.9) == 0
    failed = [r for r in caplog.records if r.getMessage() == "census search failed"]
    assert len(failed) == 3
    assert [getattr(r, "retryInSeconds", None) for r in failed] == [1.0, 2.0, 4.0]
    down[0] = False
    assert search_at(7) > 0  # up again: searched, and the backoff forgotten
    assert worker._job_failures == {} and worker._job_retry_at == {}
    store.close()
