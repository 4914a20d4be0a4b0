"""A call's objects are freed after its answer: a chart of a thousand resources (~2,000
resources and measurements, tens of thousands of objects) in one go, a larger one a slice
at a time with the event loop running between slices (at once, a 10,000-resource chart
would hold the loop, and so the next call, for milliseconds)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from bench.payloads import build_payload
from cds.api.hooks import FREE_SLICE, free
from cds.pipeline import Hooks


def _turns_while_freeing(hooks: Hooks, slice_size: int) -> tuple[int, int]:
    """(how often another task ran during the free, how many pieces were freed)."""
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
        await free(held, slice_size)
        done.set()
        await other
        assert held == []
        return turns, pieces

    return asyncio.run(scenario())


@pytest.mark.parametrize("slice_size", [100, 700])
def test_a_call_larger_than_a_slice_is_freed_in_slices_with_the_loop_running_between(
    client: TestClient, slice_size: int
) -> None:
    turns, pieces = _turns_while_freeing(client.app.state.hooks, slice_size)  # type: ignore[attr-defined]
    assert pieces > 1_000
    # the other task ran between every two slices (at once, it would not have run at all)
    assert turns >= -(-pieces // slice_size) - 1


def test_a_thousand_resource_call_is_freed_in_one_go(client: TestClient) -> None:
    # (slices this small cost a back-to-back caller milliseconds a call: see FREE_SLICE)
    turns, pieces = _turns_while_freeing(client.app.state.hooks, FREE_SLICE)  # type: ignore[attr-defined]
    assert 1_000 < pieces <= FREE_SLICE
    assert turns == 0
