"""What `crs-cds watch status` and `GET /watch/patients/{pseudonym}` show: the census with
each patient's state, the last notifications with their deliveries, the workers and the
subscriptions. Patients by pseudonym only; webhook targets by scheme and host only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from cds.store.tables import (
    watch_deliveries,
    watch_history,
    watch_notifications,
    watch_patients,
    watch_subscriptions,
    watch_workers,
)
from cds.watch.config import target_label


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _patient(row: Any) -> dict[str, Any]:
    return {
        "patient": row.patient,
        "active": row.active,
        "source": row.source,
        "enrolledAt": _iso(row.enrolled_at),
        "leftAt": _iso(row.left_at),
        "evaluatedAt": _iso(row.evaluated_at),
        "grade": row.grade,
        "maxGrade": row.max_grade,
        "possibleGrade": row.possible_grade,
        "exposure": (
            {"product": row.product, "kind": row.kind, "at": _iso(row.exposure_at)}
            if row.exposure
            else None
        ),
        "watchUntil": _iso(row.watch_until),
        # the last temperature, systolic pressure and oxygen of the latest evaluation
        "lastReadings": row.readings or {},
        "nextPollAt": _iso(row.next_poll_at),
        "worker": row.lease_owner,
        "ruleSetVersion": row.rule_set_version,
        "failures": row.failures,
        "lastError": row.last_error,
    }


def _notifications(engine: Engine, where: Any, limit: int) -> list[dict[str, Any]]:
    n, d = watch_notifications.c, watch_deliveries.c
    with engine.connect() as connection:
        notes = connection.execute(
            select(watch_notifications).where(where).order_by(n.created_at.desc()).limit(limit)
        ).all()
        ids = [row.id for row in notes]
        deliveries: dict[str, list[dict[str, Any]]] = {}
        for row in connection.execute(select(watch_deliveries).where(d.notification_id.in_(ids))):
            deliveries.setdefault(row.notification_id, []).append(
                {
                    "target": target_label(row.target),
                    "status": row.status,
                    "attempts": row.attempts,
                    "nextAttemptAt": _iso(row.next_attempt_at) if row.status == "pending" else None,
                    "lastError": row.last_error,
                    "deliveredAt": _iso(row.delivered_at),
                }
            )
    return [
        {
            "id": row.id,
            "event": row.event,
            "patient": row.patient,
            "at": _iso(row.at),
            "createdAt": _iso(row.created_at),
            "grade": row.grade,
            "maxGrade": row.max_grade,
            "possibleGrade": row.possible_grade,
            "deliveries": deliveries.get(row.id, []),
        }
        for row in notes
    ]


def status(
    engine: Engine, *, notifications: int = 20, include_left: bool = False
) -> dict[str, Any]:
    """The whole watch, as JSON-ready data."""
    p, d, s = watch_patients.c, watch_deliveries.c, watch_subscriptions.c
    with engine.connect() as connection:
        query = select(watch_patients).order_by(p.active.desc(), p.grade.desc(), p.patient)
        if not include_left:
            query = query.where(p.active.is_(True))
        census = [_patient(row) for row in connection.execute(query)]
        counts = {
            row.status: int(row.n)
            for row in connection.execute(
                select(d.status, func.count().label("n")).group_by(d.status)
            )
        }
        workers = [
            {
                "id": row.id,
                "host": row.host,
                "pid": row.pid,
                "startedAt": _iso(row.started_at),
                "beatAt": _iso(row.beat_at),
            }
            for row in connection.execute(select(watch_workers).order_by(watch_workers.c.id))
        ]
        subscriptions = [
            {
                "id": row.id,
                "subscriptionId": row.subscription_id,
                "topic": row.topic,
                "content": row.content,
                "status": row.status,
                "lastEvent": row.last_event,
                "lastReceivedAt": _iso(row.last_received_at),
                "catchUpSince": _iso(row.catch_up_since),
            }
            for row in connection.execute(select(watch_subscriptions).order_by(s.created_at))
        ]
    return {
        "census": census,
        "notifications": _notifications(
            engine, watch_notifications.c.id.is_not(None), notifications
        ),
        "deliveries": {k: counts.get(k, 0) for k in ("pending", "delivered", "failed")},
        "workers": workers,
        "subscriptions": subscriptions,
    }


def patient_status(engine: Engine, pseudonym: str, history: int = 50) -> dict[str, Any] | None:
    """One census patient: state, history (newest first) and notifications; None if unknown."""
    if "\x00" in pseudonym:
        return None  # (no pseudonym holds a NUL, and PostgreSQL refuses to compare one)
    p, h = watch_patients.c, watch_history.c
    with engine.connect() as connection:
        row = connection.execute(select(watch_patients).where(p.patient == pseudonym)).first()
        if row is None:
            return None
        rows = connection.execute(
            select(watch_history)
            .where(h.patient == pseudonym)
            .order_by(h.evaluated_at.desc(), h.id.desc())
            .limit(history)
        ).all()
    return {
        **_patient(row),
        "history": [
            {
                "evaluatedAt": _iso(r.evaluated_at),
                "grade": r.grade,
                "maxGrade": r.max_grade,
                "possibleGrade": r.possible_grade,
                "exposure": (
                    {"product": r.product, "kind": r.kind, "at": _iso(r.exposure_at)}
                    if r.exposure
                    else None
                ),
                "ruleSetVersion": r.rule_set_version,
                "trigger": r.trigger,
            }
            for r in rows
        ],
        "notifications": _notifications(
            engine, watch_notifications.c.patient == pseudonym, history
        ),
    }
