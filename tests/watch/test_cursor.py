"""Polling's cursor: what counts as new since the last look."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cds.watch.reading import Seen, advance
from tests.factories import AT


def _resource(rid: str, seconds: float, version: str = "1") -> dict[str, Any]:
    updated = (AT + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": {"versionId": version, "lastUpdated": updated},
    }


def test_new_resources_and_new_versions_are_new_and_move_the_cursor() -> None:
    first = advance([_resource("a", 0), _resource("b", 1)], None, ())
    assert first.refs == {"Observation/a", "Observation/b"}
    assert first.cursor == AT + timedelta(seconds=1)
    # the overlap finds b again: not new; a new version of a is
    again = advance([_resource("b", 1), _resource("a", 2, "2")], first.cursor, first.seen)
    assert again.refs == {"Observation/a"}
    assert again.cursor == AT + timedelta(seconds=2)


def test_a_resource_committed_late_inside_the_overlap_is_new() -> None:
    first = advance([_resource("b", 3)], None, ())
    late = advance([_resource("a", 1), _resource("b", 3)], first.cursor, first.seen)
    assert late.refs == {"Observation/a"}  # written before b, committed after the look
    assert late.cursor == first.cursor


def test_resources_older_than_the_overlap_are_not_new() -> None:
    # a server that matches `_lastUpdated=gt…` coarsely (to the second) returns them
    first = advance([_resource("a", 30)], None, ())
    old = advance([_resource("z", 20), _resource("a", 30)], first.cursor, first.seen)
    assert old.refs == frozenset()


def test_the_versions_kept_are_those_inside_the_overlap() -> None:
    changed = advance([_resource("a", 0), _resource("b", 10)], None, [Seen("x/1", AT)])
    assert {s.version for s in changed.seen} == {"Observation/b/1"}
