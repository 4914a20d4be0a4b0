"""watch: subscription event numbers in 64 bits (FHIR R5 eventNumber is an integer64; the
notification reader accepts up to 2^63 - 1, and PostgreSQL's integer stops at 2^31 - 1)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = (
    ("watch_subscriptions", "last_event"),
    ("watch_inbox", "first_event"),
    ("watch_inbox", "last_event"),
)


def upgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    for table, column in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=sa.Integer(), existing_type=sa.BigInteger())
