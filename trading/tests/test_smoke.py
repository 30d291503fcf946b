from decimal import Decimal

from trading.orders import order_place


def test_it_mints_a_pair_when_a_yes_buyer_meets_a_no_buyer(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.60", size=10)
    result = order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price="0.45", size=4)
    # At the maker's price: YES 0.60 (Bob pays 0.40 per NO), not the taker's 0.45 NO (YES 0.55).
    assert [(t.price, t.size, t.kind) for t in result.trades] == [(Decimal("0.60"), 4, "mint")]
    audit_clean()
