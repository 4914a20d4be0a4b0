"""Verify a CDS client's JWT (CDS Hooks 2.0, "Trusting CDS Clients").

The checks, in order; the first that fails names the refusal (`Refusal`):

1. an `Authorization: Bearer <JWT>` header; a compact JWS;
2. header: `alg` among the configured asymmetric algorithms (never `none`, never HMAC),
   `kid` present;
3. `iss` a trusted client; a `jku`, if any, on that client's `jku` list;
4. the key `kid` from the client's inline JWKS, or from its key-set URL (the `jku` when
   the token names an allowed one, else `jwks_url`), refreshed when the `kid` is unknown;
5. the signature; then, from the verified claims: `aud` (a string or an array) holding
   the URL called, `exp` in the future and `iat` not in the future (both with the clock
   skew), `nbf` if given, the lifetime `exp − iat` not above the maximum, `jti` present
   and never seen before (remembered until `exp` plus the skew).

No message carries the token or a value taken from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from jwt import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError

from cds.auth import JTI_MAX_LENGTH, ClientIdentity, ReplayGuard
from cds.auth.keys import (
    Jwk,
    KeySetError,
    KeysUnavailable,
    RemoteKeySets,
    public_keys,
    verifying_key,
)
from cds.auth.trust import TrustedClient
from cds.errors import Unauthenticated

Clock = Callable[[], datetime]

MAX_TOKEN_CHARS = 16_384  # a client JWT is well under 2 kB


class Refusal(StrEnum):
    """Why a token was refused: the `reason` of the 401 and of its log line."""

    MISSING_TOKEN = "missing-token"
    MALFORMED_TOKEN = "malformed-token"
    ALGORITHM_NOT_ALLOWED = "algorithm-not-allowed"
    MISSING_KID = "missing-kid"
    UNTRUSTED_ISSUER = "untrusted-issuer"
    JKU_NOT_ALLOWED = "jku-not-allowed"
    UNKNOWN_KID = "unknown-kid"
    KEYS_UNAVAILABLE = "keys-unavailable"
    BAD_SIGNATURE = "bad-signature"
    WRONG_AUDIENCE = "wrong-audience"
    MISSING_EXP = "missing-exp"
    EXPIRED = "expired"
    MISSING_IAT = "missing-iat"
    ISSUED_IN_FUTURE = "issued-in-future"
    NOT_YET_VALID = "not-yet-valid"
    LIFETIME_TOO_LONG = "lifetime-too-long"
    MISSING_JTI = "missing-jti"
    JTI_TOO_LONG = "jti-too-long"
    REPLAYED = "replayed"


MESSAGES = {
    Refusal.MISSING_TOKEN: "no bearer token: send `Authorization: Bearer <JWT>` signed by "
    "a trusted client",
    Refusal.MALFORMED_TOKEN: "the bearer token is not a well-formed signed JWT",
    Refusal.ALGORITHM_NOT_ALLOWED: "the token's alg is not accepted (asymmetric signatures "
    "only: never none, never HMAC)",
    Refusal.MISSING_KID: "the token's header has no kid",
    Refusal.UNTRUSTED_ISSUER: "the token's iss is not a trusted client",
    Refusal.JKU_NOT_ALLOWED: "the token's jku is not on its issuer's list of key-set URLs",
    Refusal.UNKNOWN_KID: "the token's kid is not among its issuer's keys",
    Refusal.KEYS_UNAVAILABLE: "the issuer's key set could not be fetched; try again later",
    Refusal.BAD_SIGNATURE: "the token's signature does not verify with its issuer's key",
    Refusal.WRONG_AUDIENCE: "the token's aud does not name the URL called",
    Refusal.MISSING_EXP: "the token has no exp that is a NumericDate (seconds since "
    "1970-01-01 UTC, below 1e11)",
    Refusal.EXPIRED: "the token has expired (exp)",
    Refusal.MISSING_IAT: "the token has no iat that is a NumericDate (seconds since "
    "1970-01-01 UTC, below 1e11)",
    Refusal.ISSUED_IN_FUTURE: "the token's iat is in the future",
    Refusal.NOT_YET_VALID: "the token is not valid yet (nbf)",
    Refusal.LIFETIME_TOO_LONG: "the token's lifetime (exp - iat) is above the maximum accepted",
    Refusal.MISSING_JTI: "the token has no jti",
    Refusal.JTI_TOO_LONG: f"the token's jti is longer than {JTI_MAX_LENGTH} characters",
    Refusal.REPLAYED: "the token's jti was already used (replay)",
}


def refused(reason: Refusal, detail: str | None = None) -> Unauthenticated:
    """The 401 for a failed check (`detail`: which part of the token, when the reason
    alone does not say)."""
    message = MESSAGES[reason]
    return Unauthenticated(reason.value, f"{message}: {detail}" if detail else message)


@dataclass(frozen=True)
class TokenPolicy:
    """What a token must satisfy beyond its signature."""

    algorithms: frozenset[str]
    clock_skew: timedelta
    max_lifetime: timedelta


@dataclass
class TokenVerifier:
    """Verifies client JWTs against the trusted clients, their keys and the replay guard."""

    clients: Mapping[str, TrustedClient]
    remote: RemoteKeySets
    replay: ReplayGuard
    policy: TokenPolicy
    clock: Clock
    _inline: dict[str, dict[str, Jwk]] = field(init=False)
    _jws: PyJWS = field(init=False)

    def __post_init__(self) -> None:
        self._inline = {
            iss: public_keys(c.jwks, strict=True) for iss, c in self.clients.items() if c.jwks
        }
        self._jws = PyJWS(algorithms=sorted(self.policy.algorithms))

    async def verify(self, authorization: str | None, audience: str) -> ClientIdentity:
        """The verified client, or Unauthenticated naming the first check that failed."""
        token = _bearer(authorization)
        try:
            unverified = self._jws.decode_complete(token, options={"verify_signature": False})
        except PyJWTError:
            raise refused(Refusal.MALFORMED_TOKEN) from None
        header: dict[str, Any] = unverified["header"]
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.policy.algorithms:
            raise refused(Refusal.ALGORITHM_NOT_ALLOWED)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise refused(Refusal.MISSING_KID)
        # The claims are read before the signature is checked only to find the issuer's
        # key; none of them is trusted until the signature over these bytes verifies.
        claims = _claims(unverified["payload"])
        issuer = claims.get("iss")
        client = self.clients.get(issuer) if isinstance(issuer, str) else None
        if client is None:
            raise refused(Refusal.UNTRUSTED_ISSUER)
        key = await self._key(client, header.get("jku"), kid)
        try:
            prepared = verifying_key(key, alg)
            self._jws.decode_complete(token, key=prepared.key, algorithms=[alg])
        except (KeySetError, InvalidSignatureError):
            raise refused(Refusal.BAD_SIGNATURE) from None
        except PyJWTError:
            raise refused(Refusal.MALFORMED_TOKEN) from None
        return await self._checked_claims(client.iss, claims, audience)

    async def _key(self, client: TrustedClient, jku: Any, kid: str) -> Jwk:
        if jku is not None and (not isinstance(jku, str) or jku not in client.jku):
            raise refused(Refusal.JKU_NOT_ALLOWED)  # and never fetched
        if client.jwks is not None:
            key = self._inline[client.iss].get(kid)
        else:
            url = jku or client.jwks_url
            assert url is not None  # a client has an inline set or a URL (trust.py)
            try:
                key = await self.remote.key(url, kid)
            except KeysUnavailable:
                raise refused(Refusal.KEYS_UNAVAILABLE) from None
        if key is None:
            raise refused(Refusal.UNKNOWN_KID)
        return key

    async def _checked_claims(
        self, issuer: str, claims: Mapping[str, Any], audience: str
    ) -> ClientIdentity:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in audiences:
            raise refused(Refusal.WRONG_AUDIENCE)
        now = self.clock().timestamp()
        skew = self.policy.clock_skew.total_seconds()
        exp = _number(claims.get("exp"))
        if exp is None:
            raise refused(Refusal.MISSING_EXP)
        if now >= exp + skew:
            raise refused(Refusal.EXPIRED)
        iat = _number(claims.get("iat"))
        if iat is None:
            raise refused(Refusal.MISSING_IAT)
        if iat > now + skew:
            raise refused(Refusal.ISSUED_IN_FUTURE)
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None:
                raise refused(Refusal.MALFORMED_TOKEN, "nbf is not a NumericDate")
            if nbf > now + skew:
                raise refused(Refusal.NOT_YET_VALID)
        if exp - iat > self.policy.max_lifetime.total_seconds():
            raise refused(Refusal.LIFETIME_TOO_LONG)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise refused(Refusal.MISSING_JTI)
        if len(jti) > JTI_MAX_LENGTH:
            raise refused(Refusal.JTI_TOO_LONG)
        if "\x00" in jti:  # (no identifier holds one; PostgreSQL cannot keep it)
            raise refused(Refusal.MALFORMED_TOKEN, "jti holds a NUL character")
        # Remembered as long as the token could pass the exp check (exp plus the skew).
        remember_until = datetime.fromtimestamp(exp + skew, UTC)
        if not await self.replay.first_use(issuer, jti, remember_until):
            raise refused(Refusal.REPLAYED)
        return ClientIdentity(
            iss=issuer,
            sub=_text(claims.get("sub"), "sub"),
            tenant=_text(claims.get("tenant"), "tenant"),
        )


def _bearer(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise refused(Refusal.MISSING_TOKEN)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise refused(Refusal.MALFORMED_TOKEN, "expected `Authorization: Bearer <JWT>`")
    if len(token) > MAX_TOKEN_CHARS:
        raise refused(Refusal.MALFORMED_TOKEN, f"longer than {MAX_TOKEN_CHARS} characters")
    return token


def _claims(payload: bytes) -> dict[str, Any]:
    """The claims set: a JSON object (orjson: no NaN or Infinity can pass as a time)."""
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise refused(Refusal.MALFORMED_TOKEN, "its claims are not JSON") from None
    if not isinstance(claims, dict):
        raise refused(Refusal.MALFORMED_TOKEN, "its claims are not a JSON object")
    return claims


def _number(value: Any) -> float | None:
    """A NumericDate (seconds since the epoch), or None if `value` is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) < 1e11 else None


def _text(value: Any, claim: str) -> str | None:
    """A claim kept in the audit trail (`sub`, `tenant`): text, never a NUL (which no
    identifier holds, and PostgreSQL cannot keep)."""
    if not isinstance(value, str) or not value:
        return None
    if "\x00" in value:
        raise refused(Refusal.MALFORMED_TOKEN, f"{claim} holds a NUL character")
    return value
