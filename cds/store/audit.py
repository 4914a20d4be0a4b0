"""Reading the audit trail: export, replay with the rules in force, the feedback figures
a CDS committee asks for, and pruning past the retention period."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Engine, and_, delete, func, select

from cds.decision import Decision
from cds.evaluation import Evaluation, judge
from cds.fhir import models
from cds.fhir.orders import DraftOrder, DraftOrders
from cds.fhir.reading import RawResource
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.services import registry
from cds.store.records import FactsSnapshot, decode_facts
from cds.store.tables import audit_records, cards, feedback


def export(
    engine: Engine,
    since: datetime | None = None,
    until: datetime | None = None,
    service: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The records (oldest first) as JSON objects, without the encoded facts."""
    conditions = []
    if since is not None:
        conditions.append(audit_records.c.recorded_at >= since)
    if until is not None:
        conditions.append(audit_records.c.recorded_at < until)
    if service is not None:
        conditions.append(audit_records.c.service == service)
    columns = [c for c in audit_records.c if c.name != "facts"]
    query = select(*columns).where(and_(*conditions)).order_by(audit_records.c.recorded_at)
    with engine.connect() as connection:
        for row in connection.execute(query):
            yield {
                str(key): value.isoformat() if isinstance(value, datetime) else value
                for key, value in row._asdict().items()
            }


@dataclass(frozen=True)
class Replay:
    """A stored decision evaluated again with the rules in force now."""

    hook_instance: str
    service: str
    evaluated_at: datetime
    recorded_rules: str
    current_rules: str
    recorded: list[dict[str, Any]]
    replayed: list[dict[str, Any]]

    @property
    def same(self) -> bool:
        return self.recorded == self.replayed


# What a replay compares of each card: what it decided, not its wording or ids.
COMPARED = ("kind", "indicator", "grade", "alertGrade")
COMPARED_CRS = ("grade", "maxGrade", "possibleGrade", "dataComplete")
COMPARED_CHECK = ("problems", "recommendedDoseMg", "orderedDoseMg")


def _essence(card: dict[str, Any]) -> dict[str, Any]:
    out = {key: card.get(key) for key in COMPARED}
    extension = card.get("extension") or {}
    crs = extension.get("crs") or {}
    if crs:
        out["crs"] = {key: crs.get(key) for key in COMPARED_CRS}
        toci = crs.get("tocilizumab") or {}
        out["tocilizumab"] = {
            key: toci.get(key) for key in ("problems", "recommendedDoseMg") if key in toci
        }
    icans = extension.get("icans") or {}
    if icans:
        out["icans"] = {key: icans.get(key) for key in ("grade", "maxGrade")}
    check = extension.get("tocilizumabCheck") or {}
    if check:
        out["tocilizumabCheck"] = {key: check.get(key) for key in COMPARED_CHECK}
    return out


def replay(engine: Engine, runtime: Runtime, hook_instance: str) -> list[Replay]:
    """Every record of a hook instance, evaluated again from its stored facts."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(audit_records).where(audit_records.c.hook_instance == hook_instance)
        ).all()
    services = registry(runtime)
    found = []
    for row in rows:
        snapshot = decode_facts(row.facts)
        evaluation = _evaluation(runtime, snapshot, row.evaluated_at)
        service = services[row.service]
        decision: Decision = service.decide(runtime, evaluation, new_uuid)
        replayed = [
            _essence(
                {
                    "kind": c.kind,
                    "indicator": c.card.indicator,
                    "grade": c.grade,
                    "alertGrade": c.alert_grade,
                    "extension": msgspec.json.decode(msgspec.json.encode(c.card.extension)),
                }
            )
            for c in decision.cards
        ]
        recorded = [_essence(c) for c in row.cards]
        for i, card in enumerate(row.cards):
            # an acknowledged card was shown as info: compare what was decided, not how
            if card.get("acknowledged"):
                recorded[i].pop("indicator", None)
                if i < len(replayed):
                    replayed[i].pop("indicator", None)
        found.append(
            Replay(
                hook_instance,
                row.service,
                row.evaluated_at,
                row.rule_set_version,
                runtime.rules.version,
                recorded,
                replayed,
            )
        )
    return found


def _evaluation(runtime: Runtime, snapshot: FactsSnapshot, at: datetime) -> Evaluation:
    """The engine run again on stored facts (no FHIR: the facts are the input)."""
    orders = None
    if snapshot.orders is not None:
        orders = DraftOrders(tocilizumab=tuple(_order(o) for o in snapshot.orders))
    return judge(
        runtime,
        snapshot.facts(at),
        at,
        patient_id="replay",
        orders=orders,
        unread_exposures=snapshot.unread_exposures,
        unread_doses=snapshot.unread_doses,
    )


def _order(snapshot: Any) -> DraftOrder:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": snapshot.reference.rsplit("/", 1)[-1],
        "status": "draft",
        "intent": "order",
        "dosageInstruction": [
            {
                "doseAndRate": [
                    {"doseQuantity": {"value": snapshot.dose_value, "code": snapshot.dose_unit}}
                ]
            }
        ]
        if snapshot.dose_value is not None
        else [],
    }
    raw = RawResource.of("replay", resource)
    return DraftOrder(raw, models.MedicationRequest.model_validate(resource))


@dataclass(frozen=True)
class FeedbackFigures:
    """Per service, kind of card (crs, icans, order check…) and the grade it alerted at:
    cards shown, accepted, overridden, and why overridden."""

    service: str
    kind: str
    grade: int | None
    shown: int
    accepted: int
    overridden: int
    reasons: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "kind": self.kind,
            "grade": self.grade,
            "shown": self.shown,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "overrideReasons": self.reasons,
        }


def feedback_figures(engine: Engine, since: datetime | None = None) -> list[FeedbackFigures]:
    """The alert-burden figures: every card shown since `since`, and what was done."""
    shown_query = select(cards.c.service, cards.c.kind, cards.c.alert_grade, func.count()).group_by(
        cards.c.service, cards.c.kind, cards.c.alert_grade
    )
    acted_query = select(
        cards.c.service,
        cards.c.kind,
        cards.c.alert_grade,
        feedback.c.outcome,
        feedback.c.override_code,
    ).join(feedback, feedback.c.card_uuid == cards.c.uuid)
    if since is not None:
        shown_query = shown_query.where(cards.c.shown_at >= since)
        acted_query = acted_query.where(cards.c.shown_at >= since)
    Key = tuple[str, str, int | None]
    with engine.connect() as connection:
        shown_rows: list[Any] = list(connection.execute(shown_query))
        shown: dict[Key, int] = {(s, k, g): n for s, k, g, n in shown_rows}
        outcomes: dict[Key, Counter[str]] = defaultdict(Counter)
        reasons: dict[Key, Counter[str]] = defaultdict(Counter)
        acted_rows: list[Any] = list(connection.execute(acted_query))
        for service, kind, grade_, outcome, code in acted_rows:
            outcomes[(service, kind, grade_)][outcome] += 1
            if outcome == "overridden":
                reasons[(service, kind, grade_)][code or "(none given)"] += 1
    return [
        FeedbackFigures(
            *key,
            n,
            outcomes[key]["accepted"],
            outcomes[key]["overridden"],
            dict(reasons[key]),
        )
        for key, n in sorted(shown.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or -1))
    ]


def prune(engine: Engine, now: datetime, retention_days: int) -> int:
    """Delete records older than the retention period (their cards and feedback with them)."""
    cutoff = now - timedelta(days=retention_days)
    with engine.begin() as connection:
        old = select(audit_records.c.id).where(audit_records.c.recorded_at < cutoff)
        card_ids = select(cards.c.uuid).where(cards.c.record_id.in_(old))
        connection.execute(delete(feedback).where(feedback.c.card_uuid.in_(card_ids)))
        connection.execute(delete(cards).where(cards.c.record_id.in_(old)))
        result = connection.execute(
            delete(audit_records).where(audit_records.c.recorded_at < cutoff)
        )
        return result.rowcount or 0
