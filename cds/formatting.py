"""How numbers and times read on a card (one place for every module that writes text)."""

from __future__ import annotations

from datetime import datetime


def when(moment: datetime) -> str:
    """A time as clinicians read it, with its offset: 2026-11-20 08:00 +01:00 (without
    one for a time that has none). Made of `isoformat` (2026-11-20 08:00+01:00), not
    strftime: every evidence row of every card shows a time, and strftime, twice, cost
    several times as much."""
    iso = moment.isoformat(" ", "minutes")
    return iso if len(iso) == 16 else f"{iso[:16]} {iso[16:]}"


def fmt_mg(mg: float) -> str:
    """800 → "800", 562.5 → "562.5" (one decimal at most)."""
    return f"{mg:.1f}".rstrip("0").rstrip(".")


def fmt_value(value: float) -> str:
    """38.0 → "38", 38.5 → "38.5", 37.99 → "37.99", 38.888889 (102 °F) → "38.89": a
    measured value as the evidence table shows it, to two decimals (one rounded a value
    below a threshold onto it: 37.99 °C showed as "38" beside "no fever ≥ 38.0 °C")."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"


def hours(seconds: float) -> str:
    """3600 → "1", 5400 → "1.5": a duration in hours."""
    return f"{seconds / 3600:g}"
