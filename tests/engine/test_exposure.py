"""Risk windows: which exposure, and where a window starts and ends."""

from __future__ import annotations

import pytest

from cds.engine.exposure import find_exposure
from cds.engine.facts import Facts
from cds.runtime import Runtime
from tests.factories import AT, given, h


def test_window_edges_are_from_the_label(runtime: Runtime) -> None:
    hours = runtime.rules.windows["axicabtagene-ciloleucel"].window_hours
    inside = Facts.build([], [], [given("axicabtagene-ciloleucel", "car-t", hours)])
    assert find_exposure(inside, runtime.rules.windows, AT) is not None  # exactly at the edge
    outside = Facts.build([], [], [given("axicabtagene-ciloleucel", "car-t", hours + 1 / 60)])
    assert find_exposure(outside, runtime.rules.windows, AT) is None


def test_infusion_at_the_evaluation_time_opens_the_window(runtime: Runtime) -> None:
    facts = Facts.build([], [], [given("tisagenlecleucel", "car-t", 0)])
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None and exposure.day(AT) == 0


def test_future_infusion_is_ignored(runtime: Runtime) -> None:
    facts = Facts.build([], [], [given("tisagenlecleucel", "car-t", -2)])
    assert find_exposure(facts, runtime.rules.windows, AT) is None


def test_most_recent_dose_wins_and_doses_are_counted(runtime: Runtime) -> None:
    facts = Facts.build(
        [],
        [],
        [
            given("teclistamab", "bispecific", 120),
            given("teclistamab", "bispecific", 72),
            given("teclistamab", "bispecific", 20),
        ],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None
    assert exposure.at == h(20)
    assert exposure.doses == 3


def test_running_infusion_keeps_the_window_open(runtime: Runtime) -> None:
    hours = runtime.rules.windows["blinatumomab"].window_hours
    running = Facts.build([], [], [given("blinatumomab", "bispecific", hours * 3, None)])
    assert find_exposure(running, runtime.rules.windows, AT) is not None
    ended = Facts.build([], [], [given("blinatumomab", "bispecific", hours * 3, hours + 1)])
    assert find_exposure(ended, runtime.rules.windows, AT) is None


@pytest.mark.parametrize("kind", ["tocilizumab", "vasopressor"])
def test_other_drugs_do_not_open_a_window(runtime: Runtime, kind: str) -> None:
    facts = Facts.build([], [], [given("tocilizumab", kind, 5)])
    assert find_exposure(facts, runtime.rules.windows, AT) is None


def test_day_count(runtime: Runtime) -> None:
    facts = Facts.build([], [], [given("axicabtagene-ciloleucel", "car-t", 72)])
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None and exposure.day(AT) == 3


def test_dose_number_counts_every_dose_of_the_product(runtime: Runtime) -> None:
    """Six weekly talquetamab doses and one half an hour ago: the card's dose number is 7,
    counting every earlier dose of the product."""
    weekly = [168 * k for k in range(6, 0, -1)] + [0.5]
    facts = Facts.build([], [], [given("talquetamab", "bispecific", x) for x in weekly])
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None and exposure.doses == 7
