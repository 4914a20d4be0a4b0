"""What a running service holds: settings, validated knowledge, engine parameters, and
how the card links to its pictures."""

from __future__ import annotations

from dataclasses import dataclass

from cds.knowledge import Knowledge, load_knowledge
from cds.parameters import EngineRules, engine_rules
from cds.settings import Settings
from cds.web.links import CardLinks, card_links


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    knowledge: Knowledge
    rules: EngineRules
    links: CardLinks | None = None  # the CRS card's timeline link (None: no link)

    @classmethod
    def load(cls, settings: Settings | None = None) -> Runtime:
        """Load and validate everything; raises KnowledgeError on a bad rule file."""
        settings = settings or Settings()
        knowledge = load_knowledge(settings.rules_dir, settings.mappings_dir)
        return cls(settings, knowledge, engine_rules(knowledge, settings), card_links(settings))
