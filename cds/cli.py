"""`crs-cds`: serve the CDS Hooks service, or evaluate a Bundle offline."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from cds.auth.cli import register as register_key_tools
from cds.auth.startup import AuthenticationMode, UnsafeStart, authentication_mode
from cds.auth.trust import TrustedClientsError
from cds.errors import CdsError
from cds.fhir.reading import ResourceCollector
from cds.fhir.timing import TimeFormatError, parse_fhir_datetime
from cds.knowledge import KnowledgeError
from cds.logs import configure_logging
from cds.runtime import Runtime
from cds.settings import Settings
from cds.tools import register as register_tools
from cds.watch import cli as watch_cli
from cds.web.cli import register as register_page_tools

app = typer.Typer(
    help="CRS decision support: a CDS Hooks 2.0 service and tools for integration engineers.",
    no_args_is_help=True,
    add_completion=False,
)

register_tools(app)
register_key_tools(app)
register_page_tools(app)
app.add_typer(watch_cli.app, name="watch")
log = logging.getLogger("cds.cli")


def load_settings() -> Settings:
    """Settings from the environment, or exit 2 with what is wrong in which variable."""
    try:
        return Settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            name = "CRS_" + "_".join(str(p) for p in err["loc"]).upper()
            typer.echo(f"error: setting {name}: {err['msg']}", err=True)
        raise typer.Exit(2) from exc


def _load_runtime(settings: Settings | None = None) -> Runtime:
    try:
        return Runtime.load(settings or load_settings())
    except KnowledgeError as exc:
        typer.echo(f"error: invalid rules: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (CRS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (CRS_PORT).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated",
            help="Serve without client authentication on an address other machines reach "
            "(when no trusted clients are configured).",
        ),
    ] = False,
) -> None:
    """Run the CDS Hooks service."""
    import uvicorn

    from cds.app import create_app
    from cds.clock import utc_now
    from cds.ids import new_uuid
    from cds.serving import uvicorn_options
    from cds.store.decisions import DecisionStore
    from cds.web.cli import base_url, demo_access_on, print_access_url

    settings = load_settings()
    configure_logging(settings.log_level)
    runtime = _load_runtime(settings)
    bind_host = host or settings.host
    bind_port = port or settings.port
    _check_authentication(settings, bind_host, allow_unauthenticated, workers)
    demo = demo_access_on(settings, bind_host)
    if workers > 1:
        if demo:
            store = DecisionStore.open(runtime, new_uuid, utc_now)
            print_access_url(store, base_url(settings, bind_host, bind_port))
            store.close()
        uvicorn.run(
            "cds.app:worker_app",  # each worker configures its logs and loads the rules
            factory=True,
            host=bind_host,
            port=bind_port,
            workers=workers,
            log_config=None,
            access_log=False,
            **uvicorn_options(settings),
        )
    else:
        application = create_app(runtime)
        if demo:
            print_access_url(application.state.store, base_url(settings, bind_host, bind_port))
        uvicorn.run(
            application,
            host=bind_host,
            port=bind_port,
            log_config=None,
            access_log=False,
            **uvicorn_options(settings),
        )


def _check_authentication(
    settings: Settings, host: str, allow_unauthenticated: bool, workers: int
) -> None:
    """The start-up rule (cds.auth.startup), and the trusted clients validated before
    serving: exit 2 with what is wrong; a warning when serving open."""
    from cds.auth.authentication import authentication_from_settings
    from cds.clock import utc_now
    from cds.fhir.client import http_client

    try:
        mode = authentication_mode(
            trusted_clients=settings.trusted_clients_file is not None,
            host=host,
            allow_unauthenticated=allow_unauthenticated,
        )
        if mode is AuthenticationMode.ON:
            # the file validated here, before any worker starts (each builds its own)
            authentication_from_settings(settings, clock=utc_now, http=http_client)
    except UnsafeStart as exc:
        typer.echo(f"error: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from exc
    except TrustedClientsError as exc:
        typer.echo(f"error: invalid trusted clients: {exc}", err=True)
        raise typer.Exit(2) from exc
    if mode is not AuthenticationMode.ON:
        log.warning(
            "authentication is OFF: no trusted clients are configured "
            "(CRS_TRUSTED_CLIENTS_FILE), every caller is served"
            + (" (--allow-unauthenticated)" if mode is AuthenticationMode.OPEN_ALLOWED else "")
        )


def _bundle_patient_id(collected: ResourceCollector) -> str | None:
    patients = {r.get("id") for r in collected.of_type("Patient")}
    patients.discard(None)
    return str(next(iter(patients))) if len(patients) == 1 else None


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A FHIR Bundle (JSON) with the patient's data.")],
    at: Annotated[
        str | None, typer.Option(help="Evaluation time, ISO 8601 with offset (default: now).")
    ] = None,
    service: Annotated[str, typer.Option(help="Service to evaluate as.")] = "crs-monitor",
) -> None:
    """Evaluate a Bundle as the patient-view service would; print the CDS Hooks response."""
    from cds.evaluation import evaluate as evaluate_at
    from cds.ids import new_uuid
    from cds.protocol import render
    from cds.services import crs_monitor

    runtime = _load_runtime()
    try:
        when = parse_fhir_datetime(at) if at else datetime.now(UTC)
    except TimeFormatError as exc:
        typer.echo(f"error: --at: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        data = orjson.loads(bundle.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        typer.echo(f"error: {bundle}: {exc}", err=True)
        raise typer.Exit(2) from exc
    collected = ResourceCollector()
    collected.add(data, "bundle")
    if service != "crs-monitor":
        typer.echo(f"error: unknown service {service!r} (evaluate supports crs-monitor)", err=True)
        raise typer.Exit(2)
    try:
        evaluation = evaluate_at(runtime, collected, _bundle_patient_id(collected), when)
        decision = crs_monitor.decide(runtime, evaluation, new_uuid)
    except CdsError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    response = orjson.loads(render(decision.response()))
    typer.echo(orjson.dumps(response, option=orjson.OPT_INDENT_2).decode())


@app.command()
def rules(
    unconfirmed: Annotated[
        bool, typer.Option("--unconfirmed", help="List the values not confirmed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The rule set in force: its version and how many cited values are unconfirmed."""
    runtime = _load_runtime()
    k = runtime.knowledge
    if not unconfirmed:
        typer.echo(f"{k.ruleset.name} {runtime.rules.version}")
        typer.echo(f"{len(k.unconfirmed)} cited values not confirmed against their source")
        for line in runtime.rules.overrides:
            typer.echo(f"institution setting: {line}")
        return
    for value in k.unconfirmed:
        if as_json:
            typer.echo(orjson.dumps(value.as_json()).decode())
        else:
            typer.echo(f"{value.file} {value.path}: {value.why}")


# --- decision records -------------------------------------------------------------------

db_app = typer.Typer(help="The decision store: migrations, retention, the spool.")
audit_app = typer.Typer(
    help="The audit trail: every hook call, replayed or summed up.", invoke_without_command=True
)
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")


def _time_option(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_fhir_datetime(value)
    except TimeFormatError as exc:
        typer.echo(f"error: {name}: {exc}", err=True)
        raise typer.Exit(2) from exc


def _open_engine(settings: Settings) -> Any:
    from cds.store import database

    url = settings.database
    engine = database.create(url)
    try:
        database.check_migrated(engine, url)
    except database.StoreUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    return engine


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database of CRS_DATABASE_URL (or the SQLite file)."""
    from cds.store import database

    settings = load_settings()
    url = settings.database
    if database.is_sqlite(url):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    database.upgrade(url)
    typer.echo(f"database at revision {database.head_revision(url)}")


@db_app.command("prune")
def db_prune(
    days: Annotated[
        int | None, typer.Option(help="Keep this many days (default CRS_AUDIT_RETENTION_DAYS).")
    ] = None,
) -> None:
    """Delete audit records (and their cards and feedback) past the retention period."""
    from cds.store.audit import prune

    settings = load_settings()
    removed = prune(
        _open_engine(settings), datetime.now(UTC), days or settings.audit_retention_days
    )
    typer.echo(f"{removed} records older than {days or settings.audit_retention_days} days removed")


@db_app.command("drain-spool")
def db_drain_spool() -> None:
    """Move records spooled while the database was away into it."""
    from cds.clock import utc_now
    from cds.ids import new_uuid
    from cds.store.decisions import DecisionStore

    store = DecisionStore.open(_load_runtime(), new_uuid, utc_now)
    moved = store.move_spooled()
    typer.echo(f"{moved} spooled records moved into the database")


@audit_app.callback()
def audit(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (ISO 8601).")] = None,
    service: Annotated[str | None, typer.Option(help="Only this service id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Every recorded hook call, oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    from cds.store.audit import export

    settings = load_settings()
    engine = _open_engine(settings)
    found = 0
    for record in export(
        engine, _time_option(since, "--since"), _time_option(until, "--until"), service
    ):
        found += 1
        if as_json:
            typer.echo(orjson.dumps(record).decode())
            continue
        shown = ", ".join(
            f"{c['indicator']}" + (f" grade {c['grade']}" if c.get("grade") is not None else "")
            for c in record["cards"]
        )
        typer.echo(
            f"{record['recorded_at']}  {record['service']:<16} {record['hook_instance']}  "
            f"patient {record['patient'][:12]}…  {len(record['cards'])} card(s) [{shown}]  "
            f"{record['latency_ms']:.1f} ms  rules {record['rule_set_version']}"
        )
    if not found:  # (on stderr: the output stays an empty export)
        typer.echo("no records match" + (f" (service {service!r})" if service else ""), err=True)


@audit_app.command("replay")
def audit_replay(
    hook_instance: Annotated[str, typer.Argument(help="The hookInstance of the call.")],
    as_json: Annotated[bool, typer.Option("--json", help="As JSON.")] = False,
) -> None:
    """Evaluate a recorded call again from its stored facts with the rules in force now,
    and say whether the cards are the same. Exit 1 when they differ."""
    from cds.store.audit import replay

    runtime = _load_runtime()
    replays = replay(_open_engine(runtime.settings), runtime, hook_instance)
    if not replays:
        typer.echo(f"error: no record of hookInstance {hook_instance!r}", err=True)
        raise typer.Exit(2)
    differ = False
    for r in replays:
        differ |= not r.same
        if as_json:
            typer.echo(
                orjson.dumps(
                    {
                        "hookInstance": r.hook_instance,
                        "service": r.service,
                        "evaluatedAt": r.evaluated_at.isoformat(),
                        "recordedRules": r.recorded_rules,
                        "currentRules": r.current_rules,
                        "same": r.same,
                        "recorded": r.recorded,
                        "replayed": r.replayed,
                    }
                ).decode()
            )
            continue
        verdict = "SAME cards" if r.same else "DIFFERENT cards"
        typer.echo(
            f"{r.service} at {r.evaluated_at.isoformat()}: {verdict} "
            f"(recorded with rules {r.recorded_rules}, replayed with {r.current_rules})"
        )
        if not r.same:
            typer.echo(f"  recorded: {orjson.dumps(r.recorded).decode()}")
            typer.echo(f"  replayed: {orjson.dumps(r.replayed).decode()}")
    if differ:
        raise typer.Exit(1)


@audit_app.command("feedback")
def audit_feedback(
    since: Annotated[str | None, typer.Option(help="Cards shown from this time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Per service, kind of card and grade: cards shown, accepted, overridden, and the
    override reasons."""
    from cds.store.audit import feedback_figures

    settings = load_settings()
    figures = feedback_figures(_open_engine(settings), _time_option(since, "--since"))
    if as_json:
        for f in figures:
            typer.echo(orjson.dumps(f.as_json()).decode())
        return
    typer.echo(
        f"{'service':<18}{'kind':<18}{'grade':>6}{'shown':>8}{'accepted':>10}{'overridden':>12}"
        "  reasons"
    )
    for f in figures:
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(f.reasons.items()))
        typer.echo(
            f"{f.service:<18}{f.kind:<18}{'-' if f.grade is None else f.grade:>6}{f.shown:>8}"
            f"{f.accepted:>10}{f.overridden:>12}  {reasons}"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
