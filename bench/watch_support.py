"""What the watch's benchmark and its tests share: the service and watch workers as real
processes on 127.0.0.1, a webhook receiver, and SubscriptionTopics for SEKMET.

SEKMET (the FHIR server of the tests) implements the Subscriptions Backport IG on R4 with
topics stored as `Basic` resources carrying the R5 cross-version SubscriptionTopic
extensions (the encoding fhir-candle uses); it ships none for Observations or
MedicationAdministrations, so `sekmet_topic` writes them. Other servers define their
topics themselves (their CapabilityStatement lists them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from cds import fhirbuild as fb
from cds.scenarios import get

TOPIC_BASE = "http://crs-cds.test/SubscriptionTopic"
R5_TOPIC = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
STARTUP_TIMEOUT_S = 60.0


def scenario_copy(scenario_id: str, anchor: datetime, patient_id: str) -> list[dict[str, Any]]:
    """A library scenario's resources, timed from `anchor`, as patient `patient_id`."""
    text = orjson.dumps(get(scenario_id).resources(anchor)).decode()
    return list(orjson.loads(text.replace(scenario_id, patient_id)))


def put(fhir: str, resources: list[dict[str, Any]]) -> None:
    """PUT resources into the FHIR server (one transaction)."""
    response = httpx.post(
        fhir,
        content=orjson.dumps(fb.transaction(resources)),
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
        timeout=60,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{fhir}: HTTP {response.status_code} {response.text[:500]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def topic_url(resource_type: str) -> str:
    return f"{TOPIC_BASE}/{resource_type.lower()}-changed"


def sekmet_topic(resource_type: str) -> dict[str, Any]:
    """A topic "any create or update of a `resource_type`", filterable by patient, as
    SEKMET stores topics (a Basic with the R5 SubscriptionTopic extensions)."""
    name = f"{resource_type.lower()}-changed"
    trigger = [
        {"url": "description", "valueMarkdown": f"A {resource_type} was created or updated"},
        {"url": "resource", "valueUri": f"http://hl7.org/fhir/StructureDefinition/{resource_type}"},
        {"url": "supportedInteraction", "valueCode": "create"},
        {"url": "supportedInteraction", "valueCode": "update"},
        {"url": "fhirPathCriteria", "valueString": "true"},
    ]
    return {
        "resourceType": "Basic",
        "id": f"crs-topic-{name}",
        "modifierExtension": [{"url": f"{R5_TOPIC}.status", "valueCode": "active"}],
        "extension": [
            {"url": f"{R5_TOPIC}.url", "valueUri": topic_url(resource_type)},
            {"url": f"{R5_TOPIC}.version", "valueString": "1.0.0"},
            {"url": f"{R5_TOPIC}.name", "valueString": name.replace("-", "_")},
            {"url": f"{R5_TOPIC}.title", "valueString": f"{resource_type} changed"},
            {"url": f"{R5_TOPIC}.resourceTrigger", "extension": trigger},
            {
                "url": f"{R5_TOPIC}.canFilterBy",
                "extension": [
                    {"url": "description", "valueMarkdown": "Filter on patient"},
                    {"url": "resource", "valueUri": resource_type},
                    {"url": "filterParameter", "valueString": "patient"},
                ],
            },
        ],
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]
        },
    }


def put_topics(fhir: str) -> list[str]:
    """The Observation and MedicationAdministration topics written into SEKMET; their URLs."""
    urls = []
    with httpx.Client(timeout=30) as client:
        for rtype in ("Observation", "MedicationAdministration"):
            topic = sekmet_topic(rtype)
            response = client.put(
                f"{fhir}/Basic/{topic['id']}",
                json=topic,
                headers={"Content-Type": "application/fhir+json"},
            )
            response.raise_for_status()
            urls.append(topic_url(rtype))
    return urls


def delete_subscriptions(fhir: str, ids: list[str]) -> None:
    """Remove Subscriptions from the server (so that it stops posting to a stopped service)."""
    with httpx.Client(timeout=30) as client:
        for sid in ids:
            client.delete(f"{fhir}/Subscription/{sid}")


# --- processes ---------------------------------------------------------------------------


def cli_env(**settings: str) -> dict[str, str]:
    """The environment of a `crs-cds` process: this one's, minus CRS_ settings, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRS_")}
    env.update(settings)
    return env


@dataclass
class Process:
    """A `crs-cds` command in its own process (its output in `log`)."""

    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cds.cli", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: the process dies at once, leaving its leases to expire."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (a worker gives its leases back)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[str]:
    """`crs-cds serve` on 127.0.0.1 (a free port) until the block ends; its base URL."""
    port = free_port()
    process = Process(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            assert process.process is not None
            if process.process.poll() is not None:
                raise RuntimeError(f"crs-cds serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"crs-cds serve not ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        process.stop()


# --- a webhook receiver ----------------------------------------------------------------------


@dataclass
class Received:
    """One webhook POST as the receiver got it."""

    at: float  # time.time() on arrival
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """A webhook receiver: records every POST; answers 503 to the first `fail_first`."""

    url: str
    received: list[Received] = field(default_factory=list)
    fail_first: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, patient: str | None = None) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.received
                if patient is None or r.body["patient"].get("pseudonym") == patient
            ]

    def bodies(self, patient: str | None = None) -> list[dict[str, Any]]:
        """The bodies received (about one patient, by pseudonym), in order."""
        return [r.body for r in self.of(patient)]

    def wait_for(
        self, count: int, patient: str | None = None, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """The bodies once at least `count` arrived (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.bodies(patient)) >= count:
                return self.bodies(patient)
            time.sleep(0.02)
        raise AssertionError(
            f"{len(self.bodies(patient))} webhook calls after {timeout} s, wanted {count}"
        )


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (a real socket, a thread)."""
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            receiver = holder[0]
            with receiver.lock:
                failing = receiver.fail_first > 0
                if failing:
                    receiver.fail_first -= 1
                else:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append(Received(time.time(), headers, body))
            self.send_response(503 if failing else 204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
