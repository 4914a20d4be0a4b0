"""FHIR date/dateTime/instant text -> timezone-aware instants.

Rules (documented in the README):
- A dateTime with a time and an offset is an instant; compare instants, never wall clocks.
- A time without an offset is invalid FHIR. It is read in the configured time zone
  (setting CRS_ASSUME_TIMEZONE) when one is set, and rejected otherwise.
- A date without a time (2026-11-20, 2026-11, 2026) means the start of that day/month/
  year in the configured time zone, or UTC when none is set.
- A year before 1900 is a placeholder, not a clinical time: rejected.
- A leap second (23:59:60) is read as 23:59:59.999999.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

_DATETIME = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


# A data-quality bound, not a clinical rule: earlier dates are placeholders (0001-01-01),
# and arithmetic on them would overflow.
EARLIEST_YEAR = 1900


class TimeFormatError(ValueError):
    """Text that is not a usable FHIR dateTime."""


def parse_fhir_datetime(text: object, assume: tzinfo | None = None) -> datetime:
    """Parse a FHIR date, dateTime or instant to an aware datetime (see module rules)."""
    if not isinstance(text, str):
        raise TimeFormatError(f"expected a dateTime string, got {type(text).__name__}")
    match = _DATETIME.match(text.strip())
    if match is None:
        raise TimeFormatError(f"{text!r} is not a FHIR dateTime (YYYY-MM-DDThh:mm:ss+zz:zz)")
    parts = match.groupdict()
    if int(parts["year"]) < EARLIEST_YEAR:
        raise TimeFormatError(f"{text!r} is before {EARLIEST_YEAR}: not a plausible clinical time")
    try:
        year = int(parts["year"])
        month = int(parts["month"] or 1)
        day = int(parts["day"] or 1)
        if parts["hour"] is None:
            return datetime(year, month, day, tzinfo=assume or UTC)
        fraction = (parts["fraction"] or "0")[:6].ljust(6, "0")
        second = int(parts["second"] or 0)
        if second == 60:
            # a leap second (FHIR's dateTime allows :60): read as the last instant of its
            # minute that a datetime holds, 59.999999 s, so that nothing charted in it is lost
            second, fraction = 59, "999999"
        naive = datetime(
            year, month, day, int(parts["hour"]), int(parts["minute"]), second, int(fraction)
        )
    except ValueError as exc:
        raise TimeFormatError(f"{text!r}: {exc}") from exc
    tz = parts["tz"]
    if tz is None:
        if assume is None:
            raise TimeFormatError(
                f"{text!r} has a time but no time-zone offset (set CRS_ASSUME_TIMEZONE to "
                "read such times in a known zone)"
            )
        return naive.replace(tzinfo=assume)
    if tz == "Z":
        return naive.replace(tzinfo=UTC)
    sign = 1 if tz[0] == "+" else -1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 14 or minutes > 59:
        raise TimeFormatError(f"{text!r}: offset {tz} out of range")
    offset = timedelta(hours=hours, minutes=minutes) * sign
    return naive.replace(tzinfo=timezone(offset))
