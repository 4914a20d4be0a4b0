"""The watch's credentials for its FHIR server: a static bearer token
(CRS_WATCH_FHIR_TOKEN), or — what an EHR offers a system that reads without a user —
SMART Backend Services (the client-credentials grant with a signed JWT assertion,
`private_key_jwt`; SMART App Launch 2.x, "Backend Services").

With SMART, the watch is registered at the EHR as a backend client with its public key
(`crs-cds keys new` makes an ES384 or RS384 pair). For each token it signs an assertion
(`iss` = `sub` = its client id, `aud` = the token endpoint, a new `jti`, five minutes at
most), posts it to the token endpoint (CRS_WATCH_SMART_TOKEN_URL, or the `token_endpoint`
of the server's `.well-known/smart-configuration`), and keeps the access token until a
minute before it expires (or half its lifetime, if shorter). A FHIR answer 401 drops it:
the next look asks for a new one. Neither the key, the assertion nor a token is logged.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import orjson

from cds.auth.signing import ClientKey
from cds.auth.trust import key_set_url
from cds.clock import Clock
from cds.fhir.client import FhirQueryFailed

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = timedelta(minutes=5)  # the most SMART Backend Services allows
TOKEN_TIMEOUT_SECONDS = 10.0
RENEW_BEFORE = timedelta(seconds=60)
DEFAULT_LIFETIME = timedelta(minutes=5)  # a token answer without `expires_in`
LABEL = "the SMART access token"


class TokenRefused(FhirQueryFailed):
    """No access token: the token endpoint refused, or could not be reached or read.
    A FHIR failure to the worker (the cycle fails, counted, and is tried again)."""

    def __init__(self, reason: str) -> None:
        super().__init__(LABEL, reason)


@dataclass(frozen=True)
class SmartClient:
    """The watch as a SMART backend client."""

    client_id: str
    key: ClientKey
    scopes: tuple[str, ...]
    token_url: str | None  # None: discovered from the server's smart-configuration


def default_scopes(writeback: str) -> tuple[str, ...]:
    """What the watch reads (SMART v2 scopes), and writes when the write-back is on."""
    scopes = [
        "system/Patient.rs",
        "system/Observation.rs",
        "system/MedicationAdministration.rs",
        "system/Medication.rs",
        "system/Condition.rs",  # ICANS: seizures, cerebral oedema
        "system/QuestionnaireResponse.rs",  # ICANS: ICE and CAPD assessments
    ]
    if writeback == "communication":
        scopes.append("system/Communication.cu")
    elif writeback == "flag":
        scopes.append("system/Flag.cu")
    return tuple(scopes)


def token_endpoint(url: str) -> str:
    """`url` if tokens may be asked for there: HTTPS, or http to a loopback host."""
    return key_set_url(url, "a token endpoint")


class Credentials:
    """The bearer token to send to the watched FHIR server (None: none)."""

    def __init__(
        self,
        server: str,
        static: str | None,
        smart: SmartClient | None,
        http: Callable[[], httpx.AsyncClient],
        clock: Clock,
    ) -> None:
        self.server = server
        self.static = static
        self.smart = smart
        self.http = http
        self.clock = clock
        self._token: str | None = None
        self._renew_at = datetime.min.replace(tzinfo=UTC)
        self._endpoint = smart.token_url if smart is not None else None
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def bearer(self) -> str | None:
        """The token to send now (a SMART token is asked for when none is held, or it is
        about to expire; TokenRefused when it cannot be had)."""
        if self.smart is None:
            return self.static
        if self._token is not None and self.clock() < self._renew_at:
            return self._token
        async with self._guard():  # one request for a token at a time
            if self._token is None or self.clock() >= self._renew_at:
                await self._renew(self.smart)
            assert self._token is not None
            return self._token

    def expire(self) -> None:
        """The server refused the token (401): ask for a new one next time."""
        self._token = None

    def _guard(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # a lock belongs to one loop
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def _renew(self, smart: SmartClient) -> None:
        endpoint = self._endpoint or await self._discover()
        self._endpoint = endpoint
        now = self.clock()
        assertion = jwt.encode(
            {
                "iss": smart.client_id,
                "sub": smart.client_id,
                "aud": endpoint,
                "iat": int(now.timestamp()),
                "exp": int((now + ASSERTION_LIFETIME).timestamp()),
                "jti": str(uuid.uuid4()),
            },
            smart.key.private,
            algorithm=smart.key.alg,
            headers={"kid": smart.key.kid, "typ": "JWT"},
        )
        form = {
            "grant_type": "client_credentials",
            "scope": " ".join(smart.scopes),
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        answer = await self._post(endpoint, form)
        token, token_type = answer.get("access_token"), answer.get("token_type", "")
        if not isinstance(token, str) or not token:
            raise TokenRefused("the token endpoint's answer has no access_token")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenRefused(f"the token endpoint issued a {str(token_type)[:20]!r} token")
        lifetime = DEFAULT_LIFETIME
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, int | float | str) and str(expires_in).isdigit():
            lifetime = timedelta(seconds=int(expires_in))
        self._token = token
        self._renew_at = self.clock() + max(lifetime - RENEW_BEFORE, lifetime / 2)

    async def _post(self, endpoint: str, form: dict[str, str]) -> dict[str, Any]:
        try:
            response = await self.http().post(
                endpoint,
                data=form,
                headers={"Accept": "application/json"},
                timeout=TOKEN_TIMEOUT_SECONDS,
            )
        except httpx.HTTPError as exc:
            raise TokenRefused(f"the token endpoint: {type(exc).__name__}") from exc
        answer = _json_object(response.content)
        if response.status_code != 200:
            error = str(answer.get("error", ""))[:60]
            described = str(answer.get("error_description", ""))[:200]
            raise TokenRefused(
                f"the token endpoint answered HTTP {response.status_code}"
                + (f" {error}" if error else "")
                + (f": {described}" if described else "")
            )
        return answer

    async def _discover(self) -> str:
        """The token endpoint the FHIR server advertises (SMART configuration)."""
        url = f"{self.server}/.well-known/smart-configuration"
        try:
            response = await self.http().get(
                url, headers={"Accept": "application/json"}, timeout=TOKEN_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            raise TokenRefused(f"the SMART configuration: {type(exc).__name__}") from exc
        found = _json_object(response.content).get("token_endpoint")
        if response.status_code != 200 or not isinstance(found, str):
            raise TokenRefused(
                f"the server's .well-known/smart-configuration (HTTP {response.status_code}) "
                "names no token_endpoint: set CRS_WATCH_SMART_TOKEN_URL"
            )
        try:
            return token_endpoint(found)
        except ValueError as exc:
            raise TokenRefused(f"the advertised token endpoint is refused: {exc}") from exc


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
