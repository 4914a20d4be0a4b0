"""The signed tokens: what they grant, for how long, and for which purpose only."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cds.web.links import Signer, TokenProblem, TokenRefused
from tests.factories import AT

SIGNER = Signer(b"s" * 32)


def test_a_card_token_grants_its_card_until_it_expires() -> None:
    token = SIGNER.card_token("card-1", AT, timedelta(minutes=15))
    assert SIGNER.verify("link", token, AT + timedelta(minutes=14), "card").subject == "card-1"
    with pytest.raises(TokenRefused) as refused:
        SIGNER.verify("link", token, AT + timedelta(minutes=15), "card")
    assert refused.value.problem is TokenProblem.EXPIRED


def test_a_session_cookie_never_passes_for_a_link_nor_another_keys_token() -> None:
    session = SIGNER.session_token("someone", AT, timedelta(hours=8))
    with pytest.raises(TokenRefused) as refused:
        SIGNER.verify("link", session, AT, "card")
    assert refused.value.problem is TokenProblem.TAMPERED  # another purpose, another key
    other = Signer(b"o" * 32).card_token("card-1", AT, timedelta(minutes=15))
    with pytest.raises(TokenRefused):
        SIGNER.verify("link", other, AT, "card")


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Signer(b"short")
