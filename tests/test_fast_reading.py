"""The fast path reads exactly what the lean models read: same facts, same issues.

`Normaliser(fast=True)` (the service) reads a resource as a `structs.Resource` when the
struct types and `structs.checked` accept it; `fast=False` validates every resource with
its lean model, the definition of validity. For every input — the scenario library, the
benchmark chart, the scenario files, and resources mutated at random (wrong types,
missing fields, odd statuses, units and times) — both must give identical facts and
identical issues; and so must a request body decoded in one pass (`structs.decode_body`)
and the same body parsed as plain JSON.
"""

from __future__ import annotations

import copy
import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET
from pydantic import ValidationError

from bench.payloads import build_payload
from cds import fhirbuild as b
from cds.fhir import models
from cds.fhir.normalise import Normalised, Normaliser, _parse_time
from cds.fhir.reading import ResourceCollector
from cds.fhir.structs import Resource, checked, decode_body, from_json
from cds.fhir.timing import TimeFormatError, parse_fhir_datetime
from cds.runtime import Runtime
from cds.scenarios import library
from tests.factories import h, hook_request

T = h(4)  # 08:00
P = "pat-1"
SCENARIO_FILES = sorted((Path(__file__).parent / "scenarios").glob("*.json"))


def both(
    runtime: Runtime, prefetch: dict[str, Any], patient_id: str | None, tz: Any = None
) -> tuple[Normalised, Normalised]:
    """(fast, model-only) normalisations of the same prefetch."""
    out = []
    for fast in (True, False):
        collected = ResourceCollector()
        collected.add_prefetch(prefetch)
        out.append(Normaliser(runtime.knowledge, patient_id, tz, fast=fast).normalise(collected))
    return out[0], out[1]


def assert_same(fast: Normalised, reference: Normalised) -> None:
    # repr, not ==: 5 == 5.0, but a fact must not carry an int where the model reads a float.
    assert repr(fast.facts) == repr(reference.facts)
    assert fast.issues == reference.issues


# --- known inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(library()))
def test_every_scenario_reads_the_same(runtime: Runtime, scenario: str) -> None:
    s = library()[scenario]
    fast, reference = both(runtime, s.prefetch(T), s.patient_id)
    assert_same(fast, reference)


def test_benchmark_chart_reads_the_same(runtime: Runtime) -> None:
    request = build_payload(400, T).request
    fast, reference = both(runtime, request["prefetch"], request["context"]["patientId"])
    assert fast.facts.measurements and fast.facts.administrations
    assert_same(fast, reference)


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_scenario_files_read_the_same(runtime: Runtime, path: Path) -> None:
    for tz in (None, ZoneInfo("Europe/Berlin")):
        fast, reference = both(runtime, {"bundle": json.loads(path.read_text())}, None, tz)
        assert_same(fast, reference)


# --- resources mutated at random -------------------------------------------------------


def _base_resources() -> list[dict[str, Any]]:
    """One of each shape the normaliser reads, valid as written."""
    contained = b.medication("med1", "Breyanzi (lisocabtagene maraleucel)")
    return [
        b.temperature(P, T, 38.4),
        b.temperature_f(P, T, 101.1),
        b.blood_pressure(P, T, 88, 52),
        b.spo2(P, T, 93),
        b.oxygen_flow(P, T, 4),
        b.weight(P, T, 176, "lb"),
        b.lab(P, T, "1988-5", "C reactive protein", 12, "mg/dL"),
        b.oxygen_device(P, T, "336623009", "Oxygen nasal cannula"),
        b.observation(P, T, None, "Temp (oral)", 38.4, "Cel"),
        b.administration(P, T, text="Kymriah"),
        b.administration(P, T, rxnorm="7512", text="norepinephrine", period=True),
        b.administration(P, T, rxnorm="7512", text="norepinephrine", end=T + timedelta(hours=1)),
        b.administration(
            P, T, text="", medication_reference="#med1", contained=[contained], dose=(8, "mg/kg")
        ),
        b.administration(P, T, text="x", medication_reference="Medication/m9", dose=(0.57, "g")),
        b.medication("m9", "tocilizumab", "612865"),
        # issue #14: ICANS assessments, a Condition, a QuestionnaireResponse
        b.ice_score(P, T, 7, (4, 2, 1, 0, 0)),
        b.capd_score(P, T, 10),
        b.neuro_finding(P, T, "consciousness", "awakens-to-voice"),
        {
            "resourceType": "Condition",
            "id": "c1",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91175000"}]},
            "subject": {"reference": f"Patient/{P}"},
            "onsetDateTime": "2026-11-20T07:00:00Z",
        },
        {
            "resourceType": "QuestionnaireResponse",
            "id": "qr1",
            "status": "completed",
            "questionnaire": "urn:crs-cds:questionnaire:ice",
            "subject": {"reference": f"Patient/{P}"},
            "authored": "2026-11-20T07:30:00Z",
            "item": [
                {"linkId": link, "answer": [{"valueInteger": 1}]}
                for link in ("ice-orientation", "ice-naming", "ice-commands")
            ]
            + [{"linkId": "ice-total", "answer": [{"valueInteger": 3}]}],
        },
    ]


BASES = _base_resources()
# Field names the models declare: mutations set them where they may or may not belong.
FIELDS = [
    "resourceType", "id", "status", "code", "coding", "system", "display", "text",
    "subject", "reference", "effectiveDateTime", "effectiveInstant", "effectivePeriod",
    "start", "end", "valueQuantity", "value", "unit", "valueCodeableConcept", "component",
    "medicationCodeableConcept", "medicationReference", "dosage", "dose", "contained",
    "valueInteger", "onsetDateTime", "recordedDate", "verificationStatus", "questionnaire",
    "authored", "item", "linkId", "answer",
]  # fmt: skip
TEXTS = st.sampled_from(
    [
        "",
        " ",
        "final",
        "amended",
        "preliminary",
        "registered",
        "entered-in-error",
        "not-done",
        "in-progress",
        "done",
        "FINAL",
        "mg/dL",
        "mg/dl ",
        "[degF]",
        "Cel",
        "K",
        "g",
        "mg/kg",
        "2026-11-20T08:00:00+01:00",
        "2026-11-20T08:00:00",
        "2026-11-20",
        "2026-02-30T08:00:00Z",
        "2026-11-20T08:00:00+15:00",
        "yesterday",
        "Patient/pat-1",
        "Patient/someone-else",
        "Medication/m9",
        "Medication/absent",
        "#med1",
        "http://loinc.org",
        "8310-5",
        "Observation",
        "Medication",
        "norepinephrine",
        "HFNC 40 L",
    ]
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([0, 1, 2**53, 2**53 + 1, -(2**53) - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0, 38.4, 101.1]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS, st.text(max_size=8))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3),
    ),
    max_leaves=6,
)


def _containers(value: Any) -> list[Any]:
    """Every dict and list inside `value`, itself included."""
    found = [value]
    children = value.values() if isinstance(value, dict) else value
    for child in children:
        if isinstance(child, (dict, list)):
            found.extend(_containers(child))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A base resource with one to three fields deleted, retyped or set to odd values."""
    resource = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(_containers(resource)))
        # Mostly a scalar, as EHRs get wrong; sometimes a whole structure.
        new_value = draw(st.one_of(SCALARS, JSON_VALUES))
        if isinstance(target, dict):
            existing = sorted(target)
            key = draw(st.sampled_from(existing) if existing else st.sampled_from(FIELDS))
            if draw(st.integers(0, 3)) == 0:
                key = draw(st.sampled_from(FIELDS))  # maybe a field that was absent
            if key in target and draw(st.integers(0, 3)) == 0:
                del target[key]
            else:
                target[key] = new_value
        elif target:
            target[draw(st.integers(0, len(target) - 1))] = new_value
        else:
            target.append(new_value)
    return dict(resource)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    resources=st.lists(mutated(), min_size=1, max_size=4),
    patient_id=st.sampled_from([P, None]),
    tz=st.sampled_from([None, ZoneInfo("Europe/Berlin")]),
)
def test_mutated_resources_read_the_same(
    runtime: Runtime, resources: list[dict[str, Any]], patient_id: str | None, tz: Any
) -> None:
    entries = [{"resource": r} for r in [*resources, *BASES]]
    prefetch = {"data": {"resourceType": "Bundle", "type": "collection", "entry": entries}}
    fast, reference = both(runtime, prefetch, patient_id, tz)
    assert_same(fast, reference)


MODELS: dict[str, type[models.Lean]] = {
    "Observation": models.Observation,
    "MedicationAdministration": models.MedicationAdministration,
    "Medication": models.Medication,
}


@settings(max_examples=400, deadline=None)
@given(resource=mutated())
def test_what_the_structs_accept_is_valid_and_read_unchanged(resource: dict[str, Any]) -> None:
    decoded = from_json(resource)
    for resource_type, model in MODELS.items():
        if decoded is None or not checked(decoded, resource_type):
            continue
        try:
            read = model.model_validate(resource).model_dump()
        except ValidationError as exc:  # pragma: no cover - the failure tested for
            pytest.fail(f"the struct accepted an invalid {resource_type}: {exc}")
        as_read = Resource.of(read)
        for name in read:  # (absent reads as null: UNSET is only kept for the models)
            got = getattr(decoded, name)
            assert repr(None if got is UNSET else got) == repr(getattr(as_read, name)), name


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(resources=st.lists(mutated(), min_size=1, max_size=4))
def test_a_body_decoded_in_one_pass_reads_as_plain_json(
    runtime: Runtime, resources: list[dict[str, Any]]
) -> None:
    entries = [{"resource": r} for r in [*resources, *BASES]]
    data = {"resourceType": "Bundle", "entry": entries}
    body = json.dumps(hook_request("patient-view", {}, {"data": data}, patient_id=P)).encode()
    decoded = decode_body(body)
    try:
        plain = orjson.loads(body)
    except orjson.JSONDecodeError:
        # NaN and Infinity: refused by both; an integer beyond a double in a field no
        # model reads: kept by the decoder only. Nothing to compare.
        return
    if decoded is None:
        return  # read as plain JSON: nothing to compare
    results = []
    for prefetch in (decoded.members()["prefetch"], plain["prefetch"]):
        collected = ResourceCollector()
        collected.add_prefetch(prefetch)
        results.append(Normaliser(runtime.knowledge, P, None).normalise(collected))
    assert_same(results[0], results[1])


def test_the_benchmark_body_is_decoded_in_one_pass(runtime: Runtime) -> None:
    body = build_payload(200, T).monitor
    decoded = decode_body(body)
    assert decoded is not None
    collected = ResourceCollector()
    collected.add_prefetch(decoded.members()["prefetch"])
    assert all(isinstance(raw.data, Resource) for raw in collected.resources)
    plain = ResourceCollector()
    plain.add_prefetch(orjson.loads(body)["prefetch"])
    assert_same(
        Normaliser(runtime.knowledge, "bench-patient", None).normalise(collected),
        Normaliser(runtime.knowledge, "bench-patient", None, fast=False).normalise(plain),
    )


# --- non-finite values -----------------------------------------------------------------


def test_overflowing_conversion_is_reported_not_graded(runtime: Runtime) -> None:
    crp = b.lab(P, T, "1988-5", "C reactive protein", 1e308, "mg/dL")  # x10 -> inf mg/L
    fast, reference = both(runtime, {"k0": crp}, P)
    assert fast.facts.of("crp") == ()
    assert [(i.location, i.problem) for i in fast.issues] == [
        ("prefetch.k0.valueQuantity.value", "not a finite number in mg/L (1e+308 mg/dL)")
    ]
    assert_same(fast, reference)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_value_is_reported(runtime: Runtime, value: float) -> None:
    temperature = b.temperature(P, T, 38.0)
    temperature["valueQuantity"]["value"] = value
    fast, reference = both(runtime, {"k0": temperature}, P)
    assert fast.facts.measurements == ()
    assert [(i.location, i.problem) for i in fast.issues] == [
        ("prefetch.k0.valueQuantity.value", "not a finite number")
    ]
    assert_same(fast, reference)


def test_non_finite_component_is_reported_at_its_location(runtime: Runtime) -> None:
    bp = b.blood_pressure(P, T, 88, 52)
    bp["component"][0]["valueQuantity"]["value"] = math.inf
    fast, reference = both(runtime, {"k0": bp}, P)
    assert fast.facts.measurements == ()
    assert [i.location for i in fast.issues] == ["prefetch.k0.component[0].valueQuantity.value"]
    assert_same(fast, reference)


# --- times -----------------------------------------------------------------------------


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


DATETIME_TEXTS = st.builds(
    lambda y, mo, d, h, mi, s, frac, tz, pad: f"{pad}{y}-{mo}-{d}T{h}:{mi}:{s}{frac}{tz}",
    st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    _two(0, 13),
    _two(0, 32),
    _two(0, 25),
    _two(0, 61),
    _two(0, 61),
    st.sampled_from(["", ".5", ".123", ".1234567"]),
    st.one_of(
        st.sampled_from(["", "Z", "z", "+00:00", "-00:00", "+5:30"]),
        st.builds(
            lambda sign, h, m: f"{sign}{h}:{m}", st.sampled_from("+-"), _two(0, 16), _two(0, 61)
        ),
    ),
    st.sampled_from(["", "", "", " "]),
)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(DATETIME_TEXTS, TEXTS), tz=st.sampled_from([None, ZoneInfo("Asia/Kolkata")]))
def test_times_read_as_the_timing_rules_say(text: str, tz: Any) -> None:
    try:
        expected: object = parse_fhir_datetime(text, tz)
    except TimeFormatError as exc:
        expected = str(exc)
    assert repr(_parse_time(text, tz)) == repr(expected)
