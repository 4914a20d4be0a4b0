"""The watch's settings, resolved once: the FHIR server it watches (allow-listed), how
often, where notifications go, and the thresholds from rules/alerting.yaml `watch`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from cds.auth.signing import load_client_key, thumbprint
from cds.fhir.client import allowed_base_url
from cds.runtime import Runtime
from cds.settings import Settings
from cds.store import database
from cds.watch.smart import SmartClient, default_scopes, token_endpoint

# Polling asks for what changed since the newest `meta.lastUpdated` seen, less this
# overlap: a resource committed a moment after a later one is still found (duplicates
# are recognised by their version).
CURSOR_OVERLAP = timedelta(seconds=5)


class WatchConfigError(Exception):
    """The watch's settings are inconsistent; the message names the setting."""


@dataclass(frozen=True)
class WatchConfig:
    """The watch as configured (see the README's Watch section)."""

    server: str  # CRS_WATCH_FHIR_SERVER, normalised; on CRS_FHIR_ALLOWED_SERVERS
    token: str | None  # CRS_WATCH_FHIR_TOKEN (static)
    smart: SmartClient | None  # SMART Backend Services (instead of a static token)
    poll: timedelta
    census_every: timedelta
    webhook_urls: tuple[str, ...]
    webhook_secret: str | None
    webhook_attempts: int
    in_serve: bool
    patient_details: frozenset[str]
    writeback: str  # off | communication | flag
    writeback_recipient: str | None
    temperature_gap: timedelta | None  # None: no data-gap notifications
    possible_grade_from: int | None  # None: no possible-grade notifications
    fever_grade: int  # the grade a fever alone gives (rules/astct.yaml)
    concurrency: int
    fhir_timeout_seconds: float
    page_size: int
    public_base_url: str | None

    @property
    def tick_seconds(self) -> float:
        """How often a worker looks for due work (patients, notifications, inbox)."""
        return min(1.0, self.poll.total_seconds() / 4)

    def targets(self) -> tuple[str, ...]:
        """Where a new notification goes: each webhook URL, and the write-back if on."""
        back = () if self.writeback == "off" else (f"fhir:{self.writeback}",)
        return self.webhook_urls + back


def watch_config(runtime: Runtime) -> WatchConfig | None:
    """The watch's configuration, or None when it is off (no CRS_WATCH_FHIR_SERVER);
    WatchConfigError names the setting that is wrong."""
    s = runtime.settings
    if not s.watch_fhir_server:
        return None
    server = allowed_base_url(s.watch_fhir_server, s.fhir_allowed_servers)
    if server is None:
        raise WatchConfigError(
            f"CRS_WATCH_FHIR_SERVER {s.watch_fhir_server!r} must also be on "
            "CRS_FHIR_ALLOWED_SERVERS (the allow-list of FHIR servers the service may query)"
        )
    for url in s.watch_webhook_urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise WatchConfigError(
                "CRS_WATCH_WEBHOOK_URLS: every entry must be an http(s) URL, got "
                f"{_redacted(url)!r}"
            )
    if s.watch_writeback_recipient and s.watch_writeback != "communication":
        raise WatchConfigError(
            "CRS_WATCH_WRITEBACK_RECIPIENT is only used with CRS_WATCH_WRITEBACK=communication"
        )
    rule = runtime.knowledge.alerting.watch
    gap_hours = s.watch_temperature_gap_hours or (rule.temperature_gap_hours if rule else None)
    in_serve = s.watch_in_serve if s.watch_in_serve is not None else database.is_sqlite(s.database)
    return WatchConfig(
        server=server,
        token=s.watch_fhir_token,
        smart=_smart_client(s),
        poll=timedelta(seconds=s.watch_poll_seconds),
        census_every=timedelta(seconds=s.watch_census_seconds),
        webhook_urls=tuple(s.watch_webhook_urls),
        webhook_secret=s.watch_webhook_secret,
        webhook_attempts=s.watch_webhook_attempts,
        in_serve=in_serve,
        patient_details=frozenset(s.watch_patient_details),
        writeback=s.watch_writeback,
        writeback_recipient=s.watch_writeback_recipient,
        temperature_gap=timedelta(hours=gap_hours) if gap_hours else None,
        possible_grade_from=rule.possible_grade_from if rule else None,
        fever_grade=runtime.rules.grading.grades.fever,
        concurrency=s.watch_concurrency,
        fhir_timeout_seconds=s.fhir_timeout_seconds,
        page_size=s.fhir_page_size,
        public_base_url=s.public_base_url.rstrip("/") if s.public_base_url else None,
    )


def _smart_client(s: Settings) -> SmartClient | None:
    """The watch as a SMART backend client (None: not configured); WatchConfigError names
    the setting that is missing or wrong."""
    if s.watch_smart_client_id is None:
        if s.watch_smart_key_file is not None:
            raise WatchConfigError(
                "CRS_WATCH_SMART_KEY_FILE is set without CRS_WATCH_SMART_CLIENT_ID"
            )
        return None
    if s.watch_fhir_token:
        raise WatchConfigError(
            "CRS_WATCH_FHIR_TOKEN and CRS_WATCH_SMART_CLIENT_ID are both set: choose one"
        )
    if s.watch_smart_key_file is None:
        raise WatchConfigError(
            "CRS_WATCH_SMART_CLIENT_ID needs CRS_WATCH_SMART_KEY_FILE (the private key, PEM, "
            "whose public key is registered with the EHR; `crs-cds keys new` makes one)"
        )
    try:
        pem = s.watch_smart_key_file.read_bytes()
        key = load_client_key(pem, s.watch_smart_kid or "")
    except (OSError, ValueError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise WatchConfigError(
            f"CRS_WATCH_SMART_KEY_FILE {str(s.watch_smart_key_file)!r}: {reason} "
            "(a P-384 EC or an RSA private key, PEM, unencrypted)"
        ) from exc
    if not s.watch_smart_kid:
        key = load_client_key(pem, thumbprint(key.public_jwk()))
    token_url = None
    if s.watch_smart_token_url:
        try:
            token_url = token_endpoint(s.watch_smart_token_url)
        except ValueError as exc:
            raise WatchConfigError(f"CRS_WATCH_SMART_TOKEN_URL: {exc}") from exc
    scopes = tuple(" ".join(s.watch_smart_scopes).split()) or default_scopes(s.watch_writeback)
    return SmartClient(s.watch_smart_client_id, key, scopes, token_url)


def _redacted(url: str) -> str:
    """A URL without its path and query (a webhook URL may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else "…"


def target_label(target: str) -> str:
    """How status shows a delivery target: a webhook by scheme and host only."""
    return target if target.startswith("fhir:") else _redacted(target)
