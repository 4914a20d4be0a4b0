"""The watch's Prometheus figures, read from its tables when scraped: how many patients
it follows, how far behind schedule it is, and its deliveries by status.

They are the database's, not one process's: every service replica and watch worker that
is scraped reports the same figures (dashboards and alerts take the `max`), and they stay
right when a worker dies. Read at most once per `every` seconds (a scrape every few
seconds from several Prometheus servers costs the database two small queries per
interval). Counts only — never a patient.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from cds.clock import Clock
from cds.store.tables import watch_deliveries, watch_patients

log = logging.getLogger("cds.watch.metrics")
DELIVERY_STATUSES = ("pending", "delivered", "failed")


class Figures(NamedTuple):
    census: int
    lag_seconds: float
    deliveries: dict[str, int]


def read_figures(engine: Engine, now: datetime) -> Figures:
    """The figures now. Lag: how long the most overdue census patient has been due (its
    `next_poll_at` passed, no worker has finished a check of it since); 0 when none is."""
    p, d = watch_patients.c, watch_deliveries.c
    with engine.connect() as connection:
        census, oldest_due = connection.execute(
            select(func.count(), func.min(p.next_poll_at)).where(p.active.is_(True))
        ).one()
        deliveries = dict.fromkeys(DELIVERY_STATUSES, 0)
        for status, count in connection.execute(select(d.status, func.count()).group_by(d.status)):
            deliveries[str(status)] = int(count)
    lag = max(0.0, (now - oldest_due).total_seconds()) if oldest_due is not None else 0.0
    return Figures(int(census), lag, deliveries)


class WatchMetrics(Collector):
    """A Prometheus collector of the watch's figures (in a registry of its own, so that
    prometheus_client's multiprocess mode can sit beside it)."""

    def __init__(self, engine: Engine, clock: Clock, every: float = 10.0) -> None:
        self.engine = engine
        self.clock = clock
        self.every = every
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._figures: Figures | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def figures(self) -> Figures | None:
        """The cached figures (None: the database could not be read)."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.every:
                try:
                    self._figures = read_figures(self.engine, self.clock())
                except SQLAlchemyError as exc:  # a scrape never fails for it: figures omitted
                    log.warning("watch metrics unavailable", extra={"error": type(exc).__name__})
                    self._figures = None
                self._read_at = time.monotonic()
            return self._figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self.figures()
        yield GaugeMetricFamily(
            "crs_cds_watch_up",
            "1 when the watch's tables could be read for these figures, else 0",
            value=0 if figures is None else 1,
        )
        if figures is None:
            return
        yield GaugeMetricFamily(
            "crs_cds_watch_census",
            "Patients the watch follows (in a risk window, or enrolled and not yet checked)",
            value=figures.census,
        )
        yield GaugeMetricFamily(
            "crs_cds_watch_lag_seconds",
            "How long the most overdue census patient has waited past its scheduled check",
            value=figures.lag_seconds,
        )
        deliveries = GaugeMetricFamily(
            "crs_cds_watch_deliveries",
            "Notification deliveries by status (pending, delivered, failed)",
            labels=["status"],
        )
        for status, count in sorted(figures.deliveries.items()):
            deliveries.add_metric([status], count)
        yield deliveries

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
