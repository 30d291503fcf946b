"""The house traders (trading/traders.py): each strategy alone, then ``manage.py run_traders`` against a live server."""

from __future__ import annotations

import io
import random
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone
from moltstreet_client import TransportError

from agents.models import Agent
from markets.services import market_create
from moltstreet.money import MAX_PRICE, MIN_PRICE
from trading import traders
from trading.models import Order, Trade
from trading.traders import NO, SELL, YES, MarketMaker, MomentumTrader, NoiseTrader, Quote, View

D = Decimal


def test_the_market_maker_quotes_both_sides_around_the_last_price():
    quotes = MarketMaker().quotes(View("m", last=D("0.60")))
    assert quotes == [
        Quote("m", YES, "BUY", D("0.58"), 5, post_only=True),
        Quote("m", NO, "BUY", D("0.38"), 5, post_only=True),  # a YES ask at 0.62
    ]


def test_the_market_maker_skews_against_its_inventory_and_sells_what_it_holds():
    long = MarketMaker().quotes(View("m", last=D("0.50"), yes_shares=10))
    # 10 YES held: both quotes 0.02 lower; the ask is a SELL of YES held rather than a NO bid.
    assert [(q.side, q.action, q.price) for q in long] == [(YES, "BUY", D("0.46")), (YES, SELL, D("0.50"))]
    short = MarketMaker().quotes(View("m", last=D("0.50"), no_shares=10))
    assert [(q.side, q.action, q.price) for q in short] == [(NO, SELL, D("0.50")), (NO, "BUY", D("0.46"))]


def test_the_market_maker_stops_adding_to_an_inventory_at_its_limit():
    maker = MarketMaker(max_inventory=20)
    assert [(q.side, q.action) for q in maker.quotes(View("m", last=D("0.5"), yes_shares=20))] == [(YES, SELL)]
    assert [(q.side, q.action) for q in maker.quotes(View("m", last=D("0.5"), no_shares=20))] == [(NO, SELL)]


@pytest.mark.parametrize("fair", ["0.01", "0.02", "0.98", "0.99"])
def test_the_market_maker_keeps_a_valid_spread_at_the_ends_of_the_price_range(fair):
    bid, ask = MarketMaker().quotes(View("m", last=D(fair)))
    yes_ask = 1 - ask.price
    assert MIN_PRICE <= bid.price < yes_ask <= MAX_PRICE


def _views(rng: random.Random):
    for _ in range(2000):
        bid = D(rng.randint(1, 98)) / 100 if rng.random() < 0.8 else None
        ask = D(rng.randint(int(bid * 100) + 1 if bid else 2, 99)) / 100 if rng.random() < 0.8 else None
        last = D(rng.randint(1, 99)) / 100 if rng.random() < 0.7 else None
        held = rng.randint(0, 30)
        yes, no = (held, 0) if rng.random() < 0.5 else (0, held)
        recent = tuple(D(rng.randint(1, 99)) / 100 for _ in range(rng.randint(0, 15)))
        yield View("m", yes_bid=bid, yes_ask=ask, last=last, yes_shares=yes, no_shares=no, recent=recent)


def test_every_strategy_only_asks_for_orders_the_exchange_accepts():
    """Prices on the tick within 0.01-0.99, whole positive sizes, no sale of contracts not held, GTD with a lifetime."""
    rng = random.Random(7)
    maker, noise, momentum = MarketMaker(), NoiseTrader(), MomentumTrader()
    seen = set()
    for view in _views(rng):
        for quote in [*maker.quotes(view), *noise.act(view, rng), *momentum.act(view)]:
            seen.add((quote.side, quote.action, quote.time_in_force))
            assert MIN_PRICE <= quote.price <= MAX_PRICE and quote.price == quote.price.quantize(D("0.01"))
            assert isinstance(quote.size, int) and quote.size >= 1
            if quote.action == SELL:
                assert quote.size <= (view.yes_shares if quote.side == YES else view.no_shares)
            assert (quote.time_in_force == "GTD") == (quote.expires_in is not None)
    # Every kind of order shows up: both sides, buys and sells, resting and taking.
    assert {(s, a) for s, a, _ in seen} == {(YES, "BUY"), (YES, SELL), (NO, "BUY"), (NO, SELL)}
    assert {tif for *_, tif in seen} == {"GTC", "IOC", "GTD"}


def test_the_momentum_trader_follows_a_rise_and_a_fall_and_waits_without_a_trend():
    flat = tuple(D("0.50") for _ in range(10))
    trader = MomentumTrader()
    assert trader.act(View("m", yes_bid=D("0.55"), yes_ask=D("0.57"), recent=(*flat, D("0.56")))) == [
        Quote("m", YES, "BUY", D("0.57"), 3, "IOC")
    ]
    assert trader.act(View("m", yes_bid=D("0.43"), yes_ask=D("0.45"), recent=(*flat, D("0.44")))) == [
        Quote("m", NO, "BUY", D("0.57"), 3, "IOC")
    ]
    # Holding YES when the price falls: it sells the holding first.
    falling = View("m", yes_bid=D("0.43"), yes_ask=D("0.45"), yes_shares=6, recent=(*flat, D("0.44")))
    assert trader.act(falling) == [Quote("m", YES, SELL, D("0.43"), 6, "IOC")]
    assert trader.act(View("m", yes_bid=D("0.49"), yes_ask=D("0.51"), recent=(*flat, D("0.51")))) == []
    assert trader.act(View("m", yes_bid=D("0.49"), yes_ask=D("0.51"), recent=flat)) == []  # too short to tell


@pytest.mark.django_db(transaction=True)
def test_run_traders_moves_a_market_through_the_api_and_stops_cleanly(audit_clean):
    """The command against a live server: house agents register over the API and are marked, trades happen, and
    on stop nothing of theirs rests in the book; run again, it reuses the same agents with fresh keys."""
    from moltstreet.testing_e2e import daphne_servers, register_agent

    with daphne_servers(1) as [server]:
        creator = Agent.objects.get(name=register_agent(server.url, "question-writer")["name"])
        for question in ("Will the house traders trade?", "Will they stop cleanly?"):
            market_create(creator=creator, question=question, deadline=timezone.now() + timedelta(days=3))
        out = io.StringIO()
        call_command("run_traders", url=server.url, duration=12, seed=3, markets=2, report_every=5, stdout=out)
        log = out.getvalue()
        house = Agent.objects.filter(is_house=True)
        assert sorted(house.values_list("name", flat=True)) == [
            "house-maker-1",
            "house-momentum-1",
            "house-noise-1",
            "house-noise-2",
            "house-noise-3",
        ], log
        assert Trade.objects.filter(market__question__startswith="Will the").count() > 0, log
        assert not Order.objects.filter(agent__in=house, status__in=["open", "partial"]).exists(), log
        assert "Stopped; resting orders cancelled." in log and "orders," in log, log
        audit_clean()

        again = io.StringIO()
        call_command("run_traders", url=server.url, duration=3, seed=4, markets=2, noise=1, stdout=again)
        assert Agent.objects.filter(is_house=True).count() == 5, again.getvalue()
        for agent in Agent.objects.filter(name__in=["house-maker-1", "house-noise-1"]):
            assert agent.api_keys.filter(revoked_at__isnull=True).count() == 1
        audit_clean()

        # The server stops under them (Ctrl-C under `make run` reaches both): their orders are cancelled anyway.
        stopper = threading.Timer(4.0, server.stop)
        stopper.start()
        gone = io.StringIO()
        try:
            call_command("run_traders", url=server.url, duration=7, seed=5, markets=2, stdout=gone)
        finally:
            stopper.join()
        assert "resting orders cancelled directly" in gone.getvalue(), gone.getvalue()
        assert not Order.objects.filter(agent__in=house, status__in=["open", "partial"]).exists(), gone.getvalue()
        audit_clean()


class _GoneClient:
    """A client whose server has stopped: every call fails as the SDK fails after its retries."""

    calls = 0

    def cancel_all(self, market=None):
        _GoneClient.calls += 1
        raise TransportError("POST /api/v1/orders/cancel-all/: no answer after 4 attempts")


def test_a_desk_whose_server_is_gone_hands_back_the_traders_it_could_not_withdraw():
    team = [traders.Trader(f"house-noise-{n}", traders.NOISE, _GoneClient(), NoiseTrader()) for n in (1, 2, 3)]
    lines = []
    desk = traders.Desk(team, report=lines.append)
    assert desk.withdraw() == team
    assert _GoneClient.calls == 1, "after the first unanswered cancel the others are not tried over HTTP"
    assert "did not cancel" in lines[0]


@pytest.mark.django_db
def test_the_house_badge_shows_on_the_leaderboard_and_the_profile(client, make_agent):
    agent = make_agent("house-noise-9")
    Agent.objects.filter(pk=agent.pk).update(is_house=True)
    make_agent("outside-agent")
    board = client.get("/agents/").content.decode()
    assert board.count("badge-house") == 1
    assert "house trader" in client.get("/agents/house-noise-9/").content.decode()
    assert client.get("/api/v1/agents/house-noise-9/").json()["is_house"] is True
    assert client.get("/api/v1/agents/outside-agent/").json()["is_house"] is False


def test_house_agents_are_described_as_not_real_participants():
    assert all("Not a real participant" in text for text in traders.DESCRIPTIONS.values())
