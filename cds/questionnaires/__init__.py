"""The FHIR Questionnaires the service publishes for charting ICANS assessments (ICE, and
CAPD for children under 12); a QuestionnaireResponse to one of them is read by
`fhir.normalise`. Served at GET /fhir/Questionnaire/{id}."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
IDS = ("ice", "capd")


@cache
def questionnaire(qid: str) -> dict[str, Any] | None:
    """The Questionnaire with id `qid` (a JSON object), or None."""
    if qid not in IDS:
        return None
    data: dict[str, Any] = json.loads((HERE / f"{qid}.json").read_text(encoding="utf-8"))
    return data


def items_by_url() -> dict[str, dict[str, tuple[str, str]]]:
    """canonical url -> linkId -> (system, code) of every coded item."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for qid in IDS:
        q = questionnaire(qid)
        assert q is not None
        out[q["url"]] = {
            item["linkId"]: (item["code"][0]["system"], item["code"][0]["code"])
            for item in q["item"]
            if item.get("code")
        }
    return out
