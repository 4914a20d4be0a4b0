"""The pages: the CRS timeline (from a card's signed link, or from the watch list when
signed in), the watch list (HTML, refreshing itself, and JSON), the demo's one-time
access form, and the static files they load (plotly.js from the plotly package: nothing
from a CDN)."""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from importlib import metadata, resources
from threading import Lock
from typing import Annotated, Any
from urllib.parse import parse_qs

import anyio
import msgspec
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from cds.clock import Clock
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from cds.web import evaluations, timeline, visits
from cds.web.access import DEMO_VIEWER, GRANT_LIFETIME, SESSION_COOKIE, PageAccess, Viewer
from cds.web.census import AuditCensus, CensusRow, CensusSource, Reading, ordered
from cds.web.links import Signer, TokenProblem, TokenRefused, signing_key

log = logging.getLogger("cds.web")

router = APIRouter(prefix="/crs", include_in_schema=False)

STATIC_FILES = {
    "pages.css": "text/css",
    "timeline.js": "text/javascript",
    "watch.js": "text/javascript",
}
PLOTLY_VERSION = metadata.version("plotly")
PLOTLY_FILE = f"plotly-{PLOTLY_VERSION}.min.js"
PLOTLY_CSS = f"plotly-{PLOTLY_VERSION}.css"
TIMELINE_CACHE_SIZE = 32  # stored evaluations never change: their timelines are kept

REFUSED = {
    TokenProblem.EXPIRED: (
        "This timeline link has expired",
        "Links on a card are valid for a short time only. Open the patient's chart again "
        "to get a fresh card and link.",
    ),
    TokenProblem.TAMPERED: (
        "This timeline link is not valid",
        "The link was changed or cut short on its way here. Open it again from the card.",
    ),
    TokenProblem.MALFORMED: (
        "This timeline link is not valid",
        "The link is incomplete or was changed. Open it again from the card.",
    ),
    TokenProblem.WRONG_KIND: (
        "This timeline link is not valid",
        "The token does not grant a timeline. Open the link again from the card.",
    ),
}


@dataclass
class Pictures:
    """What the pages need, built once per application (`pictures`)."""

    runtime: Runtime
    store: DecisionStore
    clock: Clock
    census: CensusSource
    signer: Signer | None
    access: PageAccess
    templates: Environment
    _timelines: OrderedDict[tuple[str, str], timeline.Timeline | None] = field(
        default_factory=OrderedDict
    )
    _lock: Lock = field(default_factory=Lock)

    @classmethod
    def create(
        cls, runtime: Runtime, store: DecisionStore, clock: Clock, census: CensusSource | None
    ) -> Pictures:
        settings = runtime.settings
        key = signing_key(settings)
        signer = Signer(key) if key is not None else None
        if census is None:
            census = AuditCensus(
                store.engine,
                horizon=_census_horizon(runtime),
                data_gap=timedelta(hours=settings.web_data_gap_hours),
            )
        templates = Environment(
            loader=PackageLoader("cds.web", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        pictures = cls(
            runtime, store, clock, census, signer, PageAccess(settings, signer), templates
        )
        templates.globals["asset"] = pictures.asset
        return pictures

    @cached_property
    def static(self) -> dict[str, tuple[bytes, bytes, str]]:
        """name -> (content, gzip-compressed content, media type)."""
        files: dict[str, tuple[bytes, bytes, str]] = {}
        folder = resources.files("cds.web") / "static"
        for name, media in STATIC_FILES.items():
            data = (folder / name).read_bytes()
            files[name] = (data, gzip.compress(data, 6), media)
        plotly = resources.files("plotly") / "package_data" / "plotly.min.js"
        data = plotly.read_bytes()
        files[PLOTLY_FILE] = (data, gzip.compress(data, 6), "text/javascript")
        css = plotly_css(data.decode()).encode()
        files[PLOTLY_CSS] = (css, gzip.compress(css, 6), "text/css")
        return files

    def asset(self, name: str) -> str:
        """The URL of a static file, versioned by its content (cached for a year)."""
        if name == "plotly.js":
            return f"/crs/static/{PLOTLY_FILE}"
        if name == "plotly.css":
            return f"/crs/static/{PLOTLY_CSS}"
        digest = hashlib.sha256(self.static[name][0]).hexdigest()[:12]
        return f"/crs/static/{name}?v={digest}"

    def headers(self, *, cache: bool = False) -> dict[str, str]:
        """The security headers of every page: a CSP without inline scripts or styles,
        the frame ancestors allowed (an EHR embedding the page), no referrer (a link's
        token never leaves in a Referer header), no caching of patient data."""
        ancestors = " ".join(self.runtime.settings.web_frame_ancestors) or "'none'"
        csp = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
            f"frame-ancestors {ancestors}"
        )
        found = {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
            "Cache-Control": "public, max-age=31536000, immutable" if cache else "no-store",
        }
        if not self.runtime.settings.web_frame_ancestors:
            found["X-Frame-Options"] = "DENY"
        return found

    def page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(**values)
        return HTMLResponse(html, status_code=status, headers=self.headers())

    def message(
        self, status: int, title: str, text: str, viewer: Viewer | None = None
    ) -> HTMLResponse:
        return self.page("message.html", status, title=title, text=text, viewer=viewer)

    def timeline_of(self, stored: evaluations.StoredEvaluation) -> timeline.Timeline | None:
        """The timeline of a stored evaluation (kept: a record never changes)."""
        key = (stored.record_id, self.runtime.rules.version)
        with self._lock:
            if key in self._timelines:
                self._timelines.move_to_end(key)
                return self._timelines[key]
        built = timeline.build(
            self.runtime.rules.crs,
            stored.snapshot.facts(stored.evaluated_at),
            stored.evaluated_at,
            self.runtime.settings.display_tz,
        )
        with self._lock:
            self._timelines[key] = built
            while len(self._timelines) > TIMELINE_CACHE_SIZE:
                self._timelines.popitem(last=False)
        return built


_PLOTLY_RULES = re.compile(r"""("[^"]*"|'[^']*'):("[^"]*"|'[^']*')""")


def plotly_css(bundle: str) -> str:
    """The style sheet plotly.js would inject into the page (its base rules: layers,
    cursors, hover labels), read from the bundle: a strict CSP refuses injected styles,
    so the page loads them as a file instead. Empty (and a warning) if the bundle's
    layout is not recognised."""
    start = bundle.find('{"X,X div":')
    end = bundle.find("}", start)
    if start < 0 or end < 0:
        log.warning("plotly.js base styles not found in the bundle: the chart may look off")
        return ""
    rules = []
    for selector, declarations in _PLOTLY_RULES.findall(bundle[start + 1 : end]):
        selector = selector[1:-1]
        selector = re.sub(r"^,", " ,", selector)
        selector = selector.replace("X", ".js-plotly-plot .plotly").replace("Y", ".plotly-notifier")
        rules.append(f"{selector}{{{declarations[1:-1]}}}")
    return "\n".join(rules) + "\n"


def _census_horizon(runtime: Runtime) -> timedelta:
    """How far back the audit census looks for cards: the longest risk window, plus one
    CRS episode gap and the look-back (a window stays open while CRS goes on)."""
    longest = max((w.window_hours for w in runtime.rules.windows.values()), default=0.0)
    grading = runtime.rules.grading
    return timedelta(hours=longest) + grading.episode_gap + grading.lookback


async def pictures(request: Request) -> Pictures:
    """The application's Pictures, made on first use from what `create_app` set up (the
    census: `app.state.census` if set, else the audit records)."""
    state = request.app.state
    found: Pictures | None = getattr(state, "pictures", None)
    if found is None:
        found = Pictures.create(
            state.runtime, state.store, state.hooks.clock, getattr(state, "census", None)
        )
        state.pictures = found
    return found


PicturesDep = Annotated[Pictures, Depends(pictures)]


def _json_script(value: Any) -> Markup:
    """JSON to embed in a `<script type="application/json">` block (data, never run)."""
    text = msgspec.json.encode(value).decode()
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


# --- the timeline ----------------------------------------------------------------------


@router.get("/timeline/{token}")
async def timeline_by_link(token: str, request: Request, p: PicturesDep) -> Response:
    """The timeline a card links to: the signed token names the card; the card, its
    record; the record, the facts evaluated."""
    now = p.clock()
    if p.signer is None:
        return p.message(403, "Timeline links are off", "This service has no link signing key.")
    try:
        grant = p.signer.verify("link", token, now, "card")
    except TokenRefused as refused:
        title, text = REFUSED[refused.problem]
        log.info("timeline link refused", extra={"reason": refused.problem.value})
        return p.message(403, title, text)
    stored = await anyio.to_thread.run_sync(evaluations.by_card, p.store.engine, grant.subject)
    if stored is None:
        return p.message(404, "No stored evaluation", "The evaluation this link names is not kept.")
    viewer = p.access.viewer(request, now)
    who = viewer.name if viewer is not None else "card-link"
    return await _timeline_page(p, stored, who, "link", viewer, link_expires=grant.expires)


@router.get("/records/{record_id}/timeline")
async def timeline_by_record(record_id: str, request: Request, p: PicturesDep) -> Response:
    """The timeline of a record, for someone signed in (the watch list links here)."""
    viewer = p.access.viewer(request, p.clock())
    if viewer is None:
        return _sign_in(p)
    stored = await anyio.to_thread.run_sync(evaluations.by_record, p.store.engine, record_id)
    if stored is None:
        return p.message(
            404, "No stored evaluation", "No evaluation is kept under this id.", viewer
        )
    return await _timeline_page(p, stored, viewer.name, viewer.access, viewer)


async def _timeline_page(
    p: Pictures,
    stored: evaluations.StoredEvaluation,
    who: str,
    access: str,
    viewer: Viewer | None,
    link_expires: datetime | None = None,
) -> Response:
    built = await anyio.to_thread.run_sync(p.timeline_of, stored)
    view = visits.PageView(
        who, access, "timeline", stored.patient, stored.record_id, stored.card_uuid
    )
    await anyio.to_thread.run_sync(visits.record_view, p.store.engine, view, p.clock())
    if built is None:
        return p.message(
            404,
            "No CRS risk window",
            "This evaluation found the patient outside every CRS risk window: there is no "
            "timeline to draw.",
            viewer,
        )
    zone = p.runtime.settings.display_tz
    return p.page(
        "timeline.html",
        t=built,
        stored=stored,
        viewer=viewer,
        csrf=_csrf(p, viewer),
        rules_now=p.runtime.rules.version,
        evaluated=timeline.local_text(stored.evaluated_at, zone),
        exposure_at=timeline.local_text(built.exposure.at, zone),
        window_ends=timeline.local_text(built.exposure.window_ends, zone),
        link_expires=timeline.local_text(link_expires, zone) if link_expires else None,
        data=_json_script(built.chart),
    )


# --- the watch list --------------------------------------------------------------------


def _ago(now: datetime, then: datetime) -> str:
    minutes = max(0, int((now - then).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min ago"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min ago"
    return f"{hours // 24} d {hours % 24} h ago"


def _reading(reading: Reading | None, now: datetime, p: Pictures) -> dict[str, str] | None:
    if reading is None:
        return None
    zone = p.runtime.settings.display_tz
    return {
        "text": reading.text,
        "at": reading.at.astimezone(zone).isoformat(),
        "local": timeline.local_text(reading.at, zone),
        "ago": _ago(now, reading.at),
    }


def watch_json(p: Pictures, rows: list[CensusRow], now: datetime) -> dict[str, Any]:
    """The watch list as JSON (the page draws this; other systems read it)."""
    zone = p.runtime.settings.display_tz

    def iso(moment: datetime | None) -> str | None:
        return moment.astimezone(zone).isoformat() if moment is not None else None

    return {
        "generatedAt": iso(now),
        "generatedLocal": timeline.local_text(now, zone),
        "zone": str(zone),
        "refreshSeconds": p.runtime.settings.web_refresh_seconds,
        "dataGapHours": p.runtime.settings.web_data_gap_hours,
        "patients": [
            {
                "patient": row.patient,
                "product": row.product,
                "exposureAt": iso(row.exposure_at),
                "day": row.day(now),
                "windowEnds": iso(row.window_ends),
                "evaluatedAt": iso(row.evaluated_at),
                "evaluatedLocal": timeline.local_text(row.evaluated_at, zone),
                "grade": row.grade,
                "maxGrade": row.max_grade,
                "possibleGrade": row.possible_grade,
                "lastTemperature": _reading(row.last_temperature, now, p),
                "lastSystolic": _reading(row.last_systolic, now, p),
                "lastOxygen": _reading(row.last_oxygen, now, p),
                "dataGap": row.data_gap,
                "lastNotifiedAt": iso(row.last_notified_at),
                "history": [
                    {"at": iso(h.at), "grade": h.grade, "possible": h.possible} for h in row.history
                ],
                "timeline": (f"/crs/records/{row.record_id}/timeline" if row.record_id else None),
            }
            for row in rows
        ],
    }


async def _watch(p: Pictures, request: Request, page: str) -> tuple[Viewer | None, dict[str, Any]]:
    now = p.clock()
    viewer = p.access.viewer(request, now)
    if viewer is None:
        return None, {}
    rows = ordered(await anyio.to_thread.run_sync(p.census.rows, now))
    view = visits.PageView(viewer.name, viewer.access, page)
    await anyio.to_thread.run_sync(visits.record_view, p.store.engine, view, now)
    return viewer, watch_json(p, rows, now)


@router.get("/watch")
async def watch_page(request: Request, p: PicturesDep) -> Response:
    """The unit's watch list: every patient in a risk window, worst first."""
    viewer, data = await _watch(p, request, "watch")
    if viewer is None:
        return _sign_in(p)
    return p.page(
        "watch.html",
        viewer=viewer,
        csrf=_csrf(p, viewer),
        data=_json_script(data),
        count=len(data["patients"]),
    )


@router.get("/watch.json")
async def watch_data(request: Request, p: PicturesDep) -> Response:
    """The watch list as JSON."""
    viewer, data = await _watch(p, request, "watch.json")
    if viewer is None:
        return Response(
            msgspec.json.encode({"error": "not signed in"}),
            status_code=401,
            media_type="application/json",
            headers=p.headers(),
        )
    return Response(msgspec.json.encode(data), media_type="application/json", headers=p.headers())


def _sign_in(p: Pictures) -> HTMLResponse:
    return p.message(
        401,
        "Sign in to see this page",
        "These pages show patient data. Open them through the hospital's sign-on, from a "
        "card's timeline link, or (local demo) with the access URL the service printed "
        "when it started.",
    )


# --- access: the demo's one-time URL, signing out ----------------------------------------


def _csrf(p: Pictures, viewer: Viewer | None) -> str | None:
    if viewer is None or p.signer is None:
        return None
    return p.signer.csrf_token(viewer.binding)


FORM_MAX_BYTES = 4096


async def _form(request: Request) -> dict[str, str]:
    """The fields of a small url-encoded form (the pages' forms have two at most)."""
    if request.headers.get("content-type", "").split(";")[0] != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        return {}
    return {key: values[0] for key, values in parse_qs(body.decode("latin-1")).items()}


def _same_origin(request: Request) -> bool:
    """A form post must come from this site's own pages (the Origin header, when sent)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


@router.get("/access/{secret}")
async def access_form(secret: str, p: PicturesDep) -> Response:
    """The one-time access URL: a form whose button signs in (a GET never uses the
    grant up, so that a link preview cannot spend it)."""
    open_ = await anyio.to_thread.run_sync(visits.grant_open, p.store.engine, secret, p.clock())
    if not open_ or p.signer is None:
        return p.message(
            403,
            "This access URL is used up or has expired",
            "Ask for a new one: restart the demo service, or run `crs-cds pages access`.",
        )
    return p.page(
        "access.html",
        secret=secret,
        csrf=p.signer.csrf_token(f"grant:{secret}"),
        hours=p.runtime.settings.web_session_hours,
    )


@router.post("/access")
async def access_use(request: Request, p: PicturesDep) -> Response:
    now = p.clock()
    form = await _form(request)
    secret, csrf = form.get("secret", ""), form.get("csrf", "")
    if (
        p.signer is None
        or not _same_origin(request)
        or not p.signer.csrf_ok(f"grant:{secret}", csrf)
    ):
        return p.message(403, "Request refused", "The form was not sent from this service's page.")
    viewer = await anyio.to_thread.run_sync(visits.use_grant, p.store.engine, secret, now)
    if viewer is None:
        return p.message(403, "This access URL is used up or has expired", "Ask for a new one.")
    response = RedirectResponse("/crs/watch", status_code=303, headers=p.headers())
    response.set_cookie(
        SESSION_COOKIE,
        p.access.session_cookie(viewer, now),
        max_age=int(p.access.session_lifetime.total_seconds()),
        path="/crs",
        httponly=True,
        samesite="strict",
        secure=p.access.secure_cookie,
    )
    return response


@router.post("/sign-out")
async def sign_out(request: Request, p: PicturesDep) -> Response:
    viewer = p.access.viewer(request, p.clock())
    csrf = (await _form(request)).get("csrf", "")
    if (
        viewer is None
        or p.signer is None
        or not _same_origin(request)
        or not p.signer.csrf_ok(viewer.binding, csrf)
    ):
        return p.message(403, "Request refused", "The form was not sent from this service's page.")
    response = p.message(200, "Signed out", "The session cookie of these pages is removed.")
    response.delete_cookie(SESSION_COOKIE, path="/crs")
    return response


@router.get("/static/{name}")
async def static(name: str, request: Request, p: PicturesDep) -> Response:
    """The pages' scripts and style, and plotly.js (from the plotly package)."""
    found = p.static.get(name)
    if found is None:
        return Response(status_code=404)
    plain, packed, media = found
    headers = p.headers(cache=True)
    headers["Vary"] = "Accept-Encoding"
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(packed, media_type=media, headers=headers)
    return Response(plain, media_type=media, headers=headers)


def demo_access_url(
    store: DecisionStore, base_url: str, now: datetime, viewer: str = DEMO_VIEWER
) -> str:
    """A one-time access URL (printed by `crs-cds serve` for the local demo)."""
    secret = visits.new_grant(store.engine, viewer, now, GRANT_LIFETIME)
    return f"{base_url.rstrip('/')}/crs/access/{secret}"
