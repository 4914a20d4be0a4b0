"""What a running service holds: settings, validated knowledge, engine parameters."""

from __future__ import annotations

from dataclasses import dataclass

from cds.knowledge import Knowledge, load_knowledge
from cds.parameters import EngineRules, engine_rules
from cds.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    knowledge: Knowledge
    rules: EngineRules

    @classmethod
    def load(cls, settings: Settings | None = None) -> Runtime:
        """Load and validate everything; raises KnowledgeError on a bad rule file."""
        settings = settings or Settings()
        knowledge = load_knowledge(settings.rules_dir, settings.mappings_dir)
        return cls(settings, knowledge, engine_rules(knowledge, settings))
