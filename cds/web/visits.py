"""What the pictures keep in the store: every page view (who, which patient pseudonym,
when, how signed in), and the one-time access URLs of the local demo."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from cds.store.tables import page_access_grants, page_views


@dataclass(frozen=True)
class PageView:
    viewer: str
    access: str  # link | sso | session
    page: str  # timeline | watch | watch.json
    patient: str | None = None
    record_id: str | None = None
    card_uuid: str | None = None


def record_view(engine: Engine, view: PageView, at: datetime) -> None:
    """Keep one page view (before the page is sent)."""
    with engine.begin() as connection:
        connection.execute(
            insert(page_views).values(
                id=str(uuid.uuid4()),
                viewed_at=at,
                viewer=view.viewer,
                access=view.access,
                page=view.page,
                patient=view.patient,
                record_id=view.record_id,
                card_uuid=view.card_uuid,
            )
        )


def views(engine: Engine, since: datetime | None = None) -> list[dict[str, object]]:
    """The page views kept (oldest first), for audits and the tests."""
    query = select(page_views).order_by(page_views.c.viewed_at)
    if since is not None:
        query = query.where(page_views.c.viewed_at >= since)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_grant(engine: Engine, viewer: str, now: datetime, lifetime: timedelta) -> str:
    """A one-time access secret for `viewer` (only its sha256 is stored)."""
    secret = secrets.token_urlsafe(32)
    with engine.begin() as connection:
        connection.execute(
            insert(page_access_grants).values(
                token_hash=_digest(secret),
                viewer=viewer,
                created_at=now,
                expires_at=now + lifetime,
            )
        )
    return secret


def grant_open(engine: Engine, secret: str, now: datetime) -> bool:
    """Whether the secret is a grant not used and not expired (the form may be shown)."""
    with engine.connect() as connection:
        row = connection.execute(
            select(page_access_grants.c.used_at, page_access_grants.c.expires_at).where(
                page_access_grants.c.token_hash == _digest(secret)
            )
        ).first()
    return row is not None and row.used_at is None and row.expires_at > now


def use_grant(engine: Engine, secret: str, now: datetime) -> str | None:
    """The viewer of a grant, used now; None when unknown, used or expired. Atomic: of
    two uses (on any replica), one succeeds."""
    digest = _digest(secret)
    with engine.begin() as connection:
        used = connection.execute(
            update(page_access_grants)
            .where(
                page_access_grants.c.token_hash == digest,
                page_access_grants.c.used_at.is_(None),
                page_access_grants.c.expires_at > now,
            )
            .values(used_at=now)
        )
        if used.rowcount != 1:
            return None
        viewer: str | None = connection.scalar(
            select(page_access_grants.c.viewer).where(page_access_grants.c.token_hash == digest)
        )
        return viewer
