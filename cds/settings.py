"""All settings, in one place (environment variables with prefix CRS_, or a .env file).

The defaults run the service with nothing configured. Clinical overrides default to
None, meaning "use the cited value in rules/"; when set, the card says so.
"""

from __future__ import annotations

from functools import cached_property
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cds.auth.keys import KEY_TYPE
from cds.knowledge import DEFAULT_MAPPINGS_DIR, DEFAULT_RULES_DIR

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Service settings; see the README table for each one."""

    model_config = SettingsConfigDict(env_prefix="CRS_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"
    rules_dir: Path = DEFAULT_RULES_DIR
    mappings_dir: Path = DEFAULT_MAPPINGS_DIR
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    public_base_url: str | None = None

    # Time: how to read FHIR times that carry a time but no offset (invalid FHIR).
    assume_timezone: str | None = None

    # Clinical overrides of cited defaults in rules/ (None = use the rule file).
    hypotension_systolic_below_mmhg: float | None = Field(default=None, gt=0, lt=200)
    hypotension_map_below_mmhg: float | None = Field(default=None, gt=0, lt=150)
    lookback_hours: float | None = Field(default=None, gt=0, le=336)
    episode_gap_hours: float | None = Field(default=None, gt=0, le=336)
    spo2_warning_below_percent: float | None = Field(default=None, gt=50, le=100)
    window_hours: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    premedication_hours: float | None = Field(default=None, gt=0, le=72)
    # ICANS (rules/icans.yaml): look-back of the current grade, per-product window.
    icans_lookback_hours: float | None = Field(default=None, gt=0, le=336)
    icans_window_hours: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)

    # Tocilizumab (pharmacist checks and the physician's order).
    tocilizumab_dose_tolerance_percent: float = Field(default=10.0, ge=0, le=50)
    tocilizumab_rounding_mg: float | None = Field(default=None, gt=0, le=100)

    # FHIR-server fallback.
    fhir_allowed_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    fhir_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    fhir_page_size: int = Field(default=200, ge=1, le=1000)
    # what one query (every page of a search) and one hook call's queries may read,
    # counted after decompression
    fhir_max_query_bytes: int = Field(default=16 * MIB, ge=64 * 1024, le=1024 * MIB)
    fhir_max_request_bytes: int = Field(default=32 * MIB, ge=64 * 1024, le=4096 * MIB)

    # What a client may send, and how the server holds up under it (issue #11).
    # A 10,000-resource patient-view request is about 7 MB: 15 MiB leaves room, and stays
    # under the ingress's 16 MiB (deploy/), so that this service answers an oversized
    # request itself.
    max_request_bytes: int = Field(default=15 * MIB, ge=64 * 1024, le=1024 * MIB)
    max_draft_orders: int = Field(default=100, ge=1, le=10_000)
    evaluation_threads: int = Field(default=2, ge=1, le=64)
    evaluate_inline_below_bytes: int = Field(default=1_048_576, ge=0, le=1 << 30)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3_600)
    keep_alive_seconds: float = Field(default=5.0, gt=0, le=600)
    max_connections: int = Field(default=100, ge=1, le=100_000)

    # Decision records (audit trail, feedback, suppression).
    data_dir: Path = Path("data")  # SQLite database, spool and generated keys (created)
    database_url: str | None = None  # None: SQLite in data_dir; postgresql+psycopg://…
    database_durable_commit: bool = False  # fsync every record before answering
    pseudonym_key: str | None = None  # HMAC key of patient pseudonyms
    audit_retention_days: int = Field(default=400, ge=1, le=36_500)
    acknowledgement_hours: float | None = Field(default=None, gt=0, le=24 * 14)
    spool_drain_seconds: float = Field(default=5.0, gt=0, le=3_600)

    # Client authentication (CDS Hooks "Trusting CDS Clients"): on when a trusted-clients
    # file is given; see cds/auth/.
    trusted_clients_file: Path | None = None
    authenticate_discovery: bool = True
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ES384", "RS384"], min_length=1
    )
    jwt_clock_skew_seconds: float = Field(default=30.0, ge=0, le=300)
    jwt_max_lifetime_seconds: float = Field(default=300.0, gt=0, le=3600)
    jwks_cache_seconds: float = Field(default=3600.0, ge=0, le=86400)
    jwks_min_refresh_seconds: float = Field(default=60.0, ge=0, le=3600)
    replay_memory_size: int = Field(default=100_000, ge=100, le=10_000_000)

    # Pictures (cds/web/): the timeline linked from the card and the watch list.
    link_signing_key: SecretStr | None = Field(default=None, min_length=32)
    link_lifetime_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    display_timezone: str = "UTC"  # the zone the pages show times in (with the offset)
    web_trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    web_identity_header: str = "X-Forwarded-Email"
    web_frame_ancestors: Annotated[list[str], NoDecode] = Field(default_factory=list)
    web_session_hours: float = Field(default=8.0, gt=0, le=24 * 7)
    web_demo_access: bool | None = None  # None: on when serving on a loopback address
    web_refresh_seconds: int = Field(default=60, ge=5, le=3_600)
    web_data_gap_hours: float = Field(default=6.0, gt=0, le=72)

    # The watch (issue #12): continuous surveillance of the patients in a risk window; see
    # cds/watch/ and the README's Watch section. Off while CRS_WATCH_FHIR_SERVER is unset.
    watch_fhir_server: str | None = None  # must also be on CRS_FHIR_ALLOWED_SERVERS
    watch_fhir_token: str | None = None  # bearer token the watch sends to that server
    # SMART Backend Services instead of a static token (cds/watch/smart.py)
    watch_smart_client_id: str | None = None
    watch_smart_key_file: Path | None = None  # private key, PEM (`crs-cds keys new`)
    watch_smart_kid: str | None = None  # default: the key's RFC 7638 thumbprint
    watch_smart_token_url: str | None = None  # default: the server's smart-configuration
    watch_smart_scopes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    watch_poll_seconds: float = Field(default=60.0, gt=0, le=3600)
    watch_webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    watch_in_serve: bool | None = None  # None: on with SQLite, off with PostgreSQL
    watch_census_seconds: float = Field(default=300.0, gt=0, le=86_400)
    watch_temperature_gap_hours: float | None = Field(default=None, gt=0, le=168)
    watch_patient_details: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["pseudonym"]
    )
    watch_webhook_secret: str | None = None  # HMAC-SHA256 signature of each webhook body
    watch_webhook_attempts: int = Field(default=12, ge=1, le=100)
    watch_writeback: Literal["off", "communication", "flag"] = "off"
    watch_writeback_recipient: str | None = None  # e.g. CareTeam/123 (Communication.recipient)
    watch_id_key: str | None = None  # key sealing patient ids at rest (default: derived)
    watch_concurrency: int = Field(default=8, ge=1, le=256)
    # `crs-cds watch run` serves /metrics on this port (on CRS_HOST); unset: no endpoint
    watch_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator(
        "cors_origins",
        "fhir_allowed_servers",
        "jwt_algorithms",
        "web_trusted_proxies",
        "web_frame_ancestors",
        "watch_webhook_urls",
        "watch_patient_details",
        "watch_smart_scopes",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg not in KEY_TYPE:
                raise ValueError(
                    f"{alg!r} is not accepted (never none, never HMAC); choose among "
                    + ", ".join(KEY_TYPE)
                )
        return value

    @field_validator("watch_patient_details")
    @classmethod
    def _patient_details(cls, value: list[str]) -> list[str]:
        known = ("pseudonym", "id")
        for item in value:
            if item not in known:
                raise ValueError(
                    f"{item!r} is not a patient detail; choose among {', '.join(known)}"
                )
        return value

    @field_validator("window_hours", "icans_window_hours", mode="before")
    @classmethod
    def _window_pairs(cls, value: object) -> object:
        """`product=hours,product=hours`, e.g. `tisagenlecleucel=1224`."""
        if isinstance(value, str):
            pairs: dict[str, float] = {}
            for item in value.split(","):
                if not item.strip():
                    continue
                product, sep, hours = item.partition("=")
                if not sep:
                    raise ValueError(f"expected product=hours, got {item.strip()!r}")
                pairs[product.strip()] = float(hours)
            return pairs
        return value

    @field_validator("assume_timezone", "display_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value or None

    @field_validator("web_trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value

    @cached_property
    def display_tz(self) -> ZoneInfo:
        """The zone the pages show times in."""
        return ZoneInfo(self.display_timezone)

    @property
    def database(self) -> str:
        """The SQLAlchemy URL of the decision store: the setting, or SQLite in data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'crs-cds.sqlite3').resolve()}"

    @cached_property
    def assume_tz(self) -> ZoneInfo | None:
        """The zone for times without an offset, or None to reject them."""
        return ZoneInfo(self.assume_timezone) if self.assume_timezone else None
