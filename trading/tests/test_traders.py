"""The house traders (trading/traders.py): the SDK's built-ins, then ``manage.py run_traders`` running them live
against a live server; the house market maker's batch quotes and dead-man's switch."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from moltstreet_client import Client, TransportError
from moltstreet_client.runner import LiveResult
from moltstreet_client.strategies import BUILTINS, MarketMaker, Momentum, NoiseTrader, ReferenceLeaner

from agents.models import Agent
from markets.tests.factories import MarketFactory
from moltstreet.serving import server_env
from testsupport.e2e import BASE_DIR
from trading import traders
from trading.heartbeat import heartbeats_expire_due
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
        maker = Agent.objects.get(name="house-maker-1")
        assert (maker.heartbeat_timeout, maker.heartbeat_deadline) == (None, None), "a clean stop disarms its switch"
        assert Order.objects.filter(agent=maker, cancel_reason="user").exists(), log
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


# --------------------------------------------------------------------------------------------------------------------
# The house market maker: batch quotes and the dead-man's switch

RESTING = ("open", "partial")
STEP = 20.0  # seconds any one step may take


def _until(check: Callable[[], Any], timeout: float = STEP) -> Any:
    """``check()`` once it is truthy (polled every 0.1 s, at most ``timeout`` seconds), else its last value."""
    deadline = timezone.now() + timedelta(seconds=timeout)
    while not (value := check()) and timezone.now() < deadline:
        threading.Event().wait(0.1)
    return value


def _quotes(name: str) -> list[Order]:
    return list(Order.objects.filter(agent__name=name, status__in=RESTING).order_by("created_at"))


def _house_maker(url: str) -> tuple[traders.Trader, list[tuple[str, str]]]:
    """``house-maker-1`` registered over the API, and the list its client's requests go to (method, path)."""
    client = Client(url, trust_env=False)
    client.register("house-maker-1", traders.DESCRIPTIONS[traders.MAKER])
    sent: list[tuple[str, str]] = []
    client._http.event_hooks = {"request": [lambda request: sent.append((request.method, request.url.path))]}
    return traders.Trader("house-maker-1", traders.MAKER, client), sent


def _run_desk(desk: traders.Desk) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=desk.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.django_db(transaction=True)
def test_the_house_market_maker_quotes_in_batches_under_an_armed_switch_and_disarms_on_a_clean_stop(audit_clean):
    from testsupport.e2e import daphne_servers

    with daphne_servers(1) as [server]:
        market = MarketFactory(question="Will the house maker batch its quotes?")
        maker, sent = _house_maker(server.url)
        taker = Client(server.url, trust_env=False)
        taker.register("taker-of-quotes", "Sells into the house maker's bid.")
        desk = traders.Desk([maker], markets=1, refresh=300.0)
        stop, thread = _run_desk(desk)
        try:
            first = _until(lambda: len(quotes := _quotes("house-maker-1")) == 2 and quotes)
            assert first, sent
            agent = Agent.objects.get(name="house-maker-1")
            assert agent.heartbeat_timeout == traders.MAKER_HEARTBEAT == 30
            assert timezone.now() < agent.heartbeat_deadline <= timezone.now() + timedelta(seconds=30)
            # Sell into its bid (YES 0.48): long 5, it requotes, offering the YES it now holds.
            taker.place_order(market.id, "NO", "BUY", "0.52", 5)
            moved = _until(lambda: any(o.action == "SELL" for o in _quotes("house-maker-1")))
            assert moved, [(o.side, o.action, o.price) for o in _quotes("house-maker-1")]
        finally:
            stop.set()
            thread.join(STEP)
        assert not thread.is_alive()

        writes = [f"{method} {path}" for method, path in sent if method != "GET"]
        assert writes.count("POST /api/v1/orders/batch/") >= 2 and "POST /api/v1/orders/batch-cancel/" in writes
        assert not [w for w in writes if w == "POST /api/v1/orders/" or w.startswith("DELETE /api/v1/orders/")]
        assert writes[0] == "POST /api/v1/agents/me/heartbeat/", "armed before the first quote"
        assert writes[-2:] == ["POST /api/v1/orders/cancel-all/", "POST /api/v1/agents/me/heartbeat/"]
        agent.refresh_from_db()
        assert (agent.heartbeat_timeout, agent.heartbeat_deadline) == (None, None), "disarmed on the way out"
        assert _quotes("house-maker-1") == []
        ended = Order.objects.filter(agent=agent).exclude(status__in=RESTING)
        assert not ended.filter(cancel_reason="heartbeat_expired").exists()
        [result] = maker.results
        assert result.withdrawn is True and result.refusals == {} and result.heartbeats >= 1
        maker.client.close()
        taker.close()
        audit_clean()


@pytest.mark.django_db(transaction=True)
def test_a_house_market_maker_whose_switch_expired_arms_it_again_and_quotes_again(audit_clean):
    """Its loop stalled past the deadline: an order refused ``heartbeat_expired`` makes it heartbeat at once (the late
    heartbeat fires the switch, then arms it) and quote again; the scheduler firing the switch first does too."""
    from testsupport.e2e import daphne_servers

    with daphne_servers(1) as [server]:
        market = MarketFactory(question="Will the house maker survive a stall?")
        maker, _sent = _house_maker(server.url)
        other = Client(server.url, trust_env=False)
        other.register("bidder-in-between", "Moves the book under the house maker.")
        # A timeout long enough that no periodic heartbeat comes during the test: only the one the refusal causes.
        desk = traders.Desk([maker], markets=1, refresh=300.0, maker_heartbeat=300)
        stop, thread = _run_desk(desk)
        try:
            first = _until(lambda: len(quotes := _quotes("house-maker-1")) == 2 and quotes)
            assert first
            bid = next(o for o in first if o.side == "YES")
            # Its loop "stalled" past the deadline, and the scheduler has not fired the switch yet.
            Agent.objects.filter(name="house-maker-1").update(heartbeat_deadline=timezone.now() - timedelta(seconds=1))
            # A bid between its quotes moves the mid: it requotes its ask, and the new ask is refused.
            other.place_order(market.id, "YES", "BUY", "0.49", 1)

            def quoting_again() -> list[Order]:
                quotes = _quotes("house-maker-1")
                return quotes if len(quotes) == 2 and not {o.id for o in quotes} & {o.id for o in first} else []

            second = _until(quoting_again)
            assert second, [(o.side, o.action, o.price) for o in _quotes("house-maker-1")]
            agent = Agent.objects.get(name="house-maker-1")
            assert agent.heartbeat_deadline > timezone.now() + timedelta(seconds=200), "armed again"
            bid.refresh_from_db()
            assert (bid.status, bid.cancel_reason) == ("cancelled", "heartbeat_expired"), "the late heartbeat fired it"

            # Stalled again, and this time the scheduler fires the switch first: the private feed tells the runner.
            agent.refresh_from_db()
            fired_at = timezone.now()
            assert heartbeats_expire_due(now=agent.heartbeat_deadline + timedelta(seconds=1)) == 1
            assert not Order.objects.filter(agent=agent, status__in=RESTING, created_at__lt=fired_at).exists()
            event = agent.feed_events.filter(kind="heartbeat").latest("seq")
            assert event.data["event"] == "expired"
            assert set(
                Order.objects.filter(id__in=event.data["cancelled"]).values_list("cancel_reason", flat=True)
            ) <= {"heartbeat_expired"}
            third = _until(lambda: len([o for o in _quotes("house-maker-1") if o.created_at > fired_at]) == 2)
            assert third, [(o.side, o.action, o.price) for o in _quotes("house-maker-1")]
            # Its book messages may come before the feed's word of the switch: armed again once that comes.
            armed = _until(lambda: Agent.objects.get(name="house-maker-1").heartbeat_deadline)
            assert armed and armed > timezone.now() + timedelta(seconds=200), "armed again"
        finally:
            stop.set()
            thread.join(STEP)
        [result] = maker.results
        assert result.refusals.get("heartbeat_expired", 0) >= 1 and set(result.refusals) == {"heartbeat_expired"}
        assert result.heartbeats == 3, "armed at the start, then once for the refusal, once after the scheduler"
        assert result.withdrawn is True and _quotes("house-maker-1") == []
        agent.refresh_from_db()
        assert agent.heartbeat_deadline is None
        maker.client.close()
        other.close()
        audit_clean()


@pytest.mark.django_db(transaction=True)
def test_a_killed_house_market_maker_has_its_quotes_cancelled_once_its_switch_expires(audit_clean):
    """``run_traders`` killed (SIGKILL: no cleanup at all) leaves the maker's quotes in the book, armed: when the
    scheduler finds the switch past its deadline, they are cancelled (reason ``heartbeat_expired``)."""
    from testsupport.e2e import daphne_servers

    with daphne_servers(1) as [server]:
        MarketFactory(question="Will the house maker's quotes outlive it?")
        command = [sys.executable, "manage.py", "run_traders", "--url", server.url, "--makers", "1", "--noise", "0"]
        command += ["--momentum", "0", "--leaners", "0", "--markets", "1", "--top-up", "0", "--wait", "20"]
        process = subprocess.Popen(  # noqa: S603  (this interpreter, our own command)
            command, cwd=BASE_DIR, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            quotes = _until(lambda: len(found := _quotes("house-maker-1")) == 2 and found, timeout=60.0)
            assert quotes, process.poll()
            agent = Agent.objects.get(name="house-maker-1")
            assert agent.is_house and agent.heartbeat_timeout == 30
            assert agent.heartbeat_deadline > timezone.now()
        finally:
            process.kill()
            output = process.communicate(timeout=STEP)[0].decode()
        assert len(_quotes("house-maker-1")) == 2, "killed: nothing withdrew its quotes"
        agent.refresh_from_db()
        deadline = agent.heartbeat_deadline
        assert deadline is not None and agent.heartbeat_timeout == 30, output

        assert heartbeats_expire_due(now=deadline - timedelta(seconds=1)) == 0, "not before the deadline"
        assert len(_quotes("house-maker-1")) == 2
        assert heartbeats_expire_due(now=deadline + timedelta(seconds=1)) == 1
        assert _quotes("house-maker-1") == []
        for quote in quotes:
            quote.refresh_from_db()
            assert (quote.status, quote.cancel_reason) == ("cancelled", "heartbeat_expired")
        agent.refresh_from_db()
        assert (agent.heartbeat_timeout, agent.heartbeat_deadline) == (None, None), "the switch disarms as it fires"
        event = agent.feed_events.filter(kind="heartbeat").get()
        assert event.data["event"] == "expired" and sorted(event.data["cancelled"]) == sorted(str(q.id) for q in quotes)
        audit_clean()
