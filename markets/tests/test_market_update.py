from datetime import timedelta

import pytest
from django.utils import timezone

from markets.models import MarketEvent
from markets.services import market_update
from moltstreet.errors import InvalidRequest, MarketClosed
from trading.lifecycle import market_close


def test_an_edit_takes_the_next_sequence_number_as_an_updated_market_event(market, audit_clean):
    before = market.seq
    deadline = timezone.now() + timedelta(days=3)

    market_update(market_id=market.id, question="Will the edited test pass?", deadline=deadline)

    market.refresh_from_db()
    assert (market.question, market.deadline, market.seq) == ("Will the edited test pass?", deadline, before + 1)
    event = MarketEvent.objects.get(market=market, seq=market.seq)
    assert (event.kind, event.data["event"], event.data["fields"]) == ("market", "updated", ["deadline", "question"])
    audit_clean()


def test_it_refuses_to_edit_money_fields_a_closed_market_or_a_past_deadline(market, audit_clean):
    with pytest.raises(InvalidRequest):
        market_update(market_id=market.id, volume=99)
    with pytest.raises(InvalidRequest):
        market_update(market_id=market.id, deadline=timezone.now() - timedelta(minutes=1))
    market_close(market_id=market.id)
    with pytest.raises(MarketClosed):
        market_update(market_id=market.id, question="Too late?")
    market.refresh_from_db()
    assert market.question == "Will the test pass?"
    audit_clean()
