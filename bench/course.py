"""Synthetic CRS courses for the pictures' benchmark, tests and screenshots: a CAR-T
infusion followed by q15-minute vital signs (temperature, systolic BP, SpO2, oxygen
flow) with a CRS episode of fever, hypotension on norepinephrine and oxygen, treated with
paracetamol, tocilizumab and dexamethasone. Deterministic (seeded)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds import fhirbuild as fb

Resource = dict[str, Any]
STEP = timedelta(minutes=15)


@dataclass(frozen=True)
class Course:
    """A patient's resources and the time the course is evaluated at."""

    patient_id: str
    observations: list[Resource]
    administrations: list[Resource]
    evaluated_at: datetime

    @property
    def points(self) -> int:
        """Measured values (a q15 round has five)."""
        return sum(
            1
            for o in self.observations
            if o["code"].get("coding", [{}])[0].get("code") != "29463-7"
        )

    def prefetch(self) -> dict[str, Resource]:
        return {
            "patient": fb.patient(self.patient_id),
            "observations": fb.searchset(self.observations),
            "oxygenDevices": fb.searchset([]),
            "medicationAdministrations": fb.searchset(self.administrations),
            "conditions": fb.searchset([]),
            "assessments": fb.searchset([]),
        }

    def hook_body(self, hook_instance: str) -> Resource:
        return {
            "hook": "patient-view",
            "hookInstance": hook_instance,
            "context": {"userId": "Practitioner/bench", "patientId": self.patient_id},
            "prefetch": self.prefetch(),
        }


def crs_course(
    patient_id: str,
    infusion: datetime,
    *,
    days: float = 30.0,
    step: timedelta = STEP,
    crs_day: float = 3.0,
    severity: int = 3,
    seed: int = 13,
) -> Course:
    """Vitals every `step` for `days` after a tisagenlecleucel infusion; from `crs_day` a
    CRS episode reaching `severity` (1 fever, 2 hypotension, 3 a vasopressor), resolving
    four days later. Evaluated at the last round."""
    rng = random.Random(seed)
    observations: list[Resource] = [fb.weight(patient_id, infusion - timedelta(hours=6), 72)]
    rounds = int(days * timedelta(days=1) / step)
    fever = (crs_day, crs_day + 3.5)
    low_bp = (crs_day + 1.0, crs_day + 2.2) if severity >= 2 else (-1.0, -1.0)
    oxygen = (crs_day + 1.0, crs_day + 3.0) if severity >= 2 else (-1.0, -1.0)
    for i in range(rounds + 1):
        at = infusion + i * step
        day = (at - infusion) / timedelta(days=1)
        temp = 36.9 + rng.gauss(0, 0.2) + (1.6 if fever[0] <= day <= fever[1] else 0.0)
        sbp = 121 + rng.gauss(0, 6) - (36 if low_bp[0] <= day <= low_bp[1] else 0)
        flow = 4.0 if oxygen[0] <= day <= oxygen[1] else 0.0
        sat = 97 + rng.gauss(0, 0.8) - (3 if oxygen[0] <= day <= oxygen[1] else 0)
        observations += [
            fb.temperature(patient_id, at, round(temp, 1)),
            fb.systolic(patient_id, at, round(sbp)),
            fb.spo2(patient_id, at, min(100, round(sat))),
            fb.oxygen_flow(patient_id, at, flow),
            fb.observation(
                patient_id,
                at,
                "8478-0",
                "Mean blood pressure",
                round(sbp * 0.72),
                "mmHg",
                ucum="mm[Hg]",
            ),
        ]
    d = timedelta(days=1)
    administrations = [
        fb.administration(
            patient_id,
            infusion,
            end=infusion + timedelta(minutes=30),
            text="Kymriah (tisagenlecleucel) infusion",
        ),
        fb.administration(
            patient_id,
            infusion + (crs_day + 0.1) * d,
            rxnorm="161",
            text="paracetamol 1 g",
            dose=(1, "g"),
        ),
    ]
    if severity >= 2:
        administrations.append(
            fb.administration(
                patient_id,
                infusion + (crs_day + 1.05) * d,
                rxnorm="612865",
                text="tocilizumab 576 mg IV",
                dose=(576, "mg"),
            )
        )
    if severity >= 3:
        start = infusion + (crs_day + 1.2) * d
        end = infusion + (crs_day + 2.3) * d
        evaluated = infusion + days * d
        administrations += [
            fb.administration(
                patient_id,
                start,
                end=end if end < evaluated else None,
                period=True,
                rxnorm="7512",
                text="norepinephrine 0.05 mcg/kg/min",
            ),
            fb.administration(
                patient_id,
                infusion + (crs_day + 1.6) * d,
                rxnorm="3264",
                text="dexamethasone 10 mg IV",
                dose=(10, "mg"),
            ),
        ]
    return Course(patient_id, observations, administrations, infusion + rounds * step)
