"""Notifications out: the webhook payload, its delivery with retries and backoff, and the
optional FHIR write-back (a Communication or a Flag on CRS_WATCH_FHIR_SERVER).

Each notification has one delivery row per target, claimed by one worker at a time
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), retried with exponential backoff until
CRS_WATCH_WEBHOOK_ATTEMPTS attempts, then `failed` (shown by `crs-cds watch status`).
Every POST carries the notification id as `Idempotency-Key` (the same id for the same
change, however often it is sent: a worker that died after sending and before recording
it makes the next one send it again), and with CRS_WATCH_WEBHOOK_SECRET an
`X-CRS-Signature: sha256=<HMAC of the body>`. The payload names the patient by pseudonym
only, unless CRS_WATCH_PATIENT_DETAILS adds the FHIR id (added when sending; the store
keeps the payload without it).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, select, tuple_, update

from cds.fhir.client import FHIR_JSON
from cds.store.tables import watch_deliveries, watch_notifications, watch_patients
from cds.watch.changes import Change, WatchEvent
from cds.watch.config import WatchConfig
from cds.watch.ids import PatientIds, SealedIdUnreadable
from cds.watch.smart import Credentials, TokenRefused

log = logging.getLogger("cds.watch.delivery")

BACKOFF_FIRST_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 900.0
SEND_TIMEOUT_SECONDS = 10.0
NOTIFICATION_SYSTEM = "urn:crs-cds:watch-notification"
EVENT_TEXT = {
    WatchEvent.ESCALATION: "CRS grade higher than notified before",
    WatchEvent.POSSIBLE: "possible CRS (fever possibly masked by premedication)",
    WatchEvent.IF_FEBRILE: "CRS findings without a current temperature",
    WatchEvent.FIRST_FEVER: "first CRS fever",
    WatchEvent.DATA_GAP: "no temperature charted for too long inside a CRS risk window",
}


def payload(change: Change, config: WatchConfig) -> dict[str, Any]:
    """The webhook payload of a change, as stored (the patient by pseudonym)."""
    state, exposure = change.state, change.exposure
    return {
        "event": change.event.value,
        "id": change.id,
        "at": state.at.isoformat(),
        "patient": {"pseudonym": change.patient},
        "grade": state.grade,
        "maxGrade": state.max_grade,
        "possibleGrade": state.possible_grade,
        "gradeIfFebrile": state.grade_if_febrile,
        "exposure": {
            "product": exposure.product,
            "kind": exposure.kind,
            "at": exposure.at.isoformat(),
        },
        "ruleSetVersion": state.rule_set_version,
        "link": (
            f"{config.public_base_url}/watch/patients/{change.patient}"
            if config.public_base_url
            else None
        ),
    }


def backoff(attempts: int) -> timedelta:
    """The wait after the `attempts`-th failed attempt: 2 s, 4 s, 8 s … at most 15 min."""
    return timedelta(
        seconds=min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, attempts - 1))
    )


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed for sending: the notification and where it goes."""

    notification_id: str
    target: str
    attempts: int
    payload: dict[str, Any]
    patient_ref: bytes | None  # the sealed FHIR id (None: the patient left the store)


class Deliveries:
    """The delivery rows: claimed, sent, recorded."""

    def __init__(self, engine: Engine, config: WatchConfig, ids: PatientIds) -> None:
        self.engine = engine
        self.config = config
        self.ids = ids

    def claim(self, now: datetime, lease: timedelta, limit: int) -> list[DueDelivery]:
        """Lease due deliveries (pending, their next attempt due) for sending."""
        d = watch_deliveries.c
        due = (
            select(d.notification_id, d.target)
            .where(d.status == "pending", d.next_attempt_at <= now)
            .order_by(d.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.engine.begin() as connection:
            rows = connection.execute(
                update(watch_deliveries)
                .where(tuple_(d.notification_id, d.target).in_(due))
                .values(next_attempt_at=now + lease)
                .returning(d.notification_id, d.target, d.attempts)
            ).all()
            if not rows:
                return []
            n, p = watch_notifications.c, watch_patients.c
            ids = {r.notification_id for r in rows}
            notes = {
                r.id: r
                for r in connection.execute(
                    select(n.id, n.payload, p.patient_ref)
                    .select_from(
                        watch_notifications.outerjoin(watch_patients, n.patient == p.patient)
                    )
                    .where(n.id.in_(ids))
                )
            }
        return [
            DueDelivery(
                r.notification_id,
                r.target,
                r.attempts,
                dict(notes[r.notification_id].payload),
                notes[r.notification_id].patient_ref,
            )
            for r in rows
        ]

    def record(self, due: DueDelivery, error: str | None, now: datetime) -> str:
        """Delivered, or failed once more (retried after the backoff, `failed` at last);
        the outcome: delivered, retry or failed."""
        d = watch_deliveries.c
        attempts = due.attempts + 1
        if error is None:
            values: dict[str, Any] = {
                "status": "delivered",
                "attempts": attempts,
                "delivered_at": now,
                "last_error": None,
            }
        else:
            give_up = attempts >= self.config.webhook_attempts
            values = {
                "status": "failed" if give_up else "pending",
                "attempts": attempts,
                "last_error": error[:300],
                "next_attempt_at": now + backoff(attempts),
            }
        with self.engine.begin() as connection:
            connection.execute(
                update(watch_deliveries)
                .where(d.notification_id == due.notification_id, d.target == due.target)
                .values(**values)
            )
        return "retry" if values["status"] == "pending" else str(values["status"])

    def retry_failed(self, now: datetime) -> int:
        """Failed deliveries pending again (after fixing a receiver); how many."""
        d = watch_deliveries.c
        with self.engine.begin() as connection:
            result = connection.execute(
                update(watch_deliveries)
                .where(d.status == "failed")
                .values(status="pending", attempts=0, next_attempt_at=now)
            )
            return result.rowcount or 0


class Sender:
    """Sends a claimed delivery: POST to a webhook, or PUT the write-back resource."""

    def __init__(
        self,
        config: WatchConfig,
        ids: PatientIds,
        webhook_http: Callable[[], httpx.AsyncClient],
        fhir_http: Callable[[], httpx.AsyncClient],
        describe: Callable[[str], str],
        credentials: Credentials,
    ) -> None:
        self.config = config
        self.ids = ids
        self.webhook_http = webhook_http
        self.fhir_http = fhir_http
        self.describe = describe  # product concept -> its display name
        self.credentials = credentials

    def _patient_id(self, due: DueDelivery) -> str | None:
        if due.patient_ref is None:
            return None
        try:
            return self.ids.open(due.patient_ref)
        except SealedIdUnreadable:
            return None

    def body(self, due: DueDelivery) -> dict[str, Any]:
        """The payload as sent: the patient with the details configured."""
        sent = dict(due.payload)
        patient: dict[str, Any] = {}
        if "pseudonym" in self.config.patient_details:
            patient["pseudonym"] = due.payload["patient"]["pseudonym"]
        if "id" in self.config.patient_details:
            patient["id"] = self._patient_id(due)
        sent["patient"] = patient
        return sent

    async def send(self, due: DueDelivery, now: datetime) -> str | None:
        """None when delivered, else why not (a status or an error type: no URL, no body)."""
        if due.target.startswith("fhir:"):
            return await self._write_back(due, due.target.removeprefix("fhir:"), now)
        content = orjson.dumps(self.body(due))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": due.notification_id,
            "X-CRS-Event": str(due.payload.get("event")),
        }
        if self.config.webhook_secret:
            digest = hmac.new(self.config.webhook_secret.encode(), content, hashlib.sha256)
            headers["X-CRS-Signature"] = f"sha256={digest.hexdigest()}"
        try:
            response = await self.webhook_http().post(
                due.target, content=content, headers=headers, timeout=SEND_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _write_back(self, due: DueDelivery, kind: str, now: datetime) -> str | None:
        patient_id = self._patient_id(due)
        if patient_id is None:
            return "the patient's id is not readable (left the store, or another id key)"
        resource = writeback_resource(
            kind, due.payload, patient_id, now, self.config.writeback_recipient, self.describe
        )
        url = f"{self.config.server}/{resource['resourceType']}/{resource['id']}"
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        try:
            token = await self.credentials.bearer()
        except TokenRefused as exc:
            return exc.reason
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await self.fhir_http().put(
                url, content=orjson.dumps(resource), headers=headers, timeout=SEND_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        if response.status_code in (200, 201):
            return None
        if response.status_code == 401:
            self.credentials.expire()  # a SMART token revoked or expired: a new one next time
        return f"HTTP {response.status_code}"


def summary(payload: dict[str, Any], describe: Callable[[str], str]) -> str:
    """One line for a clinician: what happened, the grade, the product and dose time."""
    event = WatchEvent(payload["event"])
    exposure = payload["exposure"]
    grade = payload.get("grade")
    possible = payload.get("possibleGrade")
    graded = f"CRS grade {grade} (max {payload.get('maxGrade')}, ASTCT 2019)"
    if event is WatchEvent.POSSIBLE:
        graded = f"possible CRS grade {possible} (fever possibly masked)"
    if event is WatchEvent.IF_FEBRILE:
        graded = f"CRS grade {payload.get('gradeIfFebrile')} if febrile (no current temperature)"
    return (
        f"CRS watch: {EVENT_TEXT[event]} — {graded}; {describe(exposure['product'])} "
        f"given {exposure['at'][:16].replace('T', ' ')}. Decision support: review the "
        "patient; nothing was ordered."
    )


def writeback_resource(
    kind: str,
    payload: dict[str, Any],
    patient_id: str,
    now: datetime,
    recipient: str | None,
    describe: Callable[[str], str],
) -> dict[str, Any]:
    """The Communication (to the care team) or Flag the EHR shows, validated (R4B
    models, R4-compatible for these fields); its id is the notification id, so that
    writing it again changes nothing."""
    # imported here: the models take a while to build, and only the write-back needs them
    from fhir.resources.R4B.communication import Communication
    from fhir.resources.R4B.flag import Flag

    text = summary(payload, describe)
    identifier = [{"system": NOTIFICATION_SYSTEM, "value": payload["id"]}]
    subject = {"reference": f"Patient/{patient_id}"}
    resource: dict[str, Any]
    if kind == "communication":
        resource = {
            "resourceType": "Communication",
            "id": payload["id"],
            "identifier": identifier,
            "status": "completed",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/communication-category",
                            "code": "alert",
                            "display": "Alert",
                        }
                    ]
                }
            ],
            "subject": subject,
            "sent": now.isoformat(timespec="seconds"),
            "payload": [{"contentString": text}],
        }
        if recipient:
            resource["recipient"] = [{"reference": recipient}]
        Communication.model_validate(resource)
        return resource
    resource = {
        "resourceType": "Flag",
        "id": payload["id"],
        "identifier": identifier,
        "status": "active",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                        "code": "clinical",
                        "display": "Clinical",
                    }
                ]
            }
        ],
        "code": {"text": text},
        "subject": subject,
        "period": {"start": payload["at"]},
    }
    Flag.model_validate(resource)
    return resource
