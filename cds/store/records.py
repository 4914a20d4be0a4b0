"""The audit record of one hook call: built from the typed pipeline values (never from
the response's JSON), written before the answer is sent, and read back for export and
replay. No patient identifier is kept: the patient is a pseudonym, the age replaces the
birth date, and draft orders keep only what the checks read."""

from __future__ import annotations

import zlib
from datetime import date, datetime
from typing import Any

import msgspec
import zstandard
from msgspec import Struct

from cds.decision import DecidedCard, Decision
from cds.engine.facts import (
    Administration,
    Facts,
    Measurement,
    NeuroFinding,
    OxygenSupport,
    UndatedFinding,
    UnreadExposure,
)
from cds.evaluation import Evaluation
from cds.fhir.orders import DraftOrders
from cds.protocol import Card, to_json


class OrderSnapshot(Struct, frozen=True):
    """A checked draft tocilizumab order, as far as the checks read it."""

    reference: str
    dose_value: float | None
    dose_unit: str | None


class FactsSnapshot(Struct, frozen=True):
    """What was evaluated: the facts (without the birth date: the age at the evaluation
    time), and for order hooks the orders checked and those that could not be read."""

    measurements: tuple[Measurement, ...]
    oxygen: tuple[OxygenSupport, ...]
    administrations: tuple[Administration, ...]
    neuro: tuple[NeuroFinding, ...] = ()
    age_years: int | None = None
    orders: tuple[OrderSnapshot, ...] | None = None
    unchecked_orders: int = 0
    data_issues: int = 0
    truncated: int = 0
    unread_exposures: tuple[UnreadExposure, ...] = ()
    unread_doses: tuple[UnreadExposure, ...] = ()
    undated: tuple[UndatedFinding, ...] = ()

    def facts(self, at: datetime) -> Facts:
        """The facts again, with a birth date that gives the same age at `at`."""
        born = None
        if self.age_years is not None:
            day = min(at.day, 28) if at.month == 2 else at.day
            born = date(at.year - self.age_years, at.month, day)
        return Facts.build(
            list(self.measurements),
            list(self.oxygen),
            list(self.administrations),
            born,
            list(self.neuro),
            list(self.undated),
        )


class CardRecord(Struct, frozen=True, omit_defaults=True):
    """A card as the audit keeps it: what it said and offered, not its Markdown."""

    uuid: str
    kind: str
    indicator: str
    summary: str
    extension: Any
    grade: int | None = None
    alertGrade: int | None = None
    acknowledged: bool = False
    exposure: str | None = None
    suggestions: tuple[str, ...] = ()
    overrideReasons: tuple[str, ...] = ()


class AuditRecord(Struct, frozen=True):
    """One hook call."""

    id: str
    recorded_at: datetime
    service: str
    hook: str
    hook_instance: str
    client_iss: str | None
    client_sub: str | None
    tenant: str | None
    patient: str
    evaluated_at: datetime
    rule_set_version: str
    rule_set_digest: str
    input_digest: str
    data_issues: int
    data_complete: bool
    cards: tuple[CardRecord, ...]
    facts: bytes  # zlib-compressed JSON of a FactsSnapshot
    latency_ms: float


_FACTS = msgspec.json.Encoder()
_FACTS_DECODER = msgspec.json.Decoder(FactsSnapshot)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# zstd level 1: a chart's facts (~100 KiB of JSON) in ~0.1 ms to ~17 KiB (zlib: 0.6 ms)
_COMPRESS = zstandard.ZstdCompressor(level=1)
_DECOMPRESS = zstandard.ZstdDecompressor()


def encode_facts(snapshot: FactsSnapshot) -> bytes:
    """The snapshot as zstd-compressed JSON."""
    return _COMPRESS.compress(_FACTS.encode(snapshot))


def facts_json(blob: bytes) -> bytes:
    """A stored snapshot's JSON (zstd; the first records of 2026-11 were zlib)."""
    return _DECOMPRESS.decompress(blob) if blob[:4] == _ZSTD_MAGIC else zlib.decompress(blob)


def decode_facts(blob: bytes) -> FactsSnapshot:
    """A stored snapshot."""
    return _FACTS_DECODER.decode(facts_json(blob))


def snapshot(evaluation: Evaluation) -> FactsSnapshot:
    """What a replay needs of an evaluation."""
    facts = evaluation.facts
    orders = evaluation.orders
    return FactsSnapshot(
        measurements=facts.measurements,
        oxygen=facts.oxygen,
        administrations=facts.administrations,
        undated=facts.undated,
        neuro=facts.neuro,
        age_years=evaluation.age,
        orders=_orders(orders) if orders is not None else None,
        unchecked_orders=len(orders.unchecked) if orders is not None else 0,
        data_issues=len(evaluation.issues) + (len(orders.issues) if orders is not None else 0),
        truncated=len(evaluation.truncated),
        unread_exposures=evaluation.unread_exposures,
        unread_doses=evaluation.unread_doses,
    )


def _orders(orders: DraftOrders) -> tuple[OrderSnapshot, ...]:
    found = []
    for draft in orders.tocilizumab:
        quantity = next(
            (
                dr.doseQuantity
                for instruction in draft.order.dosageInstruction
                for dr in instruction.doseAndRate
                if dr.doseQuantity is not None
            ),
            None,
        )
        found.append(
            OrderSnapshot(
                draft.reference,
                quantity.value if quantity is not None else None,
                (quantity.code or quantity.unit) if quantity is not None else None,
            )
        )
    return tuple(found)


def card_record(decided: DecidedCard) -> CardRecord:
    card: Card = decided.card
    return CardRecord(
        uuid=card.uuid,
        kind=decided.kind,
        indicator=card.indicator,
        summary=card.summary,
        extension=to_json(card.extension) if card.extension is not None else {},
        grade=decided.grade,
        alertGrade=decided.alert_grade,
        acknowledged=decided.acknowledged,
        exposure=decided.exposure,
        suggestions=tuple(s.uuid for s in card.suggestions),
        overrideReasons=tuple(r.code for r in card.overrideReasons),
    )


def card_json(card: CardRecord) -> Any:
    return msgspec.to_builtins(card)


def build(
    *,
    record_id: str,
    recorded_at: datetime,
    service: str,
    hook: str,
    hook_instance: str,
    client_iss: str | None,
    client_sub: str | None,
    tenant: str | None,
    patient: str,
    evaluation: Evaluation,
    decision: Decision,
    rule_set_version: str,
    rule_set_digest: str,
    input_digest: str,
    facts: bytes | None,
    latency_ms: float,
) -> AuditRecord:
    """The record of one call (`facts`: encoded already, else encoded here, which is
    slow: call it off the event loop)."""
    orders = evaluation.orders
    issues = len(evaluation.issues) + (len(orders.issues) if orders is not None else 0)
    return AuditRecord(
        id=record_id,
        recorded_at=recorded_at,
        service=service,
        hook=hook,
        hook_instance=hook_instance,
        client_iss=client_iss,
        client_sub=client_sub,
        tenant=tenant,
        patient=patient,
        evaluated_at=evaluation.at,
        rule_set_version=rule_set_version,
        rule_set_digest=rule_set_digest,
        input_digest=input_digest,
        data_issues=issues,
        data_complete=evaluation.data_complete,
        cards=tuple(card_record(c) for c in decision.cards),
        facts=facts if facts is not None else encode_facts(snapshot(evaluation)),
        latency_ms=latency_ms,
    )
