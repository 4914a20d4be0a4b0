"""The schema: migrations give exactly the tables the code uses, on both databases; the
embedded SQLite store makes itself; PostgreSQL must be migrated and keyed first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from cds.cli import app as cli
from cds.clock import utc_now
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.store import database
from cds.store.decisions import DecisionStore
from cds.store.tables import metadata
from tests import factories
from tests.conftest import new_postgres_database
from tests.store.conftest import PSEUDONYM_KEY, Service


def test_the_migrations_give_the_tables_the_code_uses(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert differences == []


@pytest.fixture()
def empty_postgres() -> Iterator[str]:
    with new_postgres_database() as url:
        yield url


def _runtime(tmp_path: Path, **settings: Any) -> Runtime:
    return Runtime.load(factories.settings(data_dir=tmp_path, **settings))


def test_postgresql_must_be_migrated_first(empty_postgres: str, tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, database_url=empty_postgres, pseudonym_key=PSEUDONYM_KEY)
    with pytest.raises(database.StoreUnavailable, match="crs-cds db upgrade"):
        DecisionStore.open(runtime, new_uuid, utc_now)
    result = CliRunner().invoke(cli, ["db", "upgrade"], env={"CRS_DATABASE_URL": empty_postgres})
    assert result.exit_code == 0, result.output
    assert "revision 0004" in result.output  # the head: event numbers in 64 bits
    DecisionStore.open(runtime, new_uuid, utc_now).close()


def test_postgresql_needs_a_shared_pseudonym_key(database_url: str, tmp_path: Path) -> None:
    if database.is_sqlite(database_url):
        pytest.skip("the embedded store generates its own key")
    with pytest.raises(database.StoreUnavailable, match="CRS_PSEUDONYM_KEY"):
        DecisionStore.open(_runtime(tmp_path, database_url=database_url), new_uuid, utc_now)


def test_the_embedded_store_makes_itself_on_first_run(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    store = DecisionStore.open(_runtime(data), new_uuid, utc_now)
    try:
        assert (data / "crs-cds.sqlite3").exists()
        assert (data / "pseudonym.key").stat().st_mode & 0o077 == 0
        with store.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        store.close()
    again = DecisionStore.open(_runtime(data), new_uuid, utc_now)  # idempotent
    assert again.pseudonyms.of("p") == store.pseudonyms.of("p")
    again.close()


def test_the_audit_commands(service: Service, database_url: str, tmp_path: Path) -> None:
    body = factories.grade2_monitor_request()
    service.client.post("/cds-services/crs-monitor", json=body)
    env = {
        "CRS_DATABASE_URL": database_url,
        "CRS_DATA_DIR": str(tmp_path),
        "CRS_PSEUDONYM_KEY": PSEUDONYM_KEY,
    }
    runner = CliRunner()
    listed = runner.invoke(cli, ["audit", "--json", "--service", "crs-monitor"], env=env)
    assert listed.exit_code == 0, listed.output
    assert body["hookInstance"] in listed.output
    nothing = runner.invoke(cli, ["audit", "--service", "nope"], env=env)
    assert nothing.exit_code == 0 and nothing.stdout == ""  # (an empty export)
    assert "no records match (service 'nope')" in nothing.stderr  # (it said nothing)
    replayed = runner.invoke(cli, ["audit", "replay", body["hookInstance"]], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert "SAME cards" in replayed.output
    missing = runner.invoke(cli, ["audit", "replay", "nope"], env=env)
    assert missing.exit_code == 2
    figures = runner.invoke(cli, ["audit", "feedback", "--json"], env=env)
    assert figures.exit_code == 0 and '"service":"crs-monitor"' in figures.output
    pruned = runner.invoke(cli, ["db", "prune", "--days", "1"], env=env)
    assert pruned.exit_code == 0 and "0 records" in pruned.output
