"""Latency summaries: percentiles and request rate from a list of durations."""

from __future__ import annotations

import math
from dataclasses import dataclass


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Latency of one variant at one payload size, in milliseconds."""

    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    req_per_s: float

    @classmethod
    def of(cls, seconds: list[float]) -> Summary:
        ordered = sorted(seconds)
        total = sum(ordered)
        return cls(
            n=len(ordered),
            p50_ms=percentile(ordered, 50) * 1000,
            p95_ms=percentile(ordered, 95) * 1000,
            p99_ms=percentile(ordered, 99) * 1000,
            mean_ms=total / len(ordered) * 1000 if ordered else math.nan,
            req_per_s=len(ordered) / total if total > 0 else math.nan,
        )

    def as_json(self) -> dict[str, float]:
        return {
            "n": self.n,
            "p50_ms": round(self.p50_ms, 4),
            "p95_ms": round(self.p95_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "mean_ms": round(self.mean_ms, 4),
            "req_per_s": round(self.req_per_s, 2),
        }
