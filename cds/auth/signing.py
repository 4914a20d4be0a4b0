"""The client side, for engineers testing an authenticated deployment: a key pair for a
CDS client, and an `httpx.Auth` that signs every request as CDS Hooks asks (a fresh,
short-lived JWT whose `aud` is the URL called and whose `jti` is new)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

NEW_KEY_ALGORITHMS = ("ES384", "RS384")
PRIVATE_KEY_FILE = "private-key.pem"
JWKS_FILE = "jwks.json"
TOKEN_LIFETIME = timedelta(seconds=60)

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class ClientKey:
    """A CDS client's signing key: the private key, its algorithm and its `kid`."""

    private: SigningKey
    alg: str
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with `kid`, `alg` and `use: sig`."""
        public = self.private.public_key()
        fields = (
            ECAlgorithm.to_jwk(public, as_dict=True)
            if isinstance(public, ec.EllipticCurvePublicKey)
            else RSAAlgorithm.to_jwk(public, as_dict=True)
        )
        return {**fields, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_client_key(alg: str = "ES384", kid: str | None = None) -> ClientKey:
    """A new key for `alg` (ES384: P-384; RS384: RSA 3072); `kid` defaults to the key's
    RFC 7638 thumbprint."""
    private: SigningKey
    if alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg == "RS384":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"alg must be one of {', '.join(NEW_KEY_ALGORITHMS)}")
    key = ClientKey(private, alg, "")
    return ClientKey(private, alg, kid or thumbprint(key.public_jwk()))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def write_client_key(key: ClientKey, out: Path) -> tuple[Path, Path]:
    """Write `private-key.pem` (mode 0600) and `jwks.json` (the public key) into `out`;
    refuses to overwrite either. Returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    private_path, jwks_path = out / PRIVATE_KEY_FILE, out / JWKS_FILE
    for path in (private_path, jwks_path):
        if path.exists():
            raise FileExistsError(f"{path} exists: choose another directory")
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key.private_pem())
    jwks_path.write_text(json.dumps({"keys": [key.public_jwk()]}, indent=2) + "\n")
    return private_path, jwks_path


def load_client_key(pem: bytes, kid: str) -> ClientKey:
    """A private key read from PEM: a P-384 key signs ES384, an RSA key RS384."""
    private = serialization.load_pem_private_key(pem, password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1):
        return ClientKey(private, "ES384", kid)
    if isinstance(private, rsa.RSAPrivateKey):
        return ClientKey(private, "RS384", kid)
    raise ValueError("expected a P-384 EC or an RSA private key")


def client_token(
    key: ClientKey,
    *,
    iss: str,
    aud: str,
    now: datetime,
    lifetime: timedelta = TOKEN_LIFETIME,
    jti: str | None = None,
    tenant: str | None = None,
) -> str:
    """A CDS Hooks client JWT for one call to `aud`."""
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": jti or str(uuid.uuid4()),
    }
    if tenant:
        claims["tenant"] = tenant
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})


class ClientTokenAuth(httpx.Auth):
    """Signs each request with a fresh token: `aud` the URL called (without its query),
    a new `jti`, a lifetime of a minute."""

    def __init__(
        self,
        key: ClientKey,
        iss: str,
        *,
        tenant: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.key = key
        self.iss = iss
        self.tenant = tenant
        self.clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        aud = str(request.url.copy_with(query=None, fragment=None))
        token = client_token(self.key, iss=self.iss, aud=aud, now=self.clock(), tenant=self.tenant)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
