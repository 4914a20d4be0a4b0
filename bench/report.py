"""The printed table and the JSON file: the same figures, for people and for diffs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

VARIANT_ORDER = (
    "crs-monitor",
    "crs-order-sign",
    "crs-monitor@pg",
    "crs-order-sign@pg",
    "floor",
    "naive",
    "engine",
)
VARIANT_NOTE = {
    "crs-monitor": "service, records in SQLite",
    "crs-order-sign": "service, records in SQLite",
    "crs-monitor@pg": "service, records in PostgreSQL",
    "crs-order-sign@pg": "service, records in PostgreSQL",
    "floor": "parse JSON, no cards",
    "naive": "fhir.resources + evaluate",
    "engine": "facts -> grade, in-process",
}


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(figures: dict[str, Any]) -> str:
    """The benchmark report as text: latency table, ratios, memory, targets."""
    lines: list[str] = []
    lines.append(
        f"CRS CDS benchmark, {figures['started']} (python {figures['machine']['python']}, "
        f"{figures['machine']['cpus']} CPUs, {figures['seconds']:.0f} s)"
    )
    lines.append(
        "payloads: "
        + "; ".join(
            f"{p['resources']:,} resources = {p['hours']:g} h, {p['bytes'] / 1024:,.0f} KiB"
            for p in figures["payloads"]
        )
    )
    lines.append("")
    header = (
        f"{'resources':>9}  {'variant':<18} {'what':<30} {'n':>5} {'p50 ms':>9} "
        f"{'p95 ms':>9} {'p99 ms':>9} {'req/s':>9}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    latency = figures["latency"]
    for size in figures["options"]["sizes"]:
        for variant in VARIANT_ORDER:
            s = latency.get(variant, {}).get(str(size))
            if s is None:
                continue
            lines.append(
                f"{size:>9,}  {variant:<18} {VARIANT_NOTE[variant]:<30} {s['n']:>5} "
                f"{s['p50_ms']:>9.3f} {s['p95_ms']:>9.3f} {s['p99_ms']:>9.3f} "
                f"{s['req_per_s']:>9.1f}"
            )
    lines.append("")
    lines.append("ratios (p50 / p99):")
    for name, value in figures["ratios"].items():
        if "p50" in value:
            lines.append(f"  {name:<44} {_num(value['p50'])} / {_num(value['p99'])}")
        else:
            for size, pair in value.items():
                label = f"{name} at {int(size):,}"
                lines.append(f"  {label:<44} {_num(pair['p50'])} / {_num(pair['p99'])}")
    lines.append("")
    lines.append("one audit record write (in-process, facts already encoded):")
    for db, s in figures.get("record_write", {}).items():
        lines.append(
            f"  {db:<11} p50 {s['p50_ms']:.3f} ms   p95 {s['p95_ms']:.3f} ms   p99 "
            f"{s['p99_ms']:.3f} ms"
        )
    lines.append("")
    lines.append("memory of the server processes (MiB):")
    for name, mem in figures["memory"].items():
        lines.append(
            f"  {name:<8} peak RSS {mem['peak_rss_mib']:>8.1f}   RSS {mem['rss_mib']:>8.1f}"
        )
    growth = figures["rss_growth"]
    samples = ", ".join(f"{m:.1f}" for _, m in growth["samples_mib"])
    lines.append(
        f"  RSS growth over {growth['requests']:,} requests of {growth['resources']:,} "
        f"resources: {_num(growth['growth_mib'])} MiB (samples: {samples})"
    )
    lines.append("")
    lines.append("targets:")
    for t in figures["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"  {t['target']:<52} {_num(t['value']):>8}  {t['limit']:<8} {verdict}")
    for note in figures["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def write_json(figures: dict[str, Any], directory: Path) -> Path:
    """Write the figures to `directory`/<timestamp>.json and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = figures["started"].replace(":", "").replace("-", "").split(".")[0].replace("+0000", "Z")
    path = directory / f"{stamp}.json"
    path.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return path
