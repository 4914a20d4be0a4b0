"""the watch: census, history, notifications and deliveries, subscriptions, inbox, workers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watch_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("patient", sa.String(length=64), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("grade", sa.Integer(), nullable=True),
        sa.Column("max_grade", sa.Integer(), nullable=True),
        sa.Column("possible_grade", sa.Integer(), nullable=True),
        sa.Column("exposure", sa.String(length=128), nullable=True),
        sa.Column("product", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("exposure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rule_set_version", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_watch_history_patient", "watch_history", ["patient", "evaluated_at"], unique=False
    )
    op.create_table(
        "watch_jobs",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "watch_notifications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("change_key", sa.String(length=256), nullable=False),
        sa.Column("patient", sa.String(length=64), nullable=False),
        sa.Column("exposure", sa.String(length=128), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("grade", sa.Integer(), nullable=True),
        sa.Column("max_grade", sa.Integer(), nullable=True),
        sa.Column("possible_grade", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("change_key"),
    )
    op.create_index(
        "ix_watch_notifications_created_at", "watch_notifications", ["created_at"], unique=False
    )
    op.create_index(
        "ix_watch_notifications_patient", "watch_notifications", ["patient"], unique=False
    )
    op.create_table(
        "watch_patients",
        sa.Column("patient", sa.String(length=64), nullable=False),
        sa.Column("patient_ref", sa.LargeBinary(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cursor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cursor_seen", sa.JSON(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("grade", sa.Integer(), nullable=True),
        sa.Column("max_grade", sa.Integer(), nullable=True),
        sa.Column("possible_grade", sa.Integer(), nullable=True),
        sa.Column("exposure", sa.String(length=128), nullable=True),
        sa.Column("product", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("exposure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("watch_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("temperature_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rule_set_version", sa.String(length=64), nullable=True),
        sa.Column("readings", sa.JSON(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.PrimaryKeyConstraint("patient"),
    )
    op.create_index(
        "ix_watch_patients_due", "watch_patients", ["active", "next_poll_at"], unique=False
    )
    op.create_table(
        "watch_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("server", sa.String(length=512), nullable=False),
        sa.Column("subscription_id", sa.String(length=64), nullable=True),
        sa.Column("topic", sa.String(length=512), nullable=False),
        sa.Column("content", sa.String(length=16), nullable=False),
        sa.Column("secret_digest", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event", sa.Integer(), nullable=True),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("catch_up_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_digest"),
    )
    op.create_table(
        "watch_workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "watch_deliveries",
        sa.Column("notification_id", sa.String(length=36), nullable=False),
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification_id"], ["watch_notifications.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("notification_id", "target"),
    )
    op.create_index(
        "ix_watch_deliveries_due", "watch_deliveries", ["status", "next_attempt_at"], unique=False
    )
    op.create_table(
        "watch_inbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subscription", sa.String(length=36), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("first_event", sa.Integer(), nullable=True),
        sa.Column("last_event", sa.Integer(), nullable=True),
        sa.Column("events", sa.LargeBinary(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["subscription"], ["watch_subscriptions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_watch_inbox_pending", "watch_inbox", ["processed_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_watch_inbox_pending", table_name="watch_inbox")
    op.drop_table("watch_inbox")
    op.drop_index("ix_watch_deliveries_due", table_name="watch_deliveries")
    op.drop_table("watch_deliveries")
    op.drop_table("watch_workers")
    op.drop_table("watch_subscriptions")
    op.drop_index("ix_watch_patients_due", table_name="watch_patients")
    op.drop_table("watch_patients")
    op.drop_index("ix_watch_notifications_patient", table_name="watch_notifications")
    op.drop_index("ix_watch_notifications_created_at", table_name="watch_notifications")
    op.drop_table("watch_notifications")
    op.drop_table("watch_jobs")
    op.drop_index("ix_watch_history_patient", table_name="watch_history")
    op.drop_table("watch_history")
