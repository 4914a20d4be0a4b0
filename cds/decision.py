"""Decide: the typed outcome of a hook call, before it is suppressed, recorded and
rendered. Each card carries what later steps need to know of it (its kind, grade and
exposure), so that nothing downstream reads it back out of the card's JSON."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from cds.extensions import ResponseExtension
from cds.protocol import Card, CdsResponse

CardKind = Literal[
    "crs", "icans", "risk-scores", "order-check", "unreadable-order", "data-incomplete"
]


@dataclass(frozen=True)
class DecidedCard:
    """A card and what it is about."""

    card: Card
    kind: CardKind
    grade: int | None = None  # the ASTCT CRS grade (CRS cards only)
    possible_grade: int | None = None  # with fever possibly masked by premedication
    exposure: str | None = None  # "product@instant": the exposure a CRS card is about
    acknowledged: bool = False  # shown quietly after a clinician acted on it
    icans_grade: int | None = None  # the ASTCT ICANS grade (ICANS cards)
    # the grade rests on data not charted: never quieted by an acknowledgement (it alerts
    # until they are charted)
    data_missing: bool = False

    @property
    def alert_grade(self) -> int | None:
        """The grade the card alerts at: the CRS grade, or the possible grade if higher; of
        an ICANS card its ICANS grade; None for a card without a grade (an order check)."""
        if self.grade is None:
            return self.icans_grade
        return max(self.grade, self.possible_grade or 0)


@dataclass(frozen=True)
class Decision:
    """The cards of one hook call, and the response's own extension (data issues when
    no card carries them)."""

    cards: tuple[DecidedCard, ...] = ()
    extension: ResponseExtension | None = None

    def with_cards(self, cards: tuple[DecidedCard, ...]) -> Decision:
        return replace(self, cards=cards)

    def response(self) -> CdsResponse:
        """The CDS Hooks response."""
        return CdsResponse(cards=tuple(c.card for c in self.cards), extension=self.extension)

    @property
    def grades(self) -> list[int]:
        """The CRS grades decided (for logs and metrics)."""
        return [c.grade for c in self.cards if c.kind == "crs" and c.grade is not None]

    @property
    def icans_grades(self) -> list[int]:
        """The ICANS grades decided (for logs and metrics)."""
        return [c.icans_grade for c in self.cards if c.icans_grade is not None]
