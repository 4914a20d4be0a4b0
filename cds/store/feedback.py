"""CDS Hooks 2.0 feedback: what a clinician did with a card, checked against what the card
offered, stored with the card's record, and turned into an acknowledgement of a CRS
exposure (alert suppression). All items of a call are checked before any is stored."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from sqlalchemy import Connection, Engine, insert, select, update

from cds.auth import ClientIdentity
from cds.errors import CdsError, InvalidRequest
from cds.store.tables import acknowledgements, cards, feedback

# How far an outcomeTimestamp may lie after the feedback reached the service. An outcome
# ahead of the arrival is taken as acted on at the arrival (the EHR's clock may be ahead of
# this server's: its feedback is kept, not refused — a refused batch is lost), so it can
# neither stretch the quiet period nor outrank later feedback. A day ahead or more is no
# clock skew but a wrong date: refused (400). An operational limit, not a clinical one.
OUTCOME_FUTURE_LIMIT = timedelta(hours=24)


class UnknownCard(CdsError):
    """Feedback about a card this service never issued (404)."""

    status = 404


# An outcomeTimestamp as CDS Hooks and FHIR write an instant: date, time and offset.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})")


def _instant(value: object) -> object:
    """An RFC 3339 date-time with its offset (not a number, not a date alone), left for
    the datetime type to read."""
    text = value.upper() if isinstance(value, str) else None  # RFC 3339 allows t and z
    if text is None or not _INSTANT.fullmatch(text):
        raise ValueError("must be a date-time with an offset, e.g. 2026-11-30T10:02:11Z")
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):  # 24:00; before year 1 in UTC
        raise ValueError(f"{value!r} is not a valid date-time, or out of range") from None
    return text


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


# Text that is stored (PostgreSQL text never holds a NUL).
Text = Annotated[str, AfterValidator(_no_nul)]
Instant = Annotated[AwareDatetime, BeforeValidator(_instant)]


class _In(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ReasonCoding(_In):
    system: Text | None = None
    code: Text = Field(min_length=1, max_length=256)
    display: Text | None = None  # the CDS Hooks Sandbox sends none


class OverrideReason(_In):
    reason: ReasonCoding | None = None
    # (bounded before the NUL check, so the error counts characters, not "items")
    userComment: (
        Annotated[str, StringConstraints(max_length=4_000), AfterValidator(_no_nul)] | None
    ) = None


class AcceptedSuggestion(_In):
    id: Text = Field(min_length=1, max_length=128)


class FeedbackItem(_In):
    card: Text = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(default=None, max_length=20)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: Instant

    @model_validator(mode="after")
    def _accepted_names_its_suggestions(self) -> FeedbackItem:
        if self.outcome == "accepted" and self.acceptedSuggestions is None:
            raise ValueError("acceptedSuggestions is required when the outcome is accepted")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("an overridden card has no accepted suggestions")
        return self


class FeedbackRequest(_In):
    """The body of POST /cds-services/{id}/feedback."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


@dataclass(frozen=True)
class Stored:
    """What a feedback call stored: new items, repeats, and reasons the card did not offer."""

    stored: int
    repeated: int
    reasons_not_offered: int


def apply(
    engine: Engine,
    service_id: str,
    request: FeedbackRequest,
    received_at: datetime,
    new_id: Any,
    client: ClientIdentity | None,
    override_system: str,
) -> Stored:
    """Check every item against its card, then store them all (one transaction)."""
    _refuse_future_outcomes(request, received_at)
    with engine.begin() as connection:
        issued = _cards(connection, [item.card for item in request.feedback])
        for i, item in enumerate(request.feedback):
            card = issued.get(item.card)
            if card is None or card["service"] != service_id:
                raise UnknownCard(
                    f"card {item.card!r} was not issued by service {service_id}",
                    f"feedback[{i}].card",
                )
            offered = set(card["suggestions"])
            for j, suggestion in enumerate(item.acceptedSuggestions or []):
                if suggestion.id not in offered:
                    raise InvalidRequest(
                        f"suggestion {suggestion.id!r} was not offered by card {item.card!r}",
                        f"feedback[{i}].acceptedSuggestions[{j}].id",
                    )
        stored = repeated = not_offered = 0
        for item in request.feedback:
            card = issued[item.card]
            reason = item.overrideReason.reason if item.overrideReason else None
            offered_reason = (
                None
                if reason is None
                else reason.code in card["override_reasons"]
                and reason.system in (None, override_system)
            )
            fingerprint = _fingerprint(item)
            exists = connection.scalar(
                select(feedback.c.id).where(feedback.c.fingerprint == fingerprint)
            )
            if exists is not None:
                repeated += 1
                continue
            connection.execute(
                insert(feedback).values(
                    id=new_id(),
                    card_uuid=item.card,
                    fingerprint=fingerprint,
                    outcome=item.outcome,
                    accepted_suggestions=[s.id for s in item.acceptedSuggestions or []],
                    override_system=reason.system if reason else None,
                    override_code=reason.code if reason else None,
                    override_display=reason.display if reason else None,
                    override_offered=offered_reason,
                    user_comment=item.overrideReason.userComment if item.overrideReason else None,
                    outcome_at=item.outcomeTimestamp,
                    received_at=received_at,
                    client_iss=client.iss if client else None,
                )
            )
            stored += 1
            not_offered += offered_reason is False
            if card["kind"] == "crs" and card["exposure"] and card["alert_grade"] is not None:
                _acknowledge(connection, card, item, received_at)
        return Stored(stored, repeated, not_offered)


def _refuse_future_outcomes(request: FeedbackRequest, received_at: datetime) -> None:
    """InvalidRequest for an outcome dated later than its arrival plus OUTCOME_FUTURE_LIMIT."""
    latest = received_at + OUTCOME_FUTURE_LIMIT
    for i, item in enumerate(request.feedback):
        if item.outcomeTimestamp > latest:
            raise InvalidRequest(
                f"outcomeTimestamp {item.outcomeTimestamp.isoformat()} is in the future: the "
                f"feedback was received at {received_at.isoformat()} (server time), and an "
                f"outcome may be dated at most {OUTCOME_FUTURE_LIMIT.total_seconds() / 3600:g} "
                "hours later (clock skew between client and server)",
                f"feedback[{i}].outcomeTimestamp",
            )


def _cards(connection: Connection, uuids: list[str]) -> dict[str, dict[str, Any]]:
    rows = connection.execute(select(cards).where(cards.c.uuid.in_(sorted(set(uuids)))))
    return {row.uuid: dict(row._mapping) for row in rows}


# The fields that make two feedback items the same: extra members a client adds (allowed,
# and of any size or nesting) take no part, so a fingerprint is small and never deep.
_COMPARED: dict[str, Any] = {
    "card": True,
    "outcome": True,
    "acceptedSuggestions": {"__all__": {"id"}},
    "overrideReason": {"reason": {"system", "code", "display"}, "userComment": True},
    "outcomeTimestamp": True,
}


def _fingerprint(item: FeedbackItem) -> str:
    """Identical feedback (same card, outcome, suggestions, reason, time) is one."""
    compared = item.model_dump(mode="json", include=_COMPARED)
    canonical = json.dumps(compared, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _acknowledge(
    connection: Connection, card: dict[str, Any], item: FeedbackItem, received_at: datetime
) -> None:
    """The most recent acknowledgement of this patient's exposure wins, whole: its grade is
    the one later cards are compared with (a grade acknowledged earlier never quiets a
    card the clinician has since seen at a lower grade). Feedback arriving out of order
    (older than the one stored) changes nothing."""
    # Acted on when the feedback arrived, at the latest: an outcomeTimestamp ahead of this
    # server's clock (within OUTCOME_FUTURE_LIMIT) would otherwise not quiet the chart opened
    # right after it, as a card is quiet only from `acted_at` on; nor may it stretch the
    # quiet period, or outrank the feedback that follows. The feedback row keeps the time
    # as sent.
    acted_at = min(item.outcomeTimestamp, received_at)
    key = (card["patient"], card["exposure"])
    current = connection.execute(
        select(acknowledgements).where(
            acknowledgements.c.patient == key[0], acknowledgements.c.exposure == key[1]
        )
    ).first()
    values = {
        "grade": card["alert_grade"],
        "outcome": item.outcome,
        "acted_at": acted_at,
        "card_uuid": card["uuid"],
    }
    if current is None:
        connection.execute(
            insert(acknowledgements).values(patient=key[0], exposure=key[1], **values)
        )
    elif acted_at >= current.acted_at:
        connection.execute(
            update(acknowledgements)
            .where(acknowledgements.c.patient == key[0], acknowledgements.c.exposure == key[1])
            .values(**values)
        )
