"""CRS activity and episodes: activity no further apart than the episode gap is one
episode; the episode decides which fever a masking drug masks and where the tocilizumab
total starts; and activity keeps a closed risk window open."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from cds.engine.activity import crs_episodes
from cds.engine.exposure import find_exposure
from cds.engine.facts import Facts
from cds.engine.grading import grade
from cds.evaluation import judge
from cds.runtime import Runtime
from tests.factories import AT, given, h, systolic, temperature


def test_episode_gap_boundary(runtime: Runtime) -> None:
    gap = runtime.rules.grading.episode_gap
    assert gap == timedelta(hours=72)
    at_gap = [(AT, AT), (AT + gap, AT + gap)]
    assert len(crs_episodes(at_gap, gap)) == 1  # exactly the gap apart: one episode
    past_gap = [(AT, AT), (AT + gap + timedelta(minutes=1),) * 2]
    assert len(crs_episodes(past_gap, gap)) == 2
    spanning = [(AT, AT + timedelta(hours=10)), (AT + gap + timedelta(hours=9),) * 2]
    assert len(crs_episodes(spanning, gap)) == 1  # measured from the end of the earlier span


# --- masking within an episode ---------------------------------------------------------


def test_a_fever_masked_before_a_new_bispecific_dose_still_counts_after_it(
    runtime: Runtime,
) -> None:
    """Teclistamab 60 h and 10 h ago (overlapping windows: one risk period from the first
    dose), fever 45 h ago, tocilizumab 39 h ago, and now afebrile with SBP 80: the new
    dose neither restarts the risk period nor drops the masked fever, so grade 2."""
    facts = Facts.build(
        [temperature(45, 39.0), temperature(1, 37.0), systolic(1, 80)],
        [],
        [
            given("teclistamab", "bispecific", 60),
            given("tocilizumab", "tocilizumab", 39),
            given("teclistamab", "bispecific", 10),
        ],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None
    assert (exposure.at, exposure.risk_period_start, exposure.doses) == (h(10), h(60), 2)
    result = grade(facts, exposure, AT, runtime.rules.grading)
    assert result.grade == 2  # masked by tocilizumab after the fever of the first dose


def test_a_masking_drug_weeks_ago_does_not_mask_hypotension_today(runtime: Runtime) -> None:
    """Weekly talquetamab (overlapping windows: one risk period); an antipyretic given
    after a fever 1100 h (over six weeks) ago belongs to that episode: SBP 86 today
    without fever is grade 0."""
    weeks = [168.0 * k - 2 * k for k in range(8, 0, -1)]
    facts = Facts.build(
        [temperature(1100, 39.0), systolic(1, 86)],
        [],
        [
            *[given("talquetamab", "bispecific", x) for x in weeks],
            given("acetaminophen", "antipyretic", 1099),
        ],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None
    assert grade(facts, exposure, AT, runtime.rules.grading).grade == 0


# --- where the tocilizumab total of an episode starts ------------------------------------


def test_tocilizumab_of_an_earlier_crs_episode_counts_in_a_new_one(runtime: Runtime) -> None:
    """Weekly talquetamab for eight weeks (overlapping windows: one risk period); four
    tocilizumab doses for a fever 605 h ago; fever and SBP 84 now: grade 2 in a new CRS
    episode. The label's total of 4 is not reset by a new episode (no source resets it):
    the four count, and a fifth is flagged."""
    weeks = [168.0 * k - 2 * k for k in range(8, 0, -1)]  # windows overlap: one exposure chain
    toci = [given("tocilizumab", "tocilizumab", x) for x in (600, 590, 580, 570)]
    facts = Facts.build(
        [temperature(605, 39.0), temperature(1.0, 39.0), systolic(1, 84)],
        [],
        [*[given("talquetamab", "bispecific", x) for x in weeks], *toci],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None
    g = grade(facts, exposure, AT, runtime.rules.grading)
    assert g.grade == 2
    assert g.crs_episode_start is not None and g.crs_episode_start > h(600)  # a new episode
    history = judge(runtime, facts, AT, patient_id=None).tocilizumab.history
    assert history.doses_total == 4 and history.problems == ["over-4-total"]
    assert history.counted_since is not None and history.counted_since <= h(600)


# --- activity keeps a closed window open -------------------------------------------------


def test_continuing_crs_fever_keeps_a_closed_window_open(runtime: Runtime) -> None:
    """A window that closed 8 h ago stays open while fever that began inside it goes on
    unbroken to now; without the fever it stays closed."""
    # The window is pinned at a short 16 h (tebentafusp's former value): this test is about
    # continuing CRS fever keeping a closed window open, which needs the fevers to run
    # unbroken from inside the window to now. tebentafusp's own window became 168 h in
    # rules/therapies.yaml 2026.11.2 (no label onset upper bound; weekly dose interval).
    windows = {
        **runtime.rules.windows,
        "tebentafusp": replace(runtime.rules.windows["tebentafusp"], window_hours=16),
    }
    hours = windows["tebentafusp"].window_hours
    # fevers hours+5, hours-1, hours-7 before AT
    fevers = [temperature(hours + 5 - k * 6, 39.2) for k in range(3)]
    dose = given("tebentafusp", "bispecific", hours + 8)
    facts = Facts.build([*fevers, temperature(0.5, 38.6)], [], [dose])
    closed = find_exposure(facts, windows, AT)
    assert closed is None
    exposure = find_exposure(facts, windows, AT, runtime.rules.continuation)
    assert exposure is not None and exposure.extended_until is not None
    no_fever = Facts.build([], [], [dose])
    assert find_exposure(no_fever, windows, AT, runtime.rules.continuation) is None


def test_masked_crs_on_a_vasopressor_keeps_a_closed_window_open(runtime: Runtime) -> None:
    """Brexucabtagene autoleucel whose window closed 4 h ago; fever 30 h ago, then
    tocilizumab and dexamethasone; norepinephrine running for 6 h and SBP 82 now: the
    window stays open and the grade is 3."""
    hours = runtime.rules.windows["brexucabtagene-autoleucel"].window_hours
    facts = Facts.build(
        [temperature(30, 39.0), systolic(0.5, 82)],
        [],
        [
            given("brexucabtagene-autoleucel", "car-t", hours + 4),
            given("tocilizumab", "tocilizumab", 29),
            given("dexamethasone", "corticosteroid", 20),
            given("norepinephrine", "vasopressor", 6, None),
        ],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None and exposure.extended_until is not None
    assert grade(facts, exposure, AT, runtime.rules.grading).grade == 3


def test_tocilizumab_of_an_earlier_risk_period_counts_in_a_new_one(runtime: Runtime) -> None:
    """Teclistamab on days 1, 3, 5 and 12 (its 144 h window closed between the third and
    the fourth dose: two risk periods), four tocilizumab doses on days 2-3, grade 2 CRS on
    day 13: a fifth dose was offered ('given 0× since' the new risk period). Every dose in
    the reach of the risk data counts."""
    day = 24.0
    start = 13 * day  # hours before AT of "day 0"
    doses = [start - d * day for d in (1, 3, 5, 12)]
    toci = [given("tocilizumab", "tocilizumab", start - x) for x in (48, 56, 64, 72)]
    facts = Facts.build(
        [temperature(1.0, 39.0), systolic(1, 84)],
        [],
        [*[given("teclistamab", "bispecific", x) for x in doses], *toci],
    )
    evaluation = judge(runtime, facts, AT, patient_id=None)
    assert evaluation.exposure is not None and evaluation.crs is not None
    assert evaluation.exposure.risk_period_start == h(doses[-1])  # a new risk period
    assert evaluation.crs.grade == 2
    history = evaluation.tocilizumab.history
    assert history.doses_total == 4 and history.problems == ["over-4-total"]
