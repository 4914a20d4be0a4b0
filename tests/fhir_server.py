"""A real FHIR R4 server for the integration tests.

By default the session fixture ``fhir_base_url`` starts SEKMET (PyPI ``sekmet-fhir==0.1.1``) from
its own venv (``scripts/fhir-server-venv.sh``), bound to 127.0.0.1 on a free port, with a
throw-away SQLite store, and stops it at the end of the session. Set ``CRS_TEST_FHIR_BASE_URL``
to run the same tests against any other FHIR R4 server instead (nothing is started then).

Use from ``tests/conftest.py``::

    from tests.fhir_server import fhir_base_url  # noqa: F401

or ``pytest_plugins = ["tests.fhir_server"]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

__all__ = [
    "BASE_URL_ENV",
    "FhirServerError",
    "fhir_base_url",
    "sekmet_executable",
    "start_fhir_server",
]

BASE_URL_ENV = "CRS_TEST_FHIR_BASE_URL"
REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_SCRIPT = REPO_ROOT / "scripts" / "fhir-server-venv.sh"
READY_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 10.0
# SEKMET lets these override its config file; never inherit them from the caller's environment.
_SEKMET_ENV = ("SEKMET_CONFIG", "SEKMET_BASE_URL", "SEKMET_DB", "SEKMET_PORT", "SEKMET_PUBLIC_URL")


class FhirServerError(RuntimeError):
    """The test FHIR server could not be installed or started."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


def sekmet_executable() -> Path:
    """Install SEKMET into its venv if needed (idempotent) and return its ``sekmet`` executable."""
    try:
        proc = subprocess.run(
            ["bash", str(VENV_SCRIPT)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise FhirServerError(f"{VENV_SCRIPT} timed out after {INSTALL_TIMEOUT_S:.0f} s") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        stderr_tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise FhirServerError(
            f"{VENV_SCRIPT} failed (exit {proc.returncode}):\n{stderr_tail or '<no output>'}"
        )
    exe = Path(lines[-1])
    if not exe.is_file():
        raise FhirServerError(f"{VENV_SCRIPT} printed {exe}, which does not exist")
    return exe


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_config(
    tmp_dir: Path, port: int, extra_config: Mapping[str, object] | None
) -> tuple[Path, str]:
    base_url = f"http://127.0.0.1:{port}/fhir"
    config: dict[str, object] = {
        # base_url is what SEKMET puts into Location headers, fullUrls and paging links.
        "base_url": base_url,
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(tmp_dir / "data"),
        "own_private_key_path": str(tmp_dir / "keys" / "sekmet_private.pem"),
        # no lab/pharmacy/... simulator reacting to writes: a plain FHIR store
        "simulator": {"enabled": False},
        "server_auth": {"types": ["none"]},  # any Authorization header is ignored
        "log_inbound": False,  # no per-request traffic log in the SQLite store
    }
    config.update(extra_config or {})
    path = tmp_dir / "settings.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is valid YAML
    return path, base_url


def _wait_ready(
    base_url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FhirServerError(
                    f"FHIR server exited with code {proc.returncode} before it was ready; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            try:
                resp = client.get(
                    f"{base_url}/metadata", headers={"Accept": "application/fhir+json"}
                )
                if (
                    resp.status_code == 200
                    and resp.json().get("resourceType") == "CapabilityStatement"
                ):
                    return
                last_error = f"HTTP {resp.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
    raise FhirServerError(
        f"FHIR server at {base_url} not ready after {timeout:.0f} s ({last_error}); "
        f"log {log_path}:\n{_tail(log_path)}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def start_fhir_server(
    tmp_dir: Path | str,
    *,
    ready_timeout: float = READY_TIMEOUT_S,
    extra_config: Mapping[str, object] | None = None,
) -> Iterator[str]:
    """Run SEKMET on 127.0.0.1 with its store in ``tmp_dir``; yield its FHIR base URL.

    The base URL has the form ``http://127.0.0.1:<port>/fhir`` (no trailing slash). The server log
    is ``tmp_dir/fhir-server.log``. ``extra_config`` entries override the top-level settings keys
    (e.g. ``{"server_auth": {"types": ["bearer"], "tokens": ["t0k"]}}``).
    """
    tmp = Path(tmp_dir).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    exe = sekmet_executable()
    env = {k: v for k, v in os.environ.items() if k not in _SEKMET_ENV}
    log_path = tmp / "fhir-server.log"
    attempts = 3  # the free port can be taken between probing it and the server binding it
    for attempt in range(1, attempts + 1):
        config_path, base_url = _write_config(tmp, _free_port(), extra_config)
        with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [str(exe), "serve", "--config", str(config_path)],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal Ctrl-C reaches pytest only; pytest stops us
            )
        try:
            _wait_ready(base_url, proc, log_path, ready_timeout)
        except FhirServerError:
            _stop(proc)
            if attempt < attempts and "address already in use" in _tail(log_path).lower():
                continue
            raise
        except BaseException:
            _stop(proc)
            raise
        try:
            yield base_url
        finally:
            _stop(proc)
        return


@pytest.fixture(scope="session")
def fhir_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a FHIR R4 server for the whole test session (no trailing slash).

    ``CRS_TEST_FHIR_BASE_URL`` wins when set; otherwise a throw-away SEKMET server is started.
    """
    external = os.environ.get(BASE_URL_ENV, "").strip()
    if external:
        yield external.rstrip("/")
        return
    with start_fhir_server(tmp_path_factory.mktemp("fhir-server")) as base_url:
        yield base_url
