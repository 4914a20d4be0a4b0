"""Evaluations -> CDS Hooks cards, written for a busy clinician.

The summary (< 140 characters) carries the grade and the product; the detail shows the
evidence as a small Markdown table, the rules used and what to rule out; the extension
carries the same facts for machines.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cds.engine.dosing import Dose, DoseHistory
from cds.engine.exposure import Exposure
from cds.engine.facts import Measurement
from cds.engine.grading import Evidence, Grading
from cds.fhir.reading import Issue
from cds.knowledge import Knowledge
from cds.parameters import EngineRules

SUMMARY_MAX = 139
GRADING_SYSTEM = "ASTCT 2019"
UNIT_DISPLAY = {"Cel": "°C", "mm[Hg]": "mmHg"}
INDICATOR_BY_GRADE = {0: "info", 1: "warning", 2: "warning", 3: "critical", 4: "critical"}


def when(moment: datetime) -> str:
    """A time as clinicians read it, with its offset: 2026-11-20 08:00 +01:00."""
    return moment.strftime("%Y-%m-%d %H:%M %z")[:-2] + ":" + moment.strftime("%z")[-2:]


def summary_text(text: str) -> str:
    """Cut a summary to the CDS Hooks limit (under 140 characters)."""
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def source(knowledge: Knowledge) -> dict[str, Any]:
    """The card source: label, and the ASTCT citation URL."""
    return {
        "label": f"CRS decision support ({GRADING_SYSTEM} grading)",
        "url": knowledge.astct.url,
    }


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def evidence_table(items: list[Evidence]) -> str:
    """Evidence as a Markdown table: finding, time, value, unit."""
    if not items:
        return "_No findings recorded in the look-back window._"
    rows = ["| Finding | Time | Value | Unit |", "|---|---|---|---|"]
    for e in items:
        unit = UNIT_DISPLAY.get(e.unit, e.unit)
        rows.append(f"| {_md(e.label)} | {when(e.at)} | {_md(e.value)} | {_md(unit)} |")
    return "\n".join(rows)


def issues_note(issues: list[Issue]) -> str | None:
    """A line telling the clinician that some data could not be read."""
    if not issues:
        return None
    return (
        f"**Data not read:** {len(issues)} entr{'y' if len(issues) == 1 else 'ies'} could not "
        "be read and were left out (details in the card's extension, `crs.dataIssues`); "
        "the grade may be understated."
    )


def exposure_line(exposure: Exposure, at: datetime) -> str:
    kind = "CAR-T infusion" if exposure.kind == "car-t" else "T-cell engager dose"
    doses = f", dose {exposure.doses}" if exposure.kind == "bispecific" else ""
    if exposure.extended_until is not None:
        window = (
            f"the product's risk window closed {when(exposure.window_ends)}, but CRS "
            f"activity continues: kept open until at least {when(exposure.extended_until)}"
        )
    else:
        window = f"risk window open until {when(exposure.window_ends)}"
    return (
        f"Day {exposure.day(at)} after {exposure.display} ({kind}{doses} at "
        f"{when(exposure.at)}); {window}."
    )


def _why(g: Grading, rules: EngineRules) -> str:
    fever = f"fever ≥ {rules.grading.fever_min_celsius:.1f} °C"
    if g.grade == 0:
        if g.fever_masked_since is not None:
            return (
                "No hypotension or hypoxia in the look-back window. Fever is no longer "
                "required for grading (masked by treatment since "
                f"{when(g.fever_masked_since)})."
            )
        return f"No {fever} in the look-back window: CRS criteria not met now."
    parts = [fever] if g.fever_in_window else ["fever no longer required (masked by treatment)"]
    parts.extend(g.drivers)
    return "Meets grade " + str(g.grade) + ": " + "; ".join(parts) + "."


def rules_lines(knowledge: Knowledge, rules: EngineRules) -> list[str]:
    """The rules used, as the card states them."""
    lines = [
        f"Rule set {knowledge.ruleset.name} {rules.version}; grading {GRADING_SYSTEM} "
        f"(Lee et al., {knowledge.astct.url}).",
        f"Hypotension: {rules.grading.hypotension_definition()} — ASTCT gives no number; "
        "this is an institution-configurable default.",
        f"Look-back window: {rules.grading.lookback.total_seconds() / 3600:g} h; CRS episode "
        f"gap: {rules.grading.episode_gap.total_seconds() / 3600:g} h (both configurable; "
        "ASTCT is silent).",
    ]
    if rules.overrides:
        lines.append("Institution settings in force: " + "; ".join(rules.overrides) + ".")
    return lines


def crs_card(
    knowledge: Knowledge,
    rules: EngineRules,
    exposure: Exposure,
    grading: Grading,
    at: datetime,
    issues: list[Issue],
    extra_sections: list[str] | None = None,
    suggestions: list[dict[str, Any]] | None = None,
    extension_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The patient-view CRS card."""
    day = exposure.day(at)
    if grading.grade == 0:
        head = f"CRS watch: day {day} after {exposure.display}"
        if grading.max_grade > 0:
            head += f" (max grade {grading.max_grade} since exposure)"
    else:
        head = f"CRS grade {grading.grade} ({GRADING_SYSTEM}): day {day} after {exposure.display}"
        if grading.max_grade > grading.grade:
            head += f"; max grade {grading.max_grade}"
    sections = [
        f"**{GRADING_SYSTEM} CRS grade {grading.grade}** (highest since exposure: "
        f"{grading.max_grade}"
        + (f", {when(grading.max_grade_at)}" if grading.max_grade_at else "")
        + ")",
        exposure_line(exposure, at),
        _why(grading, rules),
        evidence_table(grading.evidence),
    ]
    sections.extend(f"**Warning:** {w}" for w in grading.warnings)
    sections.append(f"**Rule out:** {knowledge.astct.rule_out.text}")
    if extra_sections:
        sections.extend(extra_sections)
    note = issues_note(issues)
    if note:
        sections.append(note)
    sections.append("<sub>" + " ".join(rules_lines(knowledge, rules)) + "</sub>")

    crs: dict[str, Any] = {
        "grade": grading.grade,
        "maxGrade": grading.max_grade,
        "gradingSystem": GRADING_SYSTEM,
        "exposure": {
            "product": exposure.product,
            "display": exposure.display,
            "kind": exposure.kind,
            "at": exposure.at.isoformat(),
            "windowEnds": exposure.window_ends.isoformat(),
            "source": exposure.source,
        },
        "evidence": [e.as_json() for e in grading.evidence],
        "feverRequired": grading.fever_masked_since is None,
        "hypotensionDefinition": rules.grading.hypotension_definition(),
        "lookbackHours": rules.grading.lookback.total_seconds() / 3600,
        "warnings": grading.warnings,
        "ruleSetVersion": rules.version,
        "evaluatedAt": at.isoformat(),
    }
    if grading.max_grade_at is not None:
        crs["maxGradeAt"] = grading.max_grade_at.isoformat()
    if issues:
        crs["dataIssues"] = [i.as_json() for i in issues]
    if extension_extra:
        crs.update(extension_extra)
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary_text(head),
        "detail": "\n\n".join(sections),
        "indicator": INDICATOR_BY_GRADE[grading.grade],
        "source": source(knowledge),
        "extension": {"crs": crs},
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    return card


# --- tocilizumab: the physician's order and the pharmacist's checks ----------------

PROBLEM_TEXT = {
    "dose-above-cap": "dose above the {cap} mg per-dose maximum",
    "dose-not-weight-based": "dose is not the weight-based dose (±{tol} %)",
    "interval-under-8h": "less than {interval} h since the last dose",
    "over-3-in-24h": "would be more than {per24} doses in 24 hours",
    "over-4-total": "would be more than {total} doses for this CRS episode",
    "no-weight": "no body weight on file: the dose cannot be checked against weight",
    "no-crs-evidence": "CRS criteria are not met now (no grade ≥ 1 in the look-back window)",
}


def fmt_mg(mg: float) -> str:
    """800 → "800", 562.5 → "562.5"."""
    return f"{mg:.1f}".rstrip("0").rstrip(".")


def problem_text(code: str, rules: EngineRules) -> str:
    d = rules.dosing
    return PROBLEM_TEXT[code].format(
        cap=fmt_mg(d.max_dose_mg),
        tol=f"{d.tolerance_fraction * 100:g}",
        interval=f"{d.min_interval.total_seconds() / 3600:g}",
        per24=d.max_doses_per_24h,
        total=d.max_doses_total,
    )


def dosing_rule_line(knowledge: Knowledge, rules: EngineRules) -> str:
    d = rules.dosing
    line = (
        f"Tocilizumab for CRS: {d.mg_per_kg_at_or_above:g} mg/kg (≥ {d.weight_threshold_kg:g} kg) "
        f"or {d.mg_per_kg_below:g} mg/kg (< {d.weight_threshold_kg:g} kg) IV over "
        f"{d.infusion_minutes} min, at most {fmt_mg(d.max_dose_mg)} mg a dose, at least "
        f"{d.min_interval.total_seconds() / 3600:g} h apart, at most {d.max_doses_per_24h} in "
        f"24 h and {d.max_doses_total} in all "
        f"({knowledge.tocilizumab.short_citation})."
    )
    if d.rounding_mg:
        line += f" Institution rounding: nearest {d.rounding_mg:g} mg."
    return line


def history_line(history: DoseHistory) -> str:
    last = history.last_dose_at
    if last is None:
        return "No tocilizumab on record."
    return (
        f"Tocilizumab given {history.doses_total}× this CRS episode, "
        f"{history.doses_last_24h}× in the last 24 h; last dose {when(last)} "
        f"({history.hours_since_last:g} h ago)."
    )


def order_check_card(
    knowledge: Knowledge,
    rules: EngineRules,
    check: dict[str, Any],
    ordered: Any,
    dose: Dose | None,
    weight: Measurement | None,
    history: DoseHistory,
    suggestions: list[dict[str, Any]],
    override_reasons: list[dict[str, str]],
    indicator: str,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The pharmacist's card for one draft tocilizumab order."""
    problems: list[str] = check["problems"]
    if not problems:
        head = f"Tocilizumab {ordered.as_written}: dose and timing check out"
    else:
        head = f"Tocilizumab {ordered.as_written}: " + ", ".join(problems)
    lines = [
        f"**Order:** {ordered.as_written}"
        + (
            f" = {fmt_mg(ordered.mg)} mg"
            if ordered.mg is not None and ordered.as_written != f"{fmt_mg(ordered.mg)} mg"
            else ""
        )
    ]
    if ordered.problem:
        lines.append(f"**Dose not readable:** {ordered.problem}.")
    if weight is not None and dose is not None:
        recorded = f" (recorded as {weight.original})" if weight.original else ""
        basis = f"{dose.mg_per_kg:g} mg/kg × {weight.value:g} kg"
        if dose.capped:
            basis += f" = {fmt_mg(dose.weight_based_mg)} mg, capped"
        lines.append(
            f"**Recommended:** {fmt_mg(dose.mg)} mg ({basis}); weight {weight.value:g} kg"
            f"{recorded} observed {when(weight.at)}."
        )
    else:
        lines.append("**Recommended:** cannot be computed — record the patient's weight.")
    lines.append(history_line(history))
    if history.next_allowed_at is not None:
        lines.append(f"Next dose allowed from {when(history.next_allowed_at)}.")
    elif "over-4-total" in problems:
        lines.append("No further dose is allowed in this CRS episode by the label limits.")
    if problems:
        lines.append(
            "**Problems:**\n" + "\n".join(f"- `{p}`: {problem_text(p, rules)}" for p in problems)
        )
    lines.extend(notes or [])
    lines.append(f"<sub>{dosing_rule_line(knowledge, rules)} Rule set {rules.version}.</sub>")
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary_text(head),
        "detail": "\n\n".join(lines),
        "indicator": indicator,
        "source": source(knowledge),
        "extension": {"tocilizumabCheck": check},
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    if problems:
        card["overrideReasons"] = override_reasons
    return card


def unreadable_order_card(knowledge: Knowledge, issues: list[Issue]) -> dict[str, Any]:
    """A draft order that may be tocilizumab but could not be read: it was not checked."""
    rows = "\n".join(f"- `{_md(i.location)}`: {_md(i.problem)}" for i in issues)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": "A draft order (possibly tocilizumab) could not be read and was NOT checked",
        "detail": "The order could not be read where shown; check it by hand:\n\n" + rows,
        "indicator": "warning",
        "source": source(knowledge),
        "extension": data_issues_extension(issues),
    }


def data_issues_extension(issues: list[Issue]) -> dict[str, Any]:
    """`extension` naming what could not be read (`crs.dataIssues`), for the EHR's
    integrators."""
    return {"crs": {"dataIssues": [i.as_json() for i in issues]}}


def steroid_section(knowledge: Knowledge, grade: int) -> str | None:
    guidance = knowledge.corticosteroids.get(grade)
    if guidance is None:
        return None
    return (
        f"**Corticosteroids (grade {grade}, institution-adjustable default):** "
        f"{guidance.guidance} <sub>({guidance.short_citation})</sub>"
    )
