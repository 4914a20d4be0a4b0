"""The last readings a list shows of a patient: temperature, systolic pressure, oxygen.

One function for every list (the watch's census rows, the audit records' facts), so that
the watch list words them alike whichever source a row comes from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class _Measured(Protocol):
    @property
    def concept(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def at(self) -> datetime: ...


class _Supported(Protocol):
    @property
    def device(self) -> str: ...
    @property
    def at(self) -> datetime: ...


@dataclass(frozen=True)
class Reading:
    """A last value and when it was taken (`text`: as shown, e.g. "38.6 °C")."""

    text: str
    at: datetime


# concept -> how its value is shown (the units the facts are normalised to)
FORMS = {"temperature": "{:.1f} °C", "systolic_bp": "{:.0f} mmHg", "oxygen_flow": "{:g} L/min"}


@dataclass(frozen=True)
class LastReadings:
    temperature: Reading | None = None
    systolic: Reading | None = None
    oxygen: Reading | None = None  # the newer of the last flow and the last device

    def json(self) -> dict[str, Any]:
        return {
            name: {"text": r.text, "at": r.at.isoformat()}
            for name, r in (
                ("temperature", self.temperature),
                ("systolic", self.systolic),
                ("oxygen", self.oxygen),
            )
            if r is not None
        }

    @classmethod
    def from_json(cls, data: object) -> LastReadings:
        """As `json` wrote it (anything else: no readings)."""
        if not isinstance(data, dict):
            return cls()

        def reading(name: str) -> Reading | None:
            found = data.get(name)
            if not isinstance(found, dict):
                return None
            return Reading(str(found["text"]), datetime.fromisoformat(str(found["at"])))

        return cls(reading("temperature"), reading("systolic"), reading("oxygen"))


def last_readings(
    measurements: Sequence[_Measured], oxygen: Iterable[_Supported], until: datetime
) -> LastReadings:
    """The last readings taken at or before `until` (`measurements` sorted by time)."""
    last: dict[str, Reading] = {}
    for m in reversed(measurements):
        if m.at <= until and m.concept in FORMS and m.concept not in last:
            last[m.concept] = Reading(FORMS[m.concept].format(m.value), m.at)
            if len(last) == len(FORMS):
                break
    device = max((o for o in oxygen if o.at <= until), key=lambda o: o.at, default=None)
    flow = last.get("oxygen_flow")
    shown = flow
    if device is not None and (flow is None or device.at >= flow.at):
        shown = Reading(device.device, device.at)
    return LastReadings(last.get("temperature"), last.get("systolic_bp"), shown)
