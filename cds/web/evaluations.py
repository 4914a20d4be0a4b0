"""Stored evaluations, read back for the pictures: a card (by its uuid) or a record (by
its id) leads to the audit record of its call, whose facts are decoded and judged again
with the rules in force. No FHIR server is asked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from cds.store.records import FactsSnapshot, decode_facts
from cds.store.tables import audit_records, cards


@dataclass(frozen=True)
class StoredEvaluation:
    """One recorded call: what was evaluated, when, for whom (a pseudonym), and with
    which rules; `card` is the card that linked to it, if any."""

    record_id: str
    patient: str
    evaluated_at: datetime
    rule_set_version: str
    snapshot: FactsSnapshot
    cards: list[dict[str, Any]]
    card_uuid: str | None = None

    def crs_card(self) -> dict[str, Any] | None:
        """The CRS card of the call, as the audit keeps it."""
        return next((c for c in self.cards if c.get("kind") == "crs"), None)


_COLUMNS = (
    audit_records.c.id,
    audit_records.c.patient,
    audit_records.c.evaluated_at,
    audit_records.c.rule_set_version,
    audit_records.c.facts,
    audit_records.c.cards,
)


def by_record(
    engine: Engine, record_id: str, card_uuid: str | None = None
) -> StoredEvaluation | None:
    """The stored evaluation of a record id, or None."""
    if "\x00" in record_id:
        return None  # (no stored id holds a NUL, and PostgreSQL refuses to compare one)
    with engine.connect() as connection:
        row = connection.execute(select(*_COLUMNS).where(audit_records.c.id == record_id)).first()
    if row is None:
        return None
    return StoredEvaluation(
        record_id=row.id,
        patient=row.patient,
        evaluated_at=row.evaluated_at,
        rule_set_version=row.rule_set_version,
        snapshot=decode_facts(row.facts),
        cards=list(row.cards),
        card_uuid=card_uuid,
    )


def by_card(engine: Engine, card_uuid: str) -> StoredEvaluation | None:
    """The stored evaluation whose call showed this card, or None."""
    if "\x00" in card_uuid:
        return None
    with engine.connect() as connection:
        record_id = connection.scalar(select(cards.c.record_id).where(cards.c.uuid == card_uuid))
    if record_id is None:
        return None
    return by_record(engine, record_id, card_uuid)
