"""Decisions -> CDS Hooks cards, written for a busy clinician.

The summary (< 140 characters) carries the grade and the product; the detail shows the
evidence as a small Markdown table, the rules used and what to rule out; the extension
carries the same facts for machines. Every function here is pure: it words what the
services decided (which card, which order, its ids) and returns typed cards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cds.engine.dosing import DOSE_TIME_UNKNOWN, OVER_4_TOTAL, Dose, DoseHistory, Indication
from cds.engine.exposure import Exposure
from cds.engine.facts import Measurement
from cds.engine.grading import Evidence, Grading, hours_since
from cds.engine.icans import IcansGrading
from cds.engine.risk_scores import RiskAssessment, RiskScore
from cds.evaluation import Evaluation
from cds.extensions import (
    Acknowledged,
    CardExtension,
    CrsInfo,
    EvidenceInfo,
    ExposureInfo,
    IcansInfo,
    IncompleteData,
    IssueInfo,
    MaskingDrug,
    ResponseExtension,
    RiskInput,
    RiskScoreInfo,
    TocilizumabAdvice,
    TocilizumabCheck,
)
from cds.fhir.orders import OrderedDose
from cds.fhir.reading import Issue, Truncated
from cds.formatting import fmt_mg, fmt_value, hours, when
from cds.knowledge import Knowledge
from cds.parameters import EngineRules
from cds.protocol import Card, Coding, Indicator, Link, Source, Suggestion

SUMMARY_MAX = 139
GRADING_SYSTEM = "ASTCT 2019"
UNIT_DISPLAY = {"Cel": "°C", "mm[Hg]": "mmHg", "10^9/L": "×10⁹/L"}
LAB_DISPLAY = {
    "ldh": "LDH",
    "creatinine": "creatinine",
    "platelets": "platelets",
    "hemoglobin": "haemoglobin",
    "anc": "ANC",
    "crp": "CRP",
    "ferritin": "ferritin",
}
KIND_TEXT = {
    "car-t": "CAR-T infusion",
    "tcr-t": "TCR T-cell infusion",
    "bispecific": "T-cell engager dose",
}


def summary_text(text: str) -> str:
    """Cut a summary to the CDS Hooks limit (under 140 characters)."""
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def source(knowledge: Knowledge) -> Source:
    """The card source: label, and the ASTCT citation URL."""
    return Source(label=f"CRS decision support ({GRADING_SYSTEM} grading)", url=knowledge.astct.url)


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


def issues_note(issues: tuple[Issue, ...]) -> str | None:
    """A line telling the clinician that some data could not be read."""
    if not issues:
        return None
    return (
        f"**Data not read:** {len(issues)} entr{'y' if len(issues) == 1 else 'ies'} could not "
        "be read and were left out (details in the card's extension, `dataIssues`); "
        "the grade may be understated."
    )


def incomplete_note(truncated: tuple[Truncated, ...]) -> str | None:
    """A line telling the clinician that part of the data never arrived."""
    if not truncated:
        return None
    parts = "; ".join(t.describe() for t in truncated)
    return (
        f"**Data incomplete:** only the first page of the patient's data was sent and the "
        f"rest could not be fetched ({parts}). Findings on the missing pages are not "
        "included: the grade may be understated. Open the full record before relying on it."
    )


def _incomplete_summary(truncated: tuple[Truncated, ...]) -> str:
    read = sum(t.received for t in truncated)
    totals = [t.total for t in truncated]
    if all(total is not None for total in totals):
        return f"DATA INCOMPLETE ({read} of {sum(t for t in totals if t is not None)} entries)"
    return f"DATA INCOMPLETE ({read} entries read, more not sent)"


def exposure_line(exposure: Exposure, at: datetime) -> str:
    kind = KIND_TEXT.get(exposure.kind, exposure.kind)
    doses = f", dose {exposure.doses}" if exposure.kind == "bispecific" else ""
    if exposure.extended_until is not None:
        window = (
            f"the product's risk window closed {when(exposure.window_ends)}, but CRS "
            f"activity continues: kept open until at least {when(exposure.extended_until)}"
        )
    else:
        window = f"risk window open until {when(exposure.window_ends)}"
    others = list(dict.fromkeys(a.display for a in exposure.risk_doses))
    if len(others) > 1:
        # the risk period runs through several products' windows: the longest sets its end
        window += (
            f" (one risk period: {', '.join(others)}, from {when(exposure.risk_period_start)};"
            " it ends when the last of their windows closes)"
        )
    return (
        f"Day {exposure.day(at)} after {exposure.display} ({kind}{doses} at "
        f"{when(exposure.at)}); {window}."
    )


def _why(g: Grading, rules: EngineRules, at: datetime) -> str:
    fever = f"fever ≥ {rules.grading.fever_min_celsius:.1f} °C"
    if g.grade == 0:
        if g.fever_masked_since is not None:
            found = (
                "No blood pressure recorded (hypotension cannot be assessed) and no hypoxia"
                if g.blood_pressure_unknown
                else "No hypotension or hypoxia"
            )
            return (
                f"{found} in the look-back window. Fever is no longer required for grading "
                f"(masked by treatment since {when(g.fever_masked_since)})."
            )
        if g.last_temperature_at is None or at - g.last_temperature_at > rules.grading.lookback:
            # no temperature is not "no fever": the grade rests on missing data
            return (
                "No temperature recorded in the look-back window: fever, which ASTCT "
                "requires, cannot be assessed — grade 0 on the data available, not an "
                "all-clear."
            )
        if g.temperature_gap:
            return (
                f"No {fever} in the look-back window, but the latest temperature is "
                f"{hours_since(g.last_temperature_at, at)} h old: CRS cannot be excluded now."
            )
        if g.undated_findings:
            return (
                f"No {fever} dated in the look-back window, but findings charted at a time "
                "that cannot be read may fall in it (see the warnings): CRS cannot be "
                "excluded now."
            )
        return f"No {fever} in the look-back window: CRS criteria not met now."
    parts = [fever] if g.fever_in_window else ["fever no longer required (masked by treatment)"]
    parts.extend(g.drivers)
    return "Meets grade " + str(g.grade) + ": " + "; ".join(parts) + "."


def _possible_section(knowledge: Knowledge, g: Grading) -> str | None:
    drug = g.fever_possibly_masked_by
    if drug is None or g.possible_grade is None:
        return None
    return (
        f"**Possible CRS grade {g.possible_grade} — fever may be masked by premedication.** "
        f"{'; '.join(g.drivers).capitalize()} without fever, after {drug.display} "
        f"({when(drug.start)}), given before the dose or before any CRS fever. Premedication "
        "(a corticosteroid, an antipyretic or tocilizumab) may mask the fever that ASTCT "
        "requires; the product labels say to manage a presentation consistent with CRS as "
        f"CRS. The ASTCT grade stays {g.grade} because no fever is recorded. "
        f"<sub>({knowledge.astct.premedication_masking.citation.strip()})</sub>"
    )


def window_line(knowledge: Knowledge, rules: EngineRules, exposure: Exposure) -> str:
    """The risk window in force for the product, and whether it was confirmed."""
    therapy = knowledge.therapies.get(exposure.product)
    hours_in_force = rules.windows[exposure.product].window_hours
    text = f"Risk window of {exposure.display}: {hours_in_force:g} h after each dose or infusion"
    if therapy is not None and therapy.verification.status == "unconfirmed":
        return (
            text + " (default not confirmed against the current label; see rules/therapies.yaml)."
        )
    return text + " (from the product label)."


def rules_lines(knowledge: Knowledge, rules: EngineRules) -> list[str]:
    """The rules used, as the card states them."""
    lines = [
        f"Rule set {knowledge.ruleset.name} {rules.version}; grading {GRADING_SYSTEM} "
        f"(Lee et al., {knowledge.astct.url}).",
        f"Hypotension: {rules.grading.hypotension_definition()} — ASTCT gives no number; "
        "this is an institution-configurable default.",
        f"Look-back window: {hours(rules.grading.lookback.total_seconds())} h; CRS episode "
        f"gap: {hours(rules.grading.episode_gap.total_seconds())} h (both configurable; "
        "ASTCT is silent).",
    ]
    if rules.overrides:
        lines.append("Institution settings in force: " + "; ".join(rules.overrides) + ".")
    return lines


def crs_indicator(knowledge: Knowledge, grading: Grading, complete: bool) -> Indicator:
    """The indicator of the grade, or of the possible grade (fever possibly masked) or the
    grade if febrile (fever not assessed) when higher; never `info` when data are missing
    (an incomplete chart, or a grade resting on data not charted — `Grading.data_missing`
    — must not look like an all-clear)."""
    by_grade = knowledge.alerting.crs_indicator_by_grade.by_grade
    alerting = max(grading.grade, grading.possible_grade or 0, grading.unassessed_grade or 0)
    indicator: Indicator = by_grade[alerting]
    if indicator == "info" and (not complete or grading.data_missing):
        return "warning"
    return indicator


# --- the physician's tocilizumab section ------------------------------------------------


@dataclass(frozen=True)
class TocilizumabPlan:
    """What the CRS card says about tocilizumab, as the monitor decided it: whether it
    is indicated, the history, the dose, and the order offered (if any)."""

    grade: int
    indication: Indication | None
    history: DoseHistory
    weight: Measurement | None
    dose: Dose | None
    dose_text: str | None
    order: Suggestion | None

    @property
    def steroid_grade(self) -> int:
        """The grade the corticosteroid guidance is shown for (the indication's, which may
        be a possible grade); below 1, none is shown."""
        return self.indication.grade if self.indication else self.grade


def _indication_text(plan: TocilizumabPlan, knowledge: Knowledge) -> str:
    indication = plan.indication
    assert indication is not None
    fever_hours = knowledge.tocilizumab.grade1_persistent_fever_hours
    if indication.persistent_fever:
        return f"grade 1 with fever for more than {fever_hours:g} h"
    if indication.possible:
        return f"possible grade {indication.grade}, if managed as CRS"
    return f"grade {indication.grade}"


def tocilizumab_sections(
    knowledge: Knowledge, rules: EngineRules, plan: TocilizumabPlan
) -> list[str]:
    """The tocilizumab and corticosteroid sections of the CRS card."""
    steroid_grade = plan.steroid_grade
    steroid = steroid_section(knowledge, steroid_grade) if steroid_grade >= 1 else None
    sections = [steroid] if steroid else []
    toci = knowledge.tocilizumab
    if plan.indication is None:
        if plan.grade == 1:
            sections.insert(
                0,
                f"Tocilizumab: consider if fever lasts more than "
                f"{toci.grade1_persistent_fever_hours:g} h "
                f"({toci.citations['grade1_persistent_fever_hours'].citation}).",
            )
        return sections
    head = f"**Tocilizumab ({_indication_text(plan, knowledge)}):** "
    history = plan.history
    if not history.allowed_now:
        reasons = "; ".join(problem_text(p, rules) for p in history.problems)
        said = (f"no order offered: {reasons}.", next_dose_line(history), history_line(history))
        sections.insert(0, head + " ".join(part for part in said if part))
    elif plan.weight is None:
        sections.insert(
            0,
            head + "a weight is needed to compute the dose; no body weight is on file. "
            "Record the patient's actual body weight.",
        )
    else:
        sections.insert(0, head + f"{plan.dose_text}. " + history_line(history))
    return sections


def tocilizumab_advice(plan: TocilizumabPlan) -> TocilizumabAdvice | None:
    """`extension.crs.tocilizumab`, when tocilizumab is indicated."""
    if plan.indication is None:
        return None
    history = plan.history
    problems = tuple(history.problems)
    if history.allowed_now and plan.weight is None:
        problems = ("no-weight",)
    with_dose = history.allowed_now and plan.dose is not None and plan.weight is not None
    return TocilizumabAdvice(
        indicated=True,
        dosesTotal=history.doses_total,
        dosesLast24h=history.doses_last_24h,
        problems=problems,
        nextDoseAllowedAt=_iso(history.next_allowed_at),
        recommendedDoseMg=plan.dose.mg if with_dose and plan.dose else None,
        weightKg=plan.weight.value if with_dose and plan.weight else None,
        weightObservedAt=plan.weight.at.isoformat() if with_dose and plan.weight else None,
    )


# --- the CRS card --------------------------------------------------------------------


def crs_card(
    knowledge: Knowledge,
    rules: EngineRules,
    evaluation: Evaluation,
    plan: TocilizumabPlan,
    card_id: str,
    links: tuple[Link, ...] = (),
) -> Card:
    """The patient-view CRS card for an evaluation inside a risk window (`links`: the
    timeline link, when the service has a public address)."""
    exposure, grading, at = evaluation.exposure, evaluation.crs, evaluation.at
    assert exposure is not None and grading is not None
    day = exposure.day(at)
    untaken = hours_since(grading.last_temperature_at or exposure.risk_period_start, at)
    if grading.unassessed_grade is not None:
        head = (
            f"CRS grade {grading.unassessed_grade} if febrile — no temperature for {untaken} "
            f"h: day {day} after {exposure.display}"
        )
    elif grading.possible_grade is not None:
        head = (
            f"Possible CRS grade {grading.possible_grade} (fever may be masked by "
            f"premedication): day {day} after {exposure.display}"
        )
    elif grading.grade == 0:
        head = f"CRS watch: day {day} after {exposure.display}"
        if grading.max_grade > 0:
            head += f" (max grade {grading.max_grade} since exposure)"
    else:
        head = f"CRS grade {grading.grade} ({GRADING_SYSTEM}): day {day} after {exposure.display}"
        if grading.max_grade > grading.grade:
            head += f"; max grade {grading.max_grade}"
    if grading.temperature_gap and grading.grade == 0 and grading.unassessed_grade is None:
        head = f"NO TEMPERATURE for {untaken} h — {head}"
    elif grading.undated_findings:
        head = f"UNDATED FINDINGS NOT GRADED — {head}"
    if not evaluation.data_complete:
        head = f"{_incomplete_summary(evaluation.truncated)} — {head}"
    sections = [
        f"**{GRADING_SYSTEM} CRS grade {grading.grade}** (highest since exposure: "
        f"{grading.max_grade}"
        + (f", {when(grading.max_grade_at)}" if grading.max_grade_at else "")
        + ")",
        exposure_line(exposure, at),
    ]
    incomplete = incomplete_note(evaluation.truncated)
    if incomplete:
        sections.insert(0, incomplete)
    possible = _possible_section(knowledge, grading)
    if possible:
        sections.append(possible)
    sections.extend([_why(grading, rules, at), evidence_table(grading.evidence)])
    sections.extend(f"**Warning:** {w}" for w in grading.warnings)
    sections.append(f"**Rule out:** {knowledge.astct.rule_out.text}")
    sections.extend(tocilizumab_sections(knowledge, rules, plan))
    child = paediatric_note(evaluation, rules, tocilizumab_above=plan.order is not None)
    if child and plan.steroid_grade >= 1:  # (where the steroid section is shown)
        sections.append(child)
    risk = evaluation.risk
    if risk is not None:
        sections.append(risk_section(risk))
    note = issues_note(evaluation.issues)
    if note:
        sections.append(note)
    footer = [*rules_lines(knowledge, rules), window_line(knowledge, rules, exposure)]
    sections.append("<sub>" + " ".join(footer) + "</sub>")

    masked_by = grading.fever_possibly_masked_by
    crs = CrsInfo(
        grade=grading.grade,
        maxGrade=grading.max_grade,
        gradingSystem=GRADING_SYSTEM,
        exposure=exposure_info(exposure),
        evidence=tuple(_evidence_info(e) for e in grading.evidence),
        feverRequired=grading.fever_masked_since is None,
        hypotensionDefinition=rules.grading.hypotension_definition(),
        lookbackHours=rules.grading.lookback.total_seconds() / 3600,
        warnings=tuple(grading.warnings),
        ruleSetVersion=rules.version,
        evaluatedAt=at.isoformat(),
        dataComplete=evaluation.data_complete,
        maxGradeAt=_iso(grading.max_grade_at),
        possibleGrade=grading.possible_grade,
        gradeIfFebrile=grading.unassessed_grade,
        feverPossiblyMaskedBy=(
            MaskingDrug(masked_by.display, masked_by.start.isoformat(), masked_by.source)
            if masked_by is not None
            else None
        ),
        tocilizumab=tocilizumab_advice(plan),
        riskScores=risk_infos(risk) if risk is not None else (),
    )
    return Card(
        uuid=card_id,
        summary=summary_text(head),
        detail="\n\n".join(sections),
        indicator=crs_indicator(knowledge, grading, evaluation.data_complete),
        source=source(knowledge),
        suggestions=(plan.order,) if plan.order is not None else (),
        selectionBehavior="at-most-one" if plan.order is not None else None,
        links=links,
        extension=CardExtension(
            crs=crs,
            dataIssues=issue_infos(evaluation.issues),
            incompleteData=incomplete_data(evaluation.truncated),
        ),
    )


def acknowledged_card(
    card: Card, outcome: str, grade: int, acted_at: datetime, until: datetime
) -> Card:
    """The CRS card shown quietly: `info`, "Acknowledged", the acknowledgement in its
    extension. Its suggestions stay (the order is still at hand)."""
    extension = card.extension
    assert isinstance(extension, CardExtension) and extension.crs is not None
    crs = extension.crs
    acknowledged = Acknowledged(
        outcome=outcome, at=acted_at.isoformat(), grade=grade, until=until.isoformat()
    )
    note = (
        f"**Acknowledged:** a clinician {'accepted' if outcome == 'accepted' else 'dismissed'} "
        f"this card at grade {grade} ({when(acted_at)}); shown quietly until {when(until)} "
        "or until the grade rises."
    )
    return Card(
        uuid=card.uuid,
        summary=summary_text(f"Acknowledged: {card.summary}"),
        detail=f"{note}\n\n{card.detail}" if card.detail else note,
        indicator="info",
        source=card.source,
        suggestions=card.suggestions,
        selectionBehavior=card.selectionBehavior,
        overrideReasons=card.overrideReasons,
        links=card.links,
        extension=CardExtension(
            crs=_with_acknowledgement(crs, acknowledged),
            dataIssues=extension.dataIssues,
            incompleteData=extension.incompleteData,
        ),
    )


def _with_acknowledgement(crs: CrsInfo, acknowledged: Acknowledged) -> CrsInfo:
    from msgspec import structs

    return structs.replace(crs, acknowledged=acknowledged)


def incomplete_data_card(knowledge: Knowledge, evaluation: Evaluation, card_id: str) -> Card:
    """No risk window found, but part of the data never arrived, or a CAR-T, TCR-T or
    T-cell-engager administration could not be read: the exposure may be on the missing
    pages, or be that entry, so say so instead of staying silent."""
    truncated = evaluation.truncated
    unread = evaluation.unread_exposures
    if unread:
        names = ", ".join(dict.fromkeys(u.display for u in unread))
        summary = f"{names[:1].upper()}{names[1:]} given, not readable: CRS risk not checked"
        where = "; ".join(u.location for u in unread)
        sections = [
            f"**Not read:** an administration of {names} ({where}): it, or its time, could "
            "not be read (details in the card's extension, `dataIssues`). The CRS risk window "
            "starts at the infusion or dose, so whether the patient is inside it could not "
            "be checked, and the patient was not graded. Correct the entry in the medication "
            "record, or check the patient for CRS by hand.",
        ]
        if truncated:
            sections.append(incomplete_note(truncated) or "")
    else:
        summary = f"{_incomplete_summary(truncated)}: CRS risk could not be fully checked"
        sections = [
            incomplete_note(truncated) or "",
            "No CAR-T, TCR-T or T-cell engager administration was found in the data that "
            "arrived; one may be on the missing pages. Check the full medication record.",
        ]
    return Card(
        uuid=card_id,
        summary=summary_text(summary),
        detail="\n\n".join(sections),
        indicator="warning",
        source=source(knowledge),
        extension=CardExtension(
            dataIssues=issue_infos(evaluation.issues),
            incompleteData=incomplete_data(truncated),
        ),
    )


def data_only_extension(evaluation: Evaluation) -> ResponseExtension | None:
    """The response's extension when there is no card: what could not be read."""
    if not evaluation.issues:
        return None
    return ResponseExtension(dataIssues=issue_infos(evaluation.issues))


def exposure_info(exposure: Exposure) -> ExposureInfo:
    """The exposure as a card's extension carries it."""
    return ExposureInfo(
        product=exposure.product,
        display=exposure.display,
        kind=exposure.kind,
        at=exposure.at.isoformat(),
        windowEnds=exposure.window_ends.isoformat(),
        source=exposure.source,
        extendedUntil=_iso(exposure.extended_until),
    )


def _evidence_info(e: Evidence) -> EvidenceInfo:
    return EvidenceInfo(e.finding, e.label, e.value, e.unit, e.at.isoformat(), e.source)


def issue_infos(issues: tuple[Issue, ...] | list[Issue]) -> tuple[IssueInfo, ...]:
    return tuple(IssueInfo(i.location, i.problem) for i in issues)


def incomplete_data(truncated: tuple[Truncated, ...]) -> tuple[IncompleteData, ...]:
    return tuple(IncompleteData(t.location, t.received, t.total) for t in truncated)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# --- tocilizumab: the pharmacist's checks -----------------------------------------------

PROBLEM_TEXT = {
    "dose-above-cap": "dose above the {cap} mg per-dose maximum",
    "dose-not-weight-based": "dose is not the weight-based dose (±{tol} %)",
    "dose-unreadable": "dose not readable as a mass: NOT checked against the cap or the "
    "weight-based dose; verify it by hand",
    "dose-invalid": "dose is zero, negative or not a number: not a dose to give; verify "
    "the intended dose with the prescriber",
    "interval-under-8h": "less than {interval} h since the last dose",
    "over-3-in-24h": "would be more than {per24} doses in 24 hours",
    "over-4-total": "would be more than {total} doses in all (every dose in the reach of "
    "the risk data counts: no source resets the label's total with a new CRS episode)",
    "dose-time-unknown": "a tocilizumab dose on record has a time that cannot be read: the "
    "{interval} h interval and the dose counts cannot be checked",
    "no-weight": "no body weight on file: the dose cannot be checked against weight",
    "no-crs-evidence": "CRS criteria are not met now (no grade ≥ 1 in the look-back window)",
}


# A problem in a few words, for a card's summary (140 characters); the detail says it in
# full (PROBLEM_TEXT) and the extension keeps the code.
PROBLEM_LABEL = {
    "dose-above-cap": "above the {cap} mg cap",
    "dose-not-weight-based": "not the weight-based dose",
    "dose-unreadable": "dose not readable",
    "dose-invalid": "no valid dose",
    "interval-under-8h": "under {interval} h since the last dose",
    "over-3-in-24h": "over {per24} doses in 24 h",
    "over-4-total": "over {total} doses in all",
    "dose-time-unknown": "a previous dose's time unknown",
    "no-weight": "no weight on file",
    "no-crs-evidence": "no CRS criteria met now",
}


def problem_label(code: str, rules: EngineRules) -> str:
    return _with_rules(PROBLEM_LABEL[code], rules)


def problem_text(code: str, rules: EngineRules) -> str:
    return _with_rules(PROBLEM_TEXT[code], rules)


def _with_rules(text: str, rules: EngineRules) -> str:
    d = rules.dosing
    return text.format(
        cap=fmt_mg(d.max_dose_mg),
        tol=f"{d.tolerance_fraction * 100:g}",
        interval=hours(d.min_interval.total_seconds()),
        per24=d.max_doses_per_24h,
        total=d.max_doses_total,
    )


def dosing_rule_line(knowledge: Knowledge, rules: EngineRules) -> str:
    d = rules.dosing
    line = (
        f"Tocilizumab for CRS: {d.mg_per_kg_at_or_above:g} mg/kg (≥ {d.weight_threshold_kg:g} kg) "
        f"or {d.mg_per_kg_below:g} mg/kg (< {d.weight_threshold_kg:g} kg) IV over "
        f"{d.infusion_minutes} min, at most {fmt_mg(d.max_dose_mg)} mg a dose, at least "
        f"{hours(d.min_interval.total_seconds())} h apart, at most {d.max_doses_per_24h} in "
        f"24 h and {d.max_doses_total} in all "
        f"({knowledge.tocilizumab.short_citation})."
    )
    if d.rounding_mg:
        line += f" Institution rounding: nearest {d.rounding_mg:g} mg."
    return line


def history_line(history: DoseHistory) -> str:
    last = history.last_dose_at
    n = history.undated
    undated = (
        f"{n} dose{'s' if n > 1 else ''} on record with a time that cannot be read (counted "
        "in the total)."
        if n
        else ""
    )
    if last is None:
        return f"No dated tocilizumab on record; {undated}" if n else "No tocilizumab on record."
    since = (
        f" since {when(history.counted_since)} (the reach of the risk data)"
        if history.counted_since is not None
        else ""
    )
    return (
        f"Tocilizumab given {len(history.doses)}×{since}, "
        f"{history.doses_last_24h}× in the last 24 h; last dose {when(last)} "
        f"({history.hours_since_last:g} h ago)." + (f" And {undated}" if n else "")
    )


def next_dose_line(history: DoseHistory) -> str:
    """When the next dose is allowed, or why none is."""
    if history.next_allowed_at is not None:
        return f"Next dose allowed from {when(history.next_allowed_at)}."
    if OVER_4_TOTAL in history.problems:
        return "No further dose is allowed by the label limits."
    if DOSE_TIME_UNKNOWN in history.problems:
        return "Chart the time of the undated dose: the next dose follows from it."
    return ""


@dataclass(frozen=True)
class OrderCheck:
    """The pharmacist's check of one draft tocilizumab order, as the service decided it."""

    order: str  # the order's reference
    ordered: OrderedDose
    problems: tuple[str, ...]
    dose: Dose | None
    weight: Measurement | None
    history: DoseHistory
    indicator: Indicator
    correction: Suggestion | None  # the corrected order, when the dose is wrong
    notes: tuple[str, ...] = ()  # e.g. why no corrected order could be offered


def order_check_card(
    knowledge: Knowledge, rules: EngineRules, check: OrderCheck, card_id: str
) -> Card:
    """The pharmacist's card for one draft tocilizumab order."""
    ordered, problems, dose, weight, history = (
        check.ordered,
        check.problems,
        check.dose,
        check.weight,
        check.history,
    )
    if not problems:
        head = f"Tocilizumab {ordered.as_written}: dose and timing check out"
    else:
        head = f"Tocilizumab {ordered.as_written}: " + "; ".join(
            problem_label(p, rules) for p in problems
        )
    lines = [
        f"**Order:** {ordered.as_written}"
        + (
            f" = {fmt_mg(ordered.mg)} mg"
            if ordered.mg is not None and ordered.as_written != f"{fmt_mg(ordered.mg)} mg"
            else ""
        )
    ]
    unreadable = ordered.problem_text()
    if unreadable:
        label = (
            "Dose invalid" if ordered.problem and ordered.problem.invalid else "Dose not readable"
        )
        lines.append(f"**{label}:** {unreadable}.")
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
    if next_dose := next_dose_line(history):
        lines.append(next_dose)
    if problems:
        lines.append(
            "**Problems:**\n" + "\n".join(f"- `{p}`: {problem_text(p, rules)}" for p in problems)
        )
    lines.extend(check.notes)
    lines.append(f"<sub>{dosing_rule_line(knowledge, rules)} Rule set {rules.version}.</sub>")
    override = knowledge.alerting.order_check
    extension = TocilizumabCheck(
        order=check.order,
        problems=problems,
        orderedDose=ordered.as_written,
        dosesLast24h=history.doses_last_24h,
        dosesTotal=history.doses_total,
        ruleSetVersion=rules.version,
        orderedDoseMg=ordered.mg,
        recommendedDoseMg=dose.mg if dose else None,
        weightKg=weight.value if weight else None,
        weightObservedAt=weight.at.isoformat() if weight else None,
        hoursSinceLastDose=history.hours_since_last,
        nextDoseAllowedAt=_iso(history.next_allowed_at),
    )
    return Card(
        uuid=card_id,
        summary=summary_text(head),
        detail="\n\n".join(lines),
        indicator=check.indicator,
        source=source(knowledge),
        suggestions=(check.correction,) if check.correction else (),
        selectionBehavior="at-most-one" if check.correction else None,
        overrideReasons=(
            tuple(
                Coding(override.override_system, r.code, r.display)
                for r in override.override_reasons
            )
            if problems
            else ()
        ),
        extension=CardExtension(tocilizumabCheck=extension),
    )


def unreadable_order_card(knowledge: Knowledge, issues: tuple[Issue, ...], card_id: str) -> Card:
    """A draft order that may be tocilizumab but could not be read: it was not checked."""
    rows = "\n".join(f"- `{_md(i.location)}`: {_md(i.problem)}" for i in issues)
    return Card(
        uuid=card_id,
        summary="A draft order (possibly tocilizumab) could not be read and was NOT checked",
        detail="The order could not be read where shown; check it by hand:\n\n" + rows,
        indicator="warning",
        source=source(knowledge),
        extension=CardExtension(dataIssues=issue_infos(issues)),
    )


def paediatric_note(
    evaluation: Evaluation, rules: EngineRules, tocilizumab_above: bool = False
) -> str | None:
    """For a child (younger than the adult age of the hypotension rule, or lighter than
    tocilizumab's weight threshold): the corticosteroid doses the guidance names are the
    cited guidelines' adult doses. None for an adult or when neither is known."""
    age = evaluation.age
    weight = evaluation.tocilizumab.weight
    adult_age = rules.grading.adult_from_age_years
    threshold = rules.dosing.weight_threshold_kg
    young = age is not None and adult_age is not None and age < adult_age
    light = weight is not None and weight.value < threshold
    if not (young or light):
        return None
    who = ", ".join(
        ([f"age {age}"] if young else [])
        + ([f"{fmt_value(weight.value)} kg"] if light and weight else [])
    )
    return (
        f"**Paediatric dosing ({who}):** the corticosteroid doses named here (e.g. "
        "dexamethasone 10 mg) "
        "are the adult doses of the guidelines cited; dose a child by the institution's "
        "paediatric protocol (per kg)."
        + (" The tocilizumab dose above is weight-based." if tocilizumab_above else "")
    )


def steroid_section(knowledge: Knowledge, grade: int) -> str | None:
    """The corticosteroid guidance for the grade; a row not confirmed against its
    guideline is shown as the institution's default, never as guideline text."""
    guidance = knowledge.corticosteroids.get(grade)
    if guidance is None:
        return None
    if guidance.verification.status == "confirmed":
        return (
            f"**Corticosteroids (grade {grade}, institution-adjustable default):** "
            f"{guidance.guidance} <sub>({guidance.short_citation})</sub>"
        )
    return (
        f"**Corticosteroids (grade {grade}, institution default — not confirmed against a "
        f"published guideline):** {guidance.guidance} "
        f"<sub>(based on {guidance.short_citation}; what could not be read is noted in "
        "rules/corticosteroids.yaml)</sub>"
    )


# --- pre-infusion risk scores (a section of the CRS card) -----------------------------


def _input_text(score: RiskScore) -> str:
    parts = []
    for i in score.inputs:
        name = LAB_DISPLAY.get(i.concept, i.concept)
        unit = UNIT_DISPLAY.get(i.unit, i.unit)
        if i.status == "missing":
            parts.append(f"{name}: missing")
        elif i.value is not None and i.at is not None:
            stale = " (stale)" if i.status == "stale" else ""
            parts.append(f"{name} {i.value:g} {unit} {when(i.at)}{stale}")
    return "; ".join(parts)


def risk_section(risk: RiskAssessment) -> str:
    """The scores as a small table: information for the physician, never a grade."""
    if risk.lymphodepletion is None:
        return (
            "**Pre-infusion risk scores** (information only, not a grade): no lymphodepleting "
            "chemotherapy (fludarabine, cyclophosphamide, bendamustine) is charted before the "
            "infusion, so the scores' time point (labs before lymphodepletion) cannot be "
            "placed; no score is computed."
        )
    ld = risk.lymphodepletion
    rows = [
        "**Pre-infusion risk scores** (information only, never a grade or an alarm; labs "
        f"before lymphodepletion, {ld.display} {when(ld.start)}):",
        "",
        "| Score | Value | Category | Cut-off | Inputs | Cohort |",
        "|---|---|---|---|---|---|",
    ]
    for score in risk.scores:
        if score.value is None:
            why = []
            if score.missing:
                why.append("missing " + ", ".join(LAB_DISPLAY.get(c, c) for c in score.missing))
            if score.stale:
                why.append("stale " + ", ".join(LAB_DISPLAY.get(c, c) for c in score.stale))
            value = "— (" + "; ".join(why) + ")" if why else "—"
        else:
            value = f"{score.value:g}"
        spec = score.spec
        unconfirmed = "" if spec.confirmed else " (not confirmed against the publication)"
        rows.append(
            f"| {score.score} | {_md(value)} | {_md(score.category or '—')} | "
            f"{_md(spec.cutoff)}{unconfirmed} | {_md(_input_text(score))} | "
            f"{_md(spec.cohort)}; predicts {_md(spec.predicts)} |"
        )
    return "\n".join(rows)


def risk_infos(risk: RiskAssessment) -> tuple[RiskScoreInfo, ...]:
    """`extension.crs.riskScores`."""
    time_point = _iso(risk.time_point)
    return tuple(
        RiskScoreInfo(
            score=s.score,
            inputs=tuple(
                RiskInput(i.concept, i.unit, i.status, i.value, _iso(i.at), i.source)
                for i in s.inputs
            ),
            cutoff=s.spec.cutoff,
            source=s.spec.citation,
            predicts=s.spec.predicts,
            cohort=s.spec.cohort,
            verification="confirmed" if s.spec.confirmed else "unconfirmed",
            value=s.value,
            category=s.category,
            missing=tuple(s.missing) if risk.lymphodepletion is not None else ("lymphodepletion",),
            stale=tuple(s.stale),
            timePoint=time_point,
        )
        for s in risk.scores
    )


def pre_infusion_card(knowledge: Knowledge, evaluation: Evaluation, card_id: str) -> Card:
    """After lymphodepletion, before the CAR-T infusion: the risk scores alone, as
    information (`info`, never an alarm)."""
    risk = evaluation.risk
    assert risk is not None and risk.lymphodepletion is not None
    shown = ", ".join(
        f"{s.score} {s.value:g}" + (f" ({s.category})" if s.category else "")
        for s in risk.scores
        if s.value is not None
    )
    head = f"Pre-infusion risk scores after lymphodepletion: {shown or 'inputs missing'}"
    sections = [
        risk_section(risk),
        "For a CAR-T infusion that follows this lymphodepletion. The scores inform; they are "
        "not a CRS grade and raise no alert.",
    ]
    note = issues_note(evaluation.issues)
    if note:
        sections.append(note)
    return Card(
        uuid=card_id,
        summary=summary_text(head),
        detail="\n\n".join(sections),
        indicator="info",
        source=source(knowledge),
        extension=CardExtension(
            dataIssues=issue_infos(evaluation.issues),
            incompleteData=incomplete_data(evaluation.truncated),
            riskScores=risk_infos(risk),
        ),
    )


# --- the ICANS card ------------------------------------------------------------------------


def icans_management(knowledge: Knowledge, grading: IcansGrading, crs_grade: int) -> list[str]:
    """The management defaults for the ICANS grade (institution-adjustable), with or
    without concurrent CRS, and the seizure note."""
    rules = knowledge.icans
    assert rules is not None
    m = rules.management
    lines: list[str] = []
    row = next((r for r in m.by_grade if r.grade == grading.grade), None)
    if row is not None:
        concurrent = crs_grade >= 1
        text = row.concurrent_crs if concurrent else row.no_concurrent_crs
        status = (
            "institution-adjustable default"
            if row.verification.status == "confirmed"
            else "institution default — not confirmed against a published guideline"
        )
        context = f"with concurrent CRS grade {crs_grade}" if concurrent else "no concurrent CRS"
        lines.append(
            f"**Management (ICANS grade {grading.grade}, {context}; {status}):** {text} "
            f"<sub>({row.citation})</sub>"
        )
        if not concurrent:
            lines.append(
                f"**No tocilizumab for isolated ICANS:** {m.no_tocilizumab_for_isolated_icans}"
            )
    if grading.seizure:
        lines.append(f"**Seizure:** {m.seizures} <sub>({m.seizures_citation})</sub>")
    lines.append(f"**All grades:** {m.all_grades} <sub>({m.all_grades_citation})</sub>")
    return lines


def icans_card(
    knowledge: Knowledge, rules: EngineRules, evaluation: Evaluation, card_id: str
) -> Card:
    """The patient-view ICANS card, beside the CRS card."""
    assessed = evaluation.icans
    icans_rules = knowledge.icans
    assert assessed is not None and icans_rules is not None and rules.icans is not None
    exposure, grading, at = assessed.exposure, assessed.result, evaluation.at
    crs_grade = evaluation.crs.grade if evaluation.crs is not None else 0
    day = exposure.day(at)
    system = icans_rules.grading_system
    if grading.grade == 0:
        state = "no ICANS finding now" if grading.assessed_now else "not assessed in the look-back"
        head = f"ICANS: {state}: day {day} after {exposure.display}"
        if grading.max_grade > 0:
            head += f" (max grade {grading.max_grade} since exposure)"
    else:
        head = f"ICANS grade {grading.grade} ({system}): day {day} after {exposure.display}"
        if grading.max_grade > grading.grade:
            head += f"; max grade {grading.max_grade}"
    if not evaluation.data_complete:
        head = f"{_incomplete_summary(evaluation.truncated)} — {head}"
    why = (
        f"Meets grade {grading.grade}: " + "; ".join(grading.drivers) + " (the worst domain "
        "sets the grade)."
        if grading.grade > 0
        else "No ICANS finding in the look-back window."
        if grading.assessed_now
        else "No ICANS assessment charted in the look-back window: ICANS cannot be judged now."
    )
    sections = [
        f"**{system} ICANS grade {grading.grade}** (highest since exposure: {grading.max_grade}"
        + (f", {when(grading.max_grade_at)}" if grading.max_grade_at else "")
        + ")",
        exposure_line(exposure, at),
        why,
        evidence_table(grading.evidence),
    ]
    incomplete = incomplete_note(evaluation.truncated)
    if incomplete:
        sections.insert(0, incomplete)
    sections.extend(f"**Warning:** {w}" for w in grading.warnings)
    sections.append(
        f"**Not attributable to another cause?** {icans_rules.footnotes.not_attributable}"
    )
    sections.extend(icans_management(knowledge, grading, crs_grade))
    child = paediatric_note(evaluation, rules)
    if child:
        sections.append(child)
    note = issues_note(evaluation.issues)
    if note:
        sections.append(note)
    window = rules.icans.windows[exposure.product].window_hours
    sections.append(
        "<sub>" + f"Rule set {knowledge.ruleset.name} {rules.version}; grading {system} ICANS "
        f"(Lee et al., {icans_rules.url}). Look-back: "
        f"{hours(rules.icans.parameters.lookback.total_seconds())} h (configurable; ASTCT is "
        f"silent). ICANS window of {exposure.display}: {window:g} h (rules/icans.yaml)."
        + (
            " Institution settings in force: " + "; ".join(rules.overrides) + "."
            if rules.overrides
            else ""
        )
        + "</sub>"
    )
    info = IcansInfo(
        grade=grading.grade,
        maxGrade=grading.max_grade,
        gradingSystem=system,
        exposure=exposure_info(exposure),
        evidence=tuple(_evidence_info(e) for e in grading.evidence),
        warnings=tuple(grading.warnings),
        lookbackHours=rules.icans.parameters.lookback.total_seconds() / 3600,
        concurrentCrsGrade=crs_grade,
        ruleSetVersion=rules.version,
        evaluatedAt=at.isoformat(),
        dataComplete=evaluation.data_complete,
        maxGradeAt=_iso(grading.max_grade_at),
        encephalopathyTool=grading.encephalopathy_tool,
    )
    by_grade = knowledge.alerting.crs_indicator_by_grade.by_grade
    indicator: Indicator = by_grade[grading.grade]
    if indicator == "info" and (
        not evaluation.data_complete or (not grading.assessed_now and grading.max_grade > 0)
    ):
        indicator = "warning"  # (ICANS seen before and not assessed since is no all-clear)
    return Card(
        uuid=card_id,
        summary=summary_text(head),
        detail="\n\n".join(sections),
        indicator=indicator,
        source=Source(label=f"ICANS decision support ({system} grading)", url=icans_rules.url),
        extension=CardExtension(
            icans=info,
            dataIssues=issue_infos(evaluation.issues),
            incompleteData=incomplete_data(evaluation.truncated),
        ),
    )
