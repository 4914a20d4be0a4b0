"""`crs-cds pages access`: a one-time access URL for the pages (the local demo's way in;
`crs-cds serve` prints one at start-up when serving on a loopback address)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Annotated

import typer

from cds.clock import utc_now
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.settings import Settings
from cds.store.decisions import DecisionStore
from cds.web.access import DEMO_VIEWER
from cds.web.routes import demo_access_url

pages = typer.Typer(help="The pictures: timeline and watch list pages.", no_args_is_help=True)


def demo_access_on(settings: Settings, host: str) -> bool:
    """Whether start-up prints a one-time access URL: the setting, else on when serving
    on a loopback address (the local demo), off otherwise (a URL in a production log
    would be a credential in the log)."""
    if settings.web_demo_access is not None:
        return settings.web_demo_access
    try:
        return host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(settings: Settings, host: str, port: int) -> str:
    return settings.public_base_url or f"http://{host}:{port}"


def print_access_url(store: DecisionStore, url: str) -> None:
    """The demo's one-time access URL, on standard output: a secret for the person at the
    terminal, never a log line (the logs, JSON on standard error, carry no secrets)."""
    link = demo_access_url(store, url, utc_now())
    typer.echo(f"Pages (timeline, watch list): open {link} once in your browser")


@pages.command("access")
def access(
    viewer: Annotated[str, typer.Option(help="The name page views are recorded under.")] = (
        DEMO_VIEWER
    ),
    url: Annotated[str | None, typer.Option(help="The service's base URL.")] = None,
) -> None:
    """Print a one-time access URL (valid 12 hours, usable once) that signs a browser in
    to the pages with a session cookie."""
    settings = Settings()
    runtime = Runtime.load(settings)
    store = DecisionStore.open(runtime, new_uuid, utc_now)
    try:
        link = demo_access_url(
            store, url or base_url(settings, settings.host, settings.port), utc_now(), viewer
        )
    finally:
        store.close()
    typer.echo(link)


def register(app: typer.Typer) -> None:
    app.add_typer(pages, name="pages")
