"""The trusted-clients file (CRS_TRUSTED_CLIENTS_FILE) and the authentication settings:
validated at start-up, a bad one named by file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cds.app import create_app
from cds.auth.trust import TrustedClientsError, key_set_url, load_trusted_clients
from cds.runtime import Runtime
from cds.settings import Settings
from tests.auth_support import EC_KEY, RSA_KEY, jwks, runtime_with_auth

PUBLIC_JWK = EC_KEY.public_jwk()


def write(tmp_path: Path, content: Any, name: str = "clients.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


BAD_FILES: dict[str, tuple[Any, str]] = {
    "not a list": ({"iss": "https://a.example.org"}, "field (root): expected a list"),
    "empty list": ([], "field (root): List should have at least 1 item"),
    "no iss": ([{"jwks": jwks(EC_KEY)}], "field [0].iss: Field required"),
    "no keys": ([{"iss": "https://a.example.org"}], "field [0]: Value error, give exactly one"),
    "both key sources": (
        [{"iss": "a", "jwks_url": "https://a.example.org/jwks", "jwks": jwks(EC_KEY)}],
        "field [0]: Value error, give exactly one",
    ),
    "http key-set URL to another host": (
        [{"iss": "a", "jwks_url": "http://a.example.org/jwks"}],
        "field [0].jwks_url: Value error, a key-set URL must be https",
    ),
    "http jku to another host": (
        [{"iss": "a", "jwks": jwks(EC_KEY), "jku": ["http://a.example.org/jwks"]}],
        "field [0].jku: Value error, a key-set URL must be https",
    ),
    "a private key inline": (
        [{"iss": "a", "jwks": {"keys": [{**PUBLIC_JWK, "d": "xx"}]}}],
        "field [0].jwks: Value error, keys[0]: holds private key material (d)",
    ),
    "a symmetric key inline": (
        [{"iss": "a", "jwks": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}}],
        "field [0].jwks: Value error, keys[0]: a symmetric key (kty oct)",
    ),
    "a key without kid": (
        [{"iss": "a", "jwks": {"keys": [{k: v for k, v in PUBLIC_JWK.items() if k != "kid"}]}}],
        "field [0].jwks: Value error, keys[0]: kid is required",
    ),
    "not a JWK Set": (
        [{"iss": "a", "jwks": {"key": PUBLIC_JWK}}],
        'field [0].jwks: Value error, not a JWK Set: expected {"keys": [...]}',
    ),
    "a typo (jwks_uri)": (
        [{"iss": "a", "jwks_uri": "https://a.example.org/jwks"}],
        "field [0].jwks_uri: Extra inputs are not permitted",
    ),
    "an issuer twice": (
        [{"iss": "a", "jwks": jwks(EC_KEY)}, {"iss": "a", "jwks": jwks(RSA_KEY)}],
        "field [1].iss: issuer listed twice",
    ),
    "not JSON or YAML": ("[{iss: a, jwks: {keys: [", "neither JSON nor YAML"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_named_with_its_field(case: str, tmp_path: Path) -> None:
    content, expected = BAD_FILES[case]
    path = write(tmp_path, content)
    with pytest.raises(TrustedClientsError) as raised:
        load_trusted_clients(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert expected in str(raised.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TrustedClientsError, match="cannot read"):
        load_trusted_clients(tmp_path / "absent.json")


def test_yaml_and_loopback_http_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "- iss: https://ehr.example.org\n"
        "  jwks_url: http://127.0.0.1:8123/jwks.json\n"
        "  jku: [http://localhost:8123/other.json, 'http://[::1]:8123/x.json']\n",
        "clients.yaml",
    )
    client = load_trusted_clients(path)["https://ehr.example.org"]
    assert client.jwks_url == "http://127.0.0.1:8123/jwks.json"
    assert len(client.jku) == 2


def test_the_format_the_sandbox_runner_writes(tmp_path: Path) -> None:
    """run.sh of the Sandbox tool: the Sandbox's public key inline, its jku allowed."""
    sandbox_key = {
        "kty": "EC",
        "use": "sig",
        "crv": "P-384",
        "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
        "x": "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB",
        "y": "Sm3mLE-n1zYNla_aiE3cb3nZsL51RbC7ysw3q8aJLxGm-hx79RPMYpITDjp7kgzy",
        "alg": "ES384",
    }
    entry = {
        "iss": "https://sandbox.cds-hooks.org",
        "jwks": {"keys": [sandbox_key]},
        "jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"],
    }
    clients = load_trusted_clients(write(tmp_path, [entry]))
    assert list(clients) == ["https://sandbox.cds-hooks.org"]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://ehr.example.org/jwks.json", True),
        ("http://127.0.0.1:9000/jwks.json", True),
        ("http://127.8.9.10/jwks.json", True),
        ("http://localhost/jwks.json", True),
        ("http://[::1]/jwks.json", True),
        ("http://ehr.example.org/jwks.json", False),
        ("http://10.0.0.1/jwks.json", False),
        ("http://127.0.0.1.example.org/jwks.json", False),
        ("https://user:pw@ehr.example.org/jwks.json", False),
        ("ftp://ehr.example.org/jwks.json", False),
        ("/jwks.json", False),
    ],
)
def test_key_set_urls(url: str, ok: bool) -> None:
    if ok:
        assert key_set_url(url) == url
    else:
        with pytest.raises(ValueError):
            key_set_url(url)


@pytest.mark.parametrize("algorithms", ["none", "HS384", "ES384,HS256", "RS384,foo"])
def test_only_asymmetric_algorithms_can_be_configured(algorithms: str) -> None:
    with pytest.raises(ValidationError, match="never none, never HMAC"):
        Settings(_env_file=None, jwt_algorithms=algorithms)


def test_algorithms_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRS_JWT_ALGORITHMS", "ES384, RS384, PS384")
    assert Settings(_env_file=None).jwt_algorithms == ["ES384", "RS384", "PS384"]


def test_authentication_needs_the_public_url(runtime: Runtime, tmp_path: Path) -> None:
    path = write(tmp_path, [{"iss": "a", "jwks": jwks(EC_KEY)}])
    no_url = runtime_with_auth(runtime, path, public_base_url=None)
    with pytest.raises(TrustedClientsError, match="CRS_PUBLIC_BASE_URL is required"):
        create_app(no_url)
