"""The decision store under the benchmark: a throw-away PostgreSQL database for the
service variant that records there, and the cost of one record write, in-process."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import msgspec
import psycopg

from bench.payloads import Payload
from bench.stats import Summary
from cds.clock import utc_now
from cds.evaluation import risk_data_since
from cds.fhir.client import http_client
from cds.fhir.gather import FhirAccess, gather
from cds.ids import new_uuid
from cds.pipeline import body_digest, evaluate_context, parse
from cds.runtime import Runtime
from cds.services import registry
from cds.settings import Settings
from cds.store import database, records
from cds.store.decisions import DecisionStore

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
PSEUDONYM_KEY = "bench-pseudonym-key-0123456789abcdef"


@contextmanager
def postgres_database(admin: str = POSTGRES_ADMIN) -> Iterator[str | None]:
    """A new, migrated PostgreSQL database for the run (dropped after), or None when
    PostgreSQL cannot be reached."""
    name = f"crs_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        yield None
        return
    params = psycopg.conninfo.conninfo_to_dict(admin)
    url = (
        f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}"
        f":{params.get('port', 5432)}/{name}"
    )
    try:
        database.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def record_write_cost(url: str | None, payload: Payload, writes: int) -> Summary:
    """One audit record of `payload`'s monitor call (its facts already encoded), written
    `writes` times: what a call's answer waits for, besides the work done beside it."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            _env_file=None, data_dir=data_dir, database_url=url, pseudonym_key=PSEUDONYM_KEY
        )
        runtime = Runtime.load(settings)
        store = DecisionStore.open(runtime, new_uuid, utc_now)
        try:
            record = _record(runtime, payload)
            samples = []
            for _ in range(writes):
                fresh = msgspec.structs.replace(
                    record,
                    id=new_uuid(),
                    cards=tuple(msgspec.structs.replace(c, uuid=new_uuid()) for c in record.cards),
                )
                started = time.perf_counter()
                store.write([fresh])
                samples.append(time.perf_counter() - started)
            return Summary.of(samples)
        finally:
            store.close()


def _record(runtime: Runtime, payload: Payload) -> records.AuditRecord:
    services = registry(runtime)
    call = parse(services, "crs-monitor", payload.monitor)
    at = datetime.now(UTC)

    async def collect() -> object:

        access = FhirAccess(http_client, [], 3.0, 200)
        return await gather(
            call.request,
            call.service.prefetch,
            access,
            runtime.knowledge,
            risk_data_since(runtime, at),
        )

    collected = asyncio.run(collect())
    evaluation = evaluate_context(runtime, collected, call.context, at)  # type: ignore[arg-type]
    decision = call.service.decide(runtime, evaluation, new_uuid)
    return records.build(
        record_id=new_uuid(),
        recorded_at=at,
        service=call.service.id,
        hook=call.request.hook,
        hook_instance=call.request.hookInstance,
        client_iss=None,
        client_sub=None,
        tenant=None,
        patient="bench",
        evaluation=evaluation,
        decision=decision,
        rule_set_version=runtime.rules.version,
        rule_set_digest=runtime.knowledge.digest,
        input_digest=body_digest(payload.monitor),
        facts=None,
        latency_ms=0.0,
    )
