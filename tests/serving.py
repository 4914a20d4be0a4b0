"""`crs-cds serve` in a subprocess on 127.0.0.1, for tests that need the real server
(uvicorn, its logs, its memory): its URL, its log file and its process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Served:
    """A running `crs-cds serve`."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def memory_kib(self) -> tuple[int, int]:
        """(RSS now, peak RSS since the last `reset_peak`), in KiB, from /proc."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
            if ":" in line
        )
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def reset_peak(self) -> None:
        """Make the peak RSS the current RSS (Linux: /proc/PID/clear_refs, value 5)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


@contextmanager
def serve_process(
    directory: Path, env: dict[str, str], port: int | None = None, *args: str
) -> Iterator[Served]:
    """`crs-cds serve` with `env` (and no other CRS_ setting), started in `directory` (so
    no .env of the checkout is read); stopped by its PID."""
    port = port or free_port()
    log = directory / f"serve-{port}.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRS_")}
    command = [sys.executable, "-c", "from cds.cli import main; main()", "serve"]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            env={"CRS_DATA_DIR": str(directory / "data"), **clean, **env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=directory,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start: {log.read_text()}")
            time.sleep(0.1)
        yield Served(url, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
