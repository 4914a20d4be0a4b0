"""CDS Hooks feedback: checked against what the card offered, stored with its record,
idempotent, and visible to every replica (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cds.runtime import Runtime
from cds.store.audit import feedback_figures
from cds.store.feedback import OUTCOME_FUTURE_LIMIT
from cds.store.tables import feedback
from tests.factories import draft_bundle, draft_order, grade2_resources, hook_request, prefetch
from tests.store.conftest import Service, open_service


def _card(service: Service, path: str = "crs-monitor", **context: Any) -> dict[str, Any]:
    obs, admins = grade2_resources()
    hook = "patient-view" if path == "crs-monitor" else "order-sign"
    body = hook_request(hook, context, prefetch(obs, admins))
    (card,) = service.client.post(f"/cds-services/{path}", json=body).json()["cards"]
    return dict(card)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _post(service: Service, items: list[dict[str, Any]], path: str = "crs-monitor") -> Any:
    return service.client.post(f"/cds-services/{path}/feedback", json={"feedback": items})


def test_accepted_feedback_is_stored_and_answered_with_an_empty_200(service: Service) -> None:
    card = _card(service)
    suggestion = card["suggestions"][0]["uuid"]
    item = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion}],
        "outcomeTimestamp": _now(),
    }
    response = _post(service, [item])
    assert (response.status_code, response.content) == (200, b"")
    with service.engine.connect() as connection:
        (row,) = connection.execute(select(feedback).where(feedback.c.card_uuid == card["uuid"]))
    assert (row.outcome, row.accepted_suggestions) == ("accepted", [suggestion])


@pytest.mark.parametrize(
    "shape",
    [
        "%Y-%m-%dT%H:%M:%SZ",
        "%Y-%m-%dt%H:%M:%Sz",  # RFC 3339 allows lower case (was refused, fuzzed)
        "%Y-%m-%dT%H:%M:%S.%f123456+00:00",  # twelve digits of a second
        "%Y-%m-%dT%H:%MZ",  # ISO 8601 without seconds
    ],
)
def test_outcome_timestamps_in_every_date_time_shape_are_read(service: Service, shape: str) -> None:
    card = _card(service)
    when = datetime.now(UTC) - timedelta(minutes=5)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": when.strftime(shape)}
    response = _post(service, [item])
    assert response.status_code == 200, response.text
    with service.engine.connect() as connection:
        (row,) = connection.execute(select(feedback).where(feedback.c.card_uuid == card["uuid"]))
    assert abs(row.outcome_at - when) < timedelta(minutes=1)


def test_repeated_identical_feedback_is_stored_once(service: Service) -> None:
    card = _card(service)
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now()}
    assert _post(service, [item]).status_code == 200
    assert _post(service, [item, item]).status_code == 200
    with service.engine.connect() as connection:
        rows = connection.execute(select(feedback).where(feedback.c.card_uuid == card["uuid"]))
        assert len(rows.all()) == 1


def test_unknown_card_is_404_naming_it(service: Service) -> None:
    response = _post(
        service, [{"card": "no-such-card", "outcome": "overridden", "outcomeTimestamp": _now()}]
    )
    assert response.status_code == 404
    assert "no-such-card" in response.json()["error"]
    assert response.json()["location"] == "feedback[0].card"


def test_a_card_of_another_service_is_404(service: Service) -> None:
    card = _card(service)
    response = _post(
        service,
        [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now()}],
        "crs-order-sign",
    )
    assert response.status_code == 404


def test_a_suggestion_the_card_did_not_offer_is_400_and_nothing_is_stored(
    service: Service,
) -> None:
    card = _card(service)
    good = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now()}
    bad = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "invented"}],
        "outcomeTimestamp": _now(),
    }
    before = service.count("feedback")
    response = _post(service, [good, bad])
    assert response.status_code == 400
    assert response.json()["location"] == "feedback[1].acceptedSuggestions[0].id"
    assert service.count("feedback") == before


def test_an_override_reason_the_card_did_not_offer_is_stored_and_flagged(
    service: Service,
) -> None:
    o, a = grade2_resources(weight_kg=80)
    body = hook_request(
        "order-sign",
        {"draftOrders": draft_bundle(draft_order("t1", 2000, "mg"))},
        prefetch(o, a),
    )
    (card,) = service.client.post("/cds-services/crs-order-sign", json=body).json()["cards"]
    offered = card["overrideReasons"][0]
    items = [
        {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": offered["code"]}},  # no display: the Sandbox
            "outcomeTimestamp": _now(),
        },
        {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"system": "urn:x", "code": "not-offered", "display": "Because"},
                "userComment": "patient refused",
            },
            "outcomeTimestamp": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
        },
    ]
    assert _post(service, items, "crs-order-sign").status_code == 200
    with service.engine.connect() as connection:
        rows = {
            r.override_code: r
            for r in connection.execute(
                select(feedback).where(feedback.c.card_uuid == card["uuid"])
            )
        }
    assert rows[offered["code"]].override_offered is True
    assert rows["not-offered"].override_offered is False
    assert rows["not-offered"].user_comment == "patient refused"


def test_malformed_feedback_is_400_saying_where(service: Service) -> None:
    card = _card(service)
    uuid = card["uuid"]
    # (the items sent, the location answered, words of the problem)
    cases: list[tuple[list[dict[str, Any]], str, str]] = [
        ([], "feedback", "at least 1 item"),
        (
            [{"card": uuid, "outcome": "maybe", "outcomeTimestamp": _now()}],
            "feedback[0].outcome",
            "'accepted' or 'overridden'",
        ),
        (
            [{"card": uuid, "outcome": "accepted", "outcomeTimestamp": _now()}],
            "feedback[0]",
            "acceptedSuggestions is required",
        ),
        *(
            (
                [{"card": uuid, "outcome": "overridden", "outcomeTimestamp": when}],
                "feedback[0].outcomeTimestamp",
                "date-time with an offset",
            )
            # no offset; not text (read as Unix times, they were stored); a year alone
            for when in ("today", "2026-11-30T10:00:00", 0, 1764496800, "2026")
        ),
        (
            # before the first instant there is, in UTC (was a 503 "send it again", for ever)
            [
                {
                    "card": uuid,
                    "outcome": "overridden",
                    "outcomeTimestamp": "0001-01-01T00:00:00+14:00",
                }
            ],
            "feedback[0].outcomeTimestamp",
            "out of range",
        ),
        (
            [{"card": uuid, "outcome": "overridden", "outcomeTimestamp": "2026-11-30T24:00:00Z"}],
            "feedback[0].outcomeTimestamp",
            "not a valid date-time",
        ),
        # a NUL, which PostgreSQL cannot store (was a 503 "send it again" there, for ever)
        (
            [
                {
                    "card": uuid,
                    "outcome": "overridden",
                    "overrideReason": {"userComment": "a\u0000b"},
                    "outcomeTimestamp": _now(),
                }
            ],
            "feedback[0].overrideReason.userComment",
            "NUL",
        ),
        (
            [
                {
                    "card": uuid,
                    "outcome": "overridden",
                    "overrideReason": {"reason": {"code": "x\u0000"}},
                    "outcomeTimestamp": _now(),
                }
            ],
            "feedback[0].overrideReason.reason.code",
            "NUL",
        ),
        # counted in characters (it said "at most 4000 items")
        (
            [
                {
                    "card": uuid,
                    "outcome": "overridden",
                    "overrideReason": {"userComment": "c" * 4001},
                    "outcomeTimestamp": _now(),
                }
            ],
            "feedback[0].overrideReason.userComment",
            "at most 4000 characters",
        ),
    ]
    for items, location, problem in cases:
        response = _post(service, items)
        assert response.status_code == 400, items
        answer = response.json()
        assert answer["location"] == location, answer
        assert answer["error"].startswith(f"{location}: "), answer
        assert problem in answer["error"], answer
    assert (
        service.client.post("/cds-services/crs-monitor/feedback", content=b"{").status_code == 400
    )
    assert (
        service.client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404
    )


def test_an_outcome_later_than_its_arrival_beyond_the_clock_skew_is_400_and_nothing_is_stored(
    service: Service,
) -> None:
    card = _card(service)
    service.now = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    good = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": service.now.isoformat(),
    }
    future = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": (service.now + OUTCOME_FUTURE_LIMIT + timedelta(seconds=1)).isoformat(),
    }
    before = service.count("feedback")
    response = _post(service, [good, future])
    assert response.status_code == 400
    answer = response.json()
    assert answer["location"] == "feedback[1].outcomeTimestamp"
    assert "2026-11-30T10:00:00+00:00" in answer["error"]  # the server's time
    assert "24 hours" in answer["error"]  # the limit
    assert service.count("feedback") == before


def test_feedback_reaches_a_card_shown_by_another_replica(
    service: Service, runtime: Runtime, database_url: str, tmp_path: Path
) -> None:
    card = _card(service)
    _, other_store, other = open_service(runtime, database_url, tmp_path / "other")
    try:
        item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now()}
        response = other.post("/cds-services/crs-monitor/feedback", json={"feedback": [item]})
        assert response.status_code == 200
    finally:
        other_store.close()
    with service.engine.connect() as connection:
        assert connection.scalar(
            select(feedback.c.outcome).where(feedback.c.card_uuid == card["uuid"])
        )


def test_feedback_figures_per_service_and_grade(service: Service) -> None:
    card = _card(service)
    _post(service, [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": _now()}])
    figures = {(f.service, f.kind, f.grade): f for f in feedback_figures(service.engine)}
    crs = figures[("crs-monitor", "crs", 2)]
    assert crs.shown >= 1 and crs.overridden >= 1
    assert crs.reasons.get("(none given)", 0) >= 1


def test_feedback_figures_count_icans_cards_by_their_grade(service: Service) -> None:
    # (an ICANS card had no grade in the figures: listed under "-" with the order checks)
    from cds.scenarios import get
    from tests.factories import scenario_request

    scenario = get("icans-g2-axicel-ice5")
    anchor = datetime.now(UTC)
    body = scenario_request(scenario, anchor, None, prefetch=scenario.prefetch(anchor))
    cards = service.client.post("/cds-services/crs-monitor", json=body).json()["cards"]
    (icans,) = [c for c in cards if "icans" in c["extension"]]
    assert icans["extension"]["icans"]["grade"] == 2
    item = {"card": icans["uuid"], "outcome": "overridden", "outcomeTimestamp": _now()}
    assert _post(service, [item]).status_code == 200
    figures = {(f.service, f.kind, f.grade): f for f in feedback_figures(service.engine)}
    assert figures[("crs-monitor", "icans", 2)].overridden >= 1
    assert ("crs-monitor", "icans", None) not in figures
