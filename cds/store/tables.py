"""The tables of the decision store (SQLAlchemy Core). Migrations: cds/store/migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
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
    Column("hook_instance", String(256), nullable=False),
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
    Column("jti", String(256), primary_key=True),
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
