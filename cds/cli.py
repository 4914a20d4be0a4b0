"""`crs-cds`: serve the CDS Hooks service, or evaluate a Bundle offline."""

from __future__ import annotations

import json
import logging
import sys
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
from cds.runtime import Runtime
from cds.settings import Settings
from cds.tools import register as register_tools

app = typer.Typer(
    help="CRS decision support: a CDS Hooks 2.0 service and tools for integration engineers.",
    no_args_is_help=True,
    add_completion=False,
)

register_tools(app)
register_key_tools(app)
log = logging.getLogger("cds.cli")

_LOG_FIELDS = (
    "service",
    "hookInstance",
    "cards",
    "grades",
    "ruleSetVersion",
    "ms",
    "query",
    "error",
    "frames",
    "unconfirmed",
    "reason",
)


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the allowed extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _LOG_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())


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

    settings = load_settings()
    configure_logging(settings.log_level)
    runtime = _load_runtime(settings)
    bind_host = host or settings.host
    bind_port = port or settings.port
    _check_authentication(settings, bind_host, allow_unauthenticated, workers)
    if workers > 1:
        uvicorn.run(
            "cds.app:create_app",
            factory=True,
            host=bind_host,
            port=bind_port,
            workers=workers,
            log_config=None,
            access_log=False,
        )
    else:
        uvicorn.run(
            create_app(runtime), host=bind_host, port=bind_port, log_config=None, access_log=False
        )


def _check_authentication(
    settings: Settings, host: str, allow_unauthenticated: bool, workers: int
) -> None:
    """The start-up rule (cds.auth.startup), and the trusted clients validated before
    serving: exit 2 with what is wrong; a warning when serving open."""
    from cds.app import utc_now
    from cds.auth.authentication import authentication_from_settings
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
    if mode is AuthenticationMode.ON and workers > 1:
        log.warning(
            "token ids are remembered per worker process: a token replayed to another "
            "worker is not detected (run one worker, or a replay guard shared by all)"
        )
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
    from cds.app import new_uuid
    from cds.evaluation import evaluate as evaluate_at
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


def main() -> None:
    app()
