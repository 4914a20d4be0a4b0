"""Synthetic patient trajectories for the replay test: a CAR-T infusion 30 h ago, then
steps that each change something (a fever comes or goes, the blood pressure drops or
recovers, oxygen is started, a vasopressor, a second one, paracetamol), drawn from a
seeded random generator. Each step is written in one transaction with the time it is written,
to the millisecond; a patient's steps are strictly later than each other."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cds import fhirbuild as fb

YESCARTA = ("1987402", "Yescarta (axicabtagene ciloleucel)")
NOREPINEPHRINE = ("7512", "norepinephrine")
PHENYLEPHRINE = ("8163", "phenylephrine")


def timed(resource: dict[str, Any], when: datetime) -> dict[str, Any]:
    """The resource timed to the millisecond (fhirbuild writes whole seconds)."""
    stamp = when.isoformat(timespec="milliseconds")
    if "effectivePeriod" in resource:
        resource["effectivePeriod"]["start"] = stamp
    else:
        resource["effectiveDateTime"] = stamp
    return resource


@dataclass
class Trajectory:
    """One synthetic patient: what was written, and the state the next step starts from."""

    patient_id: str
    rng: random.Random
    written: list[dict[str, Any]] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)  # each step's time, in order
    fever: bool = False
    low_bp: bool = False
    pressors: int = 0
    oxygen: float = 0.0
    antipyretic: bool = False

    def start(self, now: datetime) -> list[dict[str, Any]]:
        """Step 0: the patient, the infusion 30 h ago, a weight and a normal temperature."""
        pid = self.patient_id
        infusion = fb.administration(
            pid,
            now - timedelta(hours=30),
            rxnorm=YESCARTA[0],
            text=YESCARTA[1],
            end=now - timedelta(hours=29, minutes=30),
        )
        resources = [
            fb.patient(pid),
            infusion,
            fb.weight(pid, now - timedelta(hours=31), 72),
            timed(fb.temperature(pid, now, 36.8), now),
        ]
        self.written += resources
        self.times.append(now)
        return resources

    def step(self, now: datetime) -> list[dict[str, Any]]:
        """The next step, timed `now`: one or two changes."""
        pid, rng = self.patient_id, self.rng
        out: list[dict[str, Any]] = []
        for _ in range(rng.choice((1, 1, 2))):
            move = rng.choice(("fever", "fever", "bp", "bp", "oxygen", "pressor", "antipyretic"))
            if (move == "pressor" and self.pressors >= 2) or (
                move == "antipyretic" and self.antipyretic
            ):
                move = "fever"  # given already: every step writes something
            if move == "antipyretic":
                # before any fever it may mask one: hypotension then gives a possible grade
                self.antipyretic = True
                out.append(fb.administration(pid, now, text="paracetamol 1 g"))
            elif move == "fever":
                self.fever = not self.fever
                out.append(fb.temperature(pid, now, 38.0 + rng.random() if self.fever else 37.0))
            elif move == "bp":
                self.low_bp = not self.low_bp
                out.append(fb.systolic(pid, now, 84 if self.low_bp else 118))
            elif move == "oxygen":
                self.oxygen = rng.choice((0.0, 2.0, 8.0))
                out.append(fb.oxygen_flow(pid, now, self.oxygen))
            else:
                code, text = (NOREPINEPHRINE, PHENYLEPHRINE)[self.pressors]
                self.pressors += 1
                out.append(
                    fb.administration(
                        pid, now, rxnorm=code, text=text, period=True, status="in-progress"
                    )
                )
        resources = [timed(r, now) for r in out]
        self.written += resources
        self.times.append(now)
        return resources


def trajectories(count: int, seed: int, prefix: str) -> list[Trajectory]:
    rng = random.Random(seed)
    return [Trajectory(f"{prefix}-{i:03d}", random.Random(rng.random())) for i in range(count)]
