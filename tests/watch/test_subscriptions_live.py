"""Subscriptions for real: `crs-cds watch subscribe` creates them on the FHIR server under
test (SEKMET implements the Backport IG on R4), the server's handshake activates them, and
a fever written into the server reaches the webhook through the server's notification
and the worker inside `crs-cds serve` — polling is set to an hour, so nothing else can."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
from typer.testing import CliRunner

from bench.watch_support import cli_env, delete_subscriptions, put_topics, serving
from cds import fhirbuild as fb
from cds.cli import app as cli
from tests.watch.support import (
    PSEUDONYM_KEY,
    new_patient,
    now,
    put,
    scenario_copy,
    webhook_receiver,
)


def test_subscribe_then_a_fever_is_notified_by_the_servers_notification(
    fhir_base_url: str, tmp_path: Path
) -> None:
    topics = put_topics(fhir_base_url)
    pid = new_patient("watch-live")
    put(fhir_base_url, scenario_copy("g0-tisacel-afebrile", now(), pid))
    with webhook_receiver() as receiver:
        env = cli_env(
            CRS_DATA_DIR=str(tmp_path),
            CRS_PSEUDONYM_KEY=PSEUDONYM_KEY,
            CRS_FHIR_ALLOWED_SERVERS=fhir_base_url,
            CRS_WATCH_FHIR_SERVER=fhir_base_url,
            CRS_WATCH_WEBHOOK_URLS=receiver.url,
            CRS_WATCH_POLL_SECONDS="3600",
            CRS_WATCH_CENSUS_SECONDS="86400",
            CRS_LOG_LEVEL="WARNING",
        )
        with serving(env, tmp_path / "serve.log") as base:
            runner = CliRunner()
            listed = runner.invoke(cli, ["watch", "subscribe"], env=env)
            assert listed.exit_code == 2
            assert all(t in listed.output for t in topics)  # what the server advertises
            args = ["watch", "subscribe", "--endpoint", f"{base}/watch/notifications"]
            for topic in topics:
                args += ["--topic", topic]
            created = runner.invoke(
                cli, [*args, "--content", "id-only", "--heartbeat", "0"], env=env
            )
            assert created.exit_code == 0, created.output
            lines = [line for line in created.stdout.splitlines() if line.startswith("topic ")]
            assert len(lines) == 2 and all(" created (" in line for line in lines), lines
            subscriptions = _wait_active(runner, env, 2)
            try:
                enrolled = httpx.post(f"{base}/watch/patients", json={"patientId": pid}, timeout=10)
                assert enrolled.status_code == 202, enrolled.text
                pseudonym = enrolled.json()["patient"]
                _wait(lambda: httpx.get(f"{base}/watch/patients/{pseudonym}").json()["evaluatedAt"])
                assert receiver.bodies(pseudonym) == []
                put(fhir_base_url, [fb.temperature(pid, now() - timedelta(seconds=1), 38.4)])
                # Within a minute, where polling is at an hour: the server's notification
                # did it. (How fast is the watch benchmark's figure, not asserted here.)
                (body,) = receiver.wait_for(1, pseudonym, timeout=60)
                assert body["event"] == "crs.first-fever"
                state = httpx.get(f"{base}/watch/patients/{pseudonym}").json()
                assert (state["grade"], state["maxGrade"]) == (1, 1)
                status = orjson.loads(
                    runner.invoke(cli, ["watch", "status", "--json"], env=env).stdout
                )
                assert {s["lastEvent"] for s in status["subscriptions"]} >= {1}
            finally:
                delete_subscriptions(fhir_base_url, subscriptions)


def _wait(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert callable(condition)
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("not reached in time")


def _wait_active(runner: CliRunner, env: dict[str, str], count: int) -> list[str]:
    """The server's ids of the subscriptions, once its handshakes activated them."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = orjson.loads(runner.invoke(cli, ["watch", "status", "--json"], env=env).stdout)
        subs = status["subscriptions"]
        if len(subs) == count and all(s["status"] == "active" for s in subs):
            return [str(s["subscriptionId"]) for s in subs]
        time.sleep(0.2)
    raise AssertionError(f"subscriptions not activated: {status['subscriptions']}")
