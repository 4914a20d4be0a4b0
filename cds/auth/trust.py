"""Which CDS clients are trusted: the file named by `CRS_TRUSTED_CLIENTS_FILE`.

A JSON or YAML list, one entry per issuer (the `iss` of its tokens)::

    - iss: https://ehr.example.org
      jwks_url: https://ehr.example.org/.well-known/jwks.json   # or, inline:
      # jwks: {keys: [{kty: EC, crv: P-384, kid: ..., x: ..., y: ...}]}
      jku: [https://ehr.example.org/.well-known/jwks.json]      # optional

Validated when the service starts: a bad file stops start-up with a `TrustedClientsError`
naming the file and the field, as the knowledge loader does. Key-set URLs must be HTTPS;
plain http is accepted only for a loopback host (a test server on this machine).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cds.auth.keys import KeySetError, public_keys


class TrustedClientsError(Exception):
    """The trusted-clients file is missing or invalid; the message names file and field."""


def is_loopback_host(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (brackets allowed): an address only this machine
    reaches."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def key_set_url(url: str, what: str = "a key-set URL") -> str:
    """`url` if the service may fetch a key set from it (or send to it what `what`
    names): HTTPS, or http to a loopback host."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"not an absolute URL: {url!r}")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not carry credentials")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ValueError(f"{what} must be https (plain http only for a loopback host)")


class TrustedClient(BaseModel):
    """One trusted issuer: where its public keys are, and the `jku` URLs its tokens may
    name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    jku: tuple[str, ...] = ()

    @field_validator("jwks_url")
    @classmethod
    def _fetchable(cls, value: str | None) -> str | None:
        return key_set_url(value) if value is not None else None

    @field_validator("jku")
    @classmethod
    def _fetchable_each(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(key_set_url(url) for url in value)

    @field_validator("jwks")
    @classmethod
    def _public_key_set(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                public_keys(value, strict=True)
            except KeySetError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> TrustedClient:
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError("give exactly one of jwks_url (fetched) and jwks (inline)")
        return self


class _TrustedClientList(BaseModel):
    clients: list[TrustedClient] = Field(min_length=1)


def load_trusted_clients(path: Path) -> Mapping[str, TrustedClient]:
    """The trusted clients by issuer, or TrustedClientsError naming the file and field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except OSError as exc:
        raise TrustedClientsError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise TrustedClientsError(f"{path}: neither JSON nor YAML: {exc}") from exc
    if not isinstance(data, list):
        raise TrustedClientsError(
            f"{path}: field (root): expected a list of trusted clients "
            '({"iss": ..., "jwks_url": ... | "jwks": {"keys": [...]}})'
        )
    try:
        clients = _TrustedClientList(clients=data).clients
    except ValidationError as exc:
        problems = "; ".join(
            f"field {_field(err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise TrustedClientsError(f"{path}: {problems}") from exc
    by_issuer: dict[str, TrustedClient] = {}
    for i, client in enumerate(clients):
        if client.iss in by_issuer:
            raise TrustedClientsError(f"{path}: field [{i}].iss: issuer listed twice")
        by_issuer[client.iss] = client
    return by_issuer


def _field(loc: tuple[int | str, ...]) -> str:
    """`("clients", 0, "jwks_url")` → `[0].jwks_url` (the file is the list)."""
    text = ""
    for part in loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(root)"
