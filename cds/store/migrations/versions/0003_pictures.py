"""pictures: page views and one-time access grants (issue #13)

Revision ID: 0003
Revises: 0002 (written beside the watch's 0002, chained after it when both landed)
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "page_views",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("viewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("viewer", sa.Text(), nullable=False),
        sa.Column("access", sa.String(length=16), nullable=False),
        sa.Column("page", sa.String(length=32), nullable=False),
        sa.Column("patient", sa.String(length=64), nullable=True),
        sa.Column("record_id", sa.String(length=36), nullable=True),
        sa.Column("card_uuid", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_page_views_viewed_at", "page_views", ["viewed_at"])
    op.create_index("ix_page_views_patient", "page_views", ["patient"])
    op.create_table(
        "page_access_grants",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("viewer", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )


def downgrade() -> None:
    op.drop_table("page_access_grants")
    op.drop_index("ix_page_views_patient", table_name="page_views")
    op.drop_index("ix_page_views_viewed_at", table_name="page_views")
    op.drop_table("page_views")
