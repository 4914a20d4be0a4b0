"""Synthetic CRS patients with their expected outcomes (see scenarios.yaml)."""

from __future__ import annotations

from cds.scenarios.library import Scenario, ScenarioError, get, library

__all__ = ["Scenario", "ScenarioError", "get", "library"]
