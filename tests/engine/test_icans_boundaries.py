"""ICANS grading at its boundaries: the neurological-event look-back (24 h), the worst
event in it rather than the latest, and the CAPD age (12) (found unpinned by mutation
testing)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from cds.engine.facts import Facts, Measurement, NeuroFinding
from cds.engine.icans import IcansGrading
from cds.runtime import Runtime
from tests.factories import AT, given, h


def _icans(
    runtime: Runtime,
    neuro: Sequence[NeuroFinding] = (),
    ms: Sequence[Measurement] = (),
    birth: date = date(1960, 1, 1),
) -> IcansGrading:
    facts = Facts.build(
        list(ms), [], [given("axicabtagene-ciloleucel", "car-t", 72)], birth, list(neuro)
    )
    icans = runtime.rules.icans
    assert icans is not None
    assessed = icans.assess(facts, AT)
    assert assessed is not None and isinstance(assessed.result, IcansGrading)
    return assessed.result


def test_event_exactly_24h_ago_counts(runtime: Runtime) -> None:
    n = NeuroFinding("seizure", "rapidly-resolving", "s", h(24), "Observation/s")
    assert _icans(runtime, [n]).grade == 3


def test_worst_event_in_the_lookback_counts(runtime: Runtime) -> None:
    n = [
        NeuroFinding("seizure", "prolonged", "p", h(10), "Observation/p"),
        NeuroFinding("seizure", "rapidly-resolving", "r", h(2), "Observation/r"),
    ]
    assert _icans(runtime, n).grade == 4


def test_no_child_warning_at_12(runtime: Runtime) -> None:
    ms = [Measurement("ice_score", 8, "{score}", h(1), "Observation/i")]
    r = _icans(runtime, ms=ms, birth=date(2014, 11, 20))
    assert not any("Child aged" in w for w in r.warnings)


def test_ice_in_an_11_year_old_warns_capd(runtime: Runtime) -> None:
    ms = [Measurement("ice_score", 8, "{score}", h(1), "Observation/i")]
    r = _icans(runtime, ms=ms, birth=date(2015, 1, 1))  # 11
    assert any("Child aged" in w for w in r.warnings)


def test_event_23_5h_ago_counts(runtime: Runtime) -> None:
    n = NeuroFinding("seizure", "rapidly-resolving", "s", h(23.5), "Observation/s")
    assert _icans(runtime, [n]).grade == 3
