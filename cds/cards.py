"""Evaluations -> CDS Hooks cards, written for a busy clinician.

The summary (< 140 characters) carries the grade and the product; the detail shows the
evidence as a small Markdown table, the rules used and what to rule out; the extension
carries the same facts for machines.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cds.engine.exposure import Exposure
from cds.engine.grading import Evidence, Grading
from cds.fhir.reading import Issue
from cds.knowledge import Knowledge
from cds.parameters import EngineRules

SUMMARY_MAX = 139
GRADING_SYSTEM = "ASTCT 2019"
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
        rows.append(f"| {_md(e.label)} | {when(e.at)} | {_md(e.value)} | {_md(e.unit)} |")
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
    return (
        f"Day {exposure.day(at)} after {exposure.display} ({kind}{doses} at "
        f"{when(exposure.at)}); risk window open until {when(exposure.window_ends)}."
    )


def _why(g: Grading, rules: EngineRules) -> str:
    fever = f"fever ≥ {rules.grading.fever_min_celsius:g} °C"
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
        f"Look-back window: {rules.grading.lookback.total_seconds() / 3600:g} h (configurable; "
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
