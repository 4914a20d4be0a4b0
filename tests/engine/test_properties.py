"""Properties of the engine over random charts: it never fails, and the grades agree."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import event, given, settings
from hypothesis import strategies as st

from cds.engine.dosing import dose_history
from cds.engine.exposure import find_exposure
from cds.engine.facts import Administration, Facts, Measurement, OxygenSupport
from cds.engine.grading import grade
from cds.runtime import Runtime
from tests.factories import AT, h

hours = st.floats(min_value=-12, max_value=24 * 20, allow_nan=False)
VALUES: dict[str, list[float]] = {
    "temperature": [36.8, 37.9, 38.0, 38.6, 40.1],
    "systolic_bp": [70, 85, 89.9, 90, 120],
    "mean_arterial_pressure": [55, 64.9, 65, 80],
    "oxygen_flow": [0, 2, 6, 6.1, 15],
    "spo2": [85, 93.9, 94, 99],
    "inhaled_oxygen_concentration": [21, 40, 60],
}
measurement = st.sampled_from(sorted(VALUES)).flatmap(
    lambda c: st.builds(
        lambda v, before: Measurement(c, v, "u", h(before), "Observation/x"),
        st.sampled_from(VALUES[c]),
        hours,
    )
)
support = st.builds(
    lambda s, before: OxygenSupport(s, s, h(before), "Observation/d"),
    st.sampled_from(["nasal-cannula", "high-flow", "facemask", "venturi", "positive-pressure"]),
    hours,
)
admin = st.builds(
    lambda m, before, d: Administration(
        m[0],
        m[1],
        m[0],
        h(before),
        None if d is None else h(before) + timedelta(hours=d),
        "MA/x",
    ),
    st.sampled_from(
        [
            ("axicabtagene-ciloleucel", "car-t"),
            ("teclistamab", "bispecific"),
            ("tebentafusp", "bispecific"),
            ("norepinephrine", "vasopressor"),
            ("vasopressin", "vasopressor"),
            ("epinephrine", "vasopressor"),
            ("tocilizumab", "tocilizumab"),
            ("dexamethasone", "corticosteroid"),
            ("acetaminophen", "antipyretic"),
        ]
    ),
    hours,
    st.none() | st.floats(min_value=0, max_value=72),
)


@settings(max_examples=300, deadline=None)
@given(
    ms=st.lists(measurement, max_size=40),
    ox=st.lists(support, max_size=5),
    ads=st.lists(admin, max_size=12),
)
def test_grading_is_total_and_consistent(
    runtime: Runtime, ms: list[Measurement], ox: list[OxygenSupport], ads: list[Administration]
) -> None:
    facts = Facts.build(ms, ox, ads)
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    event("in a risk window" if exposure is not None else "no exposure")
    if exposure is None:
        return
    assert exposure.at <= AT and exposure.risk_period_start <= exposure.at
    result = grade(facts, exposure, AT, runtime.rules.grading)
    assert 0 <= result.grade <= result.max_grade <= 4
    event(f"grade {result.grade}")
    if result.grade >= 1:
        assert result.fever_in_window or result.fever_masked_since is not None
    history = dose_history(facts, AT, result.crs_episode_start or AT, runtime.rules.dosing)
    assert history.doses_last_24h <= len([a for a in ads if a.concept == "tocilizumab"])
    if history.next_allowed_at is not None:
        assert history.next_allowed_at > AT
