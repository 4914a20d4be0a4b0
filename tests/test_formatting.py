"""How times and amounts are written on the cards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from cds.cards import exposure_line
from cds.engine.exposure import Exposure
from cds.formatting import fmt_value, when
from tests.factories import AT, h
from tests.factories import given as administered

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
    assert [fmt_value(v) for v in (37.99, 38.0, 38.5, 38.888889, 89.96, 6.0)] == [
        "37.99",
        "38",
        "38.5",
        "38.89",
        "89.96",
        "6",
    ]


def test_a_risk_period_of_two_products_names_both() -> None:
    """Day 20 after ide-cel, 'risk window open until' a date that was the earlier
    Kymriah's window: the card now says the risk period runs through both."""
    kymriah = administered("tisagenlecleucel", "car-t", 480)
    abecma = administered("idecabtagene-vicleucel", "car-t", 240)
    exposure = Exposure(
        "idecabtagene-vicleucel",
        "idecabtagene vicleucel",
        "car-t",
        h(240),
        AT + timedelta(days=21),
        "MedicationAdministration/a",
        1,
        h(480),
        (kymriah, abecma),
    )
    line = exposure_line(exposure, AT)
    assert "one risk period: tisagenlecleucel, idecabtagene-vicleucel" in line
    single = exposure_line(
        Exposure("x", "tisagenlecleucel", "car-t", h(48), AT, "s", 1, h(48), (kymriah,)), AT
    )
    assert "one risk period" not in single
