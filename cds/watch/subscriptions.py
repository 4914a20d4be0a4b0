"""FHIR Subscriptions, R5 Backport IG on R4 (topic-based, rest-hook channel).

`crs-cds watch subscribe` creates a Subscription on CRS_WATCH_FHIR_SERVER whose channel
carries a header made for it, `Authorization: Bearer <secret>`; the watch keeps only the
secret's SHA-256. The server then POSTs notification Bundles to
`/watch/notifications`:

- a `history` Bundle whose first entry is the subscription status — a `Parameters`
  (R4: `subscription`, `topic`, `status`, `type`, `events-since-subscription-start`,
  `notification-event` with `event-number`, `timestamp`, `focus`, `additional-context`)
  or a `SubscriptionStatus` (R4B);
- `type` handshake, heartbeat, event-notification, query-status or query-event;
- the payload empty (no focus), id-only (the focus reference), or full-resource (the
  focus resources as further entries).

A notification is authenticated by its channel header (401 without it or with an
unknown secret), must belong to the subscription of that secret (403) and be readable
(400, naming what and where); otherwise nothing is stored. One that passes is stored —
what it says sealed in the inbox, the event numbers on the subscription — before the
answer, and a worker processes it (after a restart too). A gap in event numbers, or a
heartbeat counting more events than were received, asks for a catch-up: every patient
whose data changed since the last notification received is polled at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, func, insert, select, update

from cds.errors import CdsError, not_json, shown
from cds.fhir.references import patient_of
from cds.store.tables import watch_inbox, watch_subscriptions
from cds.watch.ids import PatientIds
from cds.watch.reading import resource_ref

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
SUBSCRIPTION_PROFILE = f"{BACKPORT}/backport-subscription"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
TOPIC_CANONICAL = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"
KINDS = frozenset({"handshake", "heartbeat", "event-notification", "query-status", "query-event"})
CONTENTS = ("empty", "id-only", "full-resource")
ENDPOINT_PATH = "/watch/notifications"


class MalformedNotification(CdsError):
    """Not a notification Bundle the watch can read (400); the location says where."""

    status = 400


class ChannelUnauthenticated(CdsError):
    """No channel header, or one no subscription of this watch was created with (401)."""

    status = 401


class ChannelMismatch(CdsError):
    """The channel secret belongs to another subscription than the one named (403)."""

    status = 403


@dataclass(frozen=True)
class NotificationEvent:
    """One event: its number, the resource it is about, and that resource's patient
    when the notification says (additional context, or the full resource)."""

    number: int | None
    focus: tuple[str, str] | None  # (resourceType, id)
    patient: str | None


@dataclass(frozen=True)
class StatusNotification:
    """A notification Bundle, read."""

    kind: str
    subscription_id: str | None  # the server's id of the Subscription
    topic: str | None
    events_since_start: int | None
    events: tuple[NotificationEvent, ...]


def read_notification(body: bytes) -> StatusNotification:
    """The notification in `body`, or MalformedNotification naming what and where."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise MalformedNotification(not_json("the notification", body, exc)) from exc
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise MalformedNotification(
            "expected a FHIR Bundle (a subscription notification)", "Bundle.resourceType"
        )
    if data.get("type") not in ("history", "subscription-notification"):
        raise MalformedNotification(
            f"a notification Bundle has type history (R4/R4B), got {data.get('type')!r}",
            "Bundle.type",
        )
    entries = data.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise MalformedNotification(
            "a notification Bundle needs the subscription status as its first entry",
            "Bundle.entry",
        )
    status = entries[0].get("resource")
    included = _included(entries[1:])
    if isinstance(status, dict) and status.get("resourceType") == "Parameters":
        return _from_parameters(status, included)
    if isinstance(status, dict) and status.get("resourceType") == "SubscriptionStatus":
        return _from_subscription_status(status, included)
    raise MalformedNotification(
        "the first entry must be the subscription status: a Parameters (R4) or a "
        "SubscriptionStatus (R4B)",
        "Bundle.entry[0].resource",
    )


def _included(entries: list[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Full-resource payload: the resources after the status, by (type, id)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if isinstance(rtype, str) and isinstance(rid, str):
                found[(rtype, rid)] = resource
    return found


def _name(value: object) -> str:
    """kebab-case and camelCase parameter names alike (`event-number`, `eventNumber`)."""
    return "".join(ch for ch in str(value).lower() if ch.isalnum())


def _value(parameter: dict[str, Any]) -> Any:
    return next((v for k, v in parameter.items() if k.startswith("value")), None)


# Event numbers are kept in a 64-bit column (`watch_subscriptions.last_event`).
EVENT_NUMBER_MAX = 2**63 - 1


def _number(value: object, location: str) -> int:
    """An event number: a JSON integer, or a string of ASCII digits (FHIR's integer64 is
    a string), never "1_000", " 5 " or another script's digits (which int() reads)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedNotification(f"not a number: {shown(str(value))}", location)
    text = str(value)
    if isinstance(value, str) and not (text.isascii() and text.isdigit()):
        raise MalformedNotification(f"not an event number (ASCII digits): {shown(text)}", location)
    if len(text) > len(str(EVENT_NUMBER_MAX)):
        raise MalformedNotification(
            f"not an event number: more than {len(str(EVENT_NUMBER_MAX))} characters", location
        )
    number = int(text)
    if number < 0:
        raise MalformedNotification(f"a negative number: {number}", location)
    if number > EVENT_NUMBER_MAX:
        raise MalformedNotification(f"an event number above {EVENT_NUMBER_MAX}", location)
    return number


def _list(value: object, location: str) -> list[Any]:
    """An optional array: absent is empty, anything but an array is malformed."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedNotification("expected an array", location)
    return value


def _reference(value: object) -> str | None:
    return value.get("reference") if isinstance(value, dict) else None


def _event(
    focus_ref: str | None,
    context_refs: list[str],
    number: int | None,
    included: dict[tuple[str, str], dict[str, Any]],
) -> NotificationEvent:
    focus = resource_ref(focus_ref)
    patient = next((p for r in context_refs if (p := _patient_ref(r)) is not None), None)
    if patient is None and focus is not None:
        if focus[0] == "Patient":
            patient = focus[1]
        elif focus in included:
            patient = patient_of(included[focus])
    return NotificationEvent(number, focus, patient)


def _patient_ref(reference: str) -> str | None:
    ref = resource_ref(reference)
    return ref[1] if ref is not None and ref[0] == "Patient" else None


def _kind(value: object, location: str) -> str:
    if not isinstance(value, str) or value not in KINDS:
        raise MalformedNotification(
            f"notification type {value!r} is not one of {', '.join(sorted(KINDS))}", location
        )
    return str(value)


def _subscription_id(reference: object, location: str) -> str:
    ref = resource_ref(reference)
    if ref is None or ref[0] != "Subscription":
        raise MalformedNotification(
            "the subscription status must name its Subscription (a reference)", location
        )
    return ref[1]


def _from_parameters(
    status: dict[str, Any], included: dict[tuple[str, str], dict[str, Any]]
) -> StatusNotification:
    where = "Bundle.entry[0].resource.parameter"
    parameters = status.get("parameter")
    if not isinstance(parameters, list):
        raise MalformedNotification("the status Parameters has no parameter list", where)
    kind: str | None = None
    subscription: str | None = None
    topic: str | None = None
    since: int | None = None
    events: list[NotificationEvent] = []
    for i, p in enumerate(parameters):
        if not isinstance(p, dict):
            raise MalformedNotification("a parameter must be an object", f"{where}[{i}]")
        name, at = _name(p.get("name")), f"{where}[{i}]"
        if name == "type":
            kind = _kind(_value(p), f"{at}.valueCode")
        elif name == "subscription":
            subscription = _subscription_id(_reference(p.get("valueReference")), at)
        elif name == "topic":
            topic = str(_value(p)) if _value(p) is not None else None
        elif name == "eventssincesubscriptionstart":
            since = _number(_value(p), f"{at}.value")
        elif name == "notificationevent":
            events.append(_parameter_event(p, at, included))
    if subscription is None:
        raise MalformedNotification("no `subscription` parameter", where)
    if kind is None:
        raise MalformedNotification("no `type` parameter", where)
    return StatusNotification(kind, subscription, topic, since, tuple(events))


def _parameter_event(
    parameter: dict[str, Any], at: str, included: dict[tuple[str, str], dict[str, Any]]
) -> NotificationEvent:
    number: int | None = None
    focus: str | None = None
    context: list[str] = []
    parts = parameter.get("part")
    if not isinstance(parts, list):
        raise MalformedNotification("a notification-event needs its parts", f"{at}.part")
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            continue
        name = _name(part.get("name"))
        if name == "eventnumber":
            number = _number(_value(part), f"{at}.part[{j}].value")
        elif name == "focus":
            focus = _reference(part.get("valueReference"))
        elif name == "additionalcontext":
            ref = _reference(part.get("valueReference"))
            if ref:
                context.append(ref)
    if number is None:
        raise MalformedNotification("a notification-event needs its event-number", f"{at}.part")
    return _event(focus, context, number, included)


def _from_subscription_status(
    status: dict[str, Any], included: dict[tuple[str, str], dict[str, Any]]
) -> StatusNotification:
    where = "Bundle.entry[0].resource"
    kind = _kind(status.get("type"), f"{where}.type")
    subscription = _subscription_id(_reference(status.get("subscription")), f"{where}.subscription")
    since_value = status.get("eventsSinceSubscriptionStart")
    since = (
        _number(since_value, f"{where}.eventsSinceSubscriptionStart")
        if since_value is not None
        else None
    )
    events = []
    notified = _list(status.get("notificationEvent"), f"{where}.notificationEvent")
    for i, e in enumerate(notified):
        at = f"{where}.notificationEvent[{i}]"
        if not isinstance(e, dict) or e.get("eventNumber") is None:
            raise MalformedNotification("a notificationEvent needs its eventNumber", at)
        more = _list(e.get("additionalContext"), f"{at}.additionalContext")
        context = [r for c in more if (r := _reference(c))]
        events.append(
            _event(
                _reference(e.get("focus")),
                context,
                _number(e["eventNumber"], f"{at}.eventNumber"),
                included,
            )
        )
    topic = status.get("topic")
    return StatusNotification(
        kind, subscription, str(topic) if topic else None, since, tuple(events)
    )


# --- the subscriptions of this watch, and what their notifications leave in the store ---


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer_secret(header: str | None) -> str:
    """The secret of an `Authorization: Bearer <secret>` channel header."""
    if not header:
        raise ChannelUnauthenticated(
            "no Authorization header: a notification must carry the channel header its "
            "subscription was created with (`crs-cds watch subscribe`)"
        )
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ChannelUnauthenticated("the Authorization header is not `Bearer <secret>`")
    return secret.strip()


@dataclass(frozen=True)
class InboxItem:
    """A stored notification claimed for processing."""

    id: int
    subscription: str  # the local id of its subscription
    kind: str
    events: list[NotificationEvent]


@dataclass(frozen=True)
class Accepted:
    """What storing a notification did: the inbox row, and whether events were missed."""

    inbox_id: int
    gap: bool


class Subscriptions:
    """The watch's subscriptions and their inbox, in the store."""

    def __init__(self, engine: Engine, ids: PatientIds) -> None:
        self.engine = engine
        self.ids = ids

    def register(
        self, local_id: str, server: str, topic: str, content: str, secret: str, now: datetime
    ) -> None:
        """Remember a subscription about to be created (before the server can call)."""
        with self.engine.begin() as connection:
            connection.execute(
                insert(watch_subscriptions).values(
                    id=local_id,
                    server=server,
                    topic=topic,
                    content=content,
                    secret_digest=secret_digest(secret),
                    status="requested",
                    created_at=now,
                )
            )

    def created(self, local_id: str, subscription_id: str | None, status: str) -> None:
        s = watch_subscriptions.c
        values: dict[str, Any] = {"status": status}
        if subscription_id:
            values["subscription_id"] = subscription_id
        with self.engine.begin() as connection:
            connection.execute(update(watch_subscriptions).where(s.id == local_id).values(**values))

    def forget(self, local_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                watch_subscriptions.delete().where(watch_subscriptions.c.id == local_id)
            )

    def authenticate(self, secret: str, server: str) -> None:
        """ChannelUnauthenticated unless `secret` is the channel header of one of this
        watch's subscriptions (checked before a notification's body is read; `accept`
        checks again, in its transaction)."""
        s = watch_subscriptions.c
        with self.engine.connect() as connection:
            known = connection.scalar(
                select(s.id).where(s.secret_digest == secret_digest(secret), s.server == server)
            )
        if known is None:
            raise ChannelUnauthenticated("the channel header matches no subscription of this watch")

    def accept(self, secret: str, note: StatusNotification, server: str, now: datetime) -> Accepted:
        """Authenticate and store a notification (one transaction); ChannelUnauthenticated
        or ChannelMismatch leave everything as it was."""
        s = watch_subscriptions.c
        with self.engine.begin() as connection:
            row = connection.execute(
                select(watch_subscriptions)
                .where(s.secret_digest == secret_digest(secret), s.server == server)
                .with_for_update()
            ).first()
            if row is None:
                raise ChannelUnauthenticated(
                    "the channel header matches no subscription of this watch"
                )
            if (
                row.subscription_id is not None
                and note.subscription_id is not None
                and note.subscription_id != row.subscription_id
            ):
                raise ChannelMismatch(
                    f"this channel header belongs to Subscription/{row.subscription_id}, "
                    f"not Subscription/{note.subscription_id}",
                    "Bundle.entry[0].resource",
                )
            numbers = [e.number for e in note.events if e.number is not None]
            last = row.last_event or 0
            gap = False
            if note.kind == "event-notification" and numbers:
                gap = min(numbers) > last + 1
                last = max(last, *numbers)
            elif note.kind in ("heartbeat", "query-status") and note.events_since_start is not None:
                gap = note.events_since_start > last
                last = max(last, note.events_since_start)
            values: dict[str, Any] = {"last_event": last, "last_received_at": now}
            if note.kind == "handshake" or row.status == "requested":
                values["status"] = "active"
            if row.subscription_id is None and note.subscription_id:
                values["subscription_id"] = note.subscription_id
            if gap:
                since = row.last_received_at or row.created_at
                values["catch_up_since"] = (
                    min(row.catch_up_since, since) if row.catch_up_since else since
                )
            connection.execute(update(watch_subscriptions).where(s.id == row.id).values(**values))
            sealed = self.ids.seal_json(
                [
                    {"n": e.number, "focus": list(e.focus) if e.focus else None, "p": e.patient}
                    for e in note.events
                ]
            )
            inbox_id: int = connection.execute(
                insert(watch_inbox)
                .values(
                    subscription=row.id,
                    received_at=now,
                    kind=note.kind,
                    first_event=min(numbers) if numbers else None,
                    last_event=max(numbers) if numbers else None,
                    events=sealed,
                )
                .returning(watch_inbox.c.id)
            ).scalar_one()
        return Accepted(int(inbox_id), gap)

    def claim_inbox(
        self, owner: str, now: datetime, lease: timedelta, limit: int = 100
    ) -> list[InboxItem]:
        """Lease pending notifications (oldest first) for processing."""
        i = watch_inbox.c
        pending = (
            select(i.id)
            .where(i.processed_at.is_(None), (i.lease_until.is_(None)) | (i.lease_until < now))
            .order_by(i.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with self.engine.begin() as connection:
            rows = connection.execute(
                update(watch_inbox)
                .where(i.id.in_(pending.scalar_subquery()))
                .values(lease_owner=owner, lease_until=now + lease)
                .returning(i.id, i.subscription, i.kind, i.events)
            ).all()
        claimed = []
        for row in sorted(rows, key=lambda r: int(r.id)):
            opened = self.ids.open_json(row.events)
            events = [
                NotificationEvent(
                    e.get("n"),
                    (e["focus"][0], e["focus"][1]) if e.get("focus") else None,
                    e.get("p"),
                )
                for e in (opened if isinstance(opened, list) else [])
                if isinstance(e, dict)
            ]
            claimed.append(InboxItem(int(row.id), str(row.subscription), str(row.kind), events))
        return claimed

    def ask_catch_up(self, local_id: str, since: datetime) -> None:
        """A catch-up from `since` for a subscription (an empty payload names nothing)."""
        s = watch_subscriptions.c
        with self.engine.begin() as connection:
            row = connection.execute(
                select(s.catch_up_since).where(s.id == local_id).with_for_update()
            ).first()
            if row is None:
                return
            earliest = min(row.catch_up_since, since) if row.catch_up_since else since
            connection.execute(
                update(watch_subscriptions).where(s.id == local_id).values(catch_up_since=earliest)
            )

    def processed(self, owner: str, inbox_ids: list[int], now: datetime) -> None:
        i = watch_inbox.c
        with self.engine.begin() as connection:
            connection.execute(
                update(watch_inbox)
                .where(i.id.in_(inbox_ids), i.lease_owner == owner)
                .values(processed_at=now, lease_owner=None, lease_until=None)
            )

    def catch_up_since(self) -> datetime | None:
        """The earliest time a catch-up is asked for (None: no gap pending)."""
        s = watch_subscriptions.c
        with self.engine.connect() as connection:
            value: datetime | None = connection.execute(
                select(func.min(s.catch_up_since))
            ).scalar_one()
            return value

    def caught_up(self, since: datetime) -> None:
        """The catch-up from `since` was done (a later gap stays asked for)."""
        s = watch_subscriptions.c
        with self.engine.begin() as connection:
            connection.execute(
                update(watch_subscriptions)
                .where(s.catch_up_since <= since)
                .values(catch_up_since=None)
            )

    def prune_inbox(self, before: datetime) -> int:
        """Processed notifications received before `before` are removed."""
        i = watch_inbox.c
        with self.engine.begin() as connection:
            result = connection.execute(
                watch_inbox.delete().where(i.processed_at.is_not(None), i.received_at < before)
            )
            return result.rowcount or 0


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def subscription_resource(
    topic: str,
    endpoint: str,
    secret: str,
    content: str,
    heartbeat_seconds: int | None,
    filters: list[str],
    reason: str = "CRS watch: new or changed data of patients in a CRS risk window",
) -> dict[str, Any]:
    """An R4 backport Subscription (rest-hook) for `topic` (see the IG's
    backport-subscription profile), its channel carrying the watch's header."""
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": content}]},
        "header": [f"Authorization: Bearer {secret}"],
    }
    if heartbeat_seconds:
        channel["extension"] = [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": heartbeat_seconds}]
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [SUBSCRIPTION_PROFILE]},
        "status": "requested",
        "reason": reason,
        "criteria": topic,
        "channel": channel,
    }
    if filters:
        resource["_criteria"] = {
            "extension": [{"url": FILTER_CRITERIA, "valueString": f} for f in filters]
        }
    return resource
