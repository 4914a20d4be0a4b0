"""The pictures' world: a service with a public address and a signing key, every
patient-view scenario called once (each a CRS card with its timeline link), a clock the
tests move, and (for the browser tests) the service on a real port."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cds.app import create_app
from cds.runtime import Runtime
from cds.scenarios.library import library
from cds.store.decisions import DecisionStore
from tests.factories import AT, settings
from tests.serving import free_port as free_port  # re-exported for the page tests

SIGNING_KEY = "k" * 40
ZONE = "Europe/Zurich"


@dataclass
class Clock:
    """The service's clock, moved by the tests (links expire, sessions end)."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    """The service, its clock, and the card link of each scenario that has a CRS card."""

    app: FastAPI
    client: TestClient
    clock: Clock
    base_url: str
    links: dict[str, str] = field(default_factory=dict)
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def store(self) -> DecisionStore:
        store: DecisionStore = self.app.state.store
        return store

    def call(self, prefetch: dict[str, Any], patient_id: str) -> dict[str, Any]:
        """A patient-view call; the CRS card it answered with."""
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/doc", "patientId": patient_id},
            "prefetch": prefetch,
        }
        response = self.client.post("/cds-services/crs-monitor", json=body)
        assert response.status_code == 200, response.text
        crs = [c for c in response.json()["cards"] if "crs" in c.get("extension", {})]
        assert crs, response.text
        card: dict[str, Any] = crs[0]
        return card


def make_world(data_dir: Path, port: int, **values: Any) -> World:
    base_url = f"http://127.0.0.1:{port}"
    runtime = Runtime.load(
        settings(
            data_dir=data_dir,
            public_base_url=base_url,
            link_signing_key=SIGNING_KEY,
            display_timezone=ZONE,
            **values,
        )
    )
    clock = Clock(AT)
    app = create_app(runtime, clock=clock)
    world = World(app, TestClient(app, base_url=base_url), clock, base_url)
    for scenario in library().values():
        if scenario.service != "crs-monitor" or scenario.expect.get("grade") is None:
            continue
        card = world.call(scenario.prefetch(AT), scenario.patient_id)
        world.cards[scenario.id] = card
        world.links[scenario.id] = card["links"][0]["url"]
    return world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("pictures"), free_port())


@pytest.fixture()
def later(world: World) -> Iterator[Clock]:
    """The world's clock, put back after the test."""
    kept = world.clock.now
    yield world.clock
    world.clock.now = kept


@pytest.fixture(scope="session")
def live(world: World) -> Iterator[str]:
    """The world's service on its port (for the browser)."""
    port = int(world.base_url.rsplit(":", 1)[1])
    server = uvicorn.Server(
        uvicorn.Config(world.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.02)
    yield world.base_url
    server.should_exit = True
    thread.join(timeout=5)


def signed_in(world: World) -> TestClient:
    """A client signed in through the demo's one-time access URL."""
    from cds.web.routes import demo_access_url

    url = demo_access_url(world.store, world.base_url, world.clock())
    client = TestClient(world.app, base_url=world.base_url)
    form = client.get(url)
    assert form.status_code == 200
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    done = client.post(
        "/crs/access",
        data={"secret": url.rsplit("/", 1)[1], "csrf": csrf},
        headers={"Origin": world.base_url},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    return client


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
