"""The benchmark runs end to end on a tiny payload and prints every figure (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main


def test_benchmark_prints_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "--sizes",
                "12,30",
                "--reps",
                "3",
                "--rss-requests",
                "20",
                "--results-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out

    for variant in ("crs-monitor", "floor", "naive", "engine"):
        for size in ("12", "30"):
            assert any(line.split()[:2] == [size, variant] for line in out.splitlines()), (
                f"no latency row for {variant} at {size}"
            )
    for header in ("p50 ms", "p95 ms", "p99 ms", "req/s"):
        assert header in out
    for figure in (
        "crs-monitor/floor at 30",
        "naive/crs-monitor at 30",
        "crs-monitor latency(30)/latency(12)",
        "peak RSS",
        "RSS growth over 20 requests",
        "targets:",
    ):
        assert figure in out, figure

    written = list(tmp_path.glob("*.json"))
    assert len(written) == 1
    figures = json.loads(written[0].read_text())
    assert set(figures["latency"]) >= {"crs-monitor", "floor", "naive", "engine"}
    assert figures["memory"]["service"]["peak_rss_mib"] > 0
    assert len(figures["rss_growth"]["samples_mib"]) >= 2
    assert all(t["value"] is not None for t in figures["targets"])
