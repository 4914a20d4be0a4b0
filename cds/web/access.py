"""Who may see the pages, and how they said so.

Three ways in, nothing served without one of them:
- a card's signed link (`/crs/timeline/<token>`): that one evaluation, until it expires;
- the hospital's single sign-on, through a reverse proxy (e.g. oauth2-proxy) that passes
  the verified identity in a header (`CRS_WEB_IDENTITY_HEADER`); the header is believed
  only from the proxy addresses configured (`CRS_WEB_TRUSTED_PROXIES`);
- for the local demo, a one-time access URL printed at start-up: its form sets a signed
  session cookie (`CRS_WEB_SESSION_HOURS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address, ip_network
from typing import Literal

from fastapi import Request

from cds.settings import Settings
from cds.web.links import Signer, TokenRefused

SESSION_COOKIE = "crs_pages"
DEMO_VIEWER = "local-demo"
GRANT_LIFETIME = timedelta(hours=12)

Access = Literal["link", "sso", "session"]


@dataclass(frozen=True)
class Viewer:
    """Someone signed in to the pages: their name, how, and what a form's CSRF token is
    bound to (the session cookie; None behind SSO, where the proxy's cookie is)."""

    name: str
    access: Access
    binding: str


class PageAccess:
    """Decides who is signed in, from the settings and the signing key."""

    def __init__(self, settings: Settings, signer: Signer | None) -> None:
        self.signer = signer
        self.header = settings.web_identity_header
        self.proxies = [ip_network(p, strict=False) for p in settings.web_trusted_proxies]
        self.session_lifetime = timedelta(hours=settings.web_session_hours)
        self.secure_cookie = (settings.public_base_url or "").startswith("https://")

    def from_proxy(self, request: Request) -> bool:
        """Whether the request comes straight from a configured proxy address."""
        if request.client is None or not self.proxies:
            return False
        try:
            peer = ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in network for network in self.proxies)

    def viewer(self, request: Request, now: datetime) -> Viewer | None:
        """The signed-in viewer: the proxy's identity header (from a trusted proxy only),
        else a valid session cookie; None otherwise."""
        name = request.headers.get(self.header)
        if name and self.from_proxy(request):
            return Viewer(name.strip(), "sso", f"sso:{name.strip()}")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and self.signer is not None:
            try:
                grant = self.signer.verify("session", cookie, now, "session")
            except TokenRefused:
                return None
            return Viewer(grant.subject, "session", cookie)
        return None

    def session_cookie(self, viewer: str, now: datetime) -> str:
        assert self.signer is not None
        return self.signer.session_token(viewer, now, self.session_lifetime)
