"""The start-up rule: without trusted clients the service runs open only on a loopback
address (saying so) or with --allow-unauthenticated; anywhere else it refuses to start."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from cds.auth.startup import AuthenticationMode, UnsafeStart, authentication_mode
from cds.cli import app as cli_app
from tests.auth_support import running_service

ON, LOOPBACK, ALLOWED = (
    AuthenticationMode.ON,
    AuthenticationMode.OPEN_LOOPBACK,
    AuthenticationMode.OPEN_ALLOWED,
)


@pytest.mark.parametrize(
    ("trusted", "host", "allow", "mode"),
    [
        (False, "127.0.0.1", False, LOOPBACK),
        (False, "127.0.0.2", False, LOOPBACK),
        (False, "localhost", False, LOOPBACK),
        (False, "::1", False, LOOPBACK),
        (False, "0.0.0.0", False, None),
        (False, "::", False, None),
        (False, "10.1.2.3", False, None),
        (False, "cds.example.org", False, None),
        (False, "0.0.0.0", True, ALLOWED),
        (False, "127.0.0.1", True, LOOPBACK),
        (True, "0.0.0.0", False, ON),
        (True, "127.0.0.1", False, ON),
    ],
)
def test_start_up_rule(
    trusted: bool, host: str, allow: bool, mode: AuthenticationMode | None
) -> None:
    if mode is None:
        with pytest.raises(UnsafeStart, match="--allow-unauthenticated"):
            authentication_mode(trusted_clients=trusted, host=host, allow_unauthenticated=allow)
    else:
        got = authentication_mode(trusted_clients=trusted, host=host, allow_unauthenticated=allow)
        assert got is mode


# --- crs-cds serve -----------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No authentication settings from the caller's environment; the root logger as it was
    (`serve` configures logging)."""
    for name in ("CRS_TRUSTED_CLIENTS_FILE", "CRS_PUBLIC_BASE_URL", "CRS_HOST", "CRS_PORT"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `serve` would hand uvicorn (it is not started)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.usefixtures("cli_env")
def test_serve_refuses_an_open_public_address(served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to start" in result.stderr and "--allow-unauthenticated" in result.stderr
    assert served == []


@pytest.mark.usefixtures("cli_env")
def test_serve_open_when_explicitly_allowed(served: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "--allow-unauthenticated"])
    assert result.exit_code == 0, result.output
    assert served[0]["host"] == "0.0.0.0"
    assert "authentication is OFF" in result.stderr


@pytest.mark.usefixtures("cli_env")
def test_serve_refuses_a_bad_trusted_clients_file(
    tmp_path: Path, served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([{"iss": "a", "jwks_url": "http://ehr.example.org/jwks"}]))
    monkeypatch.setenv("CRS_TRUSTED_CLIENTS_FILE", str(path))
    monkeypatch.setenv("CRS_PUBLIC_BASE_URL", "https://cds.example.org")
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert f"{path}: field [0].jwks_url" in result.stderr
    assert served == []


@pytest.mark.usefixtures("cli_env")
def test_serve_with_trusted_clients_needs_the_public_url(
    tmp_path: Path, served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([{"iss": "a", "jwks_url": "https://ehr.example.org/jwks"}]))
    monkeypatch.setenv("CRS_TRUSTED_CLIENTS_FILE", str(path))
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "CRS_PUBLIC_BASE_URL is required" in result.stderr
    assert served == []


def test_serve_on_loopback_runs_open_and_says_so(tmp_path: Path) -> None:
    with running_service(tmp_path, {}) as (url, log):
        assert httpx.get(f"{url}/healthz").json()["authentication"] == "off"
        assert httpx.get(f"{url}/cds-services").json()["extension"] == {"authentication": "off"}
    warnings = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(
        w["level"] == "WARNING" and "authentication is OFF" in w["message"] for w in warnings
    )
