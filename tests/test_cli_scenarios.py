"""`crs-cds evaluate` on the hand-made bundles in tests/scenarios/ (fixed times)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cds.cli import app

HERE = Path(__file__).parent / "scenarios"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((HERE / "expected.yaml").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_evaluate_bundle(name: str) -> None:
    expected = EXPECTED[name]
    result = CliRunner().invoke(
        app, ["evaluate", str(HERE / f"{name}.json"), "--at", expected["at"]]
    )
    assert result.exit_code == 0, result.output
    (card,) = json.loads(result.output)["cards"]
    crs = card["extension"]["crs"]
    assert crs["grade"] == expected["grade"]
    assert crs["maxGrade"] == expected["maxGrade"]
    assert crs["exposure"]["product"] == expected["product"]
    assert len(card["extension"].get("dataIssues", [])) == expected["dataIssues"]
