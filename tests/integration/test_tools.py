"""`crs-cds scenarios | load | fire` against the real FHIR server and the service on a socket."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from cds.app import create_app
from cds.runtime import Runtime
from cds.scenarios import get
from cds.tools import register
from tests.integration.support import runtime_with, store_for

runner = CliRunner()


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("noop", hidden=True)(lambda: None)  # a group, as in crs-cds
    register(app)
    return app


@pytest.fixture(scope="module")
def service_url(runtime: Runtime, loaded: str) -> Iterator[str]:
    """The CDS service on 127.0.0.1 (uvicorn in a thread), allowed to read `loaded`."""
    allowed = runtime_with(runtime, fhir_allowed_servers=[loaded])
    app = create_app(allowed, store=store_for(allowed))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_scenarios_lists_ids_and_outcomes(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["scenarios", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["id"] for r in rows} >= {"g0-tisacel-afebrile", "toci-over-4-total"}
    table = runner.invoke(cli, ["scenarios"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "g4-idecel-two-pressors" in table.output and "grade 4 (max 4)" in table.output


def test_load_prints_patient_ids(cli: typer.Typer, loaded: str) -> None:
    args = ["load", "--fhir-server", loaded + "/", "g1-axicel-fever-f", "toci-no-weight"]
    result = runner.invoke(cli, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "g1-axicel-fever-f" in result.output and "toci-no-weight" in result.output


def test_load_unknown_scenario_fails(cli: typer.Typer, loaded: str) -> None:
    result = runner.invoke(cli, ["load", "--fhir-server", loaded, "no-such"])
    assert result.exit_code == 2


@pytest.mark.parametrize("prefetch", ["--prefetch", "--no-prefetch"])
def test_fire_monitor_json(cli: typer.Typer, loaded: str, service_url: str, prefetch: str) -> None:
    # Grade 3 rests on the administrations and on plain (not panel) observations: both
    # modes must find them.
    scenario = get("g3-lisocel-norepinephrine")
    args = ["fire", "crs-monitor", "--fhir-server", loaded, "--patient", scenario.patient_id]
    result = runner.invoke(cli, [*args, prefetch, "--service-url", service_url, "--json"])
    assert result.exit_code == 0, result.output
    (card,) = json.loads(result.output)["cards"]
    assert card["extension"]["crs"]["grade"] >= 1


def test_fire_no_prefetch_gives_the_scenario_outcome(
    cli: typer.Typer, loaded: str, service_url: str
) -> None:
    scenario = get("g2-brexucel-bp-panel")
    args = ["fire", "crs-monitor", "--fhir-server", loaded, "--scenario", scenario.id]
    result = runner.invoke(cli, [*args, "--no-prefetch", "--service-url", service_url, "--json"])
    assert result.exit_code == 0, result.output
    (card,) = json.loads(result.output)["cards"]
    assert card["extension"]["crs"]["grade"] == scenario.expect["grade"]


def test_fire_renders_cards(cli: typer.Typer, loaded: str, service_url: str) -> None:
    args = ["fire", "crs-monitor", "--fhir-server", loaded, "--scenario", "g4-idecel-two-pressors"]
    result = runner.invoke(cli, [*args, "--service-url", service_url], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "[critical]" in result.output or "[warning]" in result.output
    assert "CRS grade" in result.output
    assert "expected (g4-idecel-two-pressors): grade 4 (max 4)" in result.output


def test_fire_order_sign_uses_the_scenario_draft_order(
    runtime: Runtime, cli: typer.Typer, loaded: str, service_url: str
) -> None:
    from cds.services import registry

    if "crs-order-sign" not in registry(runtime):
        pytest.skip("crs-order-sign is not registered yet")
    scenario = get("toci-over-3-in-24h")
    args = ["fire", "crs-order-sign", "--fhir-server", loaded, "--scenario", scenario.id]
    result = runner.invoke(cli, [*args, "--no-prefetch", "--service-url", service_url, "--json"])
    assert result.exit_code == 0, result.output
    (card,) = json.loads(result.output)["cards"]
    assert card["extension"]["tocilizumabCheck"]["problems"] == scenario.expect["problems"]


def test_fire_unknown_service(cli: typer.Typer, loaded: str, service_url: str) -> None:
    args = ["fire", "nope", "--fhir-server", loaded, "--patient", "x"]
    result = runner.invoke(cli, [*args, "--service-url", service_url])
    assert result.exit_code == 2


@pytest.mark.parametrize("scenario_id", ["g2-brexucel-bp-panel", "masked-ciltacel-tocilizumab"])
def test_fire_with_prefetch_gives_the_scenario_outcome(
    cli: typer.Typer, loaded: str, service_url: str, scenario_id: str
) -> None:
    scenario = get(scenario_id)
    args = ["fire", "crs-monitor", "--fhir-server", loaded, "--scenario", scenario.id]
    result = runner.invoke(cli, [*args, "--prefetch", "--service-url", service_url, "--json"])
    assert result.exit_code == 0, result.output
    (card,) = json.loads(result.output)["cards"]
    assert card["extension"]["crs"]["grade"] == scenario.expect["grade"]


def test_fire_leaves_out_what_the_fhir_server_failed_to_give(
    cli: typer.Typer, loaded: str, service_url: str
) -> None:
    # A query that fails is "not fetched", not "no data": left out, the service queries
    # fhirServer itself or answers 412. (Sent as null it was read as no data: a grade-3
    # patient's call answered 200, "No cards", exit 0.)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"  # nothing listens there
    scenario = get("g3-lisocel-norepinephrine")
    args = ["fire", "crs-monitor", "--fhir-server", dead, "--scenario", scenario.id]
    result = runner.invoke(
        cli, [*args, "--prefetch", "--service-url", service_url], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 1, result.output
    assert "No cards" not in result.output
    assert "not sent (the service queries fhirServer for it, or answers 412)" in result.output
    assert "prefetch: none; not sent: patient, observations" in result.output
    assert "HTTP 412" in result.output


def test_fire_sends_null_for_a_patient_the_fhir_server_does_not_have(
    cli: typer.Typer, loaded: str, service_url: str
) -> None:
    args = ["fire", "crs-monitor", "--fhir-server", loaded, "--patient", "no-such-patient"]
    result = runner.invoke(
        cli, [*args, "--prefetch", "--service-url", service_url], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output
    assert "none found: patient" in result.output
    assert "not sent" not in result.output
