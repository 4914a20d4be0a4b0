"""CRS episodes: activity no further apart than the episode gap is one episode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cds.engine.activity import crs_episodes
from cds.runtime import Runtime

T = datetime(2026, 11, 20, tzinfo=UTC)


def test_episode_gap_boundary(runtime: Runtime) -> None:
    gap = runtime.rules.grading.episode_gap
    assert gap == timedelta(hours=72)
    at_gap = [(T, T), (T + gap, T + gap)]
    assert len(crs_episodes(at_gap, gap)) == 1  # exactly the gap apart: one episode
    past_gap = [(T, T), (T + gap + timedelta(minutes=1),) * 2]
    assert len(crs_episodes(past_gap, gap)) == 2
    spanning = [(T, T + timedelta(hours=10)), (T + gap + timedelta(hours=9),) * 2]
    assert len(crs_episodes(spanning, gap)) == 1  # measured from the end of the earlier span
