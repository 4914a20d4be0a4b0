"""Several worker processes on one PostgreSQL (issue #10.6): 2,000 concurrent calls to
`crs-cds serve --workers 4` leave exactly 2,000 records; feedback reaches cards shown by
any worker; every worker writes its own JSON log lines."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from cds.store import database
from cds.store.tables import audit_records, feedback
from tests.factories import grade2_monitor_request
from tests.store.conftest import PSEUDONYM_KEY

CALLS = 2_000
CONCURRENT = 64
WORKERS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def replicas(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if database.is_sqlite(database_url):
        pytest.skip("replicas share a PostgreSQL database")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "CRS_DATABASE_URL": database_url,
        "CRS_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CRS_DATA_DIR": str(tmp_path),
        "CRS_LOG_LEVEL": "INFO",
    }
    command = [
        sys.executable,
        "-m",
        "cds.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(WORKERS),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            process.kill()
            raise AssertionError(log.read_text())
        try:
            yield url, log
        finally:
            process.terminate()
            process.wait(timeout=30)


async def _fire(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limit = asyncio.Semaphore(CONCURRENT)
    # a client drops idle connections before the service does (CRS_KEEP_ALIVE_SECONDS,
    # 5 s), as a proxy in front of it must: else a request can race the server's close;
    # and, like a proxy's upstream pool, it keeps its connections open for reuse (httpx
    # keeps 20 by default: the other 44 were closed and opened again after every call,
    # and a worker counting closing and new connections passed its limit and said 503)
    limits = httpx.Limits(
        max_connections=CONCURRENT, max_keepalive_connections=CONCURRENT, keepalive_expiry=2
    )
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(body: dict[str, Any]) -> httpx.Response:
            async with limit:
                return await client.post("/cds-services/crs-monitor", json=body)

        return await asyncio.gather(*(one(b) for b in bodies))


def test_2000_concurrent_calls_on_4_workers_leave_2000_records(
    replicas: tuple[str, Path], database_url: str
) -> None:
    url, log = replicas
    bodies = [grade2_monitor_request() for _ in range(CALLS)]
    started = time.perf_counter()
    responses = asyncio.run(_fire(url, bodies))
    seconds = time.perf_counter() - started
    assert [r.status_code for r in responses] == [200] * CALLS
    engine = create_engine(database_url)
    instances = [b["hookInstance"] for b in bodies]
    with engine.connect() as connection:
        rows = connection.execute(
            select(audit_records.c.hook_instance, func.count())
            .where(audit_records.c.hook_instance.in_(instances))
            .group_by(audit_records.c.hook_instance)
        ).all()
    assert len(rows) == CALLS and all(n == 1 for _, n in rows)  # none lost, none doubled

    # feedback on cards the workers showed, sent again to whichever worker takes it
    cards = [r.json()["cards"][0]["uuid"] for r in responses[:50]]
    now = datetime.now(UTC).isoformat()
    with httpx.Client(base_url=url) as client:
        for uuid in cards:
            item = {"card": uuid, "outcome": "overridden", "outcomeTimestamp": now}
            answer = client.post("/cds-services/crs-monitor/feedback", json={"feedback": [item]})
            assert answer.status_code == 200, answer.text
    with engine.connect() as connection:
        stored = connection.scalar(
            select(func.count()).select_from(feedback).where(feedback.c.card_uuid.in_(cards))
        )
    engine.dispose()
    assert stored == len(cards)

    evaluated = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"evaluated"' in line
    ]
    assert len(evaluated) == CALLS
    assert len({e["pid"] for e in evaluated}) > 1  # logged by several workers
    print(f"{CALLS} calls on {WORKERS} workers in {seconds:.1f} s ({CALLS / seconds:.0f}/s)")
