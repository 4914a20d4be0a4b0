"""The real server (`crs-cds serve`, uvicorn) under slow, idle, numerous and large clients
(issue #11, section 3): heads and bodies that do not arrive in time, idle connections,
more connections than allowed, a body announced at 1 GiB — and /healthz answering within
250 ms while the largest request the service accepts is evaluated."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bench.payloads import build_payload
from bench.stats import percentile
from cds.settings import Settings
from tests.serving import Served, serve_process

# 2 s, each bound TIMEOUT + 3 s: room for a slow, loaded machine on both sides
TIMEOUT = 2.0
LATE = TIMEOUT + 3.0  # closed or answered after this: the limit did not act


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = {
        "CRS_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
        "CRS_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
        "CRS_KEEP_ALIVE_SECONDS": str(TIMEOUT),
        "CRS_MAX_CONNECTIONS": "8",
        "CRS_MAX_REQUEST_BYTES": str(1024 * 1024),
        "CRS_LOG_LEVEL": "WARNING",
    }
    with serve_process(tmp_path_factory.mktemp("limits"), env) as running:
        yield running


def _connect(served: Served) -> socket.socket:
    host, port = served.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (reading and dropping what it sends)."""
    started = time.monotonic()
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_head_is_answered_by_the_real_server_and_the_connection_goes_on(served: Served) -> None:
    # uvicorn sends no body to a HEAD: the Content-Length is the GET's, and the next
    # request on the same connection is answered (a stray body would be read as its head)
    with _connect(served) as sock:
        sock.sendall(
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        sock.settimeout(10)
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head, get = data.split(b"HTTP/1.1 200")[1:]
    length = int(get.split(b"content-length: ")[1].split(b"\r\n")[0])
    assert head.endswith(b"\r\n\r\n")  # headers only
    assert f"content-length: {length}".encode() in head
    assert len(get.split(b"\r\n\r\n", 1)[1]) == length


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    with _connect(served) as sock:
        assert TIMEOUT * 0.8 < _closed_after(sock) < LATE


def test_a_head_that_drips_is_cut(served: Served) -> None:
    with _connect(served) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(50):  # a header line every 0.2 s for 10 s (past LATE), never a whole head
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.2)
            sock.settimeout(0.01)
            try:
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                pass
        assert time.monotonic() - started < LATE


def test_an_idle_keep_alive_connection_is_closed(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")
        assert _closed_after(sock) < LATE


def test_a_body_that_does_not_arrive_is_408(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(
            b"POST /cds-services/crs-monitor HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"connection: close" in answer.lower()
        assert time.monotonic() - started < LATE


def test_a_body_announced_too_large_is_413_before_it_is_sent(served: Served) -> None:
    with _connect(served) as sock:
        sock.sendall(
            b"POST /cds-services/crs-monitor HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
        )
        answer = _answer(sock)  # not one byte of the body sent
        assert answer.startswith(b"HTTP/1.1 413"), answer


def test_a_large_body_without_length_is_cut_at_the_limit(served: Served) -> None:
    def endless() -> Iterator[bytes]:
        for _ in range(16 * 1024):  # 1 GiB offered, 64 KiB at a time
            yield b" " * 65536

    response = httpx.post(
        f"{served.url}/cds-services/crs-monitor",
        content=endless(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert "CRS_MAX_REQUEST_BYTES" in response.json()["error"]


def test_connections_past_the_limit_are_503(served: Served) -> None:
    idle = [_connect(served) for _ in range(8)]
    try:
        response = httpx.get(f"{served.url}/healthz", timeout=5)
        assert response.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200


# --- /healthz beside the largest request ---------------------------------------------------


def _largest_payload(limit: int) -> bytes:
    """The largest patient-view request of the benchmark's kind under `limit` bytes."""
    resources = 1_000
    body = build_payload(resources, datetime.now(UTC)).monitor
    per_resource = len(body) / resources
    resources = int(limit / per_resource * 0.995)
    body = build_payload(resources, datetime.now(UTC)).monitor
    while len(body) > limit:
        resources -= 100
        body = build_payload(resources, datetime.now(UTC)).monitor
    return body


def _healthz_beside(base: str, body: bytes, concurrent: int) -> tuple[float, float, list[float]]:
    """/healthz polled every 5 ms while `concurrent` copies of `body` are evaluated: the
    slowest /healthz, the slowest hook call, and every /healthz latency (seconds)."""
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    durations: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                started = time.perf_counter()
                assert client.get(f"{base}/healthz").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    def big() -> None:
        with httpx.Client(timeout=60) as client:
            started = time.perf_counter()
            response = client.post(
                f"{base}/cds-services/crs-monitor", content=body, headers=headers
            )
            durations.append(time.perf_counter() - started)
            assert response.status_code == 200

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.1)
    callers = [threading.Thread(target=big) for _ in range(concurrent)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    stop.set()
    poller.join()
    assert len(durations) == concurrent
    return max(latencies), max(durations), latencies


def test_healthz_answers_within_250_ms_while_the_largest_request_is_evaluated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limit = Settings().max_request_bytes
    body = _largest_payload(limit)
    headers = {"Content-Type": "application/json"}
    with serve_process(tmp_path, {"CRS_LOG_LEVEL": "WARNING"}) as running:
        url = f"{running.url}/cds-services/crs-monitor"
        with httpx.Client(timeout=60) as client:
            assert client.post(url, content=body, headers=headers).status_code == 200  # warm
            over = body + b" " * (limit - len(body) + 1)
            assert client.post(url, content=over, headers=headers).status_code == 413
        results = {n: _healthz_beside(running.url, body, n) for n in (1, 3)}
    with capsys.disabled():
        print(f"\nlargest accepted request: {len(body) / 1e6:.1f} MB (limit {limit} bytes)")
        for concurrent, (worst, duration, latencies) in results.items():
            print(
                f"{concurrent} at once: each answered in <= {duration * 1000:.0f} ms; /healthz "
                f"{len(latencies)} calls, max {worst * 1000:.0f} ms, "
                f"p95 {percentile(sorted(latencies), 95) * 1000:.1f} ms, "
                f"median {percentile(sorted(latencies), 50) * 1000:.1f} ms"
            )
    assert len(body) > 0.9 * limit
    worst, duration, latencies = results[1]
    assert percentile(sorted(latencies), 95) < 0.250
    # The slowest call alone may meet a stall of a loaded machine, so it is bounded by a
    # quarter of the large call's time (when 250 ms is less): an evaluation on the event
    # loop would hold one /healthz for most of that time.
    assert worst < max(0.250, duration / 4)
