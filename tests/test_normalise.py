"""Reading FHIR as EHRs send it: units, times, statuses, codes, references, bad entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cds import fhirbuild as b
from cds.engine.facts import CONCEPTS_READ
from cds.fhir.normalise import Normalised, Normaliser
from cds.fhir.reading import ResourceCollector, Truncated
from cds.fhir.structs import from_json
from cds.runtime import Runtime
from tests.factories import h

T = h(4)  # 08:00
P = "pat-1"


def read(runtime: Runtime, *values: Any, assume: str | None = None) -> Normalised:
    collector = ResourceCollector()
    collector.add_prefetch({f"k{i}": v for i, v in enumerate(values)})
    tz = ZoneInfo(assume) if assume else None
    return Normaliser(runtime.knowledge, P, tz).normalise(collector)


def values(n: Normalised, concept: str) -> list[float]:
    return [m.value for m in n.facts.of(concept)]


def test_fahrenheit_100_4_is_exactly_38_0(runtime: Runtime) -> None:
    n = read(runtime, b.temperature_f(P, T, 100.4))
    assert values(n, "temperature") == [38.0]
    assert n.facts.of("temperature")[0].original == "100.4 [degF]"


def test_fahrenheit_by_display_unit_only(runtime: Runtime) -> None:
    obs = b.temperature(P, T, 101.3)
    obs["valueQuantity"] = {"value": 101.3, "unit": "°F"}
    assert values(read(runtime, obs), "temperature") == [38.5]


def test_pounds_are_converted_to_kg(runtime: Runtime) -> None:
    n = read(runtime, b.weight(P, T, 176.37, "lb"))
    assert values(n, "body_weight")[0] == pytest.approx(80.0, abs=0.01)


# Every conversion factor pinned by a value it must give exactly (a mutant factor of each
# survived the suite: 0.4536 for lb flipped a 29.999 kg child to 30 kg and 8 mg/kg)
def test_pounds_are_converted_exactly(runtime: Runtime) -> None:
    n = read(runtime, b.weight(P, T, 66.1387, "lb"))
    assert values(n, "body_weight") == [round(66.1387 * 0.45359237, 6)]  # 29.999 kg: < 30


@pytest.mark.parametrize(
    ("observation", "concept", "expected"),
    [
        (b.weight(P, T, 15000, "g"), "body_weight", 15.0),
        (b.lab(P, T, "2160-0", "Creatinine", 10, "mg/L"), "creatinine", 1.0),
        (b.lab(P, T, "3151-8", "Inhaled oxygen flow rate", 8000, "mL/min"), "oxygen_flow", 8.0),
        (b.lab(P, T, "718-7", "Hemoglobin", 85, "g/L"), "hemoglobin", 8.5),
        (b.lab(P, T, "777-3", "Platelets", 150000, "/uL"), "platelets", 150.0),
        (b.lab(P, T, "2532-0", "LDH", 5, "ukat/L"), "ldh", 300.0),
        (b.lab(P, T, "1988-5", "CRP", 2.5, "mg/dL"), "crp", 25.0),
    ],
    ids=["g", "creatinine mg/L", "O2 mL/min", "Hb g/L", "platelets /uL", "LDH ukat/L", "CRP mg/dL"],
)
def test_each_unit_is_converted_by_its_factor(
    runtime: Runtime, observation: dict[str, Any], concept: str, expected: float
) -> None:
    assert values(read(runtime, observation), concept) == [expected]


def test_the_ucum_code_wins_over_the_unit_text(runtime: Runtime) -> None:
    obs = b.weight(P, T, 80, "kg")
    obs["valueQuantity"]["unit"] = "lbs"
    assert values(read(runtime, obs), "body_weight") == [80.0]


def test_unknown_unit_is_reported_not_guessed(runtime: Runtime) -> None:
    obs = b.temperature(P, T, 311.15)
    obs["valueQuantity"] = {"value": 311.15, "unit": "K", "code": "K"}
    n = read(runtime, obs)
    assert values(n, "temperature") == []
    assert n.issues[0].location == "prefetch.k0.valueQuantity.unit"
    assert "'K' not recognised for temperature" in n.issues[0].problem


@pytest.mark.parametrize("comparator", ["<", "<=", ">=", ">", "ad"])
def test_a_value_with_a_comparator_is_a_bound_reported_not_graded(
    runtime: Runtime, comparator: str
) -> None:
    # "<39.5 Cel" counted as a fever (found by fuzzing: the comparator was dropped)
    obs = b.temperature(P, T, 39.5)
    obs["valueQuantity"]["comparator"] = comparator
    n = read(runtime, obs)
    assert values(n, "temperature") == []
    (issue,) = n.issues
    assert issue.location == "prefetch.k0.valueQuantity.comparator"
    assert f"{comparator!r} 39.5: a bound, not a measured value; not used" == issue.problem


def test_a_component_with_a_comparator_is_not_read(runtime: Runtime) -> None:
    panels = [b.blood_pressure(P, T, 85, 50), b.blood_pressure(P, T + timedelta(hours=1), 84, 50)]
    panels[0]["component"][0]["valueQuantity"]["comparator"] = "<"
    n = read(runtime, *panels)
    assert values(n, "systolic_bp") == [84.0]
    (issue,) = n.issues
    assert issue.location == "prefetch.k0.component[0].valueQuantity.comparator"


def test_bp_panel_components_are_read(runtime: Runtime) -> None:
    n = read(runtime, b.blood_pressure(P, T, 88, 52))
    assert values(n, "systolic_bp") == [88]
    # diastolic is recognised but no rule reads it: no fact is made of it
    assert [m.concept for m in n.facts.measurements] == ["systolic_bp"]


def test_concepts_no_rule_reads_make_no_facts_and_no_issues(runtime: Runtime) -> None:
    hr = b.heart_rate(P, T, 120)
    hr["valueQuantity"]["unit"] = hr["valueQuantity"]["code"] = "furlongs"
    n = read(runtime, hr)
    assert n.facts.measurements == () and n.issues == []
    with pytest.raises(KeyError, match="CONCEPTS_READ"):
        n.facts.of("heart_rate")


def test_every_concept_read_is_mapped(runtime: Runtime) -> None:
    assert set(runtime.knowledge.observations) >= CONCEPTS_READ


def test_local_code_with_text_only_is_recognised(runtime: Runtime) -> None:
    obs = b.observation(P, T, None, "Temp (oral)", 38.4, "Cel")
    assert values(read(runtime, obs), "temperature") == [38.4]


def test_unrecognised_codes_are_ignored_silently(runtime: Runtime) -> None:
    obs = b.observation(P, T, "2345-7", "Glucose", 5.5, "mmol/L", category="laboratory")
    n = read(runtime, obs)
    assert n.facts.measurements == () and n.issues == []


@pytest.mark.parametrize(
    ("status", "counted"),
    [
        ("final", True),
        ("amended", True),
        ("corrected", True),
        ("preliminary", True),
        ("entered-in-error", False),
        ("cancelled", False),
    ],
)
def test_observation_statuses(runtime: Runtime, status: str, counted: bool) -> None:
    n = read(runtime, b.temperature(P, T, 39.0, status=status))
    assert bool(n.facts.of("temperature")) is counted


@pytest.mark.parametrize(
    ("status", "counted"),
    [("completed", True), ("in-progress", True), ("not-done", False), ("entered-in-error", False)],
)
def test_administration_statuses(runtime: Runtime, status: str, counted: bool) -> None:
    n = read(runtime, b.administration(P, T, text="Kymriah", status=status))
    assert bool(n.facts.administrations) is counted


def test_offsets_are_compared_as_instants(runtime: Runtime) -> None:
    obs = b.temperature(P, T, 38.5)
    obs["effectiveDateTime"] = "2026-11-20T09:00:00+01:00"
    assert read(runtime, obs).facts.of("temperature")[0].at == T


def test_time_without_offset_is_reported(runtime: Runtime) -> None:
    obs = b.temperature(P, T, 38.5)
    obs["effectiveDateTime"] = "2026-11-20T08:00:00"
    n = read(runtime, obs)
    assert n.facts.measurements == ()
    assert n.issues[0].location == "prefetch.k0.effectiveDateTime"
    assert "no time-zone offset" in n.issues[0].problem


def test_time_without_offset_is_read_in_the_configured_zone(runtime: Runtime) -> None:
    obs = b.temperature(P, T, 38.5)
    obs["effectiveDateTime"] = "2026-11-20T09:00:00"
    n = read(runtime, obs, assume="Europe/Berlin")
    assert n.facts.of("temperature")[0].at == T


def test_date_only_is_start_of_day(runtime: Runtime) -> None:
    ma = b.administration(P, T, text="Yescarta")
    ma["effectiveDateTime"] = "2026-11-17"
    n = read(runtime, ma)
    assert n.facts.administrations[0].start == datetime(2026, 11, 17, tzinfo=UTC)


def test_period_without_end_is_running(runtime: Runtime) -> None:
    ma = b.administration(P, T, text="norepinephrine infusion", period=True, status="in-progress")
    admin = read(runtime, ma).facts.administrations[0]
    assert (admin.medication_class, admin.end) == ("vasopressor", None)


def test_period_with_end(runtime: Runtime) -> None:
    ma = b.administration(P, T, rxnorm="7512", text="norepinephrine", end=T + timedelta(hours=2))
    assert read(runtime, ma).facts.administrations[0].end == T + timedelta(hours=2)


def test_medication_by_rxnorm_code(runtime: Runtime) -> None:
    ma = b.administration(P, T, rxnorm="612865", text="x")
    assert read(runtime, ma).facts.administrations[0].concept == "tocilizumab"


def test_brand_name_in_text(runtime: Runtime) -> None:
    ma = b.administration(P, T, text="KYMRIAH suspension for intravenous infusion")
    assert read(runtime, ma).facts.administrations[0].concept == "tisagenlecleucel"


def test_norepinephrine_is_not_epinephrine(runtime: Runtime) -> None:
    ma = b.administration(P, T, text="Norepinephrine 4 mg in 250 mL")
    assert read(runtime, ma).facts.administrations[0].concept == "norepinephrine"


def test_medication_reference_to_contained(runtime: Runtime) -> None:
    ma = b.administration(
        P,
        T,
        text="",
        medication_reference="#med1",
        contained=[b.medication("med1", "Breyanzi (lisocabtagene maraleucel)")],
    )
    assert read(runtime, ma).facts.administrations[0].concept == "lisocabtagene-maraleucel"


def test_medication_reference_to_medication_elsewhere(runtime: Runtime) -> None:
    ma = b.administration(P, T, text="", medication_reference="Medication/m9")
    bundle = b.searchset([ma, b.medication("m9", "Tecvayli", None)])
    assert read(runtime, bundle).facts.administrations[0].concept == "teclistamab"


def test_medication_reference_missing_is_reported(runtime: Runtime) -> None:
    ma = b.administration(P, T, text="", medication_reference="Medication/absent")
    n = read(runtime, ma)
    assert n.facts.administrations == ()
    assert n.issues[0].location == "prefetch.k0.medicationReference"


@pytest.mark.parametrize(
    ("reference", "contained", "location", "problem"),
    [
        ("#c2", [{"resourceType": "Medication", "id": "c1"}], ".medicationReference", "#c2"),
        (
            "#c1",
            [{"resourceType": "Medication", "id": "c1", "code": 5}],
            ".medicationReference",
            "readable contained Medication",
        ),
        ("", None, ".medicationReference", "no reference and no display text"),
        ("#", None, ".medicationReference", "no reference and no display text"),
        (None, None, ".medication[x]", "no medicationCodeableConcept or medicationReference"),
    ],
    ids=["contained id absent", "contained unreadable", "empty", "#", "no medication[x]"],
)
def test_an_administration_of_an_unknowable_medication_is_reported(
    runtime: Runtime,
    reference: str | None,
    contained: list[dict[str, Any]] | None,
    location: str,
    problem: str,
) -> None:
    """It may be the CAR-T: never passed over in silence."""
    ma = b.administration(P, T, text="", medication_reference="Medication/x")
    del ma["medicationReference"]
    if reference is not None:
        ma["medicationReference"] = {"reference": reference}
    if contained is not None:
        ma["contained"] = contained
    n = read(runtime, ma)
    assert n.facts.administrations == ()
    (issue,) = n.issues
    assert issue.location == "prefetch.k0" + location
    assert problem in issue.problem and "cannot be recognised" in issue.problem


@pytest.mark.parametrize(
    "medication",
    [
        {"medicationCodeableConcept": {"text": "cefepime"}},
        {"medicationReference": {"reference": "#c1"}},
        {"medicationReference": {"reference": "Medication/m1/_history/2"}},
    ],
    ids=["another drug by text", "contained, another drug", "versioned reference"],
)
def test_an_administration_of_another_known_medication_is_not_reported(
    runtime: Runtime, medication: dict[str, Any]
) -> None:
    ma = b.administration(P, T, text="", medication_reference="Medication/x")
    del ma["medicationReference"]
    ma |= medication
    ma["contained"] = [{"resourceType": "Medication", "id": "c1", "code": {"text": "cefepime"}}]
    other = {"resourceType": "Medication", "id": "m1", "code": {"text": "cefepime"}}
    n = read(runtime, ma, other)
    assert (n.facts.administrations, n.issues) == ((), [])


def test_a_boolean_value_is_reported_not_read_as_1(runtime: Runtime) -> None:
    obs = b.temperature(P, T, 38.7)
    obs["valueQuantity"]["value"] = True
    n = read(runtime, obs)
    assert values(n, "temperature") == []
    assert [i.location for i in n.issues] == ["prefetch.k0.valueQuantity.value"]


def test_a_number_written_as_a_string_is_read_as_that_number(runtime: Runtime) -> None:
    """ "38.7" is 38.7 (as it always was): dropping the fever would be the unsafe side."""
    obs = b.temperature(P, T, 38.7)
    obs["valueQuantity"]["value"] = "38.7"
    assert values(read(runtime, obs), "temperature") == [38.7]


@pytest.mark.parametrize("dose", ["640", True, "a lot", {"value": 1}], ids=str)
def test_a_malformed_administered_dose_never_costs_the_administration(
    runtime: Runtime, dose: object
) -> None:
    """The dose of an administration is not read: a tocilizumab dose charted with
    `dosage.dose.value: "640"` was dropped whole (then a second dose 2 h later 'checked
    out')."""
    ma = b.administration(P, T, rxnorm="612865", text="tocilizumab", dose=(640, "mg"))
    ma["dosage"]["dose"]["value"] = dose
    n = read(runtime, ma)
    assert [a.concept for a in n.facts.administrations] == ["tocilizumab"]
    assert n.issues == []


@pytest.mark.parametrize(
    "text", ["CAR T-cell infusion", "CAR-T cells (autologous)", "Chimeric antigen receptor T"]
)
def test_an_administration_naming_only_the_therapy_class_is_an_unread_exposure(
    runtime: Runtime, text: str
) -> None:
    """No product, so no window the rules can place: a data issue and an unread exposure
    (a card says the CRS risk was not checked) instead of nothing."""
    n = read(runtime, b.administration(P, T, text=text))
    assert n.facts.administrations == ()
    (unread,) = n.unread_exposures
    assert "not identified" in unread.display and unread.not_after == T
    (issue,) = n.issues
    assert issue.location == "prefetch.k0.medicationCodeableConcept"
    assert "no product the rules know" in issue.problem


@pytest.mark.parametrize(
    "text",
    ["carboplatin", "Cefepime", "cart (supply)", "Ondansetron 8 mg IV (pre CAR-T cells)"],
)
def test_other_medications_are_not_taken_for_the_therapy_class(runtime: Runtime, text: str) -> None:
    n = read(runtime, b.administration(P, T, text=text))
    assert (n.unread_exposures, n.issues) == ((), [])


def test_medication_reference_display_is_used(runtime: Runtime) -> None:
    ma = b.administration(P, T, text="", medication_reference="Medication/absent")
    ma["medicationReference"]["display"] = "Abecma"
    assert read(runtime, ma).facts.administrations[0].concept == "idecabtagene-vicleucel"


def test_invalid_entry_is_skipped_and_located(runtime: Runtime) -> None:
    good = b.temperature(P, T, 38.5)
    bad = b.temperature(P, T, 39.0)
    bad["valueQuantity"]["value"] = "hot"
    worse = b.temperature(P, T, 39.0)
    worse["status"] = "done"
    n = read(runtime, b.searchset([good, bad, worse]))
    assert values(n, "temperature") == [38.5]
    locations = {i.location for i in n.issues}
    assert "prefetch.k0.entry[1].resource.valueQuantity.value" in locations
    assert "prefetch.k0.entry[2].resource.status" in locations


def test_not_a_resource_is_reported(runtime: Runtime) -> None:
    n = read(runtime, {"resourceType": "Bundle", "entry": [42, {"resource": {"id": "x"}}]})
    assert [i.location for i in n.issues] == [
        "prefetch.k0.entry[0]",
        "prefetch.k0.entry[1].resource.resourceType",
    ]


def test_outcome_entries_are_skipped(runtime: Runtime) -> None:
    bundle = b.searchset([b.temperature(P, T, 38.5)])
    bundle["entry"].append(
        {
            "resource": {"resourceType": "OperationOutcome", "issue": []},
            "search": {"mode": "outcome"},
        }
    )
    n = read(runtime, bundle)
    assert (values(n, "temperature"), n.issues) == ([38.5], [])


def test_null_prefetch_and_single_resource(runtime: Runtime) -> None:
    collector = ResourceCollector()
    collector.add_prefetch({"a": None, "b": b.temperature(P, T, 38.1)})
    n = Normaliser(runtime.knowledge, P, None).normalise(collector)
    assert values(n, "temperature") == [38.1]


def test_other_patients_data_is_skipped(runtime: Runtime) -> None:
    n = read(runtime, b.temperature("someone-else", T, 39.5))
    assert n.facts.measurements == ()
    assert "another patient" in n.issues[0].problem


def test_oxygen_device_by_snomed_value(runtime: Runtime) -> None:
    n = read(runtime, b.oxygen_device(P, T, "427591007", "Non-rebreather mask"))
    assert n.facts.oxygen[0].support == "non-rebreather"


def test_oxygen_device_by_text_only(runtime: Runtime) -> None:
    obs = b.oxygen_device(P, T, "x", "HFNC 40 L")
    obs["valueCodeableConcept"] = {"text": "HFNC 40 L"}
    assert read(runtime, obs).facts.oxygen[0].support == "high-flow"


# --- names: what they mean, and what they do not; implausible values; routes -----------


def test_standard_codes_not_in_the_mappings_are_recognised_by_their_names(
    runtime: Runtime,
) -> None:
    """SNOMED 386725007 "Body temperature" and LOINC 76215-3 "Invasive Systolic blood
    pressure", neither in fhir_mappings/, are read by their names: a temperature and a
    systolic pressure."""
    snomed_temp = b.observation(
        P, T, "386725007", "Body temperature", 39.0, "Cel", system="http://snomed.info/sct"
    )
    art_line = b.observation(P, T, "76215-3", "Invasive Systolic blood pressure", 80, "mm[Hg]")
    n = read(runtime, snomed_temp, art_line)
    assert [m.concept for m in n.facts.measurements] == ["temperature", "systolic_bp"]


def test_unmapped_loinc_code_is_not_matched_by_its_text(runtime: Runtime) -> None:
    change = b.observation(P, T, "8350-1", "Body weight change", 2, "kg")
    pa = b.observation(P, T, "8440-0", "Pulmonary artery systolic pressure", 30, "mm[Hg]")
    n = read(runtime, change, pa)
    assert n.facts.measurements == () and n.issues == []


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("Weight change", 2, "kg"),
        ("Ideal body weight", 55, "kg"),
        ("Room temperature", 38.2, "Cel"),
        ("Dialysate temperature", 38.2, "Cel"),
        ("PA systolic", 30, "mm[Hg]"),
    ],
)
def test_local_text_naming_another_measurement_is_ignored(
    runtime: Runtime, text: str, value: float, unit: str
) -> None:
    assert read(runtime, b.observation(P, T, None, text, value, unit)).facts.measurements == ()


@pytest.mark.parametrize(
    ("obs", "where"),
    [
        (b.weight(P, T, 0.08, "g"), "body_weight"),
        (b.temperature(P, T, 380.0), "temperature"),
        (b.weight(P, T, 8000, "kg"), "body_weight"),
    ],
)
def test_implausible_values_are_reported_not_used(
    runtime: Runtime, obs: dict[str, Any], where: str
) -> None:
    n = read(runtime, obs)
    assert n.facts.measurements == ()
    assert n.issues[0].location == "prefetch.k0.valueQuantity.value"
    assert f"not a plausible {where}" in n.issues[0].problem


def _fio2(percent: float) -> dict[str, Any]:
    return b.observation(P, T, "3150-0", "Inhaled oxygen concentration", percent, "%")


@pytest.mark.parametrize(
    ("obs", "where"),
    [
        (b.systolic(P, T, -5), "systolic_bp"),
        (b.systolic(P, T, 0), "systolic_bp"),
        (b.systolic(P, T, 400.5), "systolic_bp"),
        (b.systolic(P, T, 1e308), "systolic_bp"),
        (b.observation(P, T, "8478-0", "MAP", 0, "mm[Hg]"), "mean_arterial_pressure"),
        (b.spo2(P, T, 150), "spo2"),
        (b.spo2(P, T, -3), "spo2"),
        (b.spo2(P, T, 100.1), "spo2"),
        (b.oxygen_flow(P, T, 1e6), "oxygen_flow"),
        (b.oxygen_flow(P, T, -3), "oxygen_flow"),
        (b.oxygen_flow(P, T, 150.5), "oxygen_flow"),
        (_fio2(0.4), "inhaled_oxygen_concentration"),  # a fraction charted as %
        (_fio2(19.9), "inhaled_oxygen_concentration"),
        (_fio2(100.5), "inhaled_oxygen_concentration"),
        (b.lab(P, T, "1988-5", "CRP", -1, "mg/L"), "crp"),
        (b.lab(P, T, "1988-5", "CRP", 1e308, "mg/L"), "crp"),
        (b.lab(P, T, "718-7", "Hemoglobin", 120, "g/dL"), "hemoglobin"),  # g/L as g/dL
        (b.lab(P, T, "2160-0", "Creatinine", 88.4, "mg/L"), None),  # 8.84 mg/dL: plausible
        (b.lab(P, T, "2160-0", "Creatinine", 884, "mg/dL"), "creatinine"),  # umol/L as mg/dL
        (b.lab(P, T, "777-3", "Platelets", 250000, "10*9/L"), "platelets"),  # per uL
    ],
)
def test_implausible_vital_signs_and_labs_are_reported_not_used(
    runtime: Runtime, obs: dict[str, Any], where: str | None
) -> None:
    # the concepts the rules grade and score on have data-quality bounds (an SBP of -5
    # graded a hypotension, an O2 flow of 10^6 L/min a grade 3)
    n = read(runtime, obs)
    if where is None:
        assert len(n.facts.measurements) == 1 and n.issues == []
        return
    assert n.facts.measurements == ()
    (issue,) = n.issues
    assert issue.location == "prefetch.k0.valueQuantity.value"
    assert f"not a plausible {where}" in issue.problem


@pytest.mark.parametrize(
    ("obs", "concept", "value"),
    [
        (b.systolic(P, T, 1), "systolic_bp", 1.0),
        (b.systolic(P, T, 400), "systolic_bp", 400.0),
        (b.spo2(P, T, 0), "spo2", 0.0),
        (b.spo2(P, T, 100), "spo2", 100.0),
        (b.oxygen_flow(P, T, 0), "oxygen_flow", 0.0),
        (b.oxygen_flow(P, T, 150), "oxygen_flow", 150.0),
        (_fio2(20), "inhaled_oxygen_concentration", 20.0),
        (_fio2(20.9), "inhaled_oxygen_concentration", 20.9),  # room air, as analysers chart it
        (_fio2(100), "inhaled_oxygen_concentration", 100.0),
        (b.lab(P, T, "1988-5", "CRP", 0, "mg/L"), "crp", 0.0),
        (b.lab(P, T, "718-7", "Hemoglobin", 30, "g/dL"), "hemoglobin", 30.0),
    ],
)
def test_plausible_bounds_are_inclusive(
    runtime: Runtime, obs: dict[str, Any], concept: str, value: float
) -> None:
    n = read(runtime, obs)
    assert values(n, concept) == [value]
    assert n.issues == []


def _at_bound(runtime: Runtime, concept: str, value: float) -> dict[str, Any]:
    """An Observation of `concept` by its first code, in its canonical unit."""
    mapping = runtime.knowledge.observations[concept]
    code = mapping.codes[0]
    return b.observation(P, T, code.code, code.display, value, mapping.canonical_unit)


@pytest.mark.parametrize(
    "concept",
    [
        "temperature", "systolic_bp", "mean_arterial_pressure", "spo2", "oxygen_flow",
        "inhaled_oxygen_concentration", "body_weight", "crp", "ferritin", "il6", "ldh",
        "creatinine", "platelets", "hemoglobin", "anc",
    ],
)  # fmt: skip
def test_every_bound_is_inclusive_and_exact(runtime: Runtime, concept: str) -> None:
    # each data-quality bound of fhir_mappings/observations.yaml, at its exact value and
    # just past it (a thousandth of the bound's scale), read in the canonical unit
    bounds = runtime.knowledge.plausible[concept]
    step = max(abs(bounds.max), 1.0) / 1000
    for value in (bounds.min, bounds.max):
        n = read(runtime, _at_bound(runtime, concept, value))
        assert (values(n, concept), n.issues) == ([value], []), value
    for value in (bounds.min - step, bounds.max + step):
        n = read(runtime, _at_bound(runtime, concept, value))
        assert values(n, concept) == [], value
        assert f"not a plausible {concept}" in n.issues[0].problem


def test_core_and_tympanic_temperatures_are_mapped(runtime: Runtime) -> None:
    core = b.observation(P, T, "8329-5", "Body temperature - Core", 38.4, "Cel")
    tympanic = b.observation(P, T, "8333-7", "Tympanic membrane temperature", 38.1, "Cel")
    assert values(read(runtime, core, tympanic), "temperature") == [38.4, 38.1]


def test_in_progress_vasopressor_charted_as_a_moment_is_running(runtime: Runtime) -> None:
    ma = b.administration(P, T, rxnorm="7512", text="norepinephrine", status="in-progress")
    assert read(runtime, ma).facts.administrations[0].end is None
    done = b.administration(P, T, rxnorm="7512", text="norepinephrine", status="completed")
    assert read(runtime, done).facts.administrations[0].end == T


@pytest.mark.parametrize(
    ("route", "counted"),
    [
        (None, True),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "47625008"}]}, True),
        ({"text": "IV continuous infusion"}, True),
        ({"text": "something local"}, True),  # unknown route: counted (never under-grade)
        ({"coding": [{"system": "http://snomed.info/sct", "code": "54485002"}]}, False),
        ({"text": "Ophthalmic"}, False),
        ({"text": "intramuscular"}, False),
    ],
)
def test_vasopressor_routes(runtime: Runtime, route: dict[str, Any] | None, counted: bool) -> None:
    ma = b.administration(P, T, rxnorm="8163", text="phenylephrine")
    if route is not None:
        ma["dosage"] = {"route": route}
    assert bool(read(runtime, ma).facts.administrations) is counted


@pytest.mark.parametrize(
    "text",
    ["Lidocaine 1% with epinephrine 1:100,000", "Phenylephrine 2.5% ophthalmic drops", "EpiPen"],
)
def test_non_vasopressor_products_by_name(runtime: Runtime, text: str) -> None:
    assert read(runtime, b.administration(P, T, text=text)).facts.administrations == ()


def test_prefetch_cut_at_its_first_page_is_recorded_not_an_issue(runtime: Runtime) -> None:
    bundle = b.searchset([b.temperature(P, T, 37.0)])
    bundle["link"] = [{"relation": "next", "url": "https://ehr.example/fhir?page=2"}]
    bundle["total"] = 45
    for decoded in (False, True):
        collector = ResourceCollector()
        value = from_json(bundle) if decoded else bundle
        collector.add(value, "prefetch.observations")
        assert collector.issues == []
        assert collector.truncated == [
            Truncated("prefetch.observations", "https://ehr.example/fhir?page=2", 1, 45)
        ]
        assert collector.truncated[0].describe() == "1 of 45 entries of prefetch.observations"


def test_placeholder_dates_before_1900_are_reported(runtime: Runtime) -> None:
    obs = b.temperature(P, T, 39.0)
    obs["effectiveDateTime"] = "0001-01-01T00:00:00Z"
    n = read(runtime, obs)
    assert n.facts.measurements == ()
    assert "not a plausible clinical time" in n.issues[0].problem


def test_data_quality_bounds_are_inclusive(runtime: Runtime) -> None:
    n = read(runtime, b.weight(P, T, 0.2), b.weight(P, T, 700), b.temperature(P, T, 47.0))
    assert values(n, "body_weight") == [0.2, 700] and values(n, "temperature") == [47.0]
    assert n.issues == []


def test_memos_shared_by_requests_are_bounded() -> None:
    from cds.fhir.normalise import MEMO_KEY_CHARS, _Memo

    memo: _Memo[int, int] = _Memo(limit=100)
    for i in range(105):
        assert memo.put(i, i * 2) == i * 2
    assert len(memo) == 5 and memo[104] == 208
    assert memo.put(-1, 7, chars=MEMO_KEY_CHARS + 1) == 7 and -1 not in memo


def test_huge_or_endless_distinct_codes_do_not_grow_the_shared_memos(runtime: Runtime) -> None:
    from cds.fhir.normalise import MEMO_ENTRIES, UNIT_PLANS

    huge = b.observation(P, T, None, "Body temperature " + "x" * 100_000, 38.4, "Cel")
    assert values(read(runtime, huge), "temperature") == [38.4]
    odd_units = []
    for i in range(UNIT_PLANS + 10):
        obs = b.temperature(P, T, 38.0 + i / 1000)
        obs["valueQuantity"]["unit"] = f"unit {i}"  # read by its UCUM code, Cel
        odd_units.append(obs)
    assert len(values(read(runtime, *odd_units), "temperature")) == UNIT_PLANS + 10
    memos = runtime.knowledge.memos
    assert sum(len(key) for key in memos["observation names"]) < 100_000
    assert len(memos["unit plans"]) <= UNIT_PLANS
    assert all(len(memo) <= MEMO_ENTRIES for memo in memos.values())


def test_zero_and_negative_zero_read_as_written_whatever_came_before(runtime: Runtime) -> None:
    def flow(v: float) -> float:
        n = read(runtime, b.oxygen_flow(P, T, v))
        return values(n, "oxygen_flow")[0]

    assert repr(flow(-0.0)) == "-0.0" and repr(flow(0.0)) == "0.0"
    assert repr(flow(-0.0)) == "-0.0"


def test_a_second_request_reads_alike_from_the_shared_memos(runtime: Runtime) -> None:
    chart = {"k0": b.temperature_f(P, T, 101.1), "k1": b.blood_pressure(P, T, 88, 52)}
    first, second = read(runtime, *chart.values()), read(runtime, *chart.values())
    assert repr(first.facts) == repr(second.facts) and first.issues == second.issues
    assert values(first, "temperature") == [38.388889]
