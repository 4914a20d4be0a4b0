"""The pages over HTTP: who gets in and how (signed link, SSO header from a trusted proxy,
the demo's one-time URL), what is refused and says why, the security headers, every view
recorded, and the watch list's JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds.web import visits
from cds.web.routes import PLOTLY_CSS, PLOTLY_FILE, demo_access_url
from tests.factories import AT
from tests.web.conftest import Clock, World, free_port, make_world, minutes, signed_in


def _data(html: str, block: str) -> Any:
    start = html.index(f'id="{block}">') + len(f'id="{block}">')
    return json.loads(html[start : html.index("</script>", start)])


def test_the_crs_card_links_to_its_timeline_with_a_signed_token_only(world: World) -> None:
    card = world.cards["g3-lisocel-norepinephrine"]
    (link,) = card["links"]
    assert link["label"] == "CRS timeline" and link["type"] == "absolute"
    assert link["url"].startswith(f"{world.base_url}/crs/timeline/v1.")
    # no patient data in the URL: not the id, not the pseudonym, no product or grade
    for secret in ("pat-g3-lisocel-norepinephrine", "lisocabtagene", "grade"):
        assert secret not in link["url"]


def test_the_timeline_from_a_card_link_draws_the_stored_evaluation(world: World) -> None:
    page = world.client.get(world.links["g3-lisocel-norepinephrine"])
    assert page.status_code == 200
    chart = _data(page.text, "timeline-data")
    assert [band["grade"] for band in chart["grades"]] == [0, 2, 3]
    assert chart["pressors"][0]["running"] is True
    assert max(chart["lines"]["temperature"]["y"]) >= chart["fever"]["value"]
    assert chart["systolic"]["value"] == 90
    assert chart["zone"] == "Europe/Zurich" and chart["offsets"] == "UTC+01:00"
    assert [d["kind"] for d in chart["doses"]] == ["exposure"]
    assert "Grade 3" in page.text and "lisocabtagene maraleucel, day 4" in page.text
    assert "+01:00" in page.text  # times carry their offset


def test_a_tampered_or_cut_link_is_refused_with_a_page_that_says_so(world: World) -> None:
    link = world.links["g3-lisocel-norepinephrine"]
    head, payload, signature = link.rsplit("/", 1)[1].split(".")
    other = world.links["g4-idecel-two-pressors"].rsplit("/", 1)[1].split(".")[1]
    for token in (f"{head}.{other}.{signature}", f"{head}.{payload}", "v1.x.y", "nonsense"):
        page = world.client.get(f"/crs/timeline/{token}")
        assert page.status_code == 403, token
        assert "not valid" in page.text


def test_an_expired_link_gives_403_and_says_it_expired(world: World, later: Clock) -> None:
    link = world.links["g2-brexucel-bp-panel"]
    later.now = AT + minutes(14)
    assert world.client.get(link).status_code == 200
    later.now = AT + minutes(15)
    page = world.client.get(link)
    assert page.status_code == 403
    assert "This timeline link has expired" in page.text


def test_no_link_without_a_public_base_url(tmp_path: Path) -> None:
    from cds.runtime import Runtime
    from tests.factories import settings

    runtime = Runtime.load(settings(data_dir=tmp_path, link_signing_key="k" * 40))
    assert runtime.links is None


def test_the_watch_list_needs_a_sign_in(world: World) -> None:
    assert world.client.get("/crs/watch").status_code == 401
    answer = world.client.get("/crs/watch.json")
    assert answer.status_code == 401 and answer.json() == {"error": "not signed in"}
    record = world.client.get("/crs/records/anything/timeline")
    assert record.status_code == 401
    assert "Sign in" in record.text


def test_the_identity_header_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    # TestClient's peer address is "testclient": no proxy address matches it...
    world = make_world(tmp_path, free_port(), web_trusted_proxies="10.1.0.0/16")
    header = {"X-Forwarded-Email": "dr.house@hospital.example"}
    assert world.client.get("/crs/watch", headers=header).status_code == 401
    # ...the same header from the proxy's address signs in
    proxied = TestClient(world.app, base_url=world.base_url, client=("10.1.2.3", 50000))
    page = proxied.get("/crs/watch", headers=header)
    assert page.status_code == 200
    assert "dr.house@hospital.example" in page.text
    (view,) = [v for v in visits.views(world.store.engine) if v["page"] == "watch"]
    assert view["viewer"] == "dr.house@hospital.example" and view["access"] == "sso"
    # without the header, the proxy's address alone is nobody
    assert proxied.get("/crs/watch").status_code == 401


def test_the_demo_access_url_works_once_and_its_form_needs_its_token(world: World) -> None:
    url = demo_access_url(world.store, world.base_url, world.clock())
    secret = url.rsplit("/", 1)[1]
    client = TestClient(world.app, base_url=world.base_url)
    # a wrong CSRF token or a foreign origin is refused, and the grant stays unused
    forged = client.post("/crs/access", data={"secret": secret, "csrf": "x"})
    assert forged.status_code == 403
    form = client.get(url)
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    foreign = client.post(
        "/crs/access",
        data={"secret": secret, "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    done = client.post("/crs/access", data={"secret": secret, "csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/crs/watch"
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/crs" in cookie
    assert client.get("/crs/watch").status_code == 200
    again = TestClient(world.app, base_url=world.base_url)
    assert again.get(url).status_code == 403
    assert again.post("/crs/access", data={"secret": secret, "csrf": csrf}).status_code == 403


def test_a_session_ends_and_signing_out_needs_the_form_token(world: World, later: Clock) -> None:
    client = signed_in(world)
    assert client.get("/crs/watch").status_code == 200
    assert client.post("/crs/sign-out", data={"csrf": "forged"}).status_code == 403
    later.now = AT + minutes(8 * 60 + 1)
    assert client.get("/crs/watch").status_code == 401


def test_every_page_view_is_recorded(tmp_path: Path) -> None:
    world = make_world(tmp_path, free_port())
    card = world.cards["g1-axicel-fever-f"]
    world.client.get(world.links["g1-axicel-fever-f"])
    signed_in(world).get("/crs/watch.json")
    timeline, listing = sorted(visits.views(world.store.engine), key=lambda v: str(v["page"]))
    assert timeline["page"] == "timeline" and timeline["access"] == "link"
    assert timeline["viewer"] == "card-link" and timeline["card_uuid"] == card["uuid"]
    assert len(str(timeline["patient"])) == 32  # the pseudonym, never the patient id
    assert timeline["viewed_at"] == AT
    assert listing["page"] == "watch.json" and listing["viewer"] == "local-demo"
    assert listing["access"] == "session" and listing["patient"] is None


def test_security_headers_and_no_inline_script(world: World) -> None:
    page = world.client.get(world.links["g3-lisocel-norepinephrine"])
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    # every <script> is a file of the service or a JSON data block
    for tag in page.text.split("<script")[1:]:
        head = tag.split(">", 1)[0]
        assert 'src="/crs/static/' in head or 'type="application/json"' in head, head


def test_frame_ancestors_are_configurable(tmp_path: Path) -> None:
    world = make_world(tmp_path, free_port(), web_frame_ancestors="https://ehr.example.org")
    page = world.client.get(world.links["g1-axicel-fever-f"])
    assert "frame-ancestors https://ehr.example.org" in page.headers["content-security-policy"]
    assert "x-frame-options" not in page.headers


def test_plotly_and_its_styles_are_served_by_the_service(world: World) -> None:
    script = world.client.get(f"/crs/static/{PLOTLY_FILE}")
    assert script.status_code == 200 and script.headers["content-encoding"] == "gzip"
    assert script.text.startswith("/**\n* plotly.js v")
    assert "immutable" in script.headers["cache-control"]
    css = world.client.get(f"/crs/static/{PLOTLY_CSS}").text
    assert ".js-plotly-plot .plotly .main-svg{position:absolute" in css
    assert world.client.get("/crs/static/nothing.js").status_code == 404


@pytest.mark.parametrize("page", ["/crs/watch", "/crs/watch.json"])
def test_the_watch_list_in_order_as_html_and_json(world: World, page: str) -> None:
    client = signed_in(world)
    answer = client.get(page)
    assert answer.status_code == 200
    data = answer.json() if page.endswith(".json") else _data(answer.text, "watch-data")
    rows = data["patients"]
    grades = [r["grade"] for r in rows]
    assert grades == sorted(grades, reverse=True)
    assert len(rows) >= len(world.cards)  # the browser tests may have charted more
    top = rows[0]
    assert top["grade"] == 4 and top["product"] == "idecabtagene vicleucel" and top["day"] == 1
    assert top["lastTemperature"]["text"] == "38.9 °C"
    assert top["lastTemperature"]["local"].endswith("+01:00")
    assert top["timeline"].startswith("/crs/records/")
    timeline = client.get(top["timeline"])
    assert timeline.status_code == 200 and "Grade 4" in timeline.text
