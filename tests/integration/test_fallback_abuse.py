"""A FHIR server that attacks the service (issue #11, section 2): a huge body, a gzip bomb,
endless pages, a `next` link that climbs out of fhirServer, a body that drips. Each is a 412
naming the query and the limit, in time, with memory bounded — and the token never goes
anywhere but under fhirServer."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds.fhir.client import (
    FhirQuery,
    FhirQueryFailed,
    FhirReader,
    TemplateError,
    close_http_clients,
    http_client,
    is_fhir_id,
    resolve_template,
)
from cds.fhir.gather import FHIR_ID
from cds.runtime import Runtime
from tests.factories import hook_request
from tests.integration.abusive_server import AbusiveServer, abusive_server, gzip_bomb
from tests.integration.support import GOOD_TOKEN, post_hook, runtime_with
from tests.serving import serve_process

MODES = ("huge-length", "huge-stream", "gzip-bomb", "brotli", "pages", "dots", "encoded-dots")
QUERY_CAP = "the cap per query (setting CRS_FHIR_MAX_QUERY_BYTES)"
# several searches stream at once: the cap per request may be passed first
A_CAP = re.compile(r"the cap per (query|request) \(setting CRS_FHIR_MAX_(QUERY|REQUEST)_BYTES\)")
OUTSIDE = "the next-page link points outside fhirServer"

# mode -> what the 412 says (beside the query's name)
EXPECTED: dict[str, str | re.Pattern[str]] = {
    "huge-length": QUERY_CAP,
    "huge-stream": A_CAP,
    "gzip-bomb": A_CAP,
    "brotli": "in a coding not supported ('br')",
    "pages": "more than 100 pages",
    "dots": OUTSIDE,
    "encoded-dots": OUTSIDE,
    "drip": "timed out after 2 s",
}
# mode -> its deadline, when not the session runtime's (3 s): more than 100 pages, fetched
# one after another, took about 1 s here, and can pass 3 s on a loaded machine
DEADLINES = {"pages": 15.0}
# the drip's: 2 s, not less, the answer due within 2 s more; the drip lasts a minute
DRIP_DEADLINE = 2.0


def abuse_request(server: str) -> dict[str, Any]:
    """A patient-view call with no prefetch: everything is fetched from `server`."""
    body: dict[str, Any] = hook_request(
        "patient-view", patient_id="pat-abuse", fhir_server=server, fhir_token=GOOD_TOKEN
    )
    return body


@pytest.fixture(scope="module")
def server() -> Iterator[AbusiveServer]:
    gzip_bomb()  # made once, before any timing
    with abusive_server() as running:
        yield running


def _fallback(runtime: Runtime, server: AbusiveServer, mode: str, **settings: Any) -> Any:
    base = server.base(mode)
    allowing = runtime_with(runtime, fhir_allowed_servers=[base], **settings)
    started = time.perf_counter()
    response = post_hook(
        allowing,
        "crs-monitor",
        hook_request(
            "patient-view", patient_id="pat-abuse", fhir_server=base, fhir_token=GOOD_TOKEN
        ),
    )
    return response, time.perf_counter() - started


@pytest.mark.parametrize("mode", MODES)
def test_each_abuse_is_a_412_naming_the_query_and_the_limit(
    runtime: Runtime, server: AbusiveServer, mode: str
) -> None:
    deadline = DEADLINES.get(mode, runtime.settings.fhir_timeout_seconds)
    response, seconds = _fallback(runtime, server, mode, fhir_timeout_seconds=deadline)
    assert response.status_code == 412, response.text
    message = response.json()["error"]
    expected = EXPECTED[mode]
    assert expected.search(message) if isinstance(expected, re.Pattern) else expected in message
    assert "for prefetch" in message  # the query, by its name (never its URL)
    assert "pat-abuse" not in message and GOOD_TOKEN not in message
    assert seconds < deadline + 1.0


def test_a_dripping_body_is_cut_at_the_deadline(runtime: Runtime, server: AbusiveServer) -> None:
    response, seconds = _fallback(runtime, server, "drip", fhir_timeout_seconds=DRIP_DEADLINE)
    assert response.status_code == 412, response.text
    assert EXPECTED["drip"] in response.json()["error"]
    assert seconds < DRIP_DEADLINE + 2.0


def test_answers_adding_up_past_the_request_cap_are_a_412(
    runtime: Runtime, server: AbusiveServer
) -> None:
    # every answer (~100 KB) is under the cap per query; together they pass the one per request
    response, _ = _fallback(
        runtime,
        server,
        "sized",
        fhir_max_query_bytes=150_000,
        fhir_max_request_bytes=250_000,
    )
    assert response.status_code == 412, response.text
    assert "the cap per request (setting CRS_FHIR_MAX_REQUEST_BYTES)" in response.json()["error"]


@pytest.mark.parametrize("mode", ["dots", "encoded-dots"])
def test_a_climbing_next_link_is_never_fetched(
    runtime: Runtime, server: AbusiveServer, mode: str
) -> None:
    server.seen.clear()
    response, _ = _fallback(runtime, server, mode)
    assert response.status_code == 412
    fetched = [path for path, _ in server.seen]
    assert any(path.startswith(f"/{mode}/") for path in fetched), "the first page was fetched"
    # (requests of an earlier test may arrive late: every path is under some base URL)
    assert all(path.startswith(("/dots/", "/encoded-dots/")) for path in fetched), fetched
    assert not any("admin" in path or ".." in path or "%2e" in path.lower() for path in fetched)


# --- the checks themselves --------------------------------------------------------------

BASE = "http://fhir.test:8080/r4/fhir"


@pytest.mark.parametrize(
    ("href", "fetched"),
    [
        ("Observation?page=2", f"{BASE}/Observation?page=2"),
        (f"{BASE}/Observation?page=2", f"{BASE}/Observation?page=2"),
        (f"{BASE}?_getpages=abc&_getpagesoffset=20", f"{BASE}?_getpages=abc&_getpagesoffset=20"),
        (f"{BASE}/Observation/../Observation?p=2", f"{BASE}/Observation?p=2"),
        (f"{BASE}/./Observation?p=2", f"{BASE}/Observation?p=2"),
        ("/r4/fhir/Observation?p=2", f"{BASE}/Observation?p=2"),
        (f"{BASE}/Observation?p=2#frag", f"{BASE}/Observation?p=2"),
        ("HTTP://FHIR.TEST:8080/r4/fhir/Observation", f"{BASE}/Observation"),
    ],
)
def test_next_links_under_the_base_url(href: str, fetched: str) -> None:
    reader = FhirReader(httpx.AsyncClient(), BASE)
    assert reader.within("search", href) == fetched


@pytest.mark.parametrize(
    "href",
    [
        f"{BASE}/../admin",
        f"{BASE}/../../admin",
        f"{BASE}/Observation/../../admin",
        f"{BASE}/%2e%2e/admin",
        f"{BASE}/%2E%2E/admin",
        f"{BASE}/.%2e/admin",
        f"{BASE}/..;/admin",
        f"{BASE}/..%2fadmin",
        f"{BASE}/..%5cadmin",
        f"{BASE}\\..\\admin",
        "../admin",
        "/r4/fhirx/Observation",
        "/admin",
        "http://fhir.test:8081/r4/fhir/Observation",
        "https://fhir.test:8080/r4/fhir/Observation",
        "http://user@fhir.test:8080/r4/fhir/Observation",
        "http://other.test/r4/fhir/Observation",
        "//other.test/r4/fhir/Observation",
    ],
)
def test_next_links_that_leave_the_base_url_are_refused(href: str) -> None:
    reader = FhirReader(httpx.AsyncClient(), BASE)
    with pytest.raises(FhirQueryFailed, match="outside fhirServer"):
        reader.within("search", href)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("pat-1", True),
        ("A.b-9", True),
        ("x" * 64, True),
        ("...", True),
        (".", False),
        ("..", False),
        ("", False),
        ("x" * 65, False),
        ("a/b", False),
        ("a%2Fb", False),
        ("a b", False),
    ],
)
def test_fhir_ids(value: str, valid: bool) -> None:
    assert is_fhir_id(value) is valid


@pytest.mark.parametrize("bad", [".", ".."])
def test_dot_ids_never_make_a_url(bad: str) -> None:
    with pytest.raises(FhirQueryFailed, match="not a FHIR id"):
        FhirQuery.read("Medication read", "Medication", bad)
    with pytest.raises(TemplateError, match="not a FHIR id"):
        resolve_template("Patient/{{context.patientId}}", {"patientId": bad}, FHIR_ID)


@pytest.mark.parametrize("bad", [".", ".."])
def test_a_dot_patient_id_is_400_without_a_call(
    runtime: Runtime, server: AbusiveServer, bad: str
) -> None:
    server.seen.clear()
    base = server.base("sized")
    body = hook_request("patient-view", patient_id=bad, fhir_server=base)
    response = post_hook(runtime_with(runtime, fhir_allowed_servers=[base]), "crs-monitor", body)
    assert response.status_code == 400
    assert "context.patientId is not a FHIR id" in response.json()["error"]
    assert server.seen == []


def test_a_medication_reference_climbing_out_is_not_read(server: AbusiveServer) -> None:
    """A MedicationAdministration naming `Medication/..` makes no read at all."""
    from cds.fhir.gather import _medication_id

    entry = {
        "resource": {
            "resourceType": "MedicationAdministration",
            "medicationReference": {"reference": "Medication/.."},
        }
    }
    assert _medication_id(entry, "http://fhir.test") is None


def test_compressed_answers_are_read(server: AbusiveServer) -> None:
    """gzip and deflate (zlib-wrapped or raw) are inflated, in slices."""
    import zlib

    from cds.fhir.client import _Inflater

    data = b'{"resourceType": "Bundle"}' * 10_000
    for coding, packed in [
        ("gzip", zlib.compress(data, wbits=16 + zlib.MAX_WBITS)),
        ("deflate", zlib.compress(data)),
        ("deflate", zlib.compress(data, wbits=-zlib.MAX_WBITS)),
    ]:
        inflater = _Inflater("q", coding)
        chunks = [packed[i : i + 1000] for i in range(0, len(packed), 1000)]
        pieces = [piece for chunk in chunks for piece in inflater.feed(chunk)]
        assert b"".join(pieces) == data
        assert max(len(p) for p in pieces) <= 64 * 1024


def test_reader_caps_without_the_app(server: AbusiveServer) -> None:
    """The reader alone (as the tools use it) refuses the bomb at its cap too."""

    async def go() -> str:
        reader = FhirReader(http_client(), server.base("gzip-bomb"), max_query_bytes=1 << 20)
        try:
            await reader.search(FhirQuery("Observation search", "Observation"))
        except FhirQueryFailed as exc:
            return exc.reason
        finally:
            await close_http_clients()
        return "no failure"

    assert "larger than 1 MiB" in asyncio.run(go())


# --- the real server: time and memory ---------------------------------------------------

MEASURED = ("huge-length", "huge-stream", "gzip-bomb", "pages", "dots", "drip")
SERVED_DEADLINE = 3.0  # set, not the default: the time bound below is derived from it


def test_abuse_against_the_real_server_time_and_memory(
    tmp_path: Path, server: AbusiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`crs-cds serve` (uvicorn) against each abuse: the answer, its time, the peak RSS of
    the service during it and its RSS after, against the RSS after a first call."""
    env = {
        "CRS_FHIR_ALLOWED_SERVERS": ",".join(server.base(m) for m in MEASURED),
        "CRS_FHIR_TIMEOUT_SECONDS": str(SERVED_DEADLINE),
        "CRS_LOG_LEVEL": "WARNING",
    }
    rows = []
    with serve_process(tmp_path, env) as served, httpx.Client(timeout=30) as client:

        def call(mode: str) -> tuple[int, float]:
            body = hook_request(
                "patient-view",
                patient_id="pat-abuse",
                fhir_server=server.base(mode),
                fhir_token=GOOD_TOKEN,
            )
            started = time.perf_counter()
            response = client.post(f"{served.url}/cds-services/crs-monitor", json=body)
            return response.status_code, time.perf_counter() - started

        for mode in MEASURED:  # warm up every path once
            call(mode)
        baseline, _ = served.memory_kib()
        for mode in MEASURED:
            served.reset_peak()
            status, seconds = call(mode)
            time.sleep(0.2)
            after, peak = served.memory_kib()
            rows.append((mode, status, seconds, peak, after))
        # Each abuse again, 12 rounds (not the drip: it only waits). What the service holds
        # after a call moves with its allocator, up and back down (one run: 124-232 MiB
        # after rounds, from a baseline of 136: it climbed for 5-6 rounds, then fell), so no
        # single reading proves a leak; RSS that never comes back down in the later rounds
        # would.
        rounds = []
        for _ in range(12):
            for mode in MEASURED:
                if mode != "drip":
                    call(mode)
            rounds.append(served.memory_kib()[0])
    with capsys.disabled():
        print(f"\nservice RSS after warm-up: {baseline / 1024:.0f} MiB")
        print("RSS after each of 12 more rounds (MiB):", [r // 1024 for r in rounds])
        for mode, status, seconds, peak, after in rows:
            print(
                f"{mode:<12} {status}  {seconds:6.2f} s  peak RSS {peak / 1024:6.0f} MiB"
                f"  after {after / 1024:6.0f} MiB"
            )
    for mode, status, seconds, peak, _after in rows:
        assert status == 412, mode
        assert seconds < SERVED_DEADLINE + 2.0, mode  # CRS_FHIR_TIMEOUT_SECONDS, and no more
        # the caps (the searches' and the search by name's own) and their parsing, never the
        # GiB offered: 74-100 MiB measured on one machine, so 160, not less
        assert peak - baseline < 160 * 1024, mode
    assert min(rounds[4:]) - baseline < 64 * 1024  # back down: nothing kept call after call
