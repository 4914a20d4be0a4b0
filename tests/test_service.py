"""The CDS Hooks service end to end over HTTP: discovery, the monitor, errors, CORS."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cds import fhirbuild as b
from cds.cli import app as cli_app
from cds.fhir.structs import decode_body
from tests.factories import (
    PATIENT,
    assert_no_empty_fields,
    grade2_monitor_request,
    grade2_resources,
    hook_request,
    hours_ago,
    prefetch,
)


def monitor(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/cds-services/crs-monitor", json=body)


def test_discovery(client: TestClient) -> None:
    services = {s["id"]: s for s in client.get("/cds-services").json()["services"]}
    assert set(services) == {"crs-monitor", "crs-order-select", "crs-order-sign"}
    m = services["crs-monitor"]
    assert m["hook"] == "patient-view"
    assert set(m["prefetch"]) == {
        "patient",
        "observations",
        "oxygenDevices",
        "medicationAdministrations",
        "conditions",
        "assessments",
    }
    assert "http://loinc.org|8310-5" in m["prefetch"]["observations"]
    # ICANS: seizures and cerebral oedema by SNOMED CT code, the published ICE/CAPD forms
    assert "http://snomed.info/sct|91175000" in m["prefetch"]["conditions"]
    assert m["prefetch"]["assessments"].startswith("QuestionnaireResponse?patient=")
    assert "urn:crs-cds:questionnaire:ice" in m["prefetch"]["assessments"]
    assert m["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    # the order checks do not grade ICANS: they do not ask for its Conditions and forms
    for order in ("crs-order-select", "crs-order-sign"):
        assert set(services[order]["prefetch"]) == set(m["prefetch"]) - {
            "conditions",
            "assessments",
        }
    assert services["crs-order-sign"]["hook"] == "order-sign"
    assert services["crs-order-select"]["hook"] == "order-select"


def test_grade_2_card(client: TestClient) -> None:
    r = monitor(client, grade2_monitor_request())
    assert r.status_code == 200
    (card,) = r.json()["cards"]
    assert card["indicator"] == "warning"
    assert len(card["summary"]) < 140
    assert "CRS grade 2" in card["summary"] and "axicabtagene ciloleucel" in card["summary"]
    assert card["uuid"] and card["source"]["url"].startswith("https://doi.org/")
    crs = card["extension"]["crs"]
    assert (crs["grade"], crs["maxGrade"], crs["gradingSystem"]) == (2, 2, "ASTCT 2019")
    assert crs["exposure"]["product"] == "axicabtagene-ciloleucel"
    assert crs["exposure"]["kind"] == "car-t"
    assert crs["ruleSetVersion"]
    assert {e["finding"] for e in crs["evidence"]} >= {"fever", "hypotension"}
    assert "| Finding | Time | Value | Unit |" in card["detail"]
    assert "neutropenic sepsis" in card["detail"]
    assert "systolic BP < 90 mmHg" in card["detail"]
    assert_no_empty_fields(r.json())


def test_grade_0_info_card(client: TestClient) -> None:
    obs = [b.temperature(PATIENT, hours_ago(1), 37.2)]
    admins = [b.administration(PATIENT, hours_ago(72), text="Yescarta")]
    (card,) = monitor(client, hook_request("patient-view", {}, prefetch(obs, admins))).json()[
        "cards"
    ]
    assert card["indicator"] == "info"
    assert card["summary"] == "CRS watch: day 3 after axicabtagene ciloleucel"


def test_grade_3_critical(client: TestClient) -> None:
    obs = [b.temperature(PATIENT, hours_ago(1), 39.1)]
    admins = [
        b.administration(PATIENT, hours_ago(72), text="Yescarta"),
        b.administration(
            PATIENT,
            hours_ago(3),
            rxnorm="7512",
            text="norepinephrine",
            period=True,
            status="in-progress",
        ),
    ]
    (card,) = monitor(client, hook_request("patient-view", {}, prefetch(obs, admins))).json()[
        "cards"
    ]
    assert (card["indicator"], card["extension"]["crs"]["grade"]) == ("critical", 3)


def test_outside_any_window_no_card(client: TestClient) -> None:
    obs = [b.temperature(PATIENT, hours_ago(1), 39.0)]
    admins = [b.administration(PATIENT, hours_ago(24 * 90), text="Yescarta")]
    r = monitor(client, hook_request("patient-view", {}, prefetch(obs, admins)))
    assert r.json() == {"cards": []}


def test_bad_entries_are_reported_not_500(client: TestClient) -> None:
    obs, admins = grade2_resources()
    pre = prefetch(obs, admins)
    pre["observations"]["entry"].append(
        {"resource": {"resourceType": "Observation", "status": "final"}}
    )
    pre["observations"]["entry"].append({"resource": "not a resource"})
    r = monitor(client, hook_request("patient-view", {}, pre))
    assert r.status_code == 200
    extension = r.json()["cards"][0]["extension"]
    locations = [i["location"] for i in extension["dataIssues"]]
    assert "prefetch.observations.entry[3].resource.code" in locations
    assert "prefetch.observations.entry[4].resource" in locations
    assert "Data not read" in r.json()["cards"][0]["detail"]


def test_a_period_ending_past_the_last_utc_instant_is_read_as_running_not_a_500(
    client: TestClient,
) -> None:
    """Blinatumomab in progress with its period ending 9999-12-31T23:59:59-14:00 (a
    placeholder for "no end", later than any UTC time can be) is read as still running:
    the grade 2 card is answered."""
    obs, admins = grade2_resources()
    blina = b.administration(
        PATIENT, hours_ago(30), text="Blincyto", period=True, status="in-progress"
    )
    blina["effectivePeriod"]["end"] = "9999-12-31T23:59:59-14:00"
    r = monitor(client, hook_request("patient-view", {}, prefetch(obs, [*admins, blina])))
    assert r.status_code == 200
    assert r.json()["cards"][0]["extension"]["crs"]["grade"] == 2


@pytest.mark.parametrize(
    "route",
    ["IV", ["IV"], {"coding": [{"code": 47625008}]}],
    ids=["a string", "a list", "a numeric code"],
)
def test_a_malformed_route_keeps_the_administration(client: TestClient, route: Any) -> None:
    """A route that is not a valid CodeableConcept (a string, a list, a coding whose code
    is a number) does not drop the administration: the CAR-T infusion still opens the
    risk window and the running norepinephrine with fever still grades 3."""
    obs = [b.temperature(PATIENT, hours_ago(1), 39.0)]
    car_t = b.administration(PATIENT, hours_ago(72), text="Yescarta")
    car_t["dosage"] = {"route": route}
    pressor = b.administration(
        PATIENT,
        hours_ago(3),
        rxnorm="7512",
        text="norepinephrine",
        period=True,
        status="in-progress",
    )
    pressor["dosage"] = {"route": route}
    r = monitor(client, hook_request("patient-view", {}, prefetch(obs, [car_t, pressor])))
    assert r.json()["cards"][0]["extension"]["crs"]["grade"] == 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"hook":"\xff"}', 400, "not valid UTF-8: byte 9"),  # in a member read
        (
            b'{"hook":"patient-view","hookInstance":"h","context":{"patientId":"p","x":'
            + b"[" * 1100
            + b"]" * 1100
            + b"}}",
            400,
            "not valid JSON",  # nested deeper than either parser goes
        ),
        (b"", 400, "empty request body"),
        (b"[]", 400, "must be a JSON object"),
        (json.dumps({"hook": "patient-view", "context": {}}).encode(), 400, "request.hookInstance"),
        (
            json.dumps(
                {
                    "hook": "order-sign",
                    "hookInstance": "x",
                    "context": {"patientId": "p"},
                    "prefetch": {},
                }
            ).encode(),
            400,
            "answers hook 'patient-view'",
        ),
        (
            json.dumps(
                {
                    "hook": "patient-view",
                    "hookInstance": "x",
                    "context": {},
                    "prefetch": {
                        "observations": {"resourceType": "Bundle"},
                        "oxygenDevices": {"resourceType": "Bundle"},
                        "medicationAdministrations": {"resourceType": "Bundle"},
                    },
                }
            ).encode(),
            400,
            "context.patientId",
        ),
        (
            json.dumps(
                {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "p"}}
            ).encode(),
            412,
            "no fhirServer",
        ),
        (
            json.dumps(
                {
                    "hook": "patient-view",
                    "hookInstance": "x",
                    "context": {"patientId": "p"},
                    "prefetch": {"observations": None, "medicationAdministrations": None},
                }
            ).encode(),
            412,
            "prefetch oxygenDevices is absent",
        ),
    ],
)
def test_errors(client: TestClient, body: bytes, status: int, message: str) -> None:
    r = client.post(
        "/cds-services/crs-monitor", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == status
    assert message in r.json()["error"]


def test_unknown_service_404(client: TestClient) -> None:
    r = client.post("/cds-services/nope", json={})
    assert r.status_code == 404
    assert "crs-monitor" in r.json()["error"]


def test_cors_preflight_and_headers(client: TestClient) -> None:
    r = client.options(
        "/cds-services/crs-monitor",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "https://sandbox.cds-hooks.org")
    r = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert "access-control-allow-origin" in r.headers


def _strip_volatile(response: dict[str, Any]) -> dict[str, Any]:
    for card in response["cards"]:
        card.pop("uuid")
        card["extension"]["crs"].pop("evaluatedAt")
        for s in card.get("suggestions", []):
            s.pop("uuid")
            for a in s["actions"]:
                a.get("resource", {}).pop("id", None)
                a.get("resource", {}).pop("authoredOn", None)
    return response


def test_cli_evaluate_matches_the_service(
    client: TestClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    obs, admins = grade2_resources()
    bundle = b.collection([b.patient(PATIENT), *obs, *admins])
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    at = hours_ago(0).isoformat()
    result = CliRunner().invoke(cli_app, ["evaluate", str(path), "--at", at])
    assert result.exit_code == 0, result.output
    offline = json.loads(result.output)
    online = monitor(client, hook_request("patient-view", {}, prefetch(obs, admins))).json()
    assert offline["cards"][0]["extension"]["crs"]["evaluatedAt"] == at
    assert _strip_volatile(offline) == _strip_volatile(online)


def test_cli_evaluate_bad_file(tmp_path: Any) -> None:
    path = tmp_path / "x.json"
    path.write_text("{")
    result = CliRunner().invoke(cli_app, ["evaluate", str(path)])
    assert result.exit_code == 2
    result = CliRunner().invoke(cli_app, ["evaluate", str(path), "--at", "yesterday"])
    assert result.exit_code == 2


def test_paediatric_patient_is_warned_about_the_adult_hypotension_threshold(
    client: TestClient,
) -> None:
    obs, admins = grade2_resources()
    pre = prefetch(obs, admins)
    pre["patient"] = b.patient(PATIENT, birth_date=f"{hours_ago(0).year - 9}-01-01")
    (card,) = monitor(client, hook_request("patient-view", {}, pre)).json()["cards"]
    assert "Paediatric patient (age" in card["detail"]
    assert any("Paediatric" in w for w in card["extension"]["crs"]["warnings"])
    pre["patient"] = b.patient(PATIENT, birth_date="1970-01-01")
    (card,) = monitor(client, hook_request("patient-view", {}, pre)).json()["cards"]
    assert "Paediatric" not in card["detail"]


def _data_issues(response: Any) -> list[dict[str, str]]:
    """The data issues of the answer: on its cards, or on the response without a card."""
    answer = response.json()
    holders = [answer, *answer["cards"]]
    return [i for h in holders for i in h.get("extension", {}).get("dataIssues", [])]


def test_another_patients_patient_resource_is_not_taken_for_this_ones_age(
    client: TestClient,
) -> None:
    # a child's Patient resource sent beside an adult's chart: its age is not this
    # patient's (it brought the paediatric warning onto an adult's card)
    obs, admins = grade2_resources()
    pre = prefetch(obs, admins)
    pre["patient"] = b.patient("someone-else", birth_date=f"{hours_ago(0).year - 9}-01-01")
    response = monitor(client, hook_request("patient-view", {}, pre))
    (card,) = response.json()["cards"]
    assert "Paediatric" not in card["detail"]
    assert any(
        i["location"] == "prefetch.patient.id" and "another patient" in i["problem"]
        for i in _data_issues(response)
    )


@pytest.mark.parametrize("birth", ["soon", "1980", "1980-13-01", "1980-01-01T00:00:00Z"])
def test_a_birth_date_that_is_not_a_full_date_is_reported(client: TestClient, birth: str) -> None:
    obs, admins = grade2_resources()
    pre = prefetch(obs, admins)
    pre["patient"] = b.patient(PATIENT, birth_date=birth)
    response = monitor(client, hook_request("patient-view", {}, pre))
    assert response.status_code == 200
    assert any(
        i["location"] == "prefetch.patient.birthDate" and "age is not known" in i["problem"]
        for i in _data_issues(response)
    )


def test_a_birth_date_after_the_evaluation_gives_no_age(client: TestClient) -> None:
    obs, admins = grade2_resources()
    pre = prefetch(obs, admins)
    birth = f"{hours_ago(0).year + 4}-01-01"
    pre["patient"] = b.patient(PATIENT, birth_date=birth)
    response = monitor(client, hook_request("patient-view", {}, pre))
    (card,) = response.json()["cards"]
    assert "Paediatric" not in card["detail"]  # was "Paediatric patient (age -4)"
    issues = _data_issues(response)
    assert any(
        i["location"] == "prefetch.patient.birthDate" and "after the evaluation" in i["problem"]
        for i in issues
    )
    assert birth not in str(issues)  # (kept in the audit trail: no birth date in it)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda ma: ma.update(effectiveDateTime=ma["effectiveDateTime"][:19]),  # no offset
        lambda ma: ma.update(effectiveDateTime="yesterday"),
        # the latest instant it may mean is past the calendar's end (was a 500, fuzzed):
        lambda ma: ma.update(effectiveDateTime="9999-12-31T10:00:00"),
        lambda ma: (
            ma.pop("effectiveDateTime")
            and ma.update(effectivePeriod={"start": "9999-12-31T00:00:00Z", "end": "2026-11-30"})
        ),
        lambda ma: ma.pop("effectiveDateTime"),  # no effective time
        # not readable FHIR at all, but naming the product:
        lambda ma: ma.update(effectiveDateTime=20261128),  # a number
        lambda ma: ma.pop("status"),  # status is required
        lambda ma: ma.update(status=["completed"]),  # a list: found by hypothesis
        lambda ma: ma.update(medicationCodeableConcept="YESCARTA"),  # a string, not a concept
    ],
)
def test_a_car_t_infusion_that_cannot_be_read_gives_a_card_not_silence(
    client: TestClient, spoil: Any
) -> None:
    # fever and SBP 85 charted, the infusion (or its time) unreadable: the risk window
    # cannot be placed, and a wrong "no CRS" (no card, the issue only in the response's
    # extension, which EHRs rarely show) is the worst answer
    obs, admins = grade2_resources()
    spoil(admins[0])
    response = monitor(client, hook_request("patient-view", {}, prefetch(obs, admins)))
    (card,) = response.json()["cards"]
    assert card["indicator"] == "warning"
    assert card["summary"] == "Axicabtagene ciloleucel given, not readable: CRS risk not checked"
    assert "prefetch.medicationAdministrations.entry[0]" in card["detail"]
    assert any(
        i["location"].startswith("prefetch.medicationAdministrations.entry[0]")
        for i in _data_issues(response)
    )


def test_an_unreadable_infusion_after_lymphodepletion_is_not_taken_for_before_it(
    client: TestClient,
) -> None:
    # the usual chart: fludarabine days -5 to -3, the CAR-T 72 h ago. With the infusion's
    # time unreadable, "after lymphodepletion, before the infusion" (the pre-infusion risk
    # scores, info, "raise no alert") would be a wrong all-clear (a second review found it)
    obs, admins = grade2_resources()
    admins[0]["effectiveDateTime"] = admins[0]["effectiveDateTime"][:19]  # no offset
    admins += [
        b.administration(PATIENT, hours_ago(h), text="fludarabine") for h in (120, 96, 72 + 24)
    ]
    response = monitor(client, hook_request("patient-view", {}, prefetch(obs, admins)))
    (card,) = response.json()["cards"]
    assert card["indicator"] == "warning"
    assert "CRS risk not checked" in card["summary"]


def test_an_administration_not_readable_and_not_given_stays_a_data_issue(
    client: TestClient,
) -> None:
    obs, admins = grade2_resources()
    admins[0].update(effectiveDateTime=20261128, status="entered-in-error")
    acetaminophen = b.administration(PATIENT, hours_ago(3), rxnorm="161", text="acetaminophen")
    acetaminophen["effectiveDateTime"] = 20261128
    response = monitor(
        client, hook_request("patient-view", {}, prefetch(obs, [*admins, acetaminophen]))
    )
    assert response.json()["cards"] == []
    assert _data_issues(response)


def test_an_infusion_without_offset_too_old_to_matter_is_a_data_issue_only(
    client: TestClient,
) -> None:
    # a CAR-T charted without an offset a year ago (migrated data) opens no window now,
    # whatever its zone: no card at every chart opening, the issue only
    obs, admins = grade2_resources()
    admins[0]["effectiveDateTime"] = hours_ago(24 * 365).strftime("%Y-%m-%dT%H:%M:%S")
    response = monitor(client, hook_request("patient-view", {}, prefetch(obs, admins)))
    assert response.json()["cards"] == []
    assert any(
        i["location"].startswith("prefetch.medicationAdministrations.entry[0]")
        for i in _data_issues(response)
    )


def test_an_unreadable_administration_of_another_medicine_stays_quiet(
    client: TestClient,
) -> None:
    # (only an exposure opens a risk window: an unreadable antipyretic is a data issue)
    acetaminophen = b.administration(PATIENT, hours_ago(3), rxnorm="161", text="acetaminophen")
    acetaminophen["effectiveDateTime"] = "yesterday"
    response = monitor(client, hook_request("patient-view", {}, prefetch([], [acetaminophen])))
    assert response.json()["cards"] == []
    assert _data_issues(response)


def test_nesting_the_one_pass_decoder_refuses_is_read_as_plain_json(client: TestClient) -> None:
    # 340 Bundles one in another: too deep for the one-pass decoder, fine as plain JSON
    depth = 340
    bundle = b'{"resourceType":"Bundle","entry":[{"resource":' * depth
    bundle += b'{"resourceType":"Bundle"}' + b"}]}" * depth
    body = (
        b'{"hook":"patient-view","hookInstance":"h","context":{"patientId":"p"},"prefetch":'
        b'{"observations":' + bundle + b',"oxygenDevices":' + bundle
        + b',"medicationAdministrations":' + bundle + b"}}"
    )  # fmt: skip
    assert decode_body(body) is None
    orjson.loads(body)  # (valid, and within the plain parser's depth)
    r = client.post(
        "/cds-services/crs-monitor", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200 and r.json() == {"cards": []}
