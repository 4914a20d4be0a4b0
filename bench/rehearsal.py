"""A production rehearsal without Kubernetes (`scripts/rehearse`).

Starts, on 127.0.0.1: a fresh PostgreSQL database (migrated by `crs-cds db upgrade`),
three service replicas (`crs-cds serve`), two watch workers (`crs-cds watch run`)
watching a local FHIR server (sekmet-fhir, `scripts/fhir-server`) that holds the load
test's patient and notifying a webhook receiver, and nginx (Debian's package) in front of
the replicas, round robin. Then a load test: patient-view calls through nginx; part-way
through, one replica is killed (SIGKILL). It prints how the calls spread over the
replicas, the answers, the calls per second, whether every answered call left its audit
record (a killed replica must cost no accepted record: every 200 has a row; a call cut
off by the kill gets an error from nginx and may or may not have one), and what the
watch did: the patient the calls enrolled, evaluated by one of the two workers, its
change notified once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select

from bench.records import PSEUDONYM_KEY, postgres_database
from bench.watch_support import Receiver, put, webhook_receiver
from cds.scenarios import get
from cds.store.tables import audit_records, watch_notifications, watch_patients

REPLICAS = 3
WATCH_WORKERS = 2
SCENARIO = "g2-brexucel-bp-panel"  # the load test's patient: grade 2, in its risk window
WATCH_POLL_SECONDS = 2
FHIR_SERVER = Path(__file__).resolve().parent.parent / "scripts" / "fhir-server"
NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 16m;
    upstream crs {{
{servers}
        keepalive 32;
        keepalive_timeout 4s;  # below the service's CRS_KEEP_ALIVE_SECONDS (5 s)
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://crs;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 15s;
            proxy_next_upstream error timeout;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_binary() -> str:
    """Debian's nginx, installed (as root) when missing."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("nginx is not installed: apt-get install -y nginx (as root)")
    subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=True)
    return "/usr/sbin/nginx"


@dataclass
class Rehearsal:
    """The processes of one rehearsal and where to reach them."""

    database: str
    workdir: Path
    replicas: list[tuple[int, subprocess.Popen[bytes]]] = field(default_factory=list)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxy_port: int = 0
    fhir: str | None = None  # the watched FHIR server (None: no watch)
    receiver: Receiver | None = None  # where the watch's notifications go

    def env(self, index: int) -> dict[str, str]:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CRS_")},
            "CRS_DATABASE_URL": self.database,
            "CRS_PSEUDONYM_KEY": PSEUDONYM_KEY,
            "CRS_DATA_DIR": str(self.workdir / f"data-{index}"),
            "CRS_WATCH_IN_SERVE": "false",
            "CRS_LOG_LEVEL": "WARNING",
        }
        if self.fhir is not None and self.receiver is not None:
            env |= {
                "CRS_FHIR_ALLOWED_SERVERS": self.fhir,
                "CRS_WATCH_FHIR_SERVER": self.fhir,
                "CRS_WATCH_POLL_SECONDS": str(WATCH_POLL_SECONDS),
                "CRS_WATCH_WEBHOOK_URLS": self.receiver.url,
            }
        return env


def crs_cds() -> str:
    return str(Path(sys.executable).with_name("crs-cds"))


@contextmanager
def running(replicas: int, workers: int) -> Iterator[Rehearsal]:
    with ExitStack() as stack:
        database = stack.enter_context(postgres_database())
        if database is None:
            raise SystemExit("PostgreSQL is not reachable on 127.0.0.1:5432")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crs-rehearsal-")))
        rehearsal = Rehearsal(database, workdir)
        subprocess.run(
            [crs_cds(), "db", "upgrade"],
            env=rehearsal.env(0),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if workers:
            rehearsal.fhir = _fhir_server(stack, workdir)
            rehearsal.receiver = stack.enter_context(webhook_receiver())
            scenario = get(SCENARIO)
            put(rehearsal.fhir, scenario.resources(datetime.now(UTC)))
        for i in range(replicas):
            port = free_port()
            log = (workdir / f"replica-{i}.log").open("wb")
            process = subprocess.Popen(
                [crs_cds(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=rehearsal.env(i),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(_stop, process)
            rehearsal.replicas.append((port, process))
        for i in range(workers):
            log = (workdir / f"watch-{i}.log").open("wb")
            worker = subprocess.Popen(
                [crs_cds(), "watch", "run"],
                env=rehearsal.env(100 + i),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(_stop, worker)
            rehearsal.workers.append(worker)
        for port, _ in rehearsal.replicas:
            _wait_ready(f"http://127.0.0.1:{port}")
        rehearsal.proxy_port = free_port()
        prefix = workdir / "nginx"
        prefix.mkdir()
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=30s;"
            for port, _ in rehearsal.replicas
        )
        (prefix / "nginx.conf").write_text(
            NGINX_CONF.format(prefix=prefix, servers=servers, port=rehearsal.proxy_port)
        )
        proxy = subprocess.Popen(
            [
                nginx_binary(),
                "-p",
                str(prefix),
                "-c",
                str(prefix / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(_stop, proxy)
        _wait_ready(f"http://127.0.0.1:{rehearsal.proxy_port}")
        yield rehearsal


def _fhir_server(stack: ExitStack, workdir: Path, seconds: float = 300) -> str:
    """sekmet-fhir on a free port (its venv made on first use), stopped with the stack."""
    port = free_port()
    log = (workdir / "fhir-server.log").open("wb")
    process = subprocess.Popen([str(FHIR_SERVER), str(port)], stdout=log, stderr=subprocess.STDOUT)
    stack.callback(_stop, process)
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the FHIR server exited: {(workdir / 'fhir-server.log').read_text()}")
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the FHIR server did not start")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


@dataclass
class Figures:
    calls: int
    seconds: float
    statuses: Counter[int]
    by_replica: Counter[str]
    killed_port: int
    answered_with_record: int
    answered: int
    cut_off_with_record: int
    cut_off: int
    watch: WatchFigures | None = None

    def text(self) -> str:
        lines = [
            f"{self.calls} calls through nginx to {len(self.by_replica)} replicas in "
            f"{self.seconds:.1f} s: {self.calls / self.seconds:.0f} calls/s",
            "answers: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())),
            "spread: " + ", ".join(f"{r}: {n}" for r, n in sorted(self.by_replica.items())),
            f"replica on port {self.killed_port} killed (SIGKILL) after a third of the calls",
            f"audit: {self.answered_with_record} of {self.answered} answered calls have their "
            f"record ({'complete' if self.answered_with_record == self.answered else 'MISSING'}); "
            f"{self.cut_off_with_record} of {self.cut_off} calls cut off by the kill have one",
        ]
        if self.watch is not None:
            lines.append(self.watch.text())
        return "\n".join(lines)


@dataclass
class WatchFigures:
    workers: int  # watch workers still running at the end
    census: int  # patients enrolled (the load's patient-view calls enrol theirs)
    grade: int | None  # the load patient's grade, as a worker evaluated it
    notifications: int  # changes stored
    posted: int  # webhook POSTs received
    distinct: int  # distinct notification ids among them
    sources: str  # how the census patients were enrolled

    def text(self) -> str:
        return (
            f"watch: {self.workers} workers; census {self.census} patient(s) (enrolled by "
            f"{self.sources}), the load's patient evaluated at grade {self.grade}; "
            f"{self.notifications} change(s) notified, {self.posted} webhook POST(s) "
            f"({self.distinct} distinct)"
        )


async def _load(rehearsal: Rehearsal, calls: int, concurrency: int) -> Figures:
    scenario = get(SCENARIO)
    data = scenario.prefetch(datetime.now(UTC))
    bodies = [
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/rehearsal", "patientId": scenario.patient_id},
            "prefetch": data,
        }
        for _ in range(calls)
    ]
    url = f"http://127.0.0.1:{rehearsal.proxy_port}"
    limit = asyncio.Semaphore(concurrency)
    results: list[tuple[str, int, str]] = []
    killed = rehearsal.replicas[1]
    started = time.perf_counter()

    limits = httpx.Limits(keepalive_expiry=2)  # below nginx's keep-alive: no close races
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(i: int, body: dict[str, Any]) -> None:
            async with limit:
                if i == calls // 3 and killed[1].poll() is None:
                    killed[1].send_signal(signal.SIGKILL)
                try:
                    response = await client.post("/cds-services/crs-monitor", json=body)
                    results.append(
                        (
                            body["hookInstance"],
                            response.status_code,
                            response.headers.get("x-upstream", "?"),
                        )
                    )
                except httpx.HTTPError:
                    results.append((body["hookInstance"], 0, "?"))

        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    seconds = time.perf_counter() - started
    engine = create_engine(rehearsal.database)
    with engine.connect() as connection:
        recorded = {
            row[0]
            for row in connection.execute(
                select(audit_records.c.hook_instance).where(
                    audit_records.c.hook_instance.in_([r[0] for r in results])
                )
            )
        }
        total = connection.scalar(select(func.count()).select_from(audit_records))
    engine.dispose()
    answered = [r for r in results if r[1] == 200]
    cut_off = [r for r in results if r[1] != 200]
    assert total is not None
    watch = await asyncio.to_thread(_watched, rehearsal) if rehearsal.workers else None
    return Figures(
        calls=calls,
        seconds=seconds,
        statuses=Counter(r[1] for r in results),
        by_replica=Counter(r[2].split(",")[-1].strip() for r in answered),
        killed_port=killed[0],
        answered_with_record=sum(r[0] in recorded for r in answered),
        answered=len(answered),
        cut_off_with_record=sum(r[0] in recorded for r in cut_off),
        cut_off=len(cut_off),
        watch=watch,
    )


def _watched(rehearsal: Rehearsal, seconds: float = 60) -> WatchFigures:
    """What the watch did once the load's patient was enrolled: wait (up to `seconds`)
    for its notification, then a few poll intervals more for anything doubled."""
    receiver = rehearsal.receiver
    assert receiver is not None
    deadline = time.monotonic() + seconds
    while not receiver.of() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(WATCH_POLL_SECONDS * 3)
    engine = create_engine(rehearsal.database)
    with engine.connect() as connection:
        census = connection.scalar(select(func.count()).select_from(watch_patients)) or 0
        grade = connection.scalar(select(func.max(watch_patients.c.grade)))
        stored = connection.scalar(select(func.count()).select_from(watch_notifications)) or 0
        sources = sorted(set(connection.scalars(select(watch_patients.c.source))))
    engine.dispose()
    ids = [r.body.get("id") for r in receiver.of()]
    return WatchFigures(
        workers=sum(w.poll() is None for w in rehearsal.workers),
        census=census,
        grade=grade,
        notifications=stored,
        posted=len(ids),
        distinct=len(set(ids)),
        sources=", ".join(sources) or "nobody",
    )


def rehearse(calls: int = 3_000, concurrency: int = 32) -> Figures:
    with running(REPLICAS, WATCH_WORKERS) as rehearsal:
        return asyncio.run(_load(rehearsal, calls, concurrency))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rehearsal", description=__doc__)
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    figures = rehearse(args.calls, args.concurrency)
    print(figures.text())
    return 0 if figures.answered_with_record == figures.answered else 1


if __name__ == "__main__":
    sys.exit(main())
