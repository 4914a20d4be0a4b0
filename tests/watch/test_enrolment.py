"""How patients enter the census: every patient-view call that finds its patient in a risk
window, the authenticated API, and `crs-cds watch enrol`; and the watch's settings and
commands as the issue names them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cds.api.watch import ENROLMENT_MAX_BYTES
from cds.app import create_app
from cds.cli import app as cli
from cds.clock import utc_now
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.settings import Settings
from cds.store.decisions import DecisionStore
from cds.watch.config import WatchConfigError, watch_config
from cds.watch.service import Watch
from tests.auth_support import Clock, bearer, claims, default_trusted_clients, sign
from tests.factories import PATIENT, grade2_resources, hook_request, prefetch
from tests.watch.support import PSEUDONYM_KEY, watch_runtime

FHIR = "http://127.0.0.1:9/fhir"  # the watched server (no call reaches it here)


@pytest.fixture()
def service(runtime: Runtime, tmp_path: Path) -> Iterator[tuple[TestClient, Watch, DecisionStore]]:
    rt = watch_runtime(runtime, tmp_path, FHIR, watch_in_serve=False)
    store = DecisionStore.open(rt, new_uuid, utc_now)
    app = create_app(rt, store=store)
    yield TestClient(app), app.state.watch, store
    store.close()


def _known(watch: Watch, patient_id: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The census row of a patient once the enrolment (a background write) landed."""
    deadline = time.monotonic() + timeout
    pseudonym = watch.ids.pseudonym(patient_id)
    while time.monotonic() < deadline:
        known = watch.census.known()
        if pseudonym in known:
            from cds.watch.status import patient_status

            return patient_status(watch.census.engine, pseudonym)
        time.sleep(0.02)
    return None


def test_a_patient_view_call_in_a_risk_window_enrols_the_patient(
    service: tuple[TestClient, Watch, DecisionStore],
) -> None:
    client, watch, _ = service
    observations, admins = grade2_resources()
    body = hook_request("patient-view", {}, prefetch(observations, admins), fhirServer=FHIR)
    response = client.post("/cds-services/crs-monitor", json=body)
    assert response.status_code == 200
    assert response.json()["cards"]  # the answer as always
    row = _known(watch, PATIENT)
    assert row is not None and row["source"] == "patient-view" and row["active"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"fhirServer": "https://another-ehr.example/fhir"}, "another FHIR server"),
        ({"outside": True}, "no risk window"),
    ],
)
def test_patient_view_calls_that_are_not_about_a_watched_window_enrol_nobody(
    service: tuple[TestClient, Watch, DecisionStore], change: dict[str, Any], why: str
) -> None:
    client, watch, _ = service
    observations, admins = grade2_resources()
    if change.pop("outside", False):
        admins = []
    body = hook_request(
        "patient-view", {}, prefetch(observations, admins), **{"fhirServer": FHIR, **change}
    )
    assert client.post("/cds-services/crs-monitor", json=body).status_code == 200
    assert _known(watch, PATIENT, timeout=0.5) is None, why


def test_a_patient_view_call_for_an_id_the_watch_cannot_read_enrols_nobody(
    service: tuple[TestClient, Watch, DecisionStore],
) -> None:
    client, watch, _ = service
    observations, admins = grade2_resources(pid="..")
    body = hook_request(
        "patient-view", {}, prefetch(observations, admins), patient_id="..", fhirServer=FHIR
    )
    response = client.post("/cds-services/crs-monitor", json=body)
    assert response.status_code == 200 and response.json()["cards"]
    assert _known(watch, "..", timeout=0.5) is None


def test_an_enrolment_larger_than_an_enrolment_is_refused_before_it_is_read(
    service: tuple[TestClient, Watch, DecisionStore],
) -> None:
    client, _, _ = service
    response = client.post("/watch/patients", content=b" " * (ENROLMENT_MAX_BYTES + 1))
    assert response.status_code == 413


def test_the_api_enrols_a_patient_and_shows_its_state(
    service: tuple[TestClient, Watch, DecisionStore],
) -> None:
    client, watch, _ = service
    response = client.post("/watch/patients", json={"patientId": "api-patient-1"})
    assert response.status_code == 202
    pseudonym = response.json()["patient"]
    assert pseudonym == watch.ids.pseudonym("api-patient-1")
    shown = client.get(f"/watch/patients/{pseudonym}").json()
    assert (shown["patient"], shown["source"], shown["active"]) == (pseudonym, "api", True)
    assert "api-patient-1" not in orjson.dumps(shown).decode()  # the id is never shown
    assert client.get("/watch/patients/unknown").status_code == 404


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"patientId": "has a space"}, "enrolment.patientId"),
        # ids the FHIR pattern lets through but Patient/<id> cannot use (fuzzed: enrolled,
        # then every watch cycle failed on them for ever)
        ({"patientId": "."}, "enrolment.patientId"),
        ({"patientId": ".."}, "enrolment.patientId"),
        ({"patient": "x"}, "enrolment"),
    ],
)
def test_the_api_says_what_is_wrong_with_an_enrolment(
    service: tuple[TestClient, Watch, DecisionStore], body: dict[str, Any], location: str
) -> None:
    client, _, _ = service
    response = client.post("/watch/patients", json=body)
    assert response.status_code == 400
    assert response.json()["location"].startswith(location)


def test_with_authentication_on_the_api_needs_a_client_token(
    runtime: Runtime, tmp_path: Path
) -> None:
    clock = Clock()
    rt = watch_runtime(
        runtime,
        tmp_path,
        FHIR,
        watch_in_serve=False,
        trusted_clients_file=default_trusted_clients(tmp_path),
        public_base_url="https://cds.example.org",
    )
    store = DecisionStore.open(rt, new_uuid, clock)
    client = TestClient(create_app(rt, store=store, clock=clock))
    refused = client.post("/watch/patients", json={"patientId": "p-1"})
    assert refused.status_code == 401
    good = sign(claims(clock.now, aud="https://cds.example.org/watch/patients"))
    accepted = client.post("/watch/patients", json={"patientId": "p-1"}, headers=bearer(good))
    assert accepted.status_code == 202, accepted.text
    store.close()


def test_the_watch_is_off_without_its_server(client: TestClient) -> None:
    response = client.post("/watch/patients", json={"patientId": "p-1"})
    assert response.status_code == 404
    assert "CRS_WATCH_FHIR_SERVER" in response.json()["error"]


def test_the_watched_server_must_be_allow_listed(runtime: Runtime, tmp_path: Path) -> None:
    rt = watch_runtime(runtime, tmp_path, FHIR, fhir_allowed_servers=[])
    with pytest.raises(WatchConfigError, match="must also be on CRS_FHIR_ALLOWED_SERVERS"):
        watch_config(rt)


def test_a_worker_runs_inside_serve_by_default_with_sqlite_only(
    runtime: Runtime, tmp_path: Path
) -> None:
    sqlite = watch_config(watch_runtime(runtime, tmp_path, FHIR))
    postgres = watch_config(
        watch_runtime(runtime, tmp_path, FHIR, database_url="postgresql+psycopg://h/db")
    )
    assert sqlite is not None and sqlite.in_serve is True
    assert postgres is not None and postgres.in_serve is False


def test_the_settings_have_the_names_the_issue_gives() -> None:
    names = {f"CRS_{name.upper()}" for name in Settings.model_fields}
    assert {
        "CRS_WATCH_FHIR_SERVER",
        "CRS_WATCH_FHIR_TOKEN",
        "CRS_WATCH_POLL_SECONDS",
        "CRS_WATCH_WEBHOOK_URLS",
        "CRS_WATCH_IN_SERVE",
    } <= names
    assert Settings(_env_file=None).watch_poll_seconds == 60


def test_the_commands_enrol_and_show_status(tmp_path: Path) -> None:
    env = {
        "CRS_DATA_DIR": str(tmp_path),
        "CRS_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CRS_FHIR_ALLOWED_SERVERS": FHIR,
        "CRS_WATCH_FHIR_SERVER": FHIR,
    }
    runner = CliRunner()
    enrolled = runner.invoke(cli, ["watch", "enrol", "cli-patient-7"], env=env)
    assert enrolled.exit_code == 0, enrolled.output
    assert "enrolled: patient" in enrolled.output and "cli-patient-7" not in enrolled.output
    status = runner.invoke(cli, ["watch", "status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    data = orjson.loads(status.stdout)
    assert [p["source"] for p in data["census"]] == ["cli"]
    assert data["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0}
    table = runner.invoke(cli, ["watch", "status"], env=env)
    assert table.exit_code == 0 and "Census (1 patients)" in table.output
    bad = runner.invoke(cli, ["watch", "enrol", "not/an-id"], env=env)
    assert bad.exit_code == 2


def test_run_says_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["watch", "run"], env={"CRS_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "CRS_WATCH_FHIR_SERVER" in result.output
