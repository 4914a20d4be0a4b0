"""Risk windows at their boundaries: what keeps a closed window open (fever of exactly
38.0 °C yes; SBP 90 and 0 L/min no; an oxygen device yes), a dose exactly at a window's
end, a later short-window dose beside a CAR-T window, and doses counted at the
evaluation time (found unpinned by mutation testing)."""

from __future__ import annotations

from dataclasses import replace

from cds.engine.exposure import TherapyWindow, find_exposure
from cds.engine.facts import Facts
from cds.runtime import Runtime
from tests.factories import AT, device, given, h, measurement, systolic, temperature


def _teb(runtime: Runtime) -> dict[str, TherapyWindow]:
    """The product windows with tebentafusp's pinned to 16 h (a dose 24 h ago: closed)."""
    windows = runtime.rules.windows
    return {**windows, "tebentafusp": replace(windows["tebentafusp"], window_hours=16)}


def test_fever_of_exactly_38_keeps_a_closed_window_open(runtime: Runtime) -> None:
    w = _teb(runtime)
    facts = Facts.build(
        [temperature(k, 38.0) for k in (21, 15, 9, 3)], [], [given("tebentafusp", "bispecific", 24)]
    )
    assert find_exposure(facts, w, AT, runtime.rules.continuation) is not None


def test_sbp_90_does_not_keep_a_window_open(runtime: Runtime) -> None:
    w = _teb(runtime)
    facts = Facts.build(
        [systolic(k, 90) for k in (21, 15, 9, 3)], [], [given("tebentafusp", "bispecific", 24)]
    )
    assert find_exposure(facts, w, AT, runtime.rules.continuation) is None


def test_zero_flow_does_not_keep_a_window_open(runtime: Runtime) -> None:
    w = _teb(runtime)
    facts = Facts.build(
        [measurement("oxygen_flow", k, 0.0) for k in (21, 15, 9, 3)],
        [],
        [given("tebentafusp", "bispecific", 24)],
    )
    assert find_exposure(facts, w, AT, runtime.rules.continuation) is None


def test_oxygen_device_keeps_a_window_open(runtime: Runtime) -> None:
    w = _teb(runtime)
    facts = Facts.build(
        [],
        [device(k, "positive-pressure") for k in (21, 15, 9, 3)],
        [given("tebentafusp", "bispecific", 24)],
    )
    assert find_exposure(facts, w, AT, runtime.rules.continuation) is not None


def test_dose_exactly_at_the_window_end_continues_the_risk_period(runtime: Runtime) -> None:
    hours = runtime.rules.windows["teclistamab"].window_hours
    facts = Facts.build(
        [],
        [],
        [given("teclistamab", "bispecific", hours + 10), given("teclistamab", "bispecific", 10)],
    )
    exp = find_exposure(facts, runtime.rules.windows, AT)
    assert exp is not None and exp.risk_period_start == h(hours + 10)


def test_short_window_dose_does_not_shorten_a_car_t_window(runtime: Runtime) -> None:
    facts = Facts.build(
        [],
        [],
        [
            given("tisagenlecleucel", "car-t", 30 * 24),
            given("mosunetuzumab", "bispecific", 20 * 24),
        ],
    )
    assert find_exposure(facts, runtime.rules.windows, AT) is not None


def test_activity_at_the_window_end_extends_it(runtime: Runtime) -> None:
    w = _teb(runtime)  # dose 24 h ago: window closed 8 h ago
    facts = Facts.build([temperature(8, 38.5)], [], [given("tebentafusp", "bispecific", 24)])
    exp = find_exposure(facts, w, h(-16), runtime.rules.continuation)  # exactly 24 h later
    assert exp is not None and exp.extended_until == h(-16)


def test_dose_at_the_evaluation_time_is_counted(runtime: Runtime) -> None:
    facts = Facts.build(
        [], [], [given("teclistamab", "bispecific", 48), given("teclistamab", "bispecific", 0)]
    )
    exp = find_exposure(facts, runtime.rules.windows, AT)
    assert exp is not None and exp.doses == 2
