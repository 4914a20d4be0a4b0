"""The tables of the decision store (SQLAlchemy Core). Migrations: cds/store/migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

from cds.auth import JTI_MAX_LENGTH
from cds.protocol import HOOK_INSTANCE_MAX_LENGTH

metadata = MetaData()


class UtcDateTime(TypeDecorator[datetime]):
    """An instant: stored in UTC (SQLite keeps no offset), read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store keeps instants only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# One row per hook call, written before the answer is sent.
audit_records = Table(
    "audit_records",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("service", String(64), nullable=False),
    Column("hook", String(64), nullable=False),
    Column("hook_instance", String(HOOK_INSTANCE_MAX_LENGTH), nullable=False),
    Column("client_iss", Text),
    Column("client_sub", Text),
    Column("tenant", Text),
    Column("patient", String(64), nullable=False),  # keyed HMAC pseudonym, never the id
    Column("evaluated_at", UtcDateTime(), nullable=False),
    Column("rule_set_version", String(64), nullable=False),
    Column("rule_set_digest", String(64), nullable=False),
    Column("input_digest", String(64), nullable=False),  # sha256 of the request body
    Column("data_issues", Integer, nullable=False),
    Column("data_complete", Boolean, nullable=False),
    Column("cards", JSON, nullable=False),  # each card: uuid, kind, indicator, summary, …
    Column("facts", LargeBinary, nullable=False),  # what was evaluated (for replay)
    Column("latency_ms", Float, nullable=False),
    Index("ix_audit_records_recorded_at", "recorded_at"),
    Index("ix_audit_records_hook_instance", "hook_instance"),
    Index("ix_audit_records_patient", "patient"),
)

# Every card shown, by uuid: what feedback is checked against.
cards = Table(
    "cards",
    metadata,
    Column("uuid", String(64), primary_key=True),
    Column(
        "record_id",
        String(36),
        ForeignKey("audit_records.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("service", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("grade", Integer),
    Column("alert_grade", Integer),
    Column("acknowledged", Boolean, nullable=False),
    Column("patient", String(64), nullable=False),
    Column("exposure", String(128)),
    Column("suggestions", JSON, nullable=False),  # the suggestion uuids offered
    Column("override_reasons", JSON, nullable=False),  # the override codes offered
    Column("shown_at", UtcDateTime(), nullable=False),
    Index("ix_cards_record_id", "record_id"),
)

# What the clinician did with a card (CDS Hooks feedback).
feedback = Table(
    "feedback",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("card_uuid", String(64), ForeignKey("cards.uuid", ondelete="CASCADE"), nullable=False),
    Column("fingerprint", String(64), nullable=False, unique=True),  # identical = idempotent
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", JSON, nullable=False),
    Column("override_system", Text),
    Column("override_code", Text),
    Column("override_display", Text),
    Column("override_offered", Boolean),  # False: a reason the card did not offer (flagged)
    Column("user_comment", Text),
    Column("outcome_at", UtcDateTime(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("client_iss", Text),
    Index("ix_feedback_card_uuid", "card_uuid"),
)

# The latest acknowledgement of a CRS exposure's card, per patient: what suppression reads.
acknowledgements = Table(
    "acknowledgements",
    metadata,
    Column("patient", String(64), primary_key=True),
    Column("exposure", String(128), primary_key=True),
    Column("grade", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("acted_at", UtcDateTime(), nullable=False),
    Column("card_uuid", String(64), nullable=False),
)

# Token ids (jti) already used, until they expire: replay protection across replicas.
seen_tokens = Table(
    "seen_tokens",
    metadata,
    Column("issuer", String(512), primary_key=True),
    Column("jti", String(JTI_MAX_LENGTH), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_seen_tokens_expires_at", "expires_at"),
)

# Every page view of the pictures (cds/web/): who saw which patient's data, when, how.
page_views = Table(
    "page_views",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("viewed_at", UtcDateTime(), nullable=False),
    Column("viewer", Text, nullable=False),  # the signed-in name, or "card-link"
    Column("access", String(16), nullable=False),  # link | sso | session
    Column("page", String(32), nullable=False),  # timeline | watch | watch.json
    Column("patient", String(64)),  # the pseudonym shown (None: the watch list)
    Column("record_id", String(36)),
    Column("card_uuid", String(64)),
    Index("ix_page_views_viewed_at", "viewed_at"),
    Index("ix_page_views_patient", "patient"),
)

# One-time access URLs of the local demo: only the sha256 of the secret is kept.
page_access_grants = Table(
    "page_access_grants",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("viewer", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("used_at", UtcDateTime()),
)

# --- the watch (issue #12): continuous surveillance of the patients in a risk window ---

# The census: one row per patient the watch knows, active while a risk window (or CRS
# activity keeping it open) contains now; also each patient's current state and the
# row lease of the worker handling it.
watch_patients = Table(
    "watch_patients",
    metadata,
    Column("patient", String(64), primary_key=True),  # keyed HMAC pseudonym
    Column("patient_ref", LargeBinary, nullable=False),  # the FHIR id, sealed (AES-GCM)
    Column("active", Boolean, nullable=False),
    Column("source", String(32), nullable=False),  # census-search | patient-view | cli | api | …
    Column("enrolled_at", UtcDateTime(), nullable=False),
    Column("left_at", UtcDateTime()),
    Column("next_poll_at", UtcDateTime(), nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", UtcDateTime()),
    Column("cursor", UtcDateTime()),  # the newest meta.lastUpdated seen
    Column("cursor_seen", JSON, nullable=False),  # versions seen in the overlap before it
    Column("evaluated_at", UtcDateTime()),
    Column("grade", Integer),
    Column("max_grade", Integer),
    Column("possible_grade", Integer),
    Column("exposure", String(128)),
    Column("product", String(64)),
    Column("kind", String(16)),
    Column("exposure_at", UtcDateTime()),
    Column("watch_until", UtcDateTime()),  # the window (or CRS activity) lasts until then
    Column("temperature_since", UtcDateTime()),  # last temperature (or window start)
    Column("rule_set_version", String(64)),
    Column("readings", JSON),  # the last temperature, SBP and oxygen (the watch list's)
    Column("failures", Integer, nullable=False),  # consecutive failed cycles
    Column("last_error", String(300)),
    Index("ix_watch_patients_due", "active", "next_poll_at"),
)

# Every evaluated state that differed from the one before it, per patient.
watch_history = Table(
    "watch_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient", String(64), nullable=False),
    Column("evaluated_at", UtcDateTime(), nullable=False),  # the time of the data
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("grade", Integer),
    Column("max_grade", Integer),
    Column("possible_grade", Integer),
    Column("exposure", String(128)),
    Column("product", String(64)),
    Column("kind", String(16)),
    Column("exposure_at", UtcDateTime()),
    Column("rule_set_version", String(64), nullable=False),
    Column("trigger", String(16), nullable=False),  # enrol | poll | window
    Index("ix_watch_history_patient", "patient", "evaluated_at"),
)

# One row per change that matters: the change key is unique, so a change is notified
# once however many workers see it.
watch_notifications = Table(
    "watch_notifications",
    metadata,
    Column("id", String(36), primary_key=True),  # uuid5 of the change key: the idempotency key
    Column("change_key", String(256), nullable=False, unique=True),
    Column("patient", String(64), nullable=False),
    Column("exposure", String(128), nullable=False),
    Column("event", String(32), nullable=False),
    Column("grade", Integer),
    Column("max_grade", Integer),
    Column("possible_grade", Integer),
    Column("at", UtcDateTime(), nullable=False),  # the evaluation time (time of the data)
    Column("created_at", UtcDateTime(), nullable=False),
    Column("payload", JSON, nullable=False),  # without the patient id (added when sent)
    Index("ix_watch_notifications_patient", "patient"),
    Index("ix_watch_notifications_created_at", "created_at"),
)

# Each notification's delivery to each target (a webhook URL, the FHIR write-back).
watch_deliveries = Table(
    "watch_deliveries",
    metadata,
    Column(
        "notification_id",
        String(36),
        ForeignKey("watch_notifications.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("target", String(512), primary_key=True),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("last_error", String(300)),
    Column("delivered_at", UtcDateTime()),
    Index("ix_watch_deliveries_due", "status", "next_attempt_at"),
)

# The FHIR Subscriptions the watch created (`crs-cds watch subscribe`): the digest of the
# channel header secret that authenticates their notifications, the event numbers seen.
watch_subscriptions = Table(
    "watch_subscriptions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("server", String(512), nullable=False),
    Column("subscription_id", String(64)),  # the server's id (known once created)
    Column("topic", String(512), nullable=False),
    Column("content", String(16), nullable=False),  # empty | id-only | full-resource
    Column("secret_digest", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("last_event", BigInteger),  # the highest event number received (integer64)
    Column("last_received_at", UtcDateTime()),
    Column("catch_up_since", UtcDateTime()),  # a gap was found: query what changed since
)

# Subscription notifications accepted (stored before the 2xx), until a worker processed
# them. What they say (resource ids, patients) is sealed like the census ids.
watch_inbox = Table(
    "watch_inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "subscription",
        String(36),
        ForeignKey("watch_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("kind", String(24), nullable=False),  # event-notification | heartbeat | handshake …
    Column("first_event", BigInteger),
    Column("last_event", BigInteger),
    Column("events", LargeBinary, nullable=False),  # sealed JSON
    Column("lease_owner", String(64)),
    Column("lease_until", UtcDateTime()),
    Column("processed_at", UtcDateTime()),
    Index("ix_watch_inbox_pending", "processed_at"),
)

# The workers alive (a heartbeat), and the jobs only one of them runs at a time.
watch_workers = Table(
    "watch_workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("beat_at", UtcDateTime(), nullable=False),
)

watch_jobs = Table(
    "watch_jobs",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("lease_owner", String(64)),
    Column("lease_until", UtcDateTime()),
    Column("last_run_at", UtcDateTime()),
)
