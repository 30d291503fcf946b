"""The house traders (trading/traders.py): the SDK's built-ins, then ``manage.py run_traders`` running them live
against a live server."""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.utils import timezone
from moltstreet_client import TransportError
from moltstreet_client.runner import LiveResult
from moltstreet_client.strategies import BUILTINS, MarketMaker, Momentum, NoiseTrader, ReferenceLeaner

from agents.models import Agent
from markets.tests.factories import MarketFactory
from trading import traders
from trading.models import Order, Trade

D = Decimal


def test_each_house_trader_runs_an_sdk_built_in_with_its_defaults():
    kinds = {traders.MAKER: MarketMaker, traders.NOISE: NoiseTrader, traders.MOMENTUM: Momentum}
    kinds[traders.LEANER] = ReferenceLeaner
    for kind, cls in kinds.items():
        trader = traders.Trader(f"house-{kind}-1", kind, client=None)
        strategy = trader.make_strategy(markets=6, seed=3)
        assert type(strategy) is cls and BUILTINS[traders.BUILTIN[kind]] is cls
        assert trader.make_strategy(markets=2, seed=9) is strategy, "kept across cycles"
        if kind != traders.NOISE:
            assert strategy.settings == cls.parse_params({}), "the built-in's defaults"
    assert all("Not a real participant" in traders.DESCRIPTIONS[kind] for kind in kinds)


def test_a_noise_trader_keeps_its_pace_whatever_the_number_of_markets():
    one = traders.Trader("house-noise-1", traders.NOISE, client=None, number=1).make_strategy(markets=6, seed=3)
    two = traders.Trader("house-noise-2", traders.NOISE, client=None, number=2).make_strategy(markets=2, seed=3)
    assert (one.tick_interval, two.tick_interval) == (24.0, 8.0)  # about one order every 4 s in all
    assert (one.seed, two.seed) == (4, 5), "each its own repeatable sequence"
    again = traders.Trader("house-noise-1", traders.NOISE, client=None, number=1)
    first = again.make_strategy(markets=6, seed=3)
    assert again.make_strategy(markets=3, seed=3) is first and first.tick_interval == 12.0


def test_the_leaner_trades_only_the_markets_with_a_reference_price():
    desk = traders.Desk([traders.Trader("house-leaner-1", traders.LEANER, client=None)])
    desk.markets = [SimpleNamespace(id="a", reference_price=D("0.4")), SimpleNamespace(id="b", reference_price=None)]
    assert desk._markets_of(desk.traders[0]) == ["a"]
    maker = traders.Trader("house-maker-1", traders.MAKER, client=None)
    assert desk._markets_of(maker) == ["a", "b"]


@pytest.mark.django_db(transaction=True)
def test_run_traders_moves_a_market_through_the_api_and_stops_cleanly(audit_clean):
    """The command against a live server: house agents register over the API and are marked, trades happen, and
    on stop nothing of theirs rests in the book; run again, it reuses the same agents with fresh keys."""
    from testsupport.e2e import daphne_servers, register_agent

    with daphne_servers(1) as [server]:
        creator = Agent.objects.get(name=register_agent(server.url, "question-writer")["name"])
        for question in ("Will the house traders trade?", "Will they stop cleanly?"):
            MarketFactory(creator=creator, question=question, deadline=timezone.now() + timedelta(days=3))
        out = io.StringIO()
        call_command(
            "run_traders", url=server.url, duration=12, seed=3, markets=2, noise_pace=1, report_every=5, stdout=out
        )
        log = out.getvalue()
        house = Agent.objects.filter(is_house=True)
        assert sorted(house.values_list("name", flat=True)) == [
            "house-leaner-1",
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
        assert Agent.objects.filter(is_house=True).count() == 6, again.getvalue()
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


class _GoneRunner:
    """A runner whose server stopped under it: its feed failed for good and its cancel got no answer."""

    def __init__(self):
        self.result = LiveResult("noise", ["m"], timezone.now(), withdrawn=False)

    def run(self):
        raise TransportError("wss://127.0.0.1/ws/agent/: feed lost and 11 connection attempts failed")


def test_a_desk_hands_back_the_traders_whose_orders_it_could_not_withdraw():
    team = [traders.Trader(f"house-noise-{n}", traders.NOISE, client=None, number=n) for n in (1, 2)]
    lines = []
    desk = traders.Desk(team, report=lines.append)
    desk._run(team[0], _GoneRunner())
    assert desk.unwithdrawn() == [team[0]]
    assert "house-noise-1: stopped" in lines[0] and team[0].results[0].withdrawn is False


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
