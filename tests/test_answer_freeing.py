"""A call's objects are freed after its answer, a slice at a time: a chart of a thousand
resources is tens of thousands of objects, and freeing them at once would hold the event
loop (and so the next call) for milliseconds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from bench.payloads import build_payload
from cds.api.hooks import FREE_SLICE, free
from cds.pipeline import Hooks


def test_a_large_call_is_freed_in_slices_with_the_loop_running_between(
    client: TestClient,
) -> None:
    hooks: Hooks = client.app.state.hooks  # type: ignore[attr-defined]
    body = build_payload(1_000, datetime.now(UTC)).monitor

    async def scenario() -> tuple[int, int]:
        outcome = await hooks.run("crs-monitor", body)
        pieces = len(outcome.collected.resources) + len(outcome.evaluation.facts.measurements)
        held = [outcome]
        del outcome
        turns = 0
        done = asyncio.Event()

        async def other_work() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        turns = 0
        await free(held)
        done.set()
        await other
        assert held == []
        return turns, pieces

    turns, pieces = asyncio.run(scenario())
    assert pieces > 1_000
    # the other task ran between every slice (at once, it would not have run at all)
    assert turns >= pieces // FREE_SLICE
