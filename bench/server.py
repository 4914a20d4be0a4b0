"""A uvicorn server process on 127.0.0.1, a keep-alive HTTP client, and RSS readings."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import orjson

STARTUP_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`uvicorn --factory <factory>` in its own process, bound to 127.0.0.1 only."""

    def __init__(
        self, name: str, factory: str, env: dict[str, str] | None = None, enabled: bool = True
    ) -> None:
        self.name = name
        self.factory = factory
        self.env = env or {}
        self.enabled = enabled
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        if self.enabled:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            self.factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
            # A client may wait long between its requests on a loaded machine (10k-resource
            # rounds of the other variants): uvicorn's 5 s default would close it mid-run.
            "--timeout-keep-alive",
            "600",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"{self.name} server exited on start-up:\n{err}")
            try:
                status, _ = self.client().get("/healthz")
            except OSError:
                time.sleep(0.05)
                continue
            if status == 200:
                return
        self.stop()
        raise RuntimeError(f"{self.name} server did not answer within {STARTUP_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} server is not running")
        return self.process.pid

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (current) and VmHWM (peak) of the server process, in KiB."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def client(self) -> Client:
        return Client(self.port)


class Client:
    """One keep-alive HTTP/1.1 connection (http.client: little client-side overhead)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str) -> tuple[int, bytes]:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        return response.status, response.read()

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.connection.request(
            "POST", path, body, {"Content-Type": "application/json", "Accept": "application/json"}
        )
        response = self.connection.getresponse()
        return response.status, response.read()

    def post_ok(self, path: str, body: bytes) -> bytes:
        """POST and fail loudly on anything but 200 (a benchmark of errors is worthless)."""
        status, data = self.post(path, body)
        if status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}: {data[:500]!r}")
        return data

    def services(self) -> list[str]:
        status, data = self.get("/cds-services")
        if status != 200:
            return []
        return [s["id"] for s in orjson.loads(data).get("services", [])]

    def close(self) -> None:
        self.connection.close()
