"""Public keys of trusted clients: JWK Sets given inline, or fetched from a URL and cached.

A fetched set is kept for `cache_seconds`, fetched again when a token names a `kid` it
does not hold (the client rotated its key), and never fetched more often than once per
`min_refresh_seconds` for one URL, whatever the tokens say — so unknown `kid`s cannot
make the service hammer a key server. When a fetch fails the keys already held are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

log = logging.getLogger("cds.auth.keys")

Clock = Callable[[], datetime]
Jwk = Mapping[str, Any]

KEY_SET_TIMEOUT_SECONDS = 5.0
KEY_SET_MAX_BYTES = 256 * 1024  # a JWK Set is a few kB; a larger answer is not one
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# Which key fits which algorithm (RFC 7518 §3.4: ES384 is ECDSA on P-384).
KEY_TYPE = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "EdDSA": ("OKP", None),
}


class KeySetError(ValueError):
    """A JWK Set, or a key in it, that cannot be used; the message says which and why."""


class KeysUnavailable(Exception):
    """No key set could be had from a URL (never fetched successfully)."""


def public_keys(document: Any, *, strict: bool) -> dict[str, Jwk]:
    """The signing keys of a JWK Set by `kid`.

    `strict` (a set in the configuration): every key must be a usable public signing key
    with a `kid`, else KeySetError naming it. Not strict (a set fetched from a URL): keys
    that cannot be used are skipped.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeySetError('not a JWK Set: expected {"keys": [...]}')
    keys: dict[str, Jwk] = {}
    for i, key in enumerate(document["keys"]):
        try:
            kid = _checked_key(key)
            if kid in keys:
                raise KeySetError(f"kid {kid!r} appears more than once")
        except KeySetError as exc:
            if strict:
                raise KeySetError(f"keys[{i}]: {exc}") from None
            continue
        if kid is not None:
            keys[kid] = key
    if strict and not keys:
        raise KeySetError("keys: no public signing key")
    return keys


def _checked_key(key: Any) -> str | None:
    """The `kid` of a usable public signing key; None for a key not meant for signing."""
    if not isinstance(key, dict):
        raise KeySetError("a key must be a JSON object")
    if key.get("kty") == "oct":
        raise KeySetError("a symmetric key (kty oct): HMAC is never accepted")
    private = sorted(PRIVATE_MEMBERS & key.keys())
    if private:
        raise KeySetError(f"holds private key material ({', '.join(private)}): give the public key")
    if key.get("use", "sig") != "sig":
        return None
    kid = key.get("kid")
    if not isinstance(kid, str) or not kid:
        raise KeySetError("kid is required (tokens name their key by kid)")
    try:
        PyJWK(key)
    except (PyJWKError, PyJWTError) as exc:
        raise KeySetError(f"not a usable public key ({type(exc).__name__})") from None
    return kid


def verifying_key(key: Jwk, alg: str) -> PyJWK:
    """The key prepared to verify `alg`, or KeySetError when the key does not fit it
    (another key type or curve, or the key's own `alg` says otherwise)."""
    kty, crv = KEY_TYPE.get(alg, (None, None))
    if kty is None or key.get("kty") != kty or (crv is not None and key.get("crv") != crv):
        raise KeySetError(f"key {key.get('kid')!r} is not a key for {alg}")
    if key.get("alg", alg) != alg:
        raise KeySetError(f"key {key.get('kid')!r} is for {key.get('alg')}, not {alg}")
    try:
        return PyJWK(dict(key), algorithm=alg)
    except (PyJWKError, PyJWTError) as exc:
        raise KeySetError(f"key {key.get('kid')!r} is not usable ({type(exc).__name__})") from None


@dataclass
class _Fetched:
    keys: dict[str, Jwk] | None  # None: never fetched successfully
    fetched_at: datetime | None
    attempted_at: datetime


@dataclass
class RemoteKeySets:
    """Key sets fetched from URLs (each one an issuer's `jwks_url` or an allowed `jku`)."""

    http: Callable[[], httpx.AsyncClient]
    clock: Clock
    cache_seconds: float
    min_refresh_seconds: float
    _entries: dict[str, _Fetched] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def key(self, url: str, kid: str) -> Jwk | None:
        """The key `kid` of the set at `url` (fetched or refreshed as needed), None if
        the set does not hold it; KeysUnavailable if the set could never be fetched."""
        entry = self._entries.get(url)
        if entry is None or self._wants_fetch(entry, kid):
            lock = self._locks.setdefault(url, asyncio.Lock())
            async with lock:
                entry = self._entries.get(url)  # another call may have fetched meanwhile
                if entry is None or self._wants_fetch(entry, kid):
                    entry = await self._fetch(url, entry)
        if entry.keys is None:
            raise KeysUnavailable(url)
        return entry.keys.get(kid)

    def _wants_fetch(self, entry: _Fetched, kid: str) -> bool:
        now = self.clock()
        if now - entry.attempted_at < timedelta(seconds=self.min_refresh_seconds):
            return False  # rate limit: whatever the token says
        if entry.keys is None or kid not in entry.keys:
            return True
        assert entry.fetched_at is not None
        return now - entry.fetched_at >= timedelta(seconds=self.cache_seconds)

    async def _fetch(self, url: str, previous: _Fetched | None) -> _Fetched:
        now = self.clock()
        try:
            keys = public_keys(await self._download(url), strict=False)
        except (httpx.HTTPError, KeySetError, orjson.JSONDecodeError, _TooLarge) as exc:
            log.warning("client key set could not be fetched", extra={"error": _why(exc)})
            kept = previous.keys if previous else None
            entry = _Fetched(kept, previous.fetched_at if previous else None, now)
        else:
            log.info(f"client key set fetched: {len(keys)} signing keys")
            entry = _Fetched(keys, now, now)
        self._entries[url] = entry
        return entry

    async def _download(self, url: str) -> Any:
        client = self.http()
        async with client.stream(
            "GET", url, headers={"Accept": "application/json"}, timeout=KEY_SET_TIMEOUT_SECONDS
        ) as response:
            if response.status_code != 200:
                raise KeySetError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > KEY_SET_MAX_BYTES:
                    raise _TooLarge
        return orjson.loads(body)


class _TooLarge(Exception):
    pass


def _why(exc: Exception) -> str:
    if isinstance(exc, _TooLarge):
        return f"larger than {KEY_SET_MAX_BYTES} bytes"
    if isinstance(exc, KeySetError):
        return str(exc)
    return type(exc).__name__
