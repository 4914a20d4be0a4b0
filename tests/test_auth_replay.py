"""The ReplayGuard protocol: every guard (memory for one process; a shared one for
replicas) passes the same tests. Add a guard by adding its factory to GUARDS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete

from cds.auth import ReplayGuard
from cds.auth.replay import MemoryReplayGuard
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.store import database
from cds.store.decisions import DecisionStore
from cds.store.tables import seen_tokens
from tests import factories
from tests.auth_support import Clock

GuardFactory = Callable[[Clock], ReplayGuard]

# id -> a guard reading the given clock
GUARDS: dict[str, GuardFactory] = {
    "memory": lambda clock: MemoryReplayGuard(clock),
}


@pytest.fixture(params=[*GUARDS, "sqlite", "postgresql"])
def make_guard(
    request: pytest.FixtureRequest, runtime: Runtime, tmp_path: Path
) -> Iterator[GuardFactory]:
    """The in-memory guard, and the decision store's (shared by replicas) on both
    databases."""
    if request.param in GUARDS:
        yield GUARDS[request.param]
        return
    url = (
        f"sqlite:///{tmp_path / 'guard.sqlite3'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    database.upgrade(url)
    stores: list[DecisionStore] = []

    def factory(clock: Clock) -> ReplayGuard:
        settings = factories.settings(
            data_dir=tmp_path, database_url=url, pseudonym_key="guard-test-key-0123456789"
        )
        store = DecisionStore.open(Runtime.load(settings), new_uuid, clock)
        stores.append(store)
        with store.engine.begin() as connection:
            connection.execute(delete(seen_tokens))
        return store

    yield factory
    for store in stores:
        store.close()


def test_first_use_then_replay(make_guard: GuardFactory) -> None:
    clock = Clock()
    guard = make_guard(clock)
    expires = clock() + timedelta(seconds=60)

    async def go() -> list[bool]:
        return [
            await guard.first_use("https://ehr.example.org", "jti-1", expires),
            await guard.first_use("https://ehr.example.org", "jti-1", expires),
            await guard.first_use("https://ehr.example.org", "jti-2", expires),
        ]

    assert asyncio.run(go()) == [True, False, True]


def test_a_token_replayed_to_another_replica_is_refused(make_guard: GuardFactory) -> None:
    """Two replicas on one database (two stores): an id used at one is refused at the
    other. The memory guard cannot know (one process): why the store is the default."""
    clock = Clock()
    one, other = make_guard(clock), make_guard(clock)
    expires = clock() + timedelta(seconds=60)

    async def go() -> list[bool]:
        return [
            await one.first_use("https://ehr.example.org", "jti-across", expires),
            await other.first_use("https://ehr.example.org", "jti-across", expires),
        ]

    shared = not isinstance(one, MemoryReplayGuard)
    assert asyncio.run(go()) == ([True, False] if shared else [True, True])


def test_the_same_jti_from_another_issuer_is_not_a_replay(make_guard: GuardFactory) -> None:
    clock = Clock()
    guard = make_guard(clock)
    expires = clock() + timedelta(seconds=60)

    async def go() -> list[bool]:
        return [
            await guard.first_use("https://a.example.org", "same", expires),
            await guard.first_use("https://b.example.org", "same", expires),
        ]

    assert asyncio.run(go()) == [True, True]


def test_remembered_until_it_expires(make_guard: GuardFactory) -> None:
    clock = Clock()
    guard = make_guard(clock)
    expires = clock() + timedelta(seconds=60)

    async def use() -> bool:
        return await guard.first_use("https://ehr.example.org", "jti", expires)

    assert asyncio.run(use())
    clock.advance(59)
    assert not asyncio.run(use())
    clock.advance(2)  # past expiry: the token itself would now be refused as expired
    assert asyncio.run(use())


def test_concurrent_uses_of_one_id_let_exactly_one_through(make_guard: GuardFactory) -> None:
    clock = Clock()
    guard = make_guard(clock)
    expires = clock() + timedelta(seconds=60)

    async def go() -> list[bool]:
        return list(
            await asyncio.gather(
                *(guard.first_use("https://ehr.example.org", "raced", expires) for _ in range(20))
            )
        )

    assert sorted(asyncio.run(go())) == [False] * 19 + [True]


# --- the memory guard's bound ------------------------------------------------------------


def test_memory_guard_forgets_expired_ids() -> None:
    clock = Clock()
    guard = MemoryReplayGuard(clock, capacity=1000)

    async def go() -> None:
        for i in range(500):
            await guard.first_use("iss", f"old-{i}", clock() + timedelta(seconds=10))
        clock.advance(11)
        await guard.first_use("iss", "new", clock() + timedelta(seconds=10))

    asyncio.run(go())
    assert len(guard) == 1


def test_memory_guard_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    guard = MemoryReplayGuard(clock, capacity=100)

    async def go() -> bool:
        for i in range(150):
            await guard.first_use("iss", f"id-{i}", clock() + timedelta(seconds=60 + i))
        # the latest ids are still remembered; the soonest to expire made room
        return await guard.first_use("iss", "id-149", clock() + timedelta(seconds=300))

    with caplog.at_level(logging.WARNING, logger="cds.auth.replay"):
        assert asyncio.run(go()) is False
    assert len(guard) == 100
    assert "replay memory full" in caplog.text
