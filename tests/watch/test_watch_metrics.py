"""The watch's Prometheus figures come from its tables (so every replica and worker
reports the same, and a dead worker's patients still count): the census, how far behind
schedule the most overdue patient is, and the deliveries by status — on SQLite and
PostgreSQL, on the service's /metrics and on a worker's own metrics port."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cds.app import create_app
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from cds.watch.census import CycleResult, NewNotification
from cds.watch.changes import ExposureRef, Notified, State, Thresholds, detect
from cds.watch.delivery import payload
from cds.watch.metrics import WatchMetrics, read_figures
from cds.watch.service import Watch
from tests.factories import AT
from tests.serving import free_port
from tests.watch.support import PSEUDONYM_KEY, open_watch, watch_runtime

FHIR = "http://127.0.0.1:9/fhir"  # the watched server (no call reaches it here)
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def watched(
    runtime: Runtime, database_url: str, tmp_path: Path
) -> Iterator[tuple[DecisionStore, Watch, Clock]]:
    clock = Clock()
    rt = watch_runtime(
        runtime,
        tmp_path,
        FHIR,
        database_url=database_url,
        watch_in_serve=False,
        watch_webhook_urls=["https://hooks.example.org/crs"],
    )
    store, watch = open_watch(rt, clock)
    with store.engine.begin() as connection:  # each test from an empty census
        for table in ("watch_deliveries", "watch_notifications", "watch_history", "watch_patients"):
            connection.execute(text(f"DELETE FROM {table}"))
    yield store, watch, clock
    store.close()


def _notified(watch: Watch, patient_id: str, now: datetime) -> None:
    """A change stored for the patient (its webhook delivery pending), next poll in 60 s."""
    census = watch.census
    pseudonym = census.enrol(patient_id, "cli", now)
    exposure = ExposureRef("axicabtagene-ciloleucel@x", "axicabtagene-ciloleucel", "car-t", AT)
    state = State(AT, exposure, 3, 3, None, True, AT + timedelta(days=9), AT, "rules")
    change = detect(pseudonym, state, Notified(), Thresholds(1, 2, None))
    assert change is not None
    (row,) = census.claim("w", now, timedelta(seconds=30), 1)
    new = NewNotification(change, payload(change, watch.config), watch.config.targets())
    after = now + timedelta(seconds=60)
    result = CycleResult(((state, "data"),), state, None, (), (new,), after, False)
    assert census.finish("w", row, result, now) == [change.id]


def test_the_figures_are_the_tables(watched: tuple[DecisionStore, Watch, Clock]) -> None:
    store, watch, _ = watched
    assert read_figures(store.engine, T0) == (0, 0.0, {"pending": 0, "delivered": 0, "failed": 0})
    _notified(watch, "checked", T0)  # next check at T0 + 60 s
    watch.census.enrol("waiting", "cli", T0 + timedelta(seconds=10))  # due at T0 + 10 s
    figures = read_figures(store.engine, T0 + timedelta(seconds=100))
    assert figures.census == 2
    assert figures.lag_seconds == 90.0  # the most overdue: due at T0 + 10 s
    assert figures.deliveries == {"pending": 1, "delivered": 0, "failed": 0}
    # nobody due: no lag
    assert read_figures(store.engine, T0 + timedelta(seconds=5)).lag_seconds == 0.0


def test_the_figures_are_read_at_most_once_per_interval(
    watched: tuple[DecisionStore, Watch, Clock],
) -> None:
    store, watch, clock = watched
    metrics = WatchMetrics(store.engine, clock, every=3600)
    assert metrics.figures() == (0, 0.0, {"pending": 0, "delivered": 0, "failed": 0})
    watch.census.enrol("later", "cli", T0)
    cached = metrics.figures()
    assert cached is not None and cached.census == 0  # not read again yet
    fresh = WatchMetrics(store.engine, clock, every=0).figures()
    assert fresh is not None and fresh.census == 1


def test_the_service_metrics_show_the_watch(
    watched: tuple[DecisionStore, Watch, Clock],
) -> None:
    store, watch, clock = watched
    _notified(watch, "on-metrics", T0)
    clock.now = T0 + timedelta(seconds=75)
    app = create_app(watch.runtime, store=store, clock=clock)
    body = TestClient(app).get("/metrics").text
    assert "crs_cds_watch_up 1.0" in body
    assert "crs_cds_watch_census 1.0" in body
    assert "crs_cds_watch_lag_seconds 15.0" in body
    assert 'crs_cds_watch_deliveries{status="pending"} 1.0' in body
    assert "on-metrics" not in body and watch.ids.pseudonym("on-metrics") not in body


def test_the_metrics_say_when_the_tables_cannot_be_read(tmp_path: Path) -> None:
    from cds.store import database

    engine = database.create(f"sqlite:///{tmp_path / 'not-migrated.sqlite3'}")
    body = WatchMetrics(engine, lambda: T0).exposition().decode()
    assert "crs_cds_watch_up 0.0" in body and "crs_cds_watch_census" not in body
    engine.dispose()


def test_a_worker_serves_its_metrics_on_its_port(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "CRS_DATA_DIR": str(tmp_path),
        "CRS_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CRS_FHIR_ALLOWED_SERVERS": FHIR,
        "CRS_WATCH_FHIR_SERVER": FHIR,
        "CRS_WATCH_IN_SERVE": "false",
        "CRS_WATCH_METRICS_PORT": str(port),
        "CRS_WATCH_CENSUS_SECONDS": "86400",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "cds.cli", "watch", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except httpx.TransportError:
                assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
                assert time.monotonic() < deadline, "the worker's metrics never came up"
                time.sleep(0.2)
        assert "crs_cds_watch_up 1.0" in body and "crs_cds_watch_census 0.0" in body
    finally:
        worker.terminate()
        worker.wait(timeout=30)
