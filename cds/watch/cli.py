"""`crs-cds watch run | status | enrol | subscribe | retry-failed` (issue #12)."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.table import Table

from cds.fhir.client import FHIR_JSON, is_fhir_id
from cds.runtime import Runtime
from cds.watch.config import WatchConfigError
from cds.watch.service import Watch
from cds.watch.subscriptions import (
    CONTENTS,
    ENDPOINT_PATH,
    TOPIC_CANONICAL,
    new_secret,
    subscription_resource,
)

app = typer.Typer(
    help="The watch: continuous CRS surveillance of every patient in a risk window, with "
    "notifications on escalation (issue #12).",
    no_args_is_help=True,
)
console = Console()
log = logging.getLogger("cds.watch.cli")


def _runtime() -> Runtime:
    from cds.cli import _load_runtime, load_settings

    return _load_runtime(load_settings())


def _open_watch(runtime: Runtime) -> Watch:
    """The watch of the settings, or exit 2 saying what is missing or wrong."""
    from cds.clock import utc_now
    from cds.ids import new_uuid
    from cds.store.database import StoreUnavailable
    from cds.store.decisions import DecisionStore

    try:
        store = DecisionStore.open(runtime, new_uuid, utc_now)
        watch = Watch.open(runtime, store, utc_now)
    except (StoreUnavailable, WatchConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if watch is None:
        typer.echo(
            "error: the watch is off: set CRS_WATCH_FHIR_SERVER (and put it on "
            "CRS_FHIR_ALLOWED_SERVERS)",
            err=True,
        )
        raise typer.Exit(2)
    return watch


@app.command()
def run() -> None:
    """Run a watch worker until SIGTERM/SIGINT (several share the work on PostgreSQL)."""
    from cds.logs import configure_logging
    from cds.store import database
    from cds.watch.worker import Worker

    runtime = _runtime()
    watch = _open_watch(runtime)
    configure_logging(runtime.settings.log_level)
    if database.is_sqlite(runtime.settings.database) and watch.config.in_serve:
        log.warning(
            "with SQLite a watch worker also runs inside `crs-cds serve` (CRS_WATCH_IN_SERVE): "
            "workers share the work, but one is enough on one machine"
        )

    if runtime.settings.watch_metrics_port is not None:
        _serve_metrics(watch, runtime.settings.host, runtime.settings.watch_metrics_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Worker(watch).run(stop)

    asyncio.run(main())


def _bearer(watch: Watch) -> str | None:
    """The watch's token for its FHIR server (a SMART token asked for now); exit 1
    saying why when there is none to be had."""
    from cds.fhir.client import close_http_clients
    from cds.watch.smart import TokenRefused

    async def get() -> str | None:
        try:
            return await watch.credentials.bearer()
        finally:
            await close_http_clients()

    try:
        return asyncio.run(get())
    except TokenRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _serve_metrics(watch: Watch, host: str, port: int) -> None:
    """/metrics of this worker (its notification counters) and of the watch's tables,
    in a daemon thread (prometheus_client's own small HTTP server)."""
    from prometheus_client import REGISTRY, start_http_server

    from cds.watch.metrics import WatchMetrics

    REGISTRY.register(WatchMetrics(watch.census.engine, watch.clock))
    start_http_server(port, addr=host)
    log.info("watch metrics served", extra={"port": port})


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="As one JSON object.")] = False,
    all_patients: Annotated[
        bool, typer.Option("--all", help="Also the patients who left the census.")
    ] = False,
    last: Annotated[int, typer.Option(help="How many of the last notifications.")] = 20,
) -> None:
    """The census with each patient's state, the last notifications and their delivery,
    the workers and the subscriptions."""
    from cds.cli import _open_engine, load_settings
    from cds.watch.status import status as watch_status

    engine = _open_engine(load_settings())
    data = watch_status(engine, notifications=last, include_left=all_patients)
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    _print_status(data)


def _print_status(data: dict[str, Any]) -> None:
    census = Table(title=f"Census ({len(data['census'])} patients)", title_justify="left")
    for column in ("patient", "grade", "max", "possible", "exposure", "evaluated", "until", "note"):
        census.add_column(column)
    for p in data["census"]:
        exposure = p["exposure"] or {}
        note = "left" if not p["active"] else (p["lastError"] or "")
        census.add_row(
            p["patient"][:12] + "…",
            _dash(p["grade"]),
            _dash(p["maxGrade"]),
            _dash(p["possibleGrade"]),
            f"{exposure.get('product', '-')} {(exposure.get('at') or '')[:16]}",
            (p["evaluatedAt"] or "-")[:19],
            (p["watchUntil"] or "-")[:16],
            note[:60],
        )
    console.print(census)
    notes = Table(title="Last notifications", title_justify="left")
    for column in ("created", "event", "patient", "grade", "deliveries"):
        notes.add_column(column)
    for n in data["notifications"]:
        deliveries = "; ".join(
            f"{d['target']} {d['status']} ({d['attempts']}×"
            + (f", {d['lastError']}" if d["lastError"] else "")
            + ")"
            for d in n["deliveries"]
        )
        notes.add_row(
            (n["createdAt"] or "")[:19],
            n["event"],
            n["patient"][:12] + "…",
            f"{_dash(n['grade'])} (max {_dash(n['maxGrade'])})",
            deliveries or "-",
        )
    console.print(notes)
    d = data["deliveries"]
    console.print(
        f"deliveries: {d['delivered']} delivered, {d['pending']} pending, "
        f"[{'bold red' if d['failed'] else 'green'}]{d['failed']} failed[/]"
        + (" (crs-cds watch retry-failed sends them again)" if d["failed"] else "")
    )
    workers = ", ".join(f"{w['id']} (beat {w['beatAt'][11:19]})" for w in data["workers"])
    console.print(f"workers: {workers or 'none'}")
    for s in data["subscriptions"]:
        console.print(
            f"subscription {s['subscriptionId'] or '?'} ({s['topic']}, {s['content']}): "
            f"{s['status']}, last event {s['lastEvent']}"
            + (f", catch-up pending since {s['catchUpSince']}" if s["catchUpSince"] else "")
        )


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


@app.command()
def enrol(
    patient_id: Annotated[str, typer.Argument(help="The patient's id on CRS_WATCH_FHIR_SERVER.")],
) -> None:
    """Put a patient in the census now (it leaves when its window closes with no CRS)."""
    if not is_fhir_id(patient_id):
        typer.echo(
            "error: not a FHIR id ([A-Za-z0-9-.], at most 64 characters, not . or ..)", err=True
        )
        raise typer.Exit(2)
    watch = _open_watch(_runtime())
    pseudonym = watch.census.enrol(patient_id, "cli", watch.clock())
    typer.echo(f"enrolled: patient {pseudonym} (pseudonym); a worker looks at it now")


@app.command("retry-failed")
def retry_failed() -> None:
    """Deliveries that gave up (`failed`) are tried again from now."""
    watch = _open_watch(_runtime())
    n = watch.deliveries.retry_failed(watch.clock())
    typer.echo(f"{n} failed deliveries pending again")


@app.command()
def subscribe(
    topic: Annotated[
        list[str] | None,
        typer.Option(
            help="SubscriptionTopic canonical URL (repeat: e.g. one for Observations, one "
            "for MedicationAdministrations). Without it, the topics the server advertises "
            "are listed."
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help=f"Where the server posts (default: CRS_PUBLIC_BASE_URL{ENDPOINT_PATH})."),
    ] = None,
    content: Annotated[
        str, typer.Option(help="Payload: empty, id-only or full-resource.")
    ] = "id-only",
    heartbeat: Annotated[int, typer.Option(help="Heartbeat period in seconds (0: none).")] = 300,
    filter_criteria: Annotated[
        list[str] | None,
        typer.Option(
            "--filter", help="Backport filter criteria, e.g. Observation?category=vital-signs"
        ),
    ] = None,
) -> None:
    """Create the watch's Subscription(s) on CRS_WATCH_FHIR_SERVER (R5 Backport IG, R4,
    rest-hook), with a channel header made for each; print what the server answered."""
    if content not in CONTENTS:
        typer.echo(f"error: --content must be one of {', '.join(CONTENTS)}", err=True)
        raise typer.Exit(2)
    watch = _open_watch(_runtime())
    config = watch.config
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    token = _bearer(watch)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(timeout=30.0, follow_redirects=False, trust_env=False) as http:
        advertised = _advertised_topics(http, config.server, headers)
        if not topic:
            typer.echo("give --topic; the server advertises:" if advertised else "give --topic")
            for url in advertised:
                typer.echo(f"  {url}")
            raise typer.Exit(2)
        if endpoint is None:
            if config.public_base_url is None:
                typer.echo(
                    "error: give --endpoint, or set CRS_PUBLIC_BASE_URL (the server must reach "
                    f"{ENDPOINT_PATH} of this service)",
                    err=True,
                )
                raise typer.Exit(2)
            endpoint = config.public_base_url + ENDPOINT_PATH
        failures = 0
        for url in topic:
            if advertised and url not in advertised:
                typer.echo(f"warning: the server does not advertise topic {url}", err=True)
            if not _create(
                watch, http, headers, url, endpoint, content, heartbeat, filter_criteria
            ):
                failures += 1
    if failures:
        raise typer.Exit(1)


def _create(
    watch: Watch,
    http: httpx.Client,
    headers: dict[str, str],
    topic: str,
    endpoint: str,
    content: str,
    heartbeat: int,
    filters: list[str] | None,
) -> bool:
    """One Subscription: remembered (its secret's digest) before the server can call."""
    server = watch.config.server
    secret = new_secret()
    local_id = str(uuid.uuid4())
    watch.subscriptions.register(local_id, server, topic, content, secret, watch.clock())
    resource = subscription_resource(
        topic, endpoint, secret, content, heartbeat or None, list(filters or [])
    )
    try:
        response = http.post(
            f"{server}/Subscription", content=orjson.dumps(resource), headers=headers
        )
    except httpx.HTTPError as exc:
        watch.subscriptions.forget(local_id)
        typer.echo(f"error: {server}: {type(exc).__name__}", err=True)
        return False
    if response.status_code not in (200, 201):
        watch.subscriptions.forget(local_id)
        typer.echo(
            f"topic {topic}: the server refused the Subscription: HTTP "
            f"{response.status_code} {_outcome(response)}",
            err=True,
        )
        return False
    created = _json(response)
    sid = created.get("id") if isinstance(created, dict) else None
    status_value = str(created.get("status", "requested")) if isinstance(created, dict) else "?"
    watch.subscriptions.created(local_id, sid, status_value)
    typer.echo(
        f"topic {topic}: Subscription/{sid} created ({status_value}; {content}; "
        f"notifications to {endpoint})"
    )
    return True


def _advertised_topics(http: httpx.Client, server: str, headers: dict[str, str]) -> list[str]:
    """The topics the server's CapabilityStatement advertises (Backport IG extension on
    its Subscription resource); exit 1 when it offers no Subscription at all."""
    try:
        response = http.get(f"{server}/metadata", headers=headers)
    except httpx.HTTPError as exc:
        typer.echo(f"error: {server}/metadata: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from exc
    statement = _json(response)
    entries = [
        r
        for rest in (statement.get("rest") or [] if isinstance(statement, dict) else [])
        for r in rest.get("resource") or []
        if isinstance(r, dict) and r.get("type") == "Subscription"
    ]
    if response.status_code != 200 or not entries:
        typer.echo(
            f"error: {server} does not offer FHIR Subscriptions (its CapabilityStatement lists "
            "no Subscription resource): the watch polls it instead (CRS_WATCH_POLL_SECONDS)",
            err=True,
        )
        raise typer.Exit(1)
    return sorted(
        str(e.get("valueCanonical"))
        for entry in entries
        for e in entry.get("extension") or []
        if isinstance(e, dict) and e.get("url") == TOPIC_CANONICAL and e.get("valueCanonical")
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _outcome(response: httpx.Response) -> str:
    body = _json(response)
    issues = body.get("issue") if isinstance(body, dict) else None
    if isinstance(issues, list):
        return "; ".join(
            str(i.get("diagnostics") or i.get("code")) for i in issues if isinstance(i, dict)
        )
    return response.text[:200]
