"""Oxygen support as ASTCT grades it: blow-by is low-flow (grade 2), a mapped code wins
over words in its display, and the 6 L/min threshold is the nasal cannula's."""

from __future__ import annotations

from datetime import datetime

import pytest

from cds import fhirbuild as b
from cds.engine.exposure import find_exposure
from cds.engine.grading import Grading, grade
from cds.fhir.normalise import Normaliser
from cds.fhir.reading import ResourceCollector
from cds.runtime import Runtime
from tests.factories import AT, h

P = "pat-oxygen"


def graded(runtime: Runtime, *observations: dict[str, object]) -> int:
    """The grade at AT of a febrile patient 2 days after Yescarta with these observations."""
    return grading(runtime, *observations).grade


def grading(runtime: Runtime, *observations: dict[str, object]) -> Grading:
    """The grading at AT of a febrile patient 2 days after Yescarta with these observations."""
    collector = ResourceCollector()
    collector.add(
        b.searchset(
            [
                b.temperature(P, h(1), 38.6),
                *observations,
                b.administration(P, h(48), text="Yescarta"),
            ]
        ),
        "prefetch.all",
    )
    facts = Normaliser(runtime.knowledge, P, None).normalise(collector).facts
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None
    return grade(facts, exposure, AT, runtime.rules.grading)


ONE_HOUR_AGO = h(1)


def test_blow_by_coded_425478008_with_mask_in_its_display_is_low_flow(runtime: Runtime) -> None:
    device = b.oxygen_device(P, ONE_HOUR_AGO, "425478008", "Blow by oxygen mask")
    assert graded(runtime, device) == 2


@pytest.mark.parametrize("text", ["Blow-by O2", "blow by oxygen", "Blow by oxygen mask"])
def test_blow_by_by_name_alone_is_low_flow(runtime: Runtime, text: str) -> None:
    device = b.oxygen_device(P, ONE_HOUR_AGO, "local-77", text)
    device["valueCodeableConcept"]["coding"][0]["system"] = "urn:local:devices"
    assert graded(runtime, device) == 2


def test_a_mapped_code_wins_over_words_in_its_display(runtime: Runtime) -> None:
    # a nasal cannula (code) whose display mentions a mask is still a nasal cannula
    device = b.oxygen_device(P, ONE_HOUR_AGO, "336623009", "Nasal cannula (mask not tolerated)")
    assert graded(runtime, device) == 2


def test_blow_by_at_10_l_min_stays_grade_2(runtime: Runtime) -> None:
    device = b.oxygen_device(P, ONE_HOUR_AGO, "425478008", "Blow by oxygen mask")
    flow = b.observation(P, ONE_HOUR_AGO, "3151-8", "Inhaled oxygen flow rate", 10, "L/min")
    assert graded(runtime, device, flow) == 2


@pytest.mark.parametrize(("litres", "expected"), [(6.0, 2), (6.1, 3)])
def test_nasal_cannula_flow_threshold(runtime: Runtime, litres: float, expected: int) -> None:
    device = b.oxygen_device(P, ONE_HOUR_AGO, "336623009", "Oxygen nasal cannula")
    flow = b.observation(P, ONE_HOUR_AGO, "3151-8", "Inhaled oxygen flow rate", litres, "L/min")
    assert graded(runtime, device, flow) == expected


def test_flow_alone_above_6_l_min_is_high_flow(runtime: Runtime) -> None:
    flow = b.observation(P, ONE_HOUR_AGO, "3151-8", "Inhaled oxygen flow rate", 8, "L/min")
    assert graded(runtime, flow) == 3


def fio2(at: datetime, percent: float) -> dict[str, object]:
    return b.observation(P, at, "3150-0", "Inhaled oxygen concentration", percent, "%")


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(21, 1), (21.5, 2), (40, 2)],
    ids=["room air", "just above room air", "40 %"],
)
def test_fio2_above_room_air_with_no_device_is_oxygen_support(
    runtime: Runtime, percent: float, expected: int
) -> None:
    """FiO2 40 % with no device or flow charted was grade 1 with no warning (it only
    silenced the low-SpO2 warning): it is oxygen support, at least low-flow (grade 2)."""
    assert graded(runtime, fio2(ONE_HOUR_AGO, percent), b.spo2(P, ONE_HOUR_AGO, 90)) == expected


def test_fio2_with_no_device_says_it_may_be_more_than_low_flow(runtime: Runtime) -> None:
    (warning,) = grading(runtime, fio2(ONE_HOUR_AGO, 40)).warnings
    assert "FiO2 40 %" in warning and "no device or flow charted" in warning
    assert "grade 3" in warning


def test_fio2_charted_with_a_device_is_graded_by_the_device(runtime: Runtime) -> None:
    mask = b.oxygen_device(P, ONE_HOUR_AGO, "427591007", "Nonrebreather oxygen mask")
    assert graded(runtime, mask, fio2(ONE_HOUR_AGO, 40)) == 3
    flow = b.oxygen_flow(P, ONE_HOUR_AGO, 4)
    assert graded(runtime, flow, fio2(ONE_HOUR_AGO, 40)) == 2


@pytest.mark.parametrize(("flow", "warned"), [(6, True), (6.5, False)])
def test_high_flow_cannula_at_a_low_flow_is_graded_by_the_device_with_a_warning(
    runtime: Runtime, flow: float, warned: bool
) -> None:
    """ASTCT defines high flow as > 6 L/min: an HFNC charted at 6 L/min stays grade 3 (by
    the device: the safe side), and the card says the two disagree."""
    hfnc = b.oxygen_device(P, ONE_HOUR_AGO, "426854004", "High flow oxygen nasal cannula")
    g = grading(runtime, hfnc, b.oxygen_flow(P, ONE_HOUR_AGO, flow))
    assert g.grade == 3
    said = [w for w in g.warnings if w.startswith("High-flow nasal cannula charted with")]
    assert bool(said) is warned
