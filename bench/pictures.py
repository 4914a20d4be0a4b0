"""`python -m bench.pictures`: how fast the pictures are served and drawn.

- the timeline of a 30-day course of q15-minute vitals (about 15,000 values): the page
  served (decode the stored facts, the engine's grade at every change point, the HTML),
  cold and again (kept per record), and in Chromium: served and drawn (plotly.js loaded
  from an empty cache, then from the browser's cache);
- the watch list of 200 census patients (audit census: 200 records), as JSON and drawn.
Figures are printed, never asserted (issue #13)."""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bench.course import crs_course
from cds.app import create_app
from cds.runtime import Runtime
from cds.settings import Settings
from cds.web.routes import demo_access_url

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pictures", description=__doc__)
    parser.add_argument("--patients", type=int, default=200, help="watch-list rows")
    parser.add_argument("--no-browser", action="store_true", help="server figures only")
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    now = datetime.now(UTC).replace(microsecond=0)
    data_dir = Path(tempfile.mkdtemp(prefix="crs-pictures-"))
    runtime = Runtime.load(
        Settings(_env_file=None, data_dir=data_dir, public_base_url=base, link_signing_key="b" * 40)
    )
    app = create_app(runtime, clock=lambda: now)
    client = TestClient(app, base_url=base)
    figures: dict[str, float] = {}

    course = crs_course("bench-30-days", now - timedelta(days=30), days=30, crs_day=3)
    body = course.hook_body(str(uuid.uuid4()))
    answer = client.post("/cds-services/crs-monitor", json=body)
    link = answer.json()["cards"][0]["links"][0]["url"]
    started = time.perf_counter()
    page = client.get(link)
    figures[f"timeline ({course.points} values) served, cold ms"] = _ms(started)
    started = time.perf_counter()
    client.get(link)
    figures[f"timeline ({course.points} values) served, again ms"] = _ms(started)
    figures["timeline page size kB"] = round(len(page.content) / 1024, 1)

    for i in range(args.patients):
        small = crs_course(
            f"bench-{i}",
            now - timedelta(days=2 + i % 9),
            days=2 + i % 9,
            step=timedelta(hours=1),
            crs_day=1 + i % 4,
            severity=i % 4,
            seed=i,
        )
        client.post("/cds-services/crs-monitor", json=small.hook_body(str(uuid.uuid4())))
    signed = TestClient(app, base_url=base)
    grant = demo_access_url(app.state.store, base, now)
    form = signed.get(grant).text
    csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    signed.post("/crs/access", data={"secret": grant.rsplit("/", 1)[1], "csrf": csrf})
    started = time.perf_counter()
    rows = len(signed.get("/crs/watch.json").json()["patients"])
    figures[f"watch list ({rows} rows) JSON served ms"] = _ms(started)

    if not args.no_browser and Path("/usr/bin/chromium").exists():
        _browser(app, port, link, base, now, figures)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:>8}")


def _browser(
    app: FastAPI, port: int, link: str, base: str, now: datetime, figures: dict[str, float]
) -> None:
    from playwright.sync_api import sync_playwright

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            for label in ("empty browser cache", "plotly.js cached"):
                page.goto(link)
                page.wait_for_selector("body.drawn", timeout=60_000)
                ready = page.evaluate("document.getElementById('chart').dataset.readyMs")
                draw = page.evaluate("document.getElementById('chart').dataset.drawMs")
                figures[f"timeline served+drawn in Chromium ({label}) ms"] = float(ready)
                figures[f"  of which plotly drawing ({label}) ms"] = float(draw)
            page.goto(demo_access_url(app.state.store, base, now))
            page.get_by_role("button").click()
            page.wait_for_selector("body.drawn", timeout=60_000)
            figures["watch list served+drawn in Chromium ms"] = float(
                page.evaluate("document.body.dataset.readyMs")
            )
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=5)


if __name__ == "__main__":
    main()
