"""Signed, expiring tokens: the card's timeline link, the pages' session cookie and the
CSRF token of their forms.

A token is `v1.<payload>.<signature>` (base64url): the payload names what it grants
(`card` and the card's uuid, or `session` and who) and when it expires; the signature
is an HMAC-SHA256 with a key derived, per purpose, from `CRS_LINK_SIGNING_KEY` (so a
session cookie can never pass for a link). A token carries no patient data. Pure: no
clock (the time is passed in) and no I/O, except `signing_key`, which start-up calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Literal
from urllib.parse import quote

import msgspec

from cds.protocol import Link
from cds.settings import Settings
from cds.store.pseudonym import key_from_file

log = logging.getLogger("cds.web")

KEY_FILE = "link-signing.key"
VERSION = "v1"
TIMELINE_LABEL = "CRS timeline"
TIMELINE_PATH = "/crs/timeline/"

Purpose = Literal["link", "session", "csrf"]


class TokenProblem(Enum):
    """Why a token was refused (the 403 page says which, in words)."""

    MALFORMED = "malformed"
    TAMPERED = "tampered"
    EXPIRED = "expired"
    WRONG_KIND = "wrong-kind"


class TokenRefused(Exception):
    def __init__(self, problem: TokenProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


class Grant(msgspec.Struct, frozen=True):
    """What a token grants: `kind` (card | session), `subject` (a card uuid, a viewer
    name) and the expiry (seconds since the epoch)."""

    kind: str
    subject: str
    exp: int
    nonce: str = ""

    @property
    def expires(self) -> datetime:
        return datetime.fromtimestamp(self.exp, UTC)


_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder(Grant)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Signer:
    """Signs and verifies tokens with one key (at least 32 bytes)."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < 32:
            raise ValueError("the link signing key must be at least 32 bytes")

    def _mac(self, purpose: Purpose, payload: str) -> bytes:
        subkey = hmac.new(self.key, f"crs-cds {purpose} {VERSION}".encode(), hashlib.sha256)
        return hmac.new(subkey.digest(), payload.encode(), hashlib.sha256).digest()

    def sign(self, purpose: Purpose, grant: Grant) -> str:
        payload = _b64(_ENCODE.encode(grant))
        return f"{VERSION}.{payload}.{_b64(self._mac(purpose, payload))}"

    def verify(self, purpose: Purpose, token: str, now: datetime, kind: str) -> Grant:
        """The grant of a valid token, else TokenRefused saying why. The signature is
        checked before anything in the payload is believed."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            raise TokenRefused(TokenProblem.MALFORMED)
        _, payload, signature = parts
        try:
            given = _unb64(signature)
        except ValueError as exc:
            raise TokenRefused(TokenProblem.MALFORMED) from exc
        if not hmac.compare_digest(given, self._mac(purpose, payload)):
            raise TokenRefused(TokenProblem.TAMPERED)
        try:
            grant = _DECODE.decode(_unb64(payload))
        except (ValueError, msgspec.DecodeError) as exc:
            raise TokenRefused(TokenProblem.MALFORMED) from exc
        if grant.kind != kind:
            raise TokenRefused(TokenProblem.WRONG_KIND)
        if now.timestamp() >= grant.exp:
            raise TokenRefused(TokenProblem.EXPIRED)
        return grant

    # --- what the pages use ----------------------------------------------------------

    def card_token(self, card_uuid: str, now: datetime, lifetime: timedelta) -> str:
        return self.sign("link", Grant("card", card_uuid, _expiry(now, lifetime)))

    def session_token(self, viewer: str, now: datetime, lifetime: timedelta) -> str:
        grant = Grant("session", viewer, _expiry(now, lifetime), secrets.token_hex(8))
        return self.sign("session", grant)

    def csrf_token(self, bound_to: str) -> str:
        """A form's token, bound to the session (or access grant) it is served in."""
        return _b64(self._mac("csrf", bound_to))

    def csrf_ok(self, bound_to: str, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(bound_to), token)


def _expiry(now: datetime, lifetime: timedelta) -> int:
    return int((now + lifetime).timestamp())


def signing_key(settings: Settings) -> bytes | None:
    """The key of the settings (`CRS_LINK_SIGNING_KEY`); with the embedded SQLite store and
    no key set, one generated on first use into the data directory (mode 0600, like the
    pseudonym key); with a shared database and no key, None: no links, no sessions."""
    if settings.link_signing_key:
        return settings.link_signing_key.get_secret_value().encode()
    if settings.database_url:
        log.warning(
            "CRS_LINK_SIGNING_KEY is not set: no timeline links on cards and no page "
            "sessions (every replica needs the same key)"
        )
        return None
    return key_from_file(settings.data_dir, KEY_FILE)


@dataclass(frozen=True)
class CardLinks:
    """What the CRS card's timeline link needs: the public base URL, the signer and the
    link lifetime. Built once at start-up (`card_links`); None when links are off."""

    base_url: str
    signer: Signer
    lifetime: timedelta

    def timeline(self, card_uuid: str, now: datetime) -> Link:
        """The card's link: a signed token for this card alone, expiring `lifetime` after
        the evaluation time."""
        token = self.signer.card_token(card_uuid, now, self.lifetime)
        return Link(
            label=TIMELINE_LABEL,
            url=f"{self.base_url.rstrip('/')}{TIMELINE_PATH}{quote(token, safe='.')}",
            type="absolute",
        )


def card_links(settings: Settings) -> CardLinks | None:
    """The card links of the settings: none without `CRS_PUBLIC_BASE_URL` or a key."""
    if not settings.public_base_url:
        return None
    key = signing_key(settings)
    if key is None:
        return None
    return CardLinks(
        settings.public_base_url,
        Signer(key),
        timedelta(minutes=settings.link_lifetime_minutes),
    )
