"""Prometheus metrics: requests by route or service and status, cards by indicator and
grade, refused tokens by reason — and no patient data in any label."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.factories import PATIENT, grade2_resources, hook_request, prefetch


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if found == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_hook_call_is_counted_with_its_card(client: TestClient) -> None:
    before = client.get("/metrics").text
    obs, admins = grade2_resources()
    body = hook_request("patient-view", {}, prefetch(obs, admins))
    assert client.post("/cds-services/crs-monitor", json=body).status_code == 200
    client.post("/cds-services/not-a-service", json=body)
    after = client.get("/metrics").text
    route = "/cds-services/crs-monitor"
    assert _sample(after, "crs_cds_requests_total", route=route, status="200") == (
        _sample(before, "crs_cds_requests_total", route=route, status="200") + 1
    )
    card = {"service": "crs-monitor", "kind": "crs", "indicator": "warning", "grade": "2"}
    assert _sample(after, "crs_cds_cards_total", **card) == (
        _sample(before, "crs_cds_cards_total", **card) + 1
    )
    assert "crs_cds_request_seconds_bucket" in after
    # an unknown service id never becomes a label value of its own
    assert "not-a-service" not in after
    assert (
        _sample(
            after, "crs_cds_requests_total", route="/cds-services/(unknown service)", status="404"
        )
        >= 1
    )


def test_no_patient_data_in_the_labels(client: TestClient) -> None:
    obs, admins = grade2_resources()
    client.post(
        "/cds-services/crs-monitor", json=hook_request("patient-view", {}, prefetch(obs, admins))
    )
    text = client.get("/metrics").text
    assert PATIENT not in text
    labels = set(re.findall(r'(\w+)="', text))
    assert labels <= {
        "route",
        "status",
        "service",
        "kind",
        "indicator",
        "grade",
        "reason",
        "outcome",
        "operation",
        "channel",
        "le",
        "version",
        "implementation",
        "major",
        "minor",
        "patchlevel",
        "generation",
    }
