"""The database engine: SQLite (WAL, a busy timeout) or PostgreSQL, and its migrations."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

SQLITE_BUSY_MS = 5_000  # how long a writer waits for another process's write


class StoreUnavailable(Exception):
    """The store cannot be used: not migrated, not reachable, or misconfigured."""


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create(url: str, *, durable_commit: bool = False, pool_size: int = 8) -> Engine:
    """An engine for `url`. SQLite: WAL journal, `synchronous=NORMAL` (a record survives a
    crash of the service; FULL with `durable_commit`), foreign keys on. PostgreSQL:
    `synchronous_commit` off unless `durable_commit` (then every commit is flushed to
    disk before the answer: one fsync per call)."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
            json_serializer=_json,
            json_deserializer=orjson.loads,
        )
        synchronous = "FULL" if durable_commit else "NORMAL"

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    options: dict[str, Any] = {"synchronous_commit": "on" if durable_commit else "off"}
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        json_serializer=_json,
        json_deserializer=orjson.loads,
        connect_args={"options": " ".join(f"-c {k}={v}" for k, v in options.items())},
    )


def _json(value: Any) -> str:
    """JSON columns written by orjson (the cards of every record: several times faster
    than the standard library's encoder)."""
    return orjson.dumps(value).decode()


def _alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("cds.store").joinpath("migrations"))
    )
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the newest schema (idempotent; quick when it is
    already there)."""
    config = _alembic_config(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        if current_revision(engine) == _head():
            return
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@functools.cache
def _head() -> str | None:
    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def head_revision(url: str) -> str | None:
    """The newest schema revision the code knows (the same for every database)."""
    return _head()


def check_migrated(engine: Engine, url: str) -> None:
    """StoreUnavailable unless the schema is the newest (PostgreSQL is migrated by
    `crs-cds db upgrade`, not by the service)."""
    have, want = current_revision(engine), head_revision(url)
    if have != want:
        raise StoreUnavailable(
            f"the database schema is at {have or 'no revision'}, the service needs {want}: "
            "run `crs-cds db upgrade`"
        )
