"""How times and amounts are written on the cards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from cds.formatting import when

# every offset a FHIR dateTime can carry: whole minutes, -14:00 to +14:00
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))


def test_a_time_is_written_with_its_offset() -> None:
    assert when(datetime(2026, 11, 20, 8, 0, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-11-20 08:00 +01:00"
    )
    assert when(datetime(2026, 11, 20, 8, 5, 59, tzinfo=UTC)) == "2026-11-20 08:05 +00:00"
    assert when(
        datetime(2026, 3, 1, 23, 59, tzinfo=timezone(timedelta(hours=-9, minutes=-30)))
    ) == ("2026-03-01 23:59 -09:30")
    assert when(datetime(999, 1, 2, 3, 4, tzinfo=UTC)) == "0999-01-02 03:04 +00:00"


def test_a_time_without_an_offset_is_written_without_one() -> None:
    assert when(datetime(2026, 11, 20, 8, 0)) == "2026-11-20 08:00"


@settings(deadline=None)
@given(moment=moments, zone=offsets)
def test_the_same_as_strftime(moment: datetime, zone: timezone) -> None:
    aware = moment.replace(tzinfo=zone)
    offset = aware.strftime("%z")
    assert when(aware) == aware.strftime("%Y-%m-%d %H:%M ") + offset[:3] + ":" + offset[3:5]


def test_a_value_just_below_a_threshold_is_not_shown_on_it() -> None:
    """37.99 °C showed as "38" beside "no fever ≥ 38.0 °C"."""
    from cds.formatting import fmt_value

    assert [fmt_value(v) for v in (37.99, 38.0, 38.5, 38.888889, 89.96, 6.0)] == [
        "37.99",
        "38",
        "38.5",
        "38.89",
        "89.96",
        "6",
    ]
