"""The knowledge files: valid, cited, and a bad file stops start-up naming file and field."""

from __future__ import annotations

import logging
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from cds import fhirbuild as b
from cds.app import create_app
from cds.cards import steroid_section
from cds.fhir.reading import ResourceCollector
from cds.knowledge import DEFAULT_MAPPINGS_DIR, DEFAULT_RULES_DIR, KnowledgeError, load_knowledge
from cds.parameters import engine_rules
from cds.runtime import Runtime
from cds.settings import Settings
from cds.store.decisions import DecisionStore
from tests.factories import AT, monitor_json


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    rules = tmp_path / "rules"
    mappings = tmp_path / "fhir_mappings"
    shutil.copytree(DEFAULT_RULES_DIR, rules)
    shutil.copytree(DEFAULT_MAPPINGS_DIR, mappings)
    return rules, mappings


def edit(path: Path, change: object) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data))


def test_bundled_knowledge_loads(runtime: Runtime) -> None:
    k = runtime.knowledge
    assert k.astct.fever.min_celsius == 38.0
    assert k.astct.hypotension.systolic_below_mmhg == 90
    assert k.astct.oxygen.low_flow_max_l_per_min == 6
    assert k.astct.lookback.hours == 24
    assert runtime.rules.version.startswith(k.ruleset.version + "+")


REQUIRED_LOINC = [
    "8310-5",
    "8480-6",
    "8462-4",
    "8478-0",
    "8867-4",
    "9279-1",
    "59408-5",
    "2708-6",
    "3151-8",
    "3150-0",
    "29463-7",
    "1988-5",
    "2276-4",
    "26881-3",
]


@pytest.mark.parametrize("code", REQUIRED_LOINC)
def test_required_loinc_codes_are_mapped(runtime: Runtime, code: str) -> None:
    assert ("http://loinc.org", code) in runtime.knowledge.observation_by_code


def test_every_therapy_product_and_drug_class_is_mapped(runtime: Runtime) -> None:
    k = runtime.knowledge
    classes = {m.medication_class for m in k.medications.values()}
    assert {
        "car-t",
        "bispecific",
        "tocilizumab",
        "corticosteroid",
        "antipyretic",
        "vasopressor",
    } <= classes
    for name in [
        "dexamethasone",
        "methylprednisolone",
        "hydrocortisone",
        "prednisone",
        "acetaminophen",
        "ibuprofen",
        "norepinephrine",
        "epinephrine",
        "phenylephrine",
        "dopamine",
        "vasopressin",
    ]:
        assert name in k.medications
    assert len([t for t in k.therapies.values() if t.kind == "car-t"]) == 7
    for med in k.medications.values():
        for code in med.codes:
            assert code.citation.strip(), f"{med.concept} {code.code} has no citation"


def test_tocilizumab_rxnorm(runtime: Runtime) -> None:
    key = ("http://www.nlm.nih.gov/research/umls/rxnorm", "612865")
    assert runtime.knowledge.medication_by_code[key] == "tocilizumab"


def test_bad_value_names_file_and_field(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs
    edit(rules / "astct.yaml", lambda d: d["fever"].__setitem__("min_celsius", "hot"))
    with pytest.raises(KnowledgeError) as err:
        load_knowledge(rules, mappings)
    assert "astct.yaml" in str(err.value) and "fever.min_celsius" in str(err.value)


def test_unknown_field_is_rejected(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs
    edit(rules / "tocilizumab.yaml", lambda d: d.__setitem__("max_dose_gr", 800))
    with pytest.raises(KnowledgeError, match=r"tocilizumab\.yaml.*max_dose_gr"):
        load_knowledge(rules, mappings)


def test_uncited_dosing_value_is_rejected(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs
    edit(rules / "tocilizumab.yaml", lambda d: d["citations"].pop("max_dose_mg"))
    with pytest.raises(KnowledgeError, match="no citation for max_dose_mg"):
        load_knowledge(rules, mappings)


def test_product_without_medication_mapping_is_rejected(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs
    edit(
        mappings / "medications.yaml",
        lambda d: d.__setitem__(
            "medications", [m for m in d["medications"] if m["concept"] != "teclistamab"]
        ),
    )
    with pytest.raises(KnowledgeError, match="teclistamab"):
        load_knowledge(rules, mappings)


def test_duplicate_code_is_rejected(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs

    def dup(d: dict) -> None:  # type: ignore[type-arg]
        toci = next(m for m in d["medications"] if m["concept"] == "tocilizumab")
        dex = next(m for m in d["medications"] if m["concept"] == "dexamethasone")
        dex["codes"].append(dict(toci["codes"][0]))

    edit(mappings / "medications.yaml", dup)
    with pytest.raises(KnowledgeError, match="612865"):
        load_knowledge(rules, mappings)


def test_missing_file_and_bad_yaml(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs
    (rules / "astct.yaml").write_text("fever: [unclosed")
    with pytest.raises(KnowledgeError, match="not valid YAML"):
        load_knowledge(rules, mappings)
    (rules / "astct.yaml").unlink()
    with pytest.raises(KnowledgeError, match="cannot read"):
        load_knowledge(rules, mappings)


def test_version_changes_when_a_rule_file_changes(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs
    before = load_knowledge(rules, mappings).version
    edit(rules / "astct.yaml", lambda d: d["hypotension"].__setitem__("systolic_below_mmhg", 85))
    assert load_knowledge(rules, mappings).version != before


def test_settings_override_cited_defaults_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRS_HYPOTENSION_SYSTOLIC_BELOW_MMHG", "100")
    monkeypatch.setenv("CRS_WINDOW_HOURS", "tebentafusp=72")
    settings = Settings(_env_file=None)
    rules = engine_rules(load_knowledge(), settings)
    assert rules.grading.systolic_below_mmhg == 100
    assert rules.windows["tebentafusp"].window_hours == 72
    assert any("systolic" in o for o in rules.overrides)


def test_unknown_product_in_window_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRS_WINDOW_HOURS", "aspirin=72")
    with pytest.raises(KnowledgeError, match="aspirin"):
        engine_rules(load_knowledge(), Settings(_env_file=None))


# --- verification status as data (issue #9.6) --------------------------------------------


def test_every_cited_value_says_whether_it_was_confirmed(runtime: Runtime) -> None:
    k = runtime.knowledge
    assert all(u.why for u in k.unconfirmed)
    assert {u.file for u in k.unconfirmed} <= {
        "rules/astct.yaml",
        "rules/therapies.yaml",
        "rules/tocilizumab.yaml",
        "rules/corticosteroids.yaml",
        "rules/alerting.yaml",
        "fhir_mappings/medications.yaml",
        "fhir_mappings/observations.yaml",
        "fhir_mappings/oxygen_devices.yaml",
        # issue #14: ICANS, the risk scores and the neurological findings
        "rules/icans.yaml",
        "rules/risk_scores.yaml",
        "fhir_mappings/neuro_findings.yaml",
    }
    # products are named by their id in the list
    assert any(u.path.startswith("products[product=") for u in k.unconfirmed)


@pytest.mark.parametrize(
    ("verification", "message"),
    [
        ({"status": "confirmed", "read": "2026-11-30"}, "needs `source`"),
        ({"status": "confirmed", "source": "label 5.1"}, "needs `source`"),
        ({"status": "unconfirmed"}, "needs `why`"),
        ({"status": "maybe", "why": "x"}, "status"),
    ],
)
def test_a_verification_that_is_not_complete_stops_start_up(
    dirs: tuple[Path, Path], verification: dict[str, str], message: str
) -> None:
    rules, mappings = dirs

    def change(data: dict[str, Any]) -> None:
        data["fever"]["verification"] = verification

    edit(rules / "astct.yaml", change)
    with pytest.raises(KnowledgeError) as err:
        load_knowledge(rules, mappings)
    assert "astct.yaml" in str(err.value) and "fever.verification" in str(err.value)
    assert message in str(err.value)


def test_a_value_without_verification_stops_start_up(dirs: tuple[Path, Path]) -> None:
    rules, mappings = dirs

    def change(data: dict[str, Any]) -> None:
        del data["products"][0]["verification"]

    edit(rules / "therapies.yaml", change)
    with pytest.raises(KnowledgeError, match=r"products\.0\.verification: Field required"):
        load_knowledge(rules, mappings)


def test_healthz_counts_the_unconfirmed_values(client: TestClient, runtime: Runtime) -> None:
    body = client.get("/healthz").json()
    assert body["unconfirmedValues"] == len(runtime.knowledge.unconfirmed) > 0


def test_start_up_warns_once_listing_the_unconfirmed_values(
    runtime: Runtime, store: DecisionStore, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(runtime, store=store)
    with caplog.at_level(logging.WARNING, logger="cds.app"), TestClient(app):
        pass
    (record,) = [r for r in caplog.records if "not confirmed" in r.getMessage()]
    assert len(record.unconfirmed) == len(runtime.knowledge.unconfirmed)  # type: ignore[attr-defined]


def test_unconfirmed_steroid_rows_are_not_presented_as_guideline_text(runtime: Runtime) -> None:
    k = runtime.knowledge
    for grade, row in k.corticosteroids.items():
        text = steroid_section(k, grade)
        assert text is not None
        if row.verification.status == "unconfirmed":
            assert "not confirmed against a published guideline" in text
        else:
            assert "institution-adjustable default" in text
    assert {row.verification.status for row in k.corticosteroids.values()} == {
        "confirmed",
        "unconfirmed",
    }


def test_prefetch_templates_ask_for_one_page_of_what_the_rules_read(client: TestClient) -> None:
    services = client.get("/cds-services").json()["services"]
    for service in services:
        for key, template in service["prefetch"].items():
            if "?" in template:
                assert "_count=" in template, key
        codes = service["prefetch"]["observations"]
        assert "http://loinc.org|8310-5" in codes  # temperature: read
        assert "http://loinc.org|8867-4" not in codes  # heart rate: not read


def test_readme_lists_every_unconfirmed_value(runtime: Runtime) -> None:
    # The README's list of cited values not confirmed is what `crs-cds rules --unconfirmed`
    # prints (it had drifted: 61 listed for 53, then 66); its count and rows, not its
    # free-text reasons.
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("<details><summary>The ")
    block = readme[start : readme.index("</details>", start)]
    listed = {
        (row.split("|")[1].strip(" `"), row.split("|")[2].strip(" `"))
        for row in block.splitlines()
        if row.startswith("| `")
    }
    unconfirmed = runtime.knowledge.unconfirmed
    assert f"The {len(unconfirmed)} cited values not confirmed" in block
    assert listed == {(v.file, v.path.removesuffix(".verification")) for v in unconfirmed}


def test_no_management_text_names_one_tocilizumab_dose_for_every_weight() -> None:
    """The tocilizumab dose depends on the weight (12 mg/kg below 30 kg): the steroid and
    ICANS texts point to the dose the CRS card computes, never state the adult 8 mg/kg
    (a 22 kg child's card said both 12 mg/kg and 8 mg/kg)."""
    rules = Path(__file__).resolve().parents[1] / "rules"
    for name in ("corticosteroids.yaml", "icans.yaml"):
        text = (rules / name).read_text()
        guidance = [
            line
            for line in text.splitlines()
            if line.lstrip().startswith(("guidance:", "concurrent_crs:", "no_concurrent_crs:"))
        ]
        assert guidance, name
        for line in guidance:
            assert not re.search(r"[Tt]ocilizumab \d+ mg/kg", line), (name, line[:80])


def test_a_child_s_card_says_the_steroid_doses_are_adult_doses(runtime: Runtime) -> None:
    """A 22 kg eight-year-old's card named 'dexamethasone 10 mg' with no caveat."""
    pid = "child-1"
    at = AT - timedelta(hours=1)
    collected = ResourceCollector()
    collected.add_prefetch(
        {
            "patient": b.patient(pid, birth_date="2018-05-01"),
            "observations": b.searchset(
                [
                    b.temperature(pid, at, 38.9),
                    b.systolic(pid, at, 80),
                    b.weight(pid, at, 22),
                    b.administration(pid, AT - timedelta(days=3), text="Kymriah"),
                ]
            ),
        }
    )
    (card,) = monitor_json(runtime, collected, pid, AT)["cards"]
    (note,) = [s for s in card["detail"].split("\n\n") if s.startswith("**Paediatric dosing")]
    assert note.startswith("**Paediatric dosing (age 8, 22 kg):**")
    assert "adult doses" in note and "weight-based" in note
