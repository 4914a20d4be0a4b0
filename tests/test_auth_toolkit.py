"""The client toolkit: `crs-cds keys new` writes a key pair, `crs-cds fire --key` signs
every call (an `httpx.Auth`), against `crs-cds serve` with that key trusted."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx
import jwt
from typer.testing import CliRunner

from cds.auth.signing import ClientTokenAuth, load_client_key
from cds.auth.trust import load_trusted_clients
from cds.cli import app as cli_app
from tests.auth_support import EC_KEY, free_port, running_service

runner = CliRunner()


def test_keys_new_writes_a_private_key_and_its_public_jwks(tmp_path: Path) -> None:
    for alg in ("ES384", "RS384"):
        out = tmp_path / alg
        result = runner.invoke(cli_app, ["keys", "new", "--out", str(out), "--alg", alg])
        assert result.exit_code == 0, result.output
        private, public = out / "private-key.pem", out / "jwks.json"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        (jwk,) = json.loads(public.read_text())["keys"]
        assert jwk["alg"] == alg and jwk["use"] == "sig" and "d" not in jwk and "p" not in jwk
        assert f"kid: {jwk['kid']}" in result.output
        assert load_client_key(private.read_bytes(), jwk["kid"]).alg == alg
        # the public set is accepted inline as a trusted client
        clients = tmp_path / f"{alg}.json"
        clients.write_text(
            json.dumps([{"iss": "https://ehr", "jwks": json.loads(public.read_text())}])
        )
        assert load_trusted_clients(clients)


def test_keys_new_with_a_kid_and_never_overwrites(tmp_path: Path) -> None:
    first = runner.invoke(cli_app, ["keys", "new", "--out", str(tmp_path), "--kid", "k-2026"])
    assert first.exit_code == 0
    assert json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["kid"] == "k-2026"
    again = runner.invoke(cli_app, ["keys", "new", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "exists" in again.stderr
    assert (
        runner.invoke(
            cli_app, ["keys", "new", "--out", str(tmp_path / "x"), "--alg", "HS384"]
        ).exit_code
        == 2
    )


def test_each_request_gets_a_fresh_token_for_its_url() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    auth = ClientTokenAuth(EC_KEY, "https://ehr.example.org", tenant="t1", clock=lambda: now)
    tokens = []
    for _ in range(2):
        request = httpx.Request("POST", "https://cds.example.org/cds-services/crs-monitor?x=1")
        signed = next(auth.auth_flow(request))
        tokens.append(signed.headers["Authorization"].removeprefix("Bearer "))
    header = jwt.get_unverified_header(tokens[0])
    assert header["alg"] == "ES384" and header["kid"] == EC_KEY.kid
    decoded = [
        jwt.decode(
            t,
            EC_KEY.private.public_key(),
            algorithms=["ES384"],
            audience="https://cds.example.org/cds-services/crs-monitor",
            options={"verify_exp": False, "verify_iat": False},
        )
        for t in tokens
    ]
    assert decoded[0]["jti"] != decoded[1]["jti"]
    assert decoded[0]["exp"] - decoded[0]["iat"] == 60
    assert decoded[0]["iss"] == "https://ehr.example.org" and decoded[0]["tenant"] == "t1"


def test_fire_signs_its_calls_to_an_authenticated_service(
    tmp_path: Path, fhir_base_url: str
) -> None:
    keys = tmp_path / "keys"
    made = runner.invoke(cli_app, ["keys", "new", "--out", str(keys), "--kid", "fire-1"])
    assert made.exit_code == 0, made.output
    clients = tmp_path / "trusted-clients.yaml"
    public = json.loads((keys / "jwks.json").read_text())
    clients.write_text(json.dumps([{"iss": "https://ehr.test", "jwks": public}]))
    port = free_port()
    env = {
        "CRS_TRUSTED_CLIENTS_FILE": str(clients),
        "CRS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    with running_service(tmp_path, env, port) as (url, log):
        assert httpx.get(f"{url}/healthz").json()["authentication"] == "on"
        assert httpx.get(f"{url}/cds-services").status_code == 401
        base = ["fire", "crs-monitor", "--fhir-server", fhir_base_url, "--patient", "nobody"]
        unsigned = runner.invoke(cli_app, [*base, "--service-url", url, "--json"])
        assert unsigned.exit_code == 1  # discovery refused
        signed = runner.invoke(
            cli_app,
            [
                *base,
                "--service-url",
                url,
                "--json",
                "--key",
                str(keys / "private-key.pem"),
                "--kid",
                "fire-1",
                "--iss",
                "https://ehr.test",
            ],
        )
        assert signed.exit_code == 0, signed.output
        assert json.loads(signed.stdout) == {"cards": []}
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert [x["reason"] for x in lines if "reason" in x] == ["missing-token", "missing-token"]
