"""The wheel works on its own, as in the image: built from this checkout, installed from the
lock into a fresh venv outside it, and served from a directory outside it.

This is the image's install (Dockerfile) without a container runtime: `uv build` (sdist, then
the wheel from the sdist), the locked runtime dependencies with their hashes, the wheel with
no dependencies, then `crs-cds serve` on 127.0.0.1. Deselect with `-m "not packaging"`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cds.runtime import Runtime
from cds.scenarios.library import library
from tests.factories import grade2_monitor_request

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"
START_TIMEOUT_S = 60.0


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _outside_env() -> dict[str, str]:
    """The environment less anything that could point back at the checkout or its settings."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("CRS_", "PYTHON", "VIRTUAL_ENV"))
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the checkout with the locked runtime dependencies and the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    assert not root.is_relative_to(REPO)
    dist = root / "dist"
    _run(
        UV, "build", "--quiet", "--out-dir", dist,
        "--build-constraints", REPO / "requirements" / "build.txt", "--require-hashes", REPO,
        cwd=root,
    )  # fmt: skip
    (wheel,) = dist.glob("crs_cds-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    python = venv / "bin" / "python"
    env = {**_outside_env(), "UV_LINK_MODE": "copy"}
    # Byte code compiled at install time, as pip does in the image: nothing is written at
    # run time (checked below), so a read-only root file system is enough.
    install = (UV, "pip", "install", "--quiet", "--compile-bytecode", "--python", python)
    _run(
        *install, "--require-hashes", "-r", REPO / "requirements" / "runtime.txt",
        cwd=root, env=env,
    )  # fmt: skip
    _run(*install, "--no-deps", wheel, cwd=root, env=env)
    (root / "installed-files.json").write_text(json.dumps(_files(venv)))
    return venv


def _files(directory: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def test_the_wheel_carries_the_knowledge_and_reads_it_from_site_packages(installed: Path) -> None:
    workdir = installed.parent / "elsewhere"
    workdir.mkdir(exist_ok=True)
    out = _run(
        installed / "bin" / "python", "-c",
        "import json, cds, cds.knowledge as k; print(json.dumps([cds.__file__,"
        " str(k.DEFAULT_RULES_DIR), str(k.DEFAULT_MAPPINGS_DIR)]))",
        cwd=workdir, env=_outside_env(),
    )  # fmt: skip
    package, rules, mappings = (Path(p) for p in json.loads(out))
    site = installed / "lib"
    for path in (package, rules, mappings):
        assert path.is_relative_to(site), path
        assert not path.is_relative_to(REPO), path
    assert rules.name == "rules" and rules.parent.name == "_bundled"
    assert {p.name for p in rules.glob("*.yaml")} == {
        p.name for p in (REPO / "rules").glob("*.yaml")
    }
    assert {p.name for p in mappings.glob("*.yaml")} == {
        p.name for p in (REPO / "fhir_mappings").glob("*.yaml")
    }


def test_the_scenario_library_ships_with_the_wheel(installed: Path) -> None:
    workdir = installed.parent / "elsewhere"
    workdir.mkdir(exist_ok=True)
    out = _run(
        installed / "bin" / "crs-cds", "scenarios", "--json", cwd=workdir, env=_outside_env()
    )
    assert [s["id"] for s in json.loads(out)] == list(library())


@pytest.fixture(scope="module")
def served(installed: Path) -> Iterator[str]:
    """`crs-cds serve` from the installed venv, working directory outside the checkout."""
    workdir = installed.parent / "served-from"
    workdir.mkdir()
    port = _free_port()
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(installed / "bin" / "crs-cds"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=_outside_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (workdir / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the installed service did not start in time"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_installed_service_answers_discovery(served: str) -> None:
    response = httpx.get(f"{served}/cds-services", timeout=10.0)
    assert response.status_code == 200
    ids = {service["id"] for service in response.json()["services"]}
    assert {"crs-monitor", "crs-order-select", "crs-order-sign"} <= ids


def test_the_installed_service_grades_a_hook_call_with_the_same_rules(
    served: str, runtime: Runtime
) -> None:
    body = grade2_monitor_request()
    response = httpx.post(f"{served}/cds-services/crs-monitor", json=body, timeout=10.0)
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    crs = card["extension"]["crs"]
    assert crs["grade"] == 2
    # The version carries a digest of every knowledge file: the wheel's copy is this checkout's.
    assert crs["ruleSetVersion"] == runtime.rules.version


def test_nothing_is_written_into_the_installation_at_run_time(installed: Path, served: str) -> None:
    """After the calls above: the venv is as installed (read-only root file system)."""
    before = json.loads((installed.parent / "installed-files.json").read_text())
    assert _files(installed) == before
