"""`crs-cds scenarios | load | fire`: bring the service up against a FHIR sandbox.

- `scenarios` lists the synthetic patients and the outcome each should produce;
- `load` PUTs them into a FHIR server (one transaction each, timed from now);
- `fire` calls a running CDS service as an EHR would: it reads the service's discovery,
  resolves the advertised prefetch templates against the FHIR server (or sends none, so
  that the service fetches from `fhirServer` itself), posts the hook request and shows
  the cards.

`register(app)` adds the commands to the main `crs-cds` Typer application.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cds.auth.signing import ClientTokenAuth, load_client_key
from cds.fhir.client import (
    FHIR_JSON,
    FhirQuery,
    FhirQueryFailed,
    FhirReader,
    TemplateError,
    normalise_base_url,
    resolve_template,
    split_query,
)
from cds.fhir.timing import TimeFormatError, parse_fhir_datetime
from cds.scenarios import Scenario, ScenarioError, get, library

INDICATOR_STYLE = {"info": "blue", "warning": "yellow", "critical": "bold red"}
DEFAULT_SERVICE_URL = "http://127.0.0.1:8000"
DEFAULT_USER = "Practitioner/crs-cds-fire"
ORDER_HOOKS = frozenset({"order-sign", "order-select"})

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add `scenarios`, `load` and `fire` to the `crs-cds` application."""
    app.command("scenarios")(scenarios)
    app.command("load")(load)
    app.command("fire")(fire)


def outcome_text(expect: dict[str, Any]) -> str:
    """`{"grade": 2, "maxGrade": 2}` → "grade 2 (max 2)"; problems and "no card" likewise."""
    if "problems" in expect:
        return "problems: " + (", ".join(expect["problems"]) or "none")
    if expect.get("card") is False:
        return "no card (not in a risk window)"
    return f"grade {expect.get('grade')} (max {expect.get('maxGrade')})"


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- scenarios -------------------------------------------------------------------------


def scenarios(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the synthetic patients and the outcome each should produce."""
    try:
        items = list(library().values())
    except ScenarioError as exc:
        raise _fail(str(exc), 2) from exc
    if as_json:
        rows = [
            {"id": s.id, "description": s.description, "expect": s.expect, "patient": s.patient_id}
            for s in items
        ]
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title="CRS scenarios (patient id = scenario id)", show_lines=False)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("description", ratio=3)
    table.add_column("expected outcome", ratio=2)
    for s in items:
        note = "" if s.searchable else " ¹"
        table.add_row(s.id, s.description + note, f"{s.service}: {outcome_text(s.expect)}")
    console.print(table)
    if not all(s.searchable for s in items):
        console.print(
            "¹ local codes with text only: the prefetch templates (searches by code) cannot "
            "find them; the service's fallback through fhirServer also searches by name and "
            "does, as do a prefetch with every Observation and `crs-cds evaluate`."
        )


# --- load ------------------------------------------------------------------------------


def load(
    fhir_server: Annotated[
        str, typer.Option(help="FHIR R4 base URL, e.g. http://127.0.0.1:8080/fhir")
    ],
    scenario_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[SCENARIO]...", help="Default: all.")
    ] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token for the FHIR server.")] = None,
    at: Annotated[
        str | None, typer.Option(help="Anchor time, ISO 8601 with offset (default: now).")
    ] = None,
) -> None:
    """Load scenario patients into a FHIR server (one PUT transaction each); print their ids."""
    try:
        chosen = [get(i) for i in scenario_ids] if scenario_ids else list(library().values())
        anchor = parse_fhir_datetime(at) if at else datetime.now(UTC)
    except (ScenarioError, TimeFormatError) as exc:
        raise _fail(str(exc), 2) from exc
    base = normalise_base_url(fhir_server)
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **_auth_headers(token)}
    table = Table(title=f"Loaded into {base} (anchor {anchor.isoformat(timespec='seconds')})")
    table.add_column("patient id", style="bold", no_wrap=True)
    table.add_column("resources", justify="right")
    table.add_column("service")
    table.add_column("expected outcome")
    failures = 0
    with httpx.Client(timeout=30.0) as client:
        for scenario in chosen:
            bundle = scenario.transaction(anchor)
            try:
                response = client.post(base, content=orjson.dumps(bundle), headers=headers)
            except httpx.HTTPError as exc:
                raise _fail(f"{base}: {type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                failures += 1
                err_console.print(
                    f"[red]{scenario.id}: HTTP {response.status_code}[/] "
                    + _outcome_diagnostics(response),
                    highlight=False,
                )
                continue
            table.add_row(
                scenario.patient_id,
                str(len(bundle["entry"])),
                scenario.service,
                outcome_text(scenario.expect),
            )
    console.print(table)
    if failures:
        raise _fail(f"{failures} scenario(s) could not be loaded")


def _outcome_diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's issues as one line, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    issues = body.get("issue") if isinstance(body, dict) else None
    if isinstance(issues, list):
        return "; ".join(
            str(i.get("diagnostics") or i.get("details", {}).get("text") or i.get("code"))
            for i in issues
            if isinstance(i, dict)
        )
    return response.text[:300]


# --- fire ------------------------------------------------------------------------------


def fire(
    service: Annotated[str, typer.Argument(help="Service id, e.g. crs-monitor, crs-order-sign.")],
    fhir_server: Annotated[str, typer.Option(help="FHIR R4 base URL the EHR would send.")],
    patient: Annotated[
        str | None, typer.Option(help="Patient id (default: the --scenario's patient).")
    ] = None,
    prefetch: Annotated[
        bool,
        typer.Option(
            "--prefetch/--no-prefetch",
            help="Resolve the service's prefetch templates here, or send none "
            "(the service then reads fhirServer itself).",
        ),
    ] = True,
    service_url: Annotated[
        str, typer.Option(help="Base URL of the running CDS service.")
    ] = DEFAULT_SERVICE_URL,
    token: Annotated[
        str | None,
        typer.Option(help="FHIR access token (used here and sent as fhirAuthorization)."),
    ] = None,
    scenario: Annotated[
        str | None,
        typer.Option(help="Scenario id: its draft order for order hooks, its expected outcome."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw response.")] = False,
    key: Annotated[
        Path | None,
        typer.Option(help="Sign each call with this private key (PEM; `crs-cds keys new`)."),
    ] = None,
    kid: Annotated[str | None, typer.Option(help="The key's kid (with --key).")] = None,
    iss: Annotated[
        str | None, typer.Option(help="The issuer the service trusts (with --key).")
    ] = None,
) -> None:
    """Call a running CDS service as an EHR would and show the cards."""
    try:
        chosen = get(scenario) if scenario else None
    except ScenarioError as exc:
        raise _fail(str(exc), 2) from exc
    auth = _client_auth(key, kid, iss)
    patient_id = patient or (chosen.patient_id if chosen else None)
    if not patient_id:
        raise _fail("give --patient (or --scenario)", 2)
    base = normalise_base_url(fhir_server)
    root = service_url.rstrip("/")
    with httpx.Client(timeout=30.0, auth=auth) as client:
        entry = _discover(client, root, service)
        hook = str(entry.get("hook"))
        context = _context(hook, patient_id, chosen)
        body: dict[str, Any] = {
            "hook": hook,
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": base,
            "context": context,
        }
        if token:
            body["fhirAuthorization"] = {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "crs-cds-fire",
            }
        templates: dict[str, str] = entry.get("prefetch") or {}
        if prefetch and templates:
            body["prefetch"] = asyncio.run(_resolve_prefetch(templates, context, base, token))
        started = time.perf_counter()
        try:
            response = client.post(f"{root}/cds-services/{service}", json=body)
        except httpx.HTTPError as exc:
            raise _fail(f"{root}: {type(exc).__name__}: {exc}") from exc
        ms = (time.perf_counter() - started) * 1000
    if as_json:
        try:
            typer.echo(orjson.dumps(response.json(), option=orjson.OPT_INDENT_2).decode())
        except ValueError:
            typer.echo(response.text)
        if response.status_code != 200:
            raise typer.Exit(1)
        return
    console.print(
        f"[bold]{service}[/] ({hook}) · patient {patient_id} · prefetch: "
        f"{_prefetch_sent(templates, body.get('prefetch'))} · HTTP {response.status_code} · "
        f"{ms:.0f} ms",
        highlight=False,
    )
    if chosen is not None:
        console.print(f"expected ({chosen.id}): {outcome_text(chosen.expect)}", highlight=False)
    if response.status_code != 200:
        console.print(Panel(response.text, title="error", border_style="red"))
        raise typer.Exit(1)
    render_response(response.json())


def _prefetch_sent(templates: dict[str, str], prefetch: dict[str, Any] | None) -> str:
    """ "observations, patient; none found: conditions; not sent: medicationAdministrations
    (the service reads fhirServer)" for the status line."""
    sent = prefetch or {}
    parts = [", ".join(k for k, v in sent.items() if v is not None) or "none"]
    if empty := [k for k, v in sent.items() if v is None]:
        parts.append("none found: " + ", ".join(empty))
    if missing := [k for k in templates if k not in sent]:
        parts.append("not sent: " + ", ".join(missing) + " (the service reads fhirServer)")
    return "; ".join(parts)


def _client_auth(key: Path | None, kid: str | None, iss: str | None) -> ClientTokenAuth | None:
    """A signer for every call (a fresh JWT each: aud the URL called, a new jti)."""
    if key is None and kid is None and iss is None:
        return None
    if key is None or not kid or not iss:
        raise _fail("--key, --kid and --iss go together", 2)
    try:
        return ClientTokenAuth(load_client_key(key.read_bytes(), kid), iss)
    except (OSError, ValueError) as exc:
        raise _fail(f"--key {key}: {exc}", 2) from exc


def _discover(client: httpx.Client, root: str, service: str) -> dict[str, Any]:
    try:
        response = client.get(f"{root}/cds-services")
        response.raise_for_status()
        services = response.json()["services"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise _fail(f"cannot read discovery {root}/cds-services: {exc}") from exc
    for entry in services:
        if isinstance(entry, dict) and entry.get("id") == service:
            return entry
    known = ", ".join(str(e.get("id")) for e in services if isinstance(e, dict))
    raise _fail(f"{root} has no service {service!r} (it offers: {known})", 2)


def _context(hook: str, patient_id: str, scenario: Scenario | None) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": DEFAULT_USER, "patientId": patient_id}
    if hook in ORDER_HOOKS:
        orders = scenario.draft_orders(datetime.now(UTC)) if scenario else None
        if orders is None:
            raise _fail(f"hook {hook} needs draft orders: give --scenario with an order", 2)
        context["draftOrders"] = orders
        if hook == "order-select":
            context["selections"] = [
                f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in orders["entry"]
            ]
    return context


async def _resolve_prefetch(
    templates: dict[str, str], context: dict[str, Any], base: str, token: str | None
) -> dict[str, Any]:
    """Each template resolved and read from the FHIR server, following next links.

    As CDS Hooks 2.0 has a client send what it could not fetch: a read of a resource the
    server does not have (404, 410) is null (fetched, no data); any other failure leaves the
    key out (not fetched: the service queries fhirServer itself, or answers 412), with a
    warning. (Sent as null, a failed query read as "no data": no temperature, no infusion,
    no cards.)
    """
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30.0) as http:
        reader = FhirReader(http, base, token, request_timeout=30.0)

        async def one(key: str, template: str) -> None:
            try:
                relative = resolve_template(template, context)
            except TemplateError as exc:
                _not_sent(key, exc)
                return
            path, params = split_query(relative)
            searched = "?" in relative
            try:
                if searched:
                    query = FhirQuery(f"prefetch {key} ({path} search)", path, tuple(params))
                    entries = await reader.search(query)
                    results[key] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
                else:
                    query = FhirQuery(
                        f"prefetch {key} ({path.split('/')[0]} read)", path, search=False
                    )
                    results[key] = await reader.read(query)
            except FhirQueryFailed as exc:
                if not searched and exc.status in NOT_FOUND:
                    err_console.print(f"[yellow]note:[/] prefetch {key}: {exc}; sent as null")
                    results[key] = None
                else:
                    _not_sent(key, exc)

        await asyncio.gather(*(one(k, t) for k, t in templates.items()))
    return {k: results[k] for k in templates if k in results}


NOT_FOUND = frozenset({404, 410})


def _not_sent(key: str, problem: Exception) -> None:
    err_console.print(
        f"[yellow]warning:[/] prefetch {key}: {problem}; not sent (the service queries "
        "fhirServer for it, or answers 412)"
    )


# --- rendering -------------------------------------------------------------------------


def render_response(response: dict[str, Any], out: Console | None = None) -> None:
    """Cards as panels: summary, indicator colour, detail (Markdown), suggestions, links."""
    out = out or console
    cards = response.get("cards") or []
    if not cards:
        out.print("[dim]No cards.[/]")
    for card in cards:
        out.print(card_panel(card))
    issues = (response.get("extension") or {}).get("dataIssues") or []
    if issues:
        out.print(_issues_table(issues))


def card_panel(card: dict[str, Any]) -> Panel:
    """One card as a rich Panel."""
    indicator = str(card.get("indicator", "info"))
    style = INDICATOR_STYLE.get(indicator, "white")
    parts: list[RenderableType] = []
    if card.get("detail"):
        parts.append(Markdown(str(card["detail"])))
    suggestions = card.get("suggestions") or []
    if suggestions:
        table = Table(title="Suggestions", title_justify="left", show_header=True, expand=True)
        table.add_column("label")
        table.add_column("actions")
        for s in suggestions:
            label = ("★ " if s.get("isRecommended") else "") + str(s.get("label", ""))
            actions = "; ".join(
                f"{a.get('type')} {a.get('resource', {}).get('resourceType', '')}: "
                f"{a.get('description', '')}".strip()
                for a in s.get("actions") or []
            )
            table.add_row(label, actions)
        parts.append(table)
    for link in card.get("links") or []:
        parts.append(Text(f"→ {link.get('label')}: {link.get('url')}", style="cyan"))
    source = card.get("source") or {}
    parts.append(Text(f"source: {source.get('label', '')}", style="dim"))
    for issue in (card.get("extension") or {}).get("dataIssues") or []:
        parts.append(Text(f"data issue: {issue.get('location')}: {issue.get('problem')}", "yellow"))
    return Panel(
        Group(*parts),
        title=Text(f"[{indicator}] {card.get('summary', '')}", style=style),
        title_align="left",
        border_style=style,
    )


def _issues_table(issues: list[dict[str, Any]]) -> Table:
    table = Table(title="Data issues", title_justify="left")
    table.add_column("location")
    table.add_column("problem")
    for issue in issues:
        table.add_row(str(issue.get("location")), str(issue.get("problem")))
    return table
