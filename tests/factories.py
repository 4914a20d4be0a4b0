"""Builders shared by the tests: one fixed evaluation time, facts, and hook bodies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cds.engine.facts import Administration, Measurement, OxygenSupport
from cds.evaluation import evaluate
from cds.fhir.reading import ResourceCollector
from cds.ids import new_uuid
from cds.protocol import render
from cds.runtime import Runtime
from cds.services import crs_monitor
from cds.settings import Settings

AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

UNITS = {
    "temperature": "Cel",
    "systolic_bp": "mm[Hg]",
    "mean_arterial_pressure": "mm[Hg]",
    "oxygen_flow": "L/min",
    "spo2": "%",
    "inhaled_oxygen_concentration": "%",
    "body_weight": "kg",
    "crp": "mg/L",
    "ferritin": "ng/mL",
    "il6": "pg/mL",
}


def settings(**values: Any) -> Settings:
    """Settings for a test: the defaults, no `.env` file, and `values`."""
    return Settings(_env_file=None, **values)


def h(hours_before: float) -> datetime:
    """The time `hours_before` hours before AT (negative: after it)."""
    return AT - timedelta(hours=hours_before)


def measurement(concept: str, hours_before: float, value: float) -> Measurement:
    """A measurement of `concept` in its canonical unit."""
    return Measurement(
        concept, value, UNITS[concept], h(hours_before), f"Observation/{concept}-{hours_before}"
    )


def temperature(hours_before: float, celsius: float) -> Measurement:
    return measurement("temperature", hours_before, celsius)


def systolic(hours_before: float, mmhg: float) -> Measurement:
    return measurement("systolic_bp", hours_before, mmhg)


def device(hours_before: float, support: str) -> OxygenSupport:
    return OxygenSupport(support, support, h(hours_before), f"Observation/device-{hours_before}")


def given(
    concept: str,
    medication_class: str,
    hours_before: float,
    until_hours_before: float | str | None = "instant",
) -> Administration:
    """An administration: an instant by default, `None` to leave it running, or a period
    ending `until_hours_before`."""
    start = h(hours_before)
    end = (
        start
        if until_hours_before == "instant"
        else None
        if until_hours_before is None
        else h(float(until_hours_before))
    )
    return Administration(
        concept,
        medication_class,
        concept,
        start,
        end,
        f"MedicationAdministration/{concept}-{hours_before}",
    )


def monitor_json(
    runtime: Runtime, collected: ResourceCollector, patient_id: str | None, at: datetime
) -> Any:
    """The crs-monitor response for collected data at `at`, as JSON (no HTTP)."""
    decision = crs_monitor.decide(runtime, evaluate(runtime, collected, patient_id, at), new_uuid)
    return orjson.loads(render(decision.response()))
