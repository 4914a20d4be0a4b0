"""A finding charted at a time that cannot be read is not nothing. A fever charted without
a time zone (and no CRS_ASSUME_TIMEZONE) was dropped with a data issue, and the card said
"CRS watch", `info` — the fever may well be in the look-back window (an offset moves a
time by at most 14 h). It is still not graded (its time is unknown), but a fever, a low
blood pressure or oxygen support that may fall in the look-back window is a warning that
the grade may be understated, and the card is never `info`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cds import fhirbuild as b
from cds.engine.facts import Facts, UndatedFinding
from cds.engine.grading import Grading, grade
from cds.fhir.normalise import Normaliser
from cds.fhir.reading import ResourceCollector
from cds.runtime import Runtime
from tests.engine.test_grading_boundaries import exposure_from
from tests.factories import AT, h, monitor_json, temperature

P = "pat-undated"
UNDATED = "Charted at a time that cannot be read"


def undated(concept: str, value: float | None, not_after: datetime | None) -> UndatedFinding:
    return UndatedFinding(concept, value, f"{concept} {value}", "prefetch.x", not_after)


def graded(runtime: Runtime, *findings: UndatedFinding) -> Grading:
    facts = Facts.build([temperature(2, 37.0)], [], [], undated=list(findings))
    return grade(facts, exposure_from(30), AT, runtime.rules.grading)


@pytest.mark.parametrize(
    ("finding", "counts"),
    [
        (undated("temperature", 38.0, None), True),  # exactly the fever threshold
        (undated("temperature", 37.99, None), False),
        (undated("systolic_bp", 89.9, None), True),
        (undated("systolic_bp", 90, None), False),
        (undated("mean_arterial_pressure", 50, None), False),  # MAP criterion off
        (undated("oxygen_flow", 2, None), True),
        (undated("inhaled_oxygen_concentration", 21, None), False),
        (undated("inhaled_oxygen_concentration", 30, None), True),
        (undated("oxygen_support", None, None), True),
        (undated("temperature", 39.0, h(24)), True),  # its day may reach the look-back
        (undated("temperature", 39.0, h(24.01)), False),  # surely before the look-back
    ],
    ids=[
        "38.0",
        "37.99",
        "SBP 89.9",
        "SBP 90",
        "MAP off",
        "O2 2 L/min",
        "FiO2 21",
        "FiO2 30",
        "a device",
        "date reaches the look-back",
        "date before the look-back",
    ],
)
def test_an_undated_finding_that_may_fall_in_the_look_back_is_a_warning(
    runtime: Runtime, finding: UndatedFinding, counts: bool
) -> None:
    g = graded(runtime, finding)
    assert g.grade == 0  # never graded: its time is unknown
    assert (g.undated_findings, g.data_missing) == ((1, True) if counts else (0, False))
    assert any(w.startswith(UNDATED) for w in g.warnings) is counts


def test_the_normaliser_keeps_what_grading_reads_of_an_undated_observation(
    runtime: Runtime,
) -> None:
    fever = b.temperature_f(P, h(3), 102.0)
    fever["effectiveDateTime"] = "2026-11-20T05:00:00"  # no offset
    device = b.oxygen_device(P, h(3), "427591007", "Nonrebreather oxygen mask")
    device["effectiveDateTime"] = "2026-11-20T05:00"  # not a FHIR dateTime
    collector = ResourceCollector()
    collector.add_prefetch({"k": b.searchset([fever, device])})
    normalised = Normaliser(runtime.knowledge, P, None).normalise(collector)
    assert normalised.facts.measurements == () and normalised.facts.oxygen == ()
    temp, support = normalised.facts.undated
    assert (temp.concept, temp.value, temp.shown) == (
        "temperature",
        38.888889,
        "Temperature 38.89 Cel (102 [degF])",
    )
    assert temp.location == "prefetch.k.entry[0].resource.valueQuantity"
    # the latest instant the text may mean: the end of its day in UTC-12
    assert temp.not_after == datetime(2026, 11, 21, 11, 59, 59, 999999, tzinfo=UTC)
    assert support.concept == "oxygen_support" and support.value is None
    # the time problems are data issues, as before
    assert [i.location for i in normalised.issues] == [
        "prefetch.k.entry[0].resource.effectiveDateTime",
        "prefetch.k.entry[1].resource.effectiveDateTime",
    ]


def test_the_card_of_an_undated_fever_is_never_info_and_says_why(runtime: Runtime) -> None:
    fever = b.temperature(P, h(3), 38.9)
    fever["effectiveDateTime"] = fever["effectiveDateTime"][:19]
    infusion = b.administration(P, h(50), text="Yescarta (axicabtagene ciloleucel)")
    collected = ResourceCollector()
    collected.add_prefetch(
        {"observations": b.searchset([b.temperature(P, h(6), 37.2), fever, infusion])}
    )
    (card,) = monitor_json(runtime, collected, P, AT)["cards"]
    crs: Any = card["extension"]["crs"]
    assert (crs["grade"], card["indicator"]) == (0, "warning")
    assert card["summary"].startswith("UNDATED FINDINGS NOT GRADED — CRS watch")
    assert "CRS cannot be excluded now" in card["detail"]
    (warning,) = [w for w in crs["warnings"] if w.startswith(UNDATED)]
    assert "Temperature 38.9 Cel" in warning


def test_an_undated_vasopressor_is_an_undated_finding(runtime: Runtime) -> None:
    """Norepinephrine charted without a time zone was dropped: fever and SBP 85 gave
    grade 2 (it could be 3) with nothing said."""
    pressor = b.administration(P, h(2), period=True, rxnorm="7512", text="norepinephrine")
    pressor["effectivePeriod"]["start"] = pressor["effectivePeriod"]["start"][:19]
    collected = ResourceCollector()
    collected.add_prefetch(
        {
            "observations": b.searchset(
                [
                    b.temperature(P, h(1), 38.9),
                    b.systolic(P, h(1), 85),
                    pressor,
                    b.administration(P, h(50), text="Yescarta (axicabtagene ciloleucel)"),
                ]
            )
        }
    )
    (card,) = monitor_json(runtime, collected, P, AT)["cards"]
    crs: Any = card["extension"]["crs"]
    assert crs["grade"] == 2
    assert card["summary"].startswith("UNDATED FINDINGS NOT GRADED —")
    (warning,) = [w for w in crs["warnings"] if w.startswith(UNDATED)]
    assert "norepinephrine" in warning
