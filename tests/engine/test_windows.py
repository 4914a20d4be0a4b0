"""Every product's risk window, at its edge: a fever in the last hour of the window is
graded; one an hour after the window closed (no CRS activity before) gets no card."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cds.engine.exposure import find_exposure
from cds.engine.facts import Facts
from cds.engine.grading import grade
from cds.knowledge import load_knowledge
from cds.runtime import Runtime
from tests.factories import AT, given, temperature

PRODUCTS = sorted(load_knowledge().therapies)


def _dose_hours_before(runtime: Runtime, product: str, fever_after_window_end: float) -> float:
    """How long before AT the dose must be for a fever at AT to fall `fever_after_window_end`
    hours after the window's end (negative: before it)."""
    return runtime.rules.windows[product].window_hours + fever_after_window_end


@pytest.mark.parametrize("product", PRODUCTS)
def test_fever_in_the_last_hour_of_the_window_is_graded(runtime: Runtime, product: str) -> None:
    kind = runtime.knowledge.therapies[product].kind
    dose = given(product, kind, _dose_hours_before(runtime, product, -1))
    facts = Facts.build([temperature(0, 38.4)], [], [dose])
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None and exposure.product == product
    assert exposure.window_ends - AT == timedelta(hours=1)
    assert grade(facts, exposure, AT, runtime.rules.grading).grade == 1


@pytest.mark.parametrize("product", PRODUCTS)
def test_fever_an_hour_after_the_window_gets_no_card(runtime: Runtime, product: str) -> None:
    kind = runtime.knowledge.therapies[product].kind
    dose = given(product, kind, _dose_hours_before(runtime, product, 1))
    facts = Facts.build([temperature(0, 38.4)], [], [dose])
    assert find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation) is None


def test_every_kind_opens_a_window(runtime: Runtime) -> None:
    kinds = {t.kind for t in runtime.knowledge.therapies.values()}
    assert kinds == {"car-t", "tcr-t", "bispecific"}


def test_tecelra_is_a_tcr_t_product(runtime: Runtime) -> None:
    therapy = runtime.knowledge.therapies["afamitresgene-autoleucel"]
    assert (therapy.kind, therapy.brand) == ("tcr-t", "Tecelra")


def test_no_window_is_shorter_than_the_labels_monitoring_leads(runtime: Runtime) -> None:
    # the audit's examples (issue #9): windows that covered only the monitoring period
    windows = {p: w.window_hours for p, w in runtime.rules.windows.items()}
    assert windows["tarlatamab"] >= 566
    assert windows["talquetamab"] >= 167
    assert windows["teclistamab"] >= 144
    assert min(windows.values()) >= 96
