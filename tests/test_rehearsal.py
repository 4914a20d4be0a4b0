"""The production rehearsal (scripts/rehearse), small: three replicas on one PostgreSQL
behind nginx, one killed part-way — every answered call keeps its record; two watch
workers on the same database notify the load's patient once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.rehearsal import rehearse


@pytest.mark.skipif(
    not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists() or os.geteuid() == 0),
    reason="needs Debian's nginx (installed by the rehearsal when run as root)",
)
def test_a_killed_replica_costs_no_answered_record() -> None:
    figures = rehearse(calls=300, concurrency=16)
    assert figures.answered >= 200  # most calls answered despite the kill
    assert figures.answered_with_record == figures.answered
    assert (
        len(figures.by_replica) >= 2
    )  # calls spread over the replicas (the killed one too, if it answered before)
    assert set(figures.statuses) <= {200, 502, 0}
    watch = figures.watch
    assert watch is not None and watch.workers == 2
    assert watch.census == 1 and watch.grade == 2  # in the census, evaluated
    assert watch.notifications >= 1 and watch.distinct == watch.notifications
    assert watch.posted == watch.distinct  # two live workers: each change POSTed once
