"""Run the benchmark: servers up, payloads built, variants measured interleaved.

Every round measures each variant once per payload size, in a shuffled order, so
drifts of a noisy machine (frequency scaling, other load) hit all variants alike and
the ratios between them hold even when absolute figures move.
"""

from __future__ import annotations

import gc
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bench.payloads import Payload, build_payload
from bench.records import PSEUDONYM_KEY, postgres_database, record_write_cost
from bench.server import Client, Server
from bench.stats import Summary
from cds.engine.exposure import find_exposure
from cds.engine.grading import grade
from cds.fhir.normalise import Normaliser
from cds.fhir.reading import ResourceCollector
from cds.runtime import Runtime

MONITOR = "crs-monitor"
ORDER_SIGN = "crs-order-sign"
PG = "@pg"  # the same service recording in PostgreSQL (the plain variants: SQLite)
SERVICE_FACTORY = "cds.app:create_app"
FLOOR_FACTORY = "bench.apps:floor_app"
NAIVE_FACTORY = "bench.apps:naive_app"
WARMUP_REQUESTS = 5
RECORD_WRITES = 200


@dataclass(frozen=True)
class Options:
    """What to run: payload sizes, repetitions per size, and the RSS soak."""

    sizes: tuple[int, ...] = (100, 1_000, 10_000)
    repetitions: dict[int, int] = field(default_factory=lambda: {100: 300, 1_000: 200, 10_000: 25})
    rss_requests: int = 10_000
    rss_size: int = 1_000
    seed: int = 5
    service_factory: str = SERVICE_FACTORY  # another app factory, to measure a change

    def reps(self, size: int) -> int:
        return self.repetitions.get(size, min(self.repetitions.values(), default=10))


@dataclass
class Results:
    """Everything measured; `figures()` is the JSON written to bench/results/."""

    options: Options
    payloads: list[Payload]
    notes: list[str]
    latency: dict[str, dict[int, Summary]]
    record_write: dict[str, Summary]  # database -> one record write, in-process
    memory: dict[str, dict[str, float]]
    rss_samples_mib: list[tuple[int, float]]
    started: datetime
    seconds: float

    def reference_size(self) -> int:
        """The size the service/floor target is judged at (1,000 if measured)."""
        sizes = sorted(self.options.sizes)
        if 1_000 in sizes:
            return 1_000
        return sizes[-2] if len(sizes) > 1 else sizes[0]

    def ratio(self, top: str, bottom: str, size: int, stat: str) -> float | None:
        a = self.latency.get(top, {}).get(size)
        b = self.latency.get(bottom, {}).get(size)
        if a is None or b is None:
            return None
        value: float = getattr(a, stat) / getattr(b, stat)
        return value

    def scaling(self, variant: str, stat: str) -> tuple[int, int, float | None]:
        """(reference size, largest size, latency(largest)/latency(reference))."""
        ref, largest = self.reference_size(), max(self.options.sizes)
        by_size = self.latency.get(variant, {})
        if ref == largest or ref not in by_size or largest not in by_size:
            return ref, largest, None
        value: float = getattr(by_size[largest], stat) / getattr(by_size[ref], stat)
        return ref, largest, value

    def own_scaling(self, variant: str, stat: str) -> float | None:
        """Scaling of the time a variant adds to the floor (its own work, without the
        HTTP and JSON parsing every server pays): (v - floor)(largest) / (v - floor)(ref)."""
        ref, largest = self.reference_size(), max(self.options.sizes)
        by_size, floor = self.latency.get(variant, {}), self.latency.get("floor", {})
        if ref == largest or not all(s in d for s in (ref, largest) for d in (by_size, floor)):
            return None
        own_ref = getattr(by_size[ref], stat) - getattr(floor[ref], stat)
        own_largest = getattr(by_size[largest], stat) - getattr(floor[largest], stat)
        return None if own_ref <= 0 else float(own_largest / own_ref)

    def rss_growth_mib(self) -> float | None:
        if len(self.rss_samples_mib) < 2:
            return None
        return self.rss_samples_mib[-1][1] - self.rss_samples_mib[0][1]

    def targets(self) -> list[dict[str, Any]]:
        """The issue's targets, each with the measured value, its limit and whether met."""
        ref = self.reference_size()
        out: list[dict[str, Any]] = []

        def add(name: str, value: float | None, limit: float, at_most: bool) -> None:
            met = None if value is None else (value <= limit if at_most else value >= limit)
            out.append(
                {
                    "target": name,
                    "value": None if value is None else round(value, 3),
                    "limit": f"{'<=' if at_most else '>='} {limit:g}",
                    "met": met,
                }
            )

        for service in self.services():
            for stat, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
                add(
                    f"{service}/floor {label} at {ref:,}",
                    self.ratio(service, "floor", ref, stat),
                    1.5,
                    at_most=True,
                )
        add(
            f"naive/{MONITOR} p50 at {ref:,}",
            self.ratio("naive", MONITOR, ref, "p50_ms"),
            5,
            at_most=False,
        )
        for service in self.services():
            ref_size, largest, value = self.scaling(service, "p50_ms")
            add(
                f"{service} latency({largest:,})/latency({ref_size:,}) p50",
                value,
                largest / ref_size,
                at_most=True,
            )
        growth = self.rss_growth_mib()
        baseline = self.rss_samples_mib[0][1] if self.rss_samples_mib else 0.0
        add(
            f"RSS growth over {self.options.rss_requests:,} requests (MiB)",
            growth,
            max(1.0, 0.01 * baseline),
            at_most=True,
        )
        return out

    def services(self) -> list[str]:
        return [
            v for v in (MONITOR, ORDER_SIGN, MONITOR + PG, ORDER_SIGN + PG) if v in self.latency
        ]

    def figures(self) -> dict[str, Any]:
        ref = self.reference_size()
        ratios: dict[str, Any] = {}
        for service in self.services():
            ratios[f"{service}/floor"] = {
                str(size): {
                    "p50": _round(self.ratio(service, "floor", size, "p50_ms")),
                    "p99": _round(self.ratio(service, "floor", size, "p99_ms")),
                }
                for size in self.options.sizes
            }
            ref_size, largest, p50 = self.scaling(service, "p50_ms")
            ratios[f"{service} latency({largest})/latency({ref_size})"] = {
                "p50": _round(p50),
                "p99": _round(self.scaling(service, "p99_ms")[2]),
            }
        # Context for the scaling target: what the floor itself does (JSON parsing grows
        # faster than the payload on small caches), and the service's own share.
        ref_size, largest, floor_p50 = self.scaling("floor", "p50_ms")
        ratios[f"floor latency({largest})/latency({ref_size})"] = {
            "p50": _round(floor_p50),
            "p99": _round(self.scaling("floor", "p99_ms")[2]),
        }
        for service in self.services():
            ratios[f"{service} minus floor, {largest}/{ref_size}"] = {
                "p50": _round(self.own_scaling(service, "p50_ms")),
                "p99": _round(self.own_scaling(service, "p99_ms")),
            }
        ratios[f"naive/{MONITOR}"] = {
            str(size): {
                "p50": _round(self.ratio("naive", MONITOR, size, "p50_ms")),
                "p99": _round(self.ratio("naive", MONITOR, size, "p99_ms")),
            }
            for size in self.options.sizes
        }
        return {
            "started": self.started.isoformat(),
            "seconds": round(self.seconds, 1),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": _cpus(),
            },
            "options": {
                "sizes": list(self.options.sizes),
                "repetitions": {str(s): self.options.reps(s) for s in self.options.sizes},
                "rss_requests": self.options.rss_requests,
                "rss_size": self.options.rss_size,
                "service_factory": self.options.service_factory,
            },
            "reference_size": ref,
            "payloads": [
                {"resources": p.resources, "hours": p.hours, "bytes": len(p.monitor)}
                for p in self.payloads
            ],
            "latency": {
                variant: {str(size): s.as_json() for size, s in by_size.items()}
                for variant, by_size in self.latency.items()
            },
            "ratios": ratios,
            "record_write": {db: s.as_json() for db, s in self.record_write.items()},
            "memory": self.memory,
            "rss_growth": {
                "requests": self.options.rss_requests,
                "resources": self.options.rss_size,
                "samples_mib": [[n, round(m, 2)] for n, m in self.rss_samples_mib],
                "growth_mib": _round(self.rss_growth_mib()),
            },
            "targets": self.targets(),
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _engine_timer(runtime: Runtime, payload: Payload) -> Callable[[], float]:
    """Time facts -> exposure -> grade, with the facts normalised once beforehand."""
    collected = ResourceCollector()
    collected.add_prefetch(payload.request["prefetch"])
    patient_id = payload.request["context"]["patientId"]
    normaliser = Normaliser(runtime.knowledge, patient_id, runtime.settings.assume_tz)
    facts = normaliser.normalise(collected).facts
    at = datetime.now(UTC)
    if find_exposure(facts, runtime.rules.windows, at) is None:
        raise RuntimeError("benchmark payload has no exposure: the engine would not grade")

    def run() -> float:
        started = time.perf_counter()
        exposure = find_exposure(facts, runtime.rules.windows, at)
        if exposure is not None:
            grade(facts, exposure, at, runtime.rules.grading)
        return time.perf_counter() - started

    return run


def _http_timer(client: Client, path: str, body: bytes) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        client.post_ok(path, body)
        return time.perf_counter() - started

    return run


def _check_monitor_answer(client: Client, body: bytes) -> None:
    cards = orjson.loads(client.post_ok(f"/cds-services/{MONITOR}", body)).get("cards", [])
    if not cards:
        raise RuntimeError("crs-monitor returned no card for the benchmark payload")


def run(options: Options, log: Callable[[str], None] = print) -> Results:
    """Build the payloads, start the servers, measure; servers are stopped on return."""
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    notes: list[str] = []
    rng = random.Random(options.seed)
    log(f"building payloads: {', '.join(f'{s:,}' for s in options.sizes)} resources")
    payloads = [build_payload(size, started_at, options.seed) for size in options.sizes]
    runtime = Runtime.load()
    data_dir = tempfile.mkdtemp(prefix="crs-bench-")  # the service's SQLite audit trail
    with (
        postgres_database() as pg_url,
        Server("service", options.service_factory, {"CRS_DATA_DIR": data_dir}) as service,
        Server(
            "service-pg",
            options.service_factory,
            {
                "CRS_DATA_DIR": data_dir,
                "CRS_DATABASE_URL": pg_url or "",
                "CRS_PSEUDONYM_KEY": PSEUDONYM_KEY,
            },
            enabled=pg_url is not None,
        ) as service_pg,
        Server("floor", FLOOR_FACTORY) as floor,
        Server("naive", NAIVE_FACTORY) as naive,
    ):
        if pg_url is None:
            notes.append("PostgreSQL not reachable on 127.0.0.1:5432: its variants skipped")
            log(f"note: {notes[-1]}")
        clients = {"service": service.client(), "floor": floor.client(), "naive": naive.client()}
        if pg_url is not None:
            clients["service-pg"] = service_pg.client()
        has_order_sign = ORDER_SIGN in clients["service"].services()
        if not has_order_sign:
            notes.append(f"{ORDER_SIGN} is not offered by the service: skipped")
            log(f"note: {notes[-1]}")
        timers: dict[int, dict[str, Callable[[], float]]] = {}
        for p in payloads:
            _check_monitor_answer(clients["service"], p.monitor)
            variants = {
                MONITOR: _http_timer(clients["service"], f"/cds-services/{MONITOR}", p.monitor),
                "floor": _http_timer(clients["floor"], f"/cds-services/{MONITOR}", p.monitor),
                "naive": _http_timer(clients["naive"], f"/cds-services/{MONITOR}", p.monitor),
                "engine": _engine_timer(runtime, p),
            }
            if has_order_sign:
                variants[ORDER_SIGN] = _http_timer(
                    clients["service"], f"/cds-services/{ORDER_SIGN}", p.order_sign
                )
            if "service-pg" in clients:
                pg = clients["service-pg"]
                variants[MONITOR + PG] = _http_timer(pg, f"/cds-services/{MONITOR}", p.monitor)
                if has_order_sign:
                    variants[ORDER_SIGN + PG] = _http_timer(
                        pg, f"/cds-services/{ORDER_SIGN}", p.order_sign
                    )
            timers[p.resources] = variants
        # The payloads are long-lived: keep the collector of this process off them.
        gc.collect()
        gc.freeze()
        for size, variants in timers.items():
            for timer in variants.values():
                for _ in range(WARMUP_REQUESTS if size < 10_000 else 1):
                    timer()
        samples: dict[str, dict[int, list[float]]] = {}
        rounds = max(options.reps(s) for s in options.sizes)
        log(f"measuring: {rounds} rounds, variants interleaved in a shuffled order")
        for round_no in range(rounds):
            for size, variants in timers.items():
                if round_no >= options.reps(size):
                    continue
                order = list(variants)
                rng.shuffle(order)
                for name in order:
                    samples.setdefault(name, {}).setdefault(size, []).append(variants[name]())
            if (round_no + 1) % max(1, rounds // 10) == 0:
                log(f"  round {round_no + 1}/{rounds}")
        latency = {
            name: {size: Summary.of(values) for size, values in by_size.items()}
            for name, by_size in samples.items()
        }
        rss_samples = _rss_soak(service, clients["service"], payloads, options, log)
        servers = {"service": service, "floor": floor, "naive": naive}
        if pg_url is not None:
            servers["service-pg"] = service_pg
        memory = {name: _mib(server.memory_kib()) for name, server in servers.items()}
        for client in clients.values():
            client.close()
        reference = next((p for p in payloads if p.resources == 1_000), payloads[-1])
        log("measuring one record write (in-process)")
        record_write = {"sqlite": record_write_cost(None, reference, RECORD_WRITES)}
        if pg_url is not None:
            record_write["postgresql"] = record_write_cost(pg_url, reference, RECORD_WRITES)
    gc.unfreeze()
    shutil.rmtree(data_dir, ignore_errors=True)
    return Results(
        options=options,
        payloads=payloads,
        notes=notes,
        latency=latency,
        record_write=record_write,
        memory=memory,
        rss_samples_mib=rss_samples,
        started=started_at,
        seconds=time.perf_counter() - clock,
    )


def _mib(kib: dict[str, int]) -> dict[str, float]:
    return {
        "rss_mib": round(kib.get("VmRSS", 0) / 1024, 2),
        "peak_rss_mib": round(kib.get("VmHWM", 0) / 1024, 2),
    }


def _rss_soak(
    server: Server,
    client: Client,
    payloads: list[Payload],
    options: Options,
    log: Callable[[str], None],
) -> list[tuple[int, float]]:
    """VmRSS of the service, sampled 10 times while it answers `rss_requests` requests."""
    payload = min(payloads, key=lambda p: abs(p.resources - options.rss_size))
    path = f"/cds-services/{MONITOR}"
    log(f"RSS soak: {options.rss_requests:,} requests of {payload.resources:,} resources")
    every = max(1, options.rss_requests // 10)
    samples = [(0, server.memory_kib()["VmRSS"] / 1024)]
    for i in range(1, options.rss_requests + 1):
        client.post_ok(path, payload.monitor)
        if i % every == 0 or i == options.rss_requests:
            samples.append((i, server.memory_kib()["VmRSS"] / 1024))
    if samples[-1][0] == samples[-2][0]:
        samples.pop()
    return samples
