"""ASTCT 2019 grading, table by table, at every boundary the rules name."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from cds.engine.exposure import Exposure
from cds.engine.facts import Administration, Facts, Measurement, OxygenSupport
from cds.engine.grading import grade
from cds.runtime import Runtime
from tests.factories import AT, h

INFUSION = h(72)


@dataclass
class Case:
    name: str
    temps: list[tuple[float, float]] = field(default_factory=list)  # (hours before, °C)
    sbp: list[tuple[float, float]] = field(default_factory=list)
    maps: list[tuple[float, float]] = field(default_factory=list)
    flow: list[tuple[float, float]] = field(default_factory=list)  # L/min
    devices: list[tuple[float, str]] = field(default_factory=list)  # support class
    pressors: list[tuple[str, float, float | None]] = field(default_factory=list)  # start, end
    meds: list[tuple[str, str, float]] = field(default_factory=list)  # concept, class, at
    spo2: list[tuple[float, float]] = field(default_factory=list)
    grade: int = 0
    max_grade: int | None = None


def facts_of(case: Case) -> Facts:
    ms = [
        Measurement("temperature", v, "Cel", h(t), f"Observation/t{i}")
        for i, (t, v) in enumerate(case.temps)
    ]
    ms += [
        Measurement("systolic_bp", v, "mm[Hg]", h(t), f"Observation/s{i}")
        for i, (t, v) in enumerate(case.sbp)
    ]
    ms += [
        Measurement("mean_arterial_pressure", v, "mm[Hg]", h(t), "Observation/m")
        for t, v in case.maps
    ]
    ms += [Measurement("oxygen_flow", v, "L/min", h(t), "Observation/f") for t, v in case.flow]
    ms += [Measurement("spo2", v, "%", h(t), "Observation/o") for t, v in case.spo2]
    oxygen = [OxygenSupport(s, s, h(t), "Observation/d") for t, s in case.devices]
    admins = [
        Administration(c, "vasopressor", c, h(s), None if e is None else h(e), f"MA/{c}{i}")
        for i, (c, s, e) in enumerate(case.pressors)
    ]
    admins += [Administration(c, k, c, h(t), h(t), f"MA/{c}") for c, k, t in case.meds]
    return Facts.build(ms, oxygen, admins)


EXPOSURE = Exposure(
    "axicabtagene-ciloleucel",
    "axicabtagene ciloleucel",
    "car-t",
    INFUSION,
    INFUSION + timedelta(days=20),
    "MA/x",
    1,
    INFUSION,
)

CASES = [
    Case("no data → grade 0", grade=0),
    Case("37.9 °C → no fever, grade 0", temps=[(1, 37.9)], grade=0),
    Case("38.0 °C exactly → grade 1", temps=[(1, 38.0)], grade=1),
    Case(
        "fever 38.0 and SBP 90 → grade 1 (90 is not < 90)",
        temps=[(1, 38.0)],
        sbp=[(1, 90)],
        grade=1,
    ),
    Case("fever 38.0 and SBP 89 → grade 2", temps=[(1, 38.0)], sbp=[(1, 89)], grade=2),
    Case("fever 38.0 and SBP 89.9 → grade 2", temps=[(1, 38.0)], sbp=[(1, 89.9)], grade=2),
    Case("SBP 80, no fever, no masking → grade 0", sbp=[(1, 80)], grade=0),
    Case("fever and 6 L/min → grade 2 (low-flow)", temps=[(1, 38.5)], flow=[(1, 6.0)], grade=2),
    Case("fever and 6.1 L/min → grade 3 (high-flow)", temps=[(1, 38.5)], flow=[(1, 6.1)], grade=3),
    Case(
        "fever and nasal cannula device, no flow → grade 2",
        temps=[(1, 38.5)],
        devices=[(1, "nasal-cannula")],
        grade=2,
    ),
    Case(
        "fever and high-flow cannula → grade 3",
        temps=[(1, 38.5)],
        devices=[(1, "high-flow")],
        grade=3,
    ),
    Case("fever and facemask → grade 3", temps=[(1, 38.5)], devices=[(1, "facemask")], grade=3),
    Case(
        "fever and non-rebreather → grade 3",
        temps=[(1, 38.5)],
        devices=[(1, "non-rebreather")],
        grade=3,
    ),
    Case("fever and Venturi → grade 3", temps=[(1, 38.5)], devices=[(1, "venturi")], grade=3),
    Case(
        "fever and CPAP/BiPAP/intubation → grade 4",
        temps=[(1, 38.5)],
        devices=[(1, "positive-pressure")],
        grade=4,
    ),
    Case(
        "fever and one vasopressor → grade 3",
        temps=[(1, 38.5)],
        pressors=[("norepinephrine", 5, None)],
        grade=3,
    ),
    Case(
        "fever and vasopressin alone → grade 3",
        temps=[(1, 38.5)],
        pressors=[("vasopressin", 5, None)],
        grade=3,
    ),
    Case(
        "fever, norepinephrine + vasopressin → grade 3 (vasopressin not counted)",
        temps=[(1, 38.5)],
        pressors=[("norepinephrine", 5, None), ("vasopressin", 4, None)],
        grade=3,
    ),
    Case(
        "fever, norepinephrine + phenylephrine overlapping → grade 4",
        temps=[(1, 38.5)],
        pressors=[("norepinephrine", 5, None), ("phenylephrine", 3, 1)],
        grade=4,
    ),
    Case(
        "fever, norepinephrine then phenylephrine, not overlapping → grade 3",
        temps=[(1, 38.5)],
        pressors=[("norepinephrine", 10, 6), ("phenylephrine", 5, 1)],
        grade=3,
    ),
    Case(
        "fever, two norepinephrine administrations overlapping → one agent, grade 3",
        temps=[(1, 38.5)],
        pressors=[("norepinephrine", 10, 2), ("norepinephrine", 5, None)],
        grade=3,
    ),
    Case(
        "pressor ended 25 h ago is outside the 24 h look-back → grade 1 now",
        temps=[(1, 38.5)],
        pressors=[("norepinephrine", 30, 25)],
        grade=1,
        max_grade=3,
    ),
    Case(
        "pressor ended exactly 24 h ago is inside the look-back → grade 3",
        temps=[(1, 38.5)],
        pressors=[("norepinephrine", 30, 24)],
        grade=3,
    ),
    Case("fever exactly 24 h ago counts", temps=[(24, 38.2)], grade=1),
    Case(
        "fever 24 h + 1 min ago does not count now",
        temps=[(24 + 1 / 60, 38.2)],
        grade=0,
        max_grade=1,
    ),
    Case(
        "the more severe of hypotension (2) and hypoxia (3) → 3",
        temps=[(1, 39)],
        sbp=[(1, 85)],
        flow=[(1, 10)],
        grade=3,
    ),
    Case(
        "the more severe of pressors (4) and low-flow (2) → 4",
        temps=[(1, 39)],
        flow=[(1, 2)],
        pressors=[("norepinephrine", 5, None), ("epinephrine", 5, None)],
        grade=4,
    ),
    Case(
        "masking: fever, then tocilizumab, now afebrile with SBP 85 → grade 2",
        temps=[(20, 38.9), (2, 37.0)],
        meds=[("tocilizumab", "tocilizumab", 18)],
        sbp=[(1, 85)],
        grade=2,
    ),
    Case(
        "masking: antipyretic after fever, now afebrile on high-flow → grade 3",
        temps=[(10, 38.4), (2, 36.8)],
        meds=[("acetaminophen", "antipyretic", 9)],
        flow=[(1, 8)],
        grade=3,
    ),
    Case(
        "masking: fever 30 h ago, steroid after it, nothing else now → grade 0 (max 1)",
        temps=[(30, 38.4), (1, 36.9)],
        meds=[("dexamethasone", "corticosteroid", 29)],
        grade=0,
        max_grade=1,
    ),
    Case(
        "no masking when the antipyretic came before the fever",
        temps=[(30, 38.4), (1, 37.0)],
        meds=[("acetaminophen", "antipyretic", 31)],
        sbp=[(1, 85)],
        grade=0,
        max_grade=1,
    ),
    Case(
        "masking still applies with the fever 30 h ago and SBP 85 now → grade 2",
        temps=[(30, 38.4), (1, 37.0)],
        meds=[("acetaminophen", "antipyretic", 29)],
        sbp=[(1, 85)],
        grade=2,
    ),
    Case(
        "low SpO2 without oxygen support never raises the grade",
        temps=[(1, 38.3)],
        spo2=[(1, 85)],
        grade=1,
    ),
    Case(
        "max grade: grade 3 yesterday (fever + pressor 30 h ago), grade 1 now",
        temps=[(30, 39.0), (2, 38.1)],
        pressors=[("norepinephrine", 31, 29)],
        grade=1,
        max_grade=3,
    ),
    Case(
        "fever before the exposure does not count",
        temps=[(80, 39.0)],
        grade=0,
        max_grade=0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_grade_table(case: Case, runtime: Runtime) -> None:
    result = grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading)
    assert result.grade == case.grade
    assert result.max_grade == (case.max_grade if case.max_grade is not None else case.grade)
    assert result.max_grade >= result.grade


def test_map_criterion_is_off_by_default_and_counts_when_configured(runtime: Runtime) -> None:
    case = Case("MAP 60", temps=[(1, 38.5)], maps=[(1, 60)], sbp=[(1, 95)])
    assert grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading).grade == 1
    from dataclasses import replace

    with_map = replace(runtime.rules.grading, map_below_mmhg=65.0)
    assert grade(facts_of(case), EXPOSURE, AT, with_map).grade == 2
    case65 = Case("MAP 65", temps=[(1, 38.5)], maps=[(1, 65)])
    assert grade(facts_of(case65), EXPOSURE, AT, with_map).grade == 1


def test_low_spo2_without_support_is_a_warning(runtime: Runtime) -> None:
    case = Case("SpO2 88", temps=[(1, 38.3)], spo2=[(1, 88)])
    result = grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading)
    assert result.grade == 1
    assert result.warnings and "SpO2 88" in result.warnings[0]


def test_low_spo2_with_oxygen_is_not_a_warning(runtime: Runtime) -> None:
    case = Case("SpO2 88 on 2 L", temps=[(1, 38.3)], sbp=[(1, 118)], spo2=[(1, 88)], flow=[(1, 2)])
    result = grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading)
    assert result.grade == 2
    assert result.warnings == []


def test_spo2_at_threshold_is_not_low(runtime: Runtime) -> None:
    threshold = runtime.rules.grading.spo2_warning_below
    case = Case("SpO2 at threshold", temps=[(1, 38.3)], sbp=[(1, 118)], spo2=[(1, threshold)])
    assert grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading).warnings == []


def test_findings_after_at_are_ignored(runtime: Runtime) -> None:
    case = Case("future", temps=[(-1, 39.0)], sbp=[(-1, 70)])
    result = grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading)
    assert (result.grade, result.max_grade) == (0, 0)


def test_evidence_names_time_value_unit_and_source(runtime: Runtime) -> None:
    case = Case("ev", temps=[(3, 38.1), (1, 38.7)], sbp=[(2, 88), (1, 92)])
    result = grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading)
    fever = next(e for e in result.evidence if e.finding == "fever")
    assert (fever.value, fever.unit, fever.at) == ("38.7", "Cel", h(1))
    low = next(e for e in result.evidence if e.finding == "hypotension")
    assert (low.value, low.at, low.source) == ("88", h(2), "Observation/s0")


def test_masking_drug_charted_at_the_same_time_as_the_fever(runtime: Runtime) -> None:
    case = Case(
        "acetaminophen charted with the fever",
        temps=[(30, 39.0), (1, 37.0)],
        meds=[("acetaminophen", "antipyretic", 30)],
        sbp=[(1, 80)],
    )
    assert grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading).grade == 2


def test_fever_duration_is_the_unbroken_febrile_run(runtime: Runtime) -> None:
    broken = Case("fever 100 h ago, afebrile since, fever now", temps=[(60, 38.3), (1, 38.1)])
    result = grade(facts_of(broken), EXPOSURE, AT, runtime.rules.grading)
    assert result.fever_duration == timedelta(0)
    run = Case("fever every 20 h for 60 h", temps=[(61, 38.3), (41, 38.4), (21, 38.2), (1, 38.1)])
    result = grade(facts_of(run), EXPOSURE, AT, runtime.rules.grading)
    assert result.fever_duration == timedelta(hours=60)


def test_fio2_above_room_air_documents_support(runtime: Runtime) -> None:
    case = Case("SpO2 88 on FiO2 60", temps=[(1, 38.3)], sbp=[(1, 118)], spo2=[(1, 88)])
    facts = facts_of(case)
    fio2 = Measurement("inhaled_oxygen_concentration", 60, "%", h(1), "Observation/fio2")
    facts = Facts.build(
        [*facts.measurements, fio2], list(facts.oxygen), list(facts.administrations)
    )
    on_fio2 = grade(facts, EXPOSURE, AT, runtime.rules.grading)
    # oxygen support: no low-SpO2 warning, graded as low-flow (no device charted) with
    # the warning that it may be more
    assert on_fio2.grade == 2
    (warning,) = on_fio2.warnings
    assert warning.startswith("FiO2 60 %") and "no device or flow charted" in warning
    room_air = Measurement("inhaled_oxygen_concentration", 21, "%", h(1), "Observation/ra")
    facts = Facts.build([*facts_of(case).measurements, room_air], [], [])
    on_room_air = grade(facts, EXPOSURE, AT, runtime.rules.grading)
    assert on_room_air.grade == 1
    (warning,) = on_room_air.warnings
    assert warning.startswith("SpO2 88 %")
