"""`python -m bench.watch`: how soon the watch notices, and what a polling cycle costs.

1. Detection latency, from the write of the qualifying Observation (a fever) into the
   FHIR server to the webhook's arrival, p50/p95 — with polling (CRS_WATCH_POLL_SECONDS,
   15 s by default) and with FHIR Subscriptions (polling at an hour, so that only the
   server's notifications can make it). Real processes: SEKMET as the FHIR server (the
   tests' server; started here unless --fhir-server is given), `crs-cds serve` with its
   in-serve worker on SQLite, a webhook receiver on 127.0.0.1. The fevers are written at
   random moments, one per patient, so that the polling phase is sampled evenly.
2. The cost of one polling cycle for N census patients (500 by default), in this process:
   the CPU time and the FHIR queries of a cycle when nothing changed, when 10 % of the
   patients have new data, of the first look at every patient and of the poll after it
   (which reads once more the patients with resources written after what the first look
   read, e.g. heart rates).

Targets (issue #12): p95 ≤ poll interval + 5 s (polling), ≤ 5 s (subscriptions).
Writes bench/results/watch-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.watch_support import (
    cli_env,
    delete_subscriptions,
    put,
    put_topics,
    scenario_copy,
    serving,
    webhook_receiver,
)
from cds import fhirbuild as fb

RESULTS_DIR = Path(__file__).parent / "results"
PSEUDONYM_KEY = "bench-pseudonym-key-0123456789abcdef"
PER_TRANSACTION = 25


def _now() -> datetime:
    return datetime.now(UTC)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Latency:
    mode: str
    poll_seconds: float
    samples: list[float] = field(default_factory=list)
    missed: int = 0

    def figures(self) -> dict[str, Any]:
        s = self.samples
        return {
            "mode": self.mode,
            "pollSeconds": self.poll_seconds,
            "samples": len(s),
            "missed": self.missed,
            "p50": round(statistics.median(s), 3) if s else None,
            "p95": round(percentile(s, 95), 3) if s else None,
            "max": round(max(s), 3) if s else None,
        }


def _load(fhir: str, ids: list[str]) -> None:
    anchor = _now()
    for i in range(0, len(ids), PER_TRANSACTION):
        put(
            fhir,
            [
                r
                for pid in ids[i : i + PER_TRANSACTION]
                for r in scenario_copy("g0-tisacel-afebrile", anchor, pid)
            ],
        )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cds.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wait_active(env: dict[str, str], count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = orjson.loads(_cli(env, "watch", "status", "--json").stdout)
        subs = status["subscriptions"]
        if len(subs) == count and all(s["status"] == "active" for s in subs):
            return [str(s["subscriptionId"]) for s in subs]
        time.sleep(0.2)
    raise RuntimeError("the subscriptions were not activated by the server's handshake")


def latency(fhir: str, mode: str, poll: float, samples: int, spread: float, work: Path) -> Latency:
    """Fevers written at random moments over `spread` seconds; the webhook's delay each."""
    result = Latency(mode, poll)
    ids = [f"bench-{mode}-{uuid.uuid4().hex[:8]}-{i}" for i in range(samples)]
    _load(fhir, ids)
    work.mkdir(parents=True, exist_ok=True)
    with webhook_receiver() as receiver:
        env = cli_env(
            CRS_DATA_DIR=str(work),
            CRS_PSEUDONYM_KEY=PSEUDONYM_KEY,
            CRS_FHIR_ALLOWED_SERVERS=fhir,
            CRS_WATCH_FHIR_SERVER=fhir,
            CRS_WATCH_WEBHOOK_URLS=receiver.url,
            CRS_WATCH_POLL_SECONDS=str(poll),
            CRS_WATCH_CENSUS_SECONDS="86400",
            CRS_LOG_LEVEL="WARNING",
        )
        with serving(env, work / "serve.log") as base:
            subscriptions: list[str] = []
            if mode == "subscriptions":
                args = ["watch", "subscribe", "--endpoint", f"{base}/watch/notifications"]
                for topic in put_topics(fhir):
                    args += ["--topic", topic]
                created = _cli(env, *args, "--content", "id-only", "--heartbeat", "0")
                if created.returncode != 0:
                    raise RuntimeError(created.stderr + created.stdout)
                subscriptions = _wait_active(env, 2)
            try:
                pseudonyms = {
                    pid: httpx.post(f"{base}/watch/patients", json={"patientId": pid}).json()[
                        "patient"
                    ]
                    for pid in ids
                }
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    evaluated = [
                        httpx.get(f"{base}/watch/patients/{p}").json()["evaluatedAt"]
                        for p in pseudonyms.values()
                    ]
                    if all(evaluated):
                        break
                    time.sleep(0.5)
                written: dict[str, float] = {}
                rng = random.Random(7)
                for pid in rng.sample(ids, len(ids)):
                    time.sleep(rng.uniform(0, 2 * spread / samples))
                    written[pseudonyms[pid]] = time.time()
                    put(fhir, [fb.temperature(pid, _now() - timedelta(seconds=1), 38.6)])
                deadline = time.monotonic() + poll + 30
                while time.monotonic() < deadline:
                    arrived = {r.body["patient"]["pseudonym"] for r in receiver.of()}
                    if set(written) <= arrived:
                        break
                    time.sleep(0.05)
                first: dict[str, float] = {}
                for r in receiver.of():
                    first.setdefault(r.body["patient"]["pseudonym"], r.at)
                for pseudonym, at in written.items():
                    if pseudonym in first:
                        result.samples.append(first[pseudonym] - at)
                    else:
                        result.missed += 1
            finally:
                delete_subscriptions(fhir, subscriptions)
    return result


async def _cycle_cost(fhir: str, patients: int, work: Path) -> dict[str, Any]:
    """The cost of polling cycles over `patients` census patients, in this process."""
    from cds.clock import utc_now
    from cds.ids import new_uuid
    from cds.runtime import Runtime
    from cds.settings import Settings
    from cds.store.decisions import DecisionStore
    from cds.watch.service import Watch
    from cds.watch.worker import CENSUS_JOB, Worker

    ids = [f"bench-cost-{uuid.uuid4().hex[:8]}-{i}" for i in range(patients)]
    _load(fhir, ids)
    requests = 0

    async def count(_: httpx.Request) -> None:
        nonlocal requests
        requests += 1

    client = httpx.AsyncClient(event_hooks={"request": [count]}, trust_env=False)
    settings = Settings(
        _env_file=None,
        data_dir=work,
        pseudonym_key=PSEUDONYM_KEY,
        fhir_allowed_servers=[fhir],
        watch_fhir_server=fhir,
        # the cycles are started here: the schedule's own turns stay out of them
        watch_poll_seconds=3600.0,
        fhir_timeout_seconds=30.0,
    )
    runtime = Runtime.load(settings)
    store = DecisionStore.open(runtime, new_uuid, utc_now)
    watch = Watch.open(runtime, store, utc_now, fhir_http=lambda: client)
    assert watch is not None
    census = watch.census
    census.claim_job(CENSUS_JOB, "bench", utc_now(), timedelta(0), timedelta(0))
    census.finish_job(CENSUS_JOB, "bench", utc_now())  # the census search is not measured
    census.enrol_many(ids, "cli", utc_now())
    pseudonyms = [watch.ids.pseudonym(p) for p in ids]
    worker = Worker(watch)

    async def measured() -> dict[str, float]:
        nonlocal requests
        requests = 0
        cpu, wall = time.process_time(), time.perf_counter()
        await worker.drain()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {
            "fhirQueries": requests,
            "cpuSeconds": round(cpu, 3),
            "wallSeconds": round(wall, 3),
            "cpuMsPerPatient": round(cpu * 1000 / patients, 3),
        }

    first = await measured()
    census.mark_due(pseudonyms, utc_now())
    settling = await measured()  # what the first look did not read (heart rates…) once more
    census.mark_due(pseudonyms, utc_now())
    quiet = await measured()
    changed = ids[: max(1, patients // 10)]
    for i in range(0, len(changed), PER_TRANSACTION):
        put(
            fhir,
            [
                fb.temperature(pid, _now() - timedelta(seconds=1), 37.4)
                for pid in changed[i : i + PER_TRANSACTION]
            ],
        )
    census.mark_due(pseudonyms, utc_now())
    busy = await measured()
    await client.aclose()
    store.close()
    return {
        "patients": patients,
        "firstLook": first,
        "firstPoll": settling,
        "cycleNothingNew": quiet,
        "cycleTenPercentNew": {**busy, "patientsWithNewData": len(changed)},
        "fhirQueriesPerSecondAt60s": round(quiet["fhirQueries"] / 60, 1),
    }


@contextlib.contextmanager
def _fhir_server(given: str | None, work: Path) -> Iterator[str]:
    if given:
        yield given.rstrip("/")
        return
    from tests.fhir_server import start_fhir_server  # the tests' SEKMET (dev machines only)

    with start_fhir_server(work / "fhir-server") as base:
        yield base


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watch", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples and patients")
    parser.add_argument("--poll-seconds", type=float, default=15.0)
    parser.add_argument("--samples", type=int, help="fevers per latency run (default 40; quick 10)")
    parser.add_argument(
        "--census", type=int, help="patients of the cost run (default 500; quick 100)"
    )
    parser.add_argument("--fhir-server", help="an existing FHIR R4 server (default: start SEKMET)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--skip-latency", action="store_true", help="only the cost of a polling cycle"
    )
    options = parser.parse_args(argv)
    samples = options.samples or (10 if options.quick else 40)
    census = options.census or (100 if options.quick else 500)
    poll = options.poll_seconds
    with tempfile.TemporaryDirectory(prefix="crs-bench-watch-") as tmp:
        work = Path(tmp)
        with _fhir_server(options.fhir_server, work) as fhir:
            polling, subscribed = Latency("polling", poll), Latency("subscriptions", 3600.0)
            if not options.skip_latency:
                polling = latency(fhir, "polling", poll, samples, 2 * poll, work / "polling")
                subscribed = latency(
                    fhir, "subscriptions", 3600.0, samples, 2 * poll, work / "subscriptions"
                )
            cost = asyncio.run(_cycle_cost(fhir, census, work / "cost"))
    figures = {
        "at": _now().isoformat(timespec="seconds"),
        "latency": [polling.figures(), subscribed.figures()],
        "cycle": cost,
        "targets": {
            "pollingP95Seconds": poll + 5,
            "subscriptionsP95Seconds": 5.0,
            "pollingMet": bool(polling.samples)
            and percentile(polling.samples, 95) <= poll + 5
            and not polling.missed,
            "subscriptionsMet": bool(subscribed.samples)
            and percentile(subscribed.samples, 95) <= 5
            and not subscribed.missed,
        },
    }
    print(_render(figures))
    options.results_dir.mkdir(parents=True, exist_ok=True)
    out = options.results_dir / f"watch-{_now().strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    print(f"figures written to {out}")
    return 0


def _render(figures: dict[str, Any]) -> str:
    lines = ["detection latency (write of the fever -> webhook), seconds"]
    lines.append(f"{'mode':<15}{'poll s':>8}{'n':>5}{'missed':>8}{'p50':>8}{'p95':>8}{'max':>8}")
    for f in figures["latency"]:
        if not f["samples"]:
            continue
        lines.append(
            f"{f['mode']:<15}{f['pollSeconds']:>8g}{f['samples']:>5}{f['missed']:>8}"
            f"{f['p50']:>8}{f['p95']:>8}{f['max']:>8}"
        )
    c = figures["cycle"]
    lines.append(f"\npolling cycle over {c['patients']} census patients (this process)")
    lines.append(
        f"{'cycle':<24}{'FHIR queries':>14}{'CPU s':>8}{'wall s':>8}{'CPU ms/patient':>16}"
    )
    for name, key in (
        ("first look", "firstLook"),
        ("first poll after it", "firstPoll"),
        ("nothing new", "cycleNothingNew"),
        ("10 % new data", "cycleTenPercentNew"),
    ):
        row = c[key]
        lines.append(
            f"{name:<24}{row['fhirQueries']:>14}{row['cpuSeconds']:>8}{row['wallSeconds']:>8}"
            f"{row['cpuMsPerPatient']:>16}"
        )
    lines.append(f"at a 60 s interval: {c['fhirQueriesPerSecondAt60s']} FHIR queries/s")
    t = figures["targets"]
    measured = {f["mode"]: bool(f["samples"]) for f in figures["latency"]}
    polling = "met" if t["pollingMet"] else "NOT met" if measured["polling"] else "not measured"
    subscriptions = (
        "met"
        if t["subscriptionsMet"]
        else "NOT met"
        if measured["subscriptions"]
        else "not measured"
    )
    lines.append(
        f"\ntargets: polling p95 <= {t['pollingP95Seconds']:g} s: {polling}; "
        f"subscriptions p95 <= {t['subscriptionsP95Seconds']:g} s: {subscriptions}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
