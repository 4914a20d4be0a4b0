"""As a person would: Debian's Chromium, driven by Playwright, opens the timeline from a
card's link, an expired link, the watch list (in order, refreshing itself), and moves
through it with the keyboard. Screenshots and timings go to test-artifacts/pictures/
(timings are recorded, never asserted)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from bench.course import crs_course
from cds.web.routes import demo_access_url
from tests.factories import AT
from tests.web.browser import ARTIFACTS, FLAGS, chromium
from tests.web.conftest import Clock, World, minutes

TIMINGS: dict[str, Any] = {}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing and could not be installed (apt-get, as root)")
        pytest.skip("Chromium is not installed (apt-get install chromium, as root)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(path), args=FLAGS)
        yield launched
        launched.close()
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


@pytest.fixture()
def page(browser: Browser, live: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    yield opened
    context.close()


def _sign_in(page: Page, world: World) -> None:
    page.goto(demo_access_url(world.store, world.base_url, world.clock()))
    page.get_by_role("button", name="Open the watch list").click()
    page.wait_for_selector("body.drawn")


def _chart(page: Page) -> dict[str, Any]:
    """What plotly drew: each trace's name, point count and texts."""
    found: dict[str, Any] = page.evaluate(
        """() => {
        const chart = document.getElementById('chart');
        const drawn = Array.from(chart.querySelectorAll('.bartext')).map(t => t.textContent);
        return {
          traces: chart.data.map(t => ({name: t.name, n: (t.x || []).length, text: t.text})),
          barTexts: drawn,
          feverPoints: chart.querySelectorAll('.scatterlayer .trace .points path').length,
          readyMs: Number(chart.dataset.readyMs), drawMs: Number(chart.dataset.drawMs),
          points: Number(chart.dataset.points)
        };
    }"""
    )
    return found


def test_timeline_from_a_card_link_shows_fever_pressor_and_grade_band(
    page: Page, world: World
) -> None:
    page.goto(world.links["g3-lisocel-norepinephrine"])
    page.wait_for_selector("body.drawn")
    chart = _chart(page)
    traces = {t["name"]: t for t in chart["traces"]}
    assert traces["Fever"]["n"] == 2  # 39.1 and 38.6 °C, above the fever line
    assert traces["Vasopressors"]["text"] == ["norepinephrine (running)"]
    assert traces["ASTCT grade"]["text"] == ["G0", "G2", "G3"]
    assert {"G0", "G2", "G3", "norepinephrine (running)"} <= set(chart["barTexts"])
    assert chart["feverPoints"] > 0
    assert page.get_by_role("heading", name="CRS timeline Grade 3").is_visible()
    TIMINGS["timeline g3 (7 values): served+drawn ms"] = chart["readyMs"]
    page.screenshot(path=str(ARTIFACTS / "timeline-g3.png"), full_page=True)
    page.emulate_media(media="print")
    page.screenshot(path=str(ARTIFACTS / "timeline-g3-print.png"), full_page=True)


def test_an_expired_link_shows_a_403_page(page: Page, world: World, later: Clock) -> None:
    later.now = AT + minutes(16)
    response = page.goto(world.links["g4-idecel-two-pressors"])
    assert response is not None and response.status == 403
    assert page.get_by_role("heading", name="This timeline link has expired").is_visible()
    page.screenshot(path=str(ARTIFACTS / "expired-link.png"))


def test_the_watch_list_worst_first_refreshing_itself(page: Page, world: World) -> None:
    _sign_in(page, world)
    TIMINGS[f"watch list ({page.locator('#watch-rows tr').count()} rows): served+drawn ms"] = float(
        page.evaluate("document.body.dataset.readyMs")
    )
    grades = page.locator("#watch-rows tr td:first-child .grade-chip").all_inner_texts()
    assert grades[0] == "G4" and grades == sorted(grades, reverse=True)
    n = len(grades)
    assert n >= len(world.cards)
    page.screenshot(path=str(ARTIFACTS / "watch-list.png"), full_page=True)
    # a new patient is charted: the list takes it in without reloading the page
    page.evaluate("window.notReloaded = true")
    course = crs_course("pat-new", AT - timedelta(days=5), days=5, crs_day=4, severity=1)
    world.call(course.prefetch(), course.patient_id)
    page.evaluate("window.crsRefresh()")
    # (wait_for_function would evaluate a string: the page's CSP refuses that, rightly)
    page.locator("#watch-rows tr").nth(n).wait_for()
    assert page.locator("#watch-rows tr").count() == n + 1
    assert page.evaluate("window.notReloaded") is True


def test_keyboard_only_from_the_list_to_a_timeline_and_its_table(page: Page, world: World) -> None:
    _sign_in(page, world)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(10):  # past the skip link, the navigation and the sign-out button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('row-link')"):
            break
    first = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert first.startswith("Timeline of patient") and "grade 4" in first
    page.keyboard.press("ArrowDown")
    second = page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert "grade 3" in second
    page.keyboard.press("Enter")
    page.wait_for_selector("body.drawn")
    assert "/crs/records/" in page.url
    summary = page.locator("summary")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "SUMMARY":
            break
    page.keyboard.press("Enter")
    page.wait_for_selector("#values-table table")
    assert summary.is_visible()
    rows = page.locator("#values-table tbody tr").count()
    assert rows > 0


def test_a_30_day_course_of_q15_minute_vitals(page: Page, world: World, later: Clock) -> None:
    course = crs_course("pat-30-days", AT - timedelta(days=30), days=30, crs_day=3)
    later.now = course.evaluated_at
    card = world.call(course.prefetch(), course.patient_id)
    page.goto(card["links"][0]["url"])
    page.wait_for_selector("body.drawn", timeout=30_000)
    chart = _chart(page)
    assert chart["points"] == course.points
    assert next(t for t in chart["traces"] if t["name"] == "ASTCT grade")["text"] == [
        "G0",
        "G1",
        "G2",
        "G3",
        "G2",
        "G1",
        "G0",
    ]
    TIMINGS[f"timeline 30 days ({course.points} values), cold: served+drawn ms"] = chart["readyMs"]
    TIMINGS[f"timeline 30 days ({course.points} values), cold: plotly draw ms"] = chart["drawMs"]
    page.reload()
    page.wait_for_selector("body.drawn", timeout=30_000)
    warm = _chart(page)
    TIMINGS[f"timeline 30 days ({course.points} values), again: served+drawn ms"] = warm["readyMs"]
    page.screenshot(path=str(ARTIFACTS / "timeline-30-days.png"), full_page=False)
