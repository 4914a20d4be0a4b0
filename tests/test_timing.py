"""FHIR times to instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from cds.fhir.timing import TimeFormatError, parse_fhir_datetime


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T08:00:00Z", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20T09:00:00+01:00", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20T03:30:00-04:30", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20T08:00:00.123456789Z", datetime(2026, 11, 20, 8, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-20T08:00Z", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_parses_to_instants(text: str, expected: datetime) -> None:
    assert parse_fhir_datetime(text) == expected


def test_offset_is_kept_for_display() -> None:
    parsed = parse_fhir_datetime("2026-11-20T09:00:00+01:00")
    assert parsed.utcoffset() == timedelta(hours=1)
    assert parsed.tzinfo == timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-20T08:00:00",
        "yesterday",
        "2026-13-01",
        "2026-11-20T25:00:00Z",
        "2026-11-20T08:00:00+15:00",
        "",
        "20261120",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(TimeFormatError):
        parse_fhir_datetime(text)


def test_rejects_non_strings() -> None:
    with pytest.raises(TimeFormatError, match="expected a dateTime string"):
        parse_fhir_datetime(20261120)


def test_assumed_zone_for_times_without_offset() -> None:
    parsed = parse_fhir_datetime("2026-07-01T10:00:00", ZoneInfo("Europe/Berlin"))
    assert parsed == datetime(2026, 7, 1, 8, tzinfo=UTC)


def test_a_leap_second_is_the_last_instant_of_its_minute() -> None:
    """FHIR's dateTime allows second 60; a fever charted on one was rejected ("second
    must be in 0..59") and not used."""
    assert parse_fhir_datetime("2016-12-31T23:59:60Z") == datetime(
        2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC
    )
    assert parse_fhir_datetime("2016-12-31T23:59:60.5+01:00") == datetime(
        2016, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=1))
    )
    with pytest.raises(TimeFormatError):
        parse_fhir_datetime("2016-12-31T23:59:61Z")
