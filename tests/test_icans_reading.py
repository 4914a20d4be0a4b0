"""How ICANS assessments are read: ICE as valueInteger or valueQuantity, by code or by
name, items as components, QuestionnaireResponses of the published Questionnaires,
Conditions; and bad input reported with its location, never used, never a 500."""

from __future__ import annotations

from typing import Any

from cds import fhirbuild as b
from cds.fhir.normalise import Normalised, Normaliser
from cds.fhir.reading import ResourceCollector
from cds.questionnaires import questionnaire
from cds.runtime import Runtime
from tests.factories import AT, h

P = "pat-icans"
T = h(2)


def read(runtime: Runtime, resources: list[dict[str, Any]], fast: bool = True) -> Normalised:
    collected = ResourceCollector()
    collected.add_prefetch({"bundle": b.searchset(resources)})
    return Normaliser(runtime.knowledge, P, None, fast=fast).normalise(collected)


def both(runtime: Runtime, resources: list[dict[str, Any]]) -> Normalised:
    fast, model = read(runtime, resources), read(runtime, resources, fast=False)
    assert repr(fast.facts) == repr(model.facts) and fast.issues == model.issues
    return fast


def ice_values(n: Normalised) -> list[tuple[str, float]]:
    return [(m.concept, m.value) for m in n.facts.measurements]


def test_ice_by_code_as_value_integer_with_items(runtime: Runtime) -> None:
    n = both(runtime, [b.ice_score(P, T, 7, (4, 2, 1, 0, 0))])
    assert ("ice_score", 7.0) in ice_values(n) and ("ice_orientation", 4.0) in ice_values(n)
    assert not n.issues


def test_ice_by_name_as_value_quantity(runtime: Runtime) -> None:
    obs = b.observation(P, T, None, "ICE score", 6, "{score}")
    n = both(runtime, [obs])
    assert ice_values(n) == [("ice_score", 6.0)]
    obs = b.observation(P, T, None, "Immune Effector Cell-associated Encephalopathy", 8, None)
    obs["valueQuantity"] = {"value": 8}  # no unit: a score
    assert ice_values(both(runtime, [obs])) == [("ice_score", 8.0)]


def test_ice_outside_0_10_is_reported_and_not_used(runtime: Runtime) -> None:
    n = both(runtime, [b.ice_score(P, T, 12)])
    assert ice_values(n) == []
    (issue,) = n.issues
    assert issue.location.endswith(".valueInteger") and "0-10" in issue.problem


def test_an_ice_score_too_large_for_a_float_is_reported_not_a_crash(runtime: Runtime) -> None:
    # JSON integers have no size limit (hypothesis found 10^400 raising OverflowError)
    n = both(runtime, [b.ice_score(P, T, 10**400)])
    assert ice_values(n) == []
    (issue,) = n.issues
    assert "a number of that size is outside" in issue.problem


def test_item_sum_disagreeing_with_total_is_reported(runtime: Runtime) -> None:
    n = both(runtime, [b.ice_score(P, T, 9, (4, 2, 1, 0, 0))])  # items add up to 7
    assert ice_values(n) == []
    (issue,) = n.issues
    assert "add up to 7" in issue.problem and issue.location.endswith("entry[0].resource")


def test_capd_for_a_patient_12_or_older_is_reported(runtime: Runtime) -> None:
    patient = b.patient(P, "2010-01-01")  # 16 at AT
    n = both(runtime, [patient, b.capd_score(P, T, 10)])
    assert ice_values(n) == []
    (issue,) = n.issues
    assert "aged 16" in issue.problem and issue.location.endswith(".valueInteger")
    child = b.patient(P, "2018-01-01")
    assert ice_values(both(runtime, [child, b.capd_score(P, T, 10)])) == [("capd_score", 10.0)]


def test_lab_in_an_unknown_unit_is_reported(runtime: Runtime) -> None:
    n = both(runtime, [b.lab(P, T, "718-7", "Hemoglobin", 6.0, "mmol/L")])
    assert ice_values(n) == []
    (issue,) = n.issues
    assert issue.location.endswith(".valueQuantity.unit") and "mmol/L" in issue.problem


def test_coded_findings_and_unrecognised_values(runtime: Runtime) -> None:
    n = both(runtime, [b.neuro_finding(P, T, "consciousness", "awakens-to-voice")])
    (finding,) = n.facts.neuro
    assert (finding.domain, finding.level) == ("consciousness", "awakens-to-voice")
    bad = b.neuro_finding(P, T, "seizure", "awakens-to-voice")  # a level of another domain
    n = both(runtime, [bad])
    assert not n.facts.neuro and n.issues[0].location.endswith(".valueCodeableConcept")


def test_conditions_seizure_and_cerebral_edema(runtime: Runtime) -> None:
    def condition(code: str, display: str, status: str = "confirmed") -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": code,
            "code": {
                "coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]
            },
            "subject": {"reference": f"Patient/{P}"},
            "verificationStatus": {"coding": [{"code": status}]},
            "onsetDateTime": b.iso(T),
        }

    n = both(
        runtime,
        [
            condition("91175000", "Seizure"),
            condition("2032001", "Cerebral edema"),
            condition("2032001", "Cerebral edema", "refuted"),
        ],
    )
    assert sorted((f.domain, f.level) for f in n.facts.neuro) == [
        ("icp", "edema-unspecified"),
        ("seizure", "unspecified"),
    ]


def response(items: list[dict[str, Any]], qid: str = "ice") -> dict[str, Any]:
    q = questionnaire(qid)
    assert q is not None
    return {
        "resourceType": "QuestionnaireResponse",
        "id": f"qr-{qid}",
        "status": "completed",
        "questionnaire": q["url"] + "|2026.11.1",
        "subject": {"reference": f"Patient/{P}"},
        "authored": b.iso(T),
        "item": items,
    }


def answer(link: str, value: int) -> dict[str, Any]:
    return {"linkId": link, "answer": [{"valueInteger": value}]}


def test_questionnaire_response_ice_items_make_the_total(runtime: Runtime) -> None:
    items = [answer(link, v) for link, v in zip(b.ICE_ITEMS, (3, 2, 1, 1, 0), strict=True)]
    items.append(
        {
            "linkId": "consciousness",
            "answer": [{"valueCoding": {"system": b.ICANS, "code": "awakens-to-voice"}}],
        }
    )
    n = both(runtime, [response(items)])
    assert ("ice_score", 7.0) in ice_values(n)
    assert [(f.domain, f.level) for f in n.facts.neuro] == [("consciousness", "awakens-to-voice")]


def test_questionnaire_response_total_disagreeing_is_reported(runtime: Runtime) -> None:
    items = [answer(link, v) for link, v in zip(b.ICE_ITEMS, (3, 2, 1, 1, 0), strict=True)]
    items.append(answer("ice-total", 9))
    n = both(runtime, [response(items)])
    assert ice_values(n) == [] and "add up to 7" in n.issues[0].problem


def test_questionnaire_response_capd(runtime: Runtime) -> None:
    items = [answer(f"capd-{i}", 2) for i in range(1, 9)]
    n = both(runtime, [b.patient(P, "2019-05-05"), response(items, "capd")])
    assert ice_values(n) == [("capd_score", 16.0)]


def test_published_questionnaires_are_valid_fhir() -> None:
    from fhir.resources.R4B.questionnaire import Questionnaire

    for qid in ("ice", "capd"):
        q = questionnaire(qid)
        assert q is not None
        Questionnaire.model_validate(q)


def test_icans_card_beside_the_crs_card(runtime: Runtime) -> None:
    from tests.factories import monitor_json

    resources = [
        b.patient(P, "1960-01-01"),
        b.administration(P, h(72), text="Yescarta (axicabtagene ciloleucel)"),
        b.temperature(P, T, 38.5),
        b.ice_score(P, T, 5),
    ]
    collected = ResourceCollector()
    collected.add_prefetch({"bundle": b.searchset(resources)})
    crs, icans = monitor_json(runtime, collected, P, AT)["cards"]
    assert crs["extension"]["crs"]["grade"] == 1
    info = icans["extension"]["icans"]
    assert (info["grade"], info["maxGrade"], info["gradingSystem"]) == (2, 2, "ASTCT 2019")
    assert info["concurrentCrsGrade"] == 1 and info["ruleSetVersion"]
    assert "ICANS grade 2" in icans["summary"] and len(icans["summary"]) < 140
    assert "clinician's call" in icans["detail"]
    assert "concurrent CRS grade 1" in icans["detail"]  # tocilizumab row, not isolated ICANS


def test_questionnaires_are_served() -> None:
    from fastapi.testclient import TestClient

    from cds.app import create_app

    client = TestClient(create_app())
    r = client.get("/fhir/Questionnaire/ice")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["url"] == "urn:crs-cds:questionnaire:ice"
    assert client.get("/fhir/Questionnaire/capd").json()["id"] == "capd"
    missing = client.get("/fhir/Questionnaire/other")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
