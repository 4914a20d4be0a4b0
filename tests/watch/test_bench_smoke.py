"""The watch's benchmark runs end to end on a tiny census and prints every figure (no
timings asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.watch import main


def test_the_watch_benchmark_prints_every_figure(
    fhir_base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--poll-seconds", "2", "--samples", "3", "--census", "6"]
    assert main([*args, "--fhir-server", fhir_base_url, "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for line in ("polling", "subscriptions", "first look", "nothing new", "10 % new data"):
        assert line in out
    (written,) = tmp_path.glob("watch-*.json")
    figures = json.loads(written.read_text())
    assert [f["mode"] for f in figures["latency"]] == ["polling", "subscriptions"]
    assert all(f["samples"] == 3 and f["missed"] == 0 for f in figures["latency"])
    assert (
        figures["cycle"]["cycleNothingNew"]["fhirQueries"] == 4 * 6
    )  # one search per watched type each
