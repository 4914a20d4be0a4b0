"""The Grafana dashboard and the Prometheus alert rules name only metrics the service
exports (cds/metrics.py), and are well formed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

import cds.metrics  # noqa: F401  (registers the service's metrics)
from cds.clock import utc_now
from cds.store import database
from cds.watch.metrics import WatchMetrics

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "observability"
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The service's metrics and the watch's figures (read from a migrated database)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('metrics') / 'crs.sqlite3'}"
    database.upgrade(url)
    engine = database.create(url)
    try:
        watch = list(WatchMetrics(engine, utc_now).collect())
    finally:
        engine.dispose()
    return _names(REGISTRY.collect()) | _names(watch)


def _names(families: Iterable[Metric]) -> set[str]:
    names: set[str] = set()
    for family in families:
        if family.name.startswith("crs_cds_"):
            names.add(family.name)
            names.update(family.name + s for s in SUFFIXES)
    return names


def _used(expr: str) -> set[str]:
    return set(re.findall(r"\bcrs_cds_\w+", expr))


def test_the_alert_rules_use_exported_metrics(exported: set[str]) -> None:
    rules = yaml.safe_load((ROOT / "alerts.yaml").read_text())
    seen = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= rule.keys(), rule
            assert rule["labels"]["severity"] in {"page", "warn"}
            assert _used(rule["expr"]) <= exported, rule["alert"]
            seen += 1
    assert seen >= 6


def test_the_dashboard_uses_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads((ROOT / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert _used(expr) and _used(expr) <= exported, expr
