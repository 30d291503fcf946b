"""The source poller (DESIGN section 10; trading/poller.py): feeds import real markets from recorded responses of
Kalshi, Polymarket and Manifold served by a local server (markets/tests/source_server.py), keep their prices as
snapshots, close and resolve them as the source does, and survive a source that fails. The audit is clean after
every test that moves anything.

Where a recording is missing for a case, the test derives it from a recorded response and says what it changed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from agents.models import Agent
from markets.models import Feed, Market, MarketEvent, MarketSnapshot, Resolution
from markets.tests.factories import FeedFactory, ForecastFactory, ImportedMarketFactory
from markets.tests.source_server import GAMMA, KALSHI, MANIFOLD, Reply, SourceServer, down
from moltstreet.singleton import SingletonLock
from testsupport.api import API, api_client, operator_resolver, place
from trading.audit import run_audit
from trading.management.commands.run_poller import LOCK_NAME
from trading.poller import feed_pass, poll_due
from trading.realtime import public_messages
from trading.resolution import market_resolve, resolution_confirm

pytestmark = pytest.mark.django_db

DAL = "KXNFLGAME-26OCT08TBDAL-DAL"  # a recorded active Kalshi market: last price 0.81, bid 0.80, ask 0.81


def audit_clean() -> None:
    report = run_audit()
    assert report.ok, report.render()


@pytest.fixture(autouse=True)
def _audit_after_each_test(request):
    """Whatever a test did through the poller, the books hold afterwards (DESIGN section 5)."""
    yield
    if "django_db" in {mark.name for mark in request.node.iter_markers()}:
        audit_clean()


def kalshi_feed(**fields) -> Feed:
    return FeedFactory(source="kalshi", **fields)


def serve_kalshi_page(server: SourceServer, page: dict | None = None) -> None:
    server.route("GET", KALSHI + "/markets", Reply(json=page or server.load("kalshi/sdv_markets_page.json")))


def kalshi_market(server: SourceServer, ticker: str = DAL) -> dict:
    return copy.deepcopy(
        next(m for m in server.load("kalshi/sdv_markets_page.json")["markets"] if m["ticker"] == ticker)
    )


def settled_dal(server: SourceServer, result: str = "yes") -> dict:
    # Derived from the recorded active market: Kalshi's fields of a settled market, as in the recorded settled page
    # (status finalized, result, settlement_ts, settlement_value_dollars).
    market = kalshi_market(server)
    market.update(
        status="finalized",
        result=result,
        settlement_ts="2026-10-09T06:30:00Z",
        settlement_value_dollars="1.0000" if result == "yes" else "0.0000",
        expiration_value="DAL",
    )
    return market


# --------------------------------------------------------------------------------------------------------------------
# Feeds import, once


def test_feed_add_and_one_pass_import_the_matching_binary_markets_with_a_snapshot_each(source_server):
    serve_kalshi_page(source_server)
    call_command("feed_add", "kalshi", "--query", "dallas", "--max-markets", "5", "--interval", "60")
    feed = Feed.objects.get()
    assert (feed.source, feed.query, feed.max_markets, feed.interval_seconds) == ("kalshi", "dallas", 5, 60)

    call_command("run_poller", "--once")

    market = Market.objects.get()
    assert (market.source, market.external_id, market.feed_id) == ("kalshi", DAL, feed.id)
    assert market.reference_price == Decimal("0.8100") and market.reference_updated_at is not None
    assert market.deadline.isoformat() == "2026-10-11T00:15:00+00:00"
    assert market.source_url.startswith("https://kalshi.com/") and "Kalshi" in market.attribution
    assert "Dallas wins" in market.resolution_criteria or "Dallas" in market.question
    snapshot = MarketSnapshot.objects.get(market=market)
    assert (snapshot.seq, snapshot.yes_price, snapshot.yes_bid, snapshot.yes_ask, snapshot.status) == (
        1,
        Decimal("0.8100"),
        Decimal("0.8000"),
        Decimal("0.8100"),
        "open",
    )
    feed.refresh_from_db()
    assert feed.last_ok_at is not None and feed.last_summary["imported"] == 1 and not feed.last_error
    audit_clean()


def test_the_same_recorded_pages_imported_twice_change_nothing_the_second_time(source_server):
    serve_kalshi_page(source_server)
    source_server.route("GET", GAMMA + "/markets", Reply.file("polymarket/drmanhattan_gamma_markets_active.json"))
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply.file("manifold/predictngin_v0_markets_first100.json"))
    feeds = [
        kalshi_feed(),
        FeedFactory(source="polymarket"),
        FeedFactory(source="manifold", status="any", max_markets=100),
    ]
    now = timezone.now()
    first = [feed_pass(feed, now=now) for feed in feeds]
    counts = (Market.objects.count(), MarketSnapshot.objects.count(), MarketEvent.objects.count())
    assert [s.imported for s in first] == [2, 5, 62]  # Kalshi's 2, Polymarket's 5, Manifold's binary markets
    assert sum(s.skipped for s in first) == 0

    second = [feed_pass(feed, now=now + timedelta(minutes=5)) for feed in feeds]

    assert (Market.objects.count(), MarketSnapshot.objects.count(), MarketEvent.objects.count()) == counts
    assert [s.imported for s in second] == [0, 0, 0] and [s.snapshots for s in second] == [0, 0, 0]
    audit_clean()


def test_a_feed_imports_no_more_than_its_max_markets(source_server):
    source_server.route("GET", GAMMA + "/markets", Reply.file("polymarket/drmanhattan_gamma_markets_active.json"))
    feed = FeedFactory(source="polymarket", max_markets=3)
    summary = feed_pass(feed)
    assert Market.objects.filter(feed=feed).count() == 3 and summary.imported == 3


# --------------------------------------------------------------------------------------------------------------------
# Snapshots


def test_a_snapshot_is_stored_when_the_price_moves_and_at_least_hourly(source_server):
    serve_kalshi_page(source_server)
    feed = kalshi_feed(query="dallas")
    now = timezone.now()
    feed_pass(feed, now=now)
    market = Market.objects.get()

    moved = source_server.load("kalshi/sdv_markets_page.json")
    # Derived: the recorded page with Dallas's last price, bid and ask moved up (0.81 -> 0.84, 0.80 -> 0.83, 0.85).
    dal = next(m for m in moved["markets"] if m["ticker"] == DAL)
    dal.update(last_price_dollars="0.8400", yes_bid_dollars="0.8300", yes_ask_dollars="0.8500")
    source_server.reset()
    serve_kalshi_page(source_server, moved)
    feed_pass(feed, now=now + timedelta(minutes=5))
    feed_pass(feed, now=now + timedelta(minutes=10))  # unchanged within the hour: nothing stored
    feed_pass(feed, now=now + timedelta(minutes=66))  # unchanged, but the last one is an hour old

    assert list(MarketSnapshot.objects.filter(market=market).values_list("seq", "yes_price")) == [
        (1, Decimal("0.8100")),
        (2, Decimal("0.8400")),
        (3, Decimal("0.8400")),
    ]
    market.refresh_from_db()
    assert market.reference_price == Decimal("0.8400")
    events = MarketEvent.objects.filter(market=market, kind="reference").order_by("seq")
    messages = public_messages(market.id, events)
    assert [m["type"] for m in messages] == ["reference"] * 3
    assert messages[1]["reference"]["yes_price"] == "0.8400" and messages[1]["seq"] == events[1].seq
    audit_clean()


def test_the_snapshots_endpoint_pages_a_market_s_snapshots_in_time_order(source_server):
    serve_kalshi_page(source_server)
    feed = kalshi_feed(query="dallas")
    start = timezone.now() - timedelta(days=1)
    feed_pass(feed, now=start)
    market = Market.objects.get()
    for hour in range(1, 6):  # hourly snapshots of an unchanged market
        feed_pass(feed, now=start + timedelta(hours=hour, minutes=1))
    client = api_client()

    first = client.get(f"{API}/markets/{market.id}/snapshots/?page_size=4").json()
    rest = client.get(first["next"]).json()

    rows = first["results"] + rest["results"]
    assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5, 6] and rest["next"] is None
    assert rows[0] == {
        "source": "kalshi",
        "seq": 1,
        "taken_at": rows[0]["taken_at"],
        "yes_price": "0.8100",
        "yes_bid": "0.8000",
        "yes_ask": "0.8100",
        "volume": "271926.6800",
        "status": "open",
    }
    since = (start + timedelta(hours=2)).isoformat()
    until = (start + timedelta(hours=4, minutes=30)).isoformat()
    window = client.get(f"{API}/markets/{market.id}/snapshots/", {"since": since, "until": until}).json()
    assert [row["seq"] for row in window["results"]] == [3, 4, 5]
    assert client.get(f"{API}/markets/{market.id}/snapshots/?source=polymarket").json()["results"] == []
    bad = client.get(f"{API}/markets/{market.id}/snapshots/?since=yesterday")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    shown = client.get(f"{API}/markets/{market.id}/").json()
    assert (shown["source"], shown["external_id"], shown["reference_price"]) == ("kalshi", DAL, "0.8100")
    assert shown["reference_updated_at"] is not None and shown["manual_resolution"] is False


# --------------------------------------------------------------------------------------------------------------------
# Resolution from the source


@pytest.fixture
def mirrored(source_server, make_agent):
    """Dallas imported by a Kalshi feed; alice bought 10 YES at 0.60 from bob's NO. The listing of open markets then
    no longer shows it (it closed at Kalshi): the poller reads it by its ticker."""
    serve_kalshi_page(source_server)
    feed = kalshi_feed(query="dallas")
    feed_pass(feed)
    market = Market.objects.get()
    Market.objects.filter(id=market.id).update(deadline=timezone.now() + timedelta(days=1))  # tradable here
    alice, bob = make_agent("alice"), make_agent("bob")
    place(api_client(alice), market, "YES", "BUY", "0.60", 10)
    place(api_client(bob), market, "NO", "BUY", "0.40", 10)
    empty = source_server.load("kalshi/sdv_markets_page.json")
    empty["markets"] = []  # derived: the open markets' listing without Dallas, which has left it
    source_server.reset()
    serve_kalshi_page(source_server, empty)
    return {"feed": feed, "market": market, "alice": alice, "bob": bob}


def test_a_settlement_seen_by_two_passes_resolves_the_market_once(mirrored, source_server, client):
    feed, market, alice = mirrored["feed"], mirrored["market"], mirrored["alice"]
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply(json={"market": settled_dal(source_server)}))

    first = feed_pass(feed)
    second = feed_pass(feed)

    assert (first.closed, first.resolved, second.resolved) == (1, 1, 0)
    market.refresh_from_db()
    assert (market.status, market.outcome) == ("resolved", "YES")
    final = Resolution.objects.get(market=market)
    assert (final.status, final.resolver_kind, final.resolver_name) == ("final", "source", "Kalshi")
    assert final.evidence["outcome"] == "YES" and final.evidence["settled_at"].startswith("2026-10-09T06:30")
    assert Agent.objects.get(id=alice.id).balance == Decimal("1004.00")  # paid 6.00, got 10.00
    page = client.get(f"/markets/{market.id}/").content.decode()
    assert "Kalshi settled it yes on" in page and "Oct 9, 2026" in page
    audit_clean()


@pytest.mark.parametrize(("result", "outcome"), [("no", "NO"), ("void", "VOID")])
def test_a_no_or_void_result_at_the_source_resolves_no_or_void(mirrored, source_server, result, outcome):
    market = settled_dal(source_server, result)
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply(json={"market": market}))
    feed_pass(mirrored["feed"])
    assert Market.objects.get(id=mirrored["market"].id).outcome == outcome
    audit_clean()


def test_a_market_kept_for_manual_resolution_is_only_proposed(mirrored, source_server, admin_user):
    market = mirrored["market"]
    Market.objects.filter(id=market.id).update(manual_resolution=True)
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply(json={"market": settled_dal(source_server)}))

    summary = feed_pass(mirrored["feed"])
    feed_pass(mirrored["feed"])

    assert (summary.proposed, summary.resolved) == (1, 0)
    assert Market.objects.get(id=market.id).status == "closed"
    proposal = Resolution.objects.get(market=market)
    assert (proposal.status, proposal.resolver_name, proposal.dispute_until) == ("proposed", "Kalshi", None)
    resolution_confirm(resolution_id=proposal.pk, user=admin_user)
    assert Market.objects.get(id=market.id).outcome == "YES"
    audit_clean()


def test_a_market_resolved_by_an_operator_first_is_left_alone(mirrored, source_server):
    market = mirrored["market"]
    market_resolve(market_id=market.id, outcome="NO", resolver=operator_resolver())
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply(json={"market": settled_dal(source_server)}))
    summary = feed_pass(mirrored["feed"])
    assert summary.resolved == 0 and Market.objects.get(id=market.id).outcome == "NO"
    audit_clean()


def test_manifold_resolutions_are_mirrored_cancel_as_void(source_server):
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply.file("manifold/predictngin_v0_markets_first100.json"))
    feed_pass(FeedFactory(source="manifold", status="any", max_markets=100))
    by_outcome = {o: Market.objects.filter(source="manifold", outcome=o).count() for o in ("YES", "NO", "VOID")}
    assert by_outcome == {"YES": 5, "NO": 2, "VOID": 1}
    assert Resolution.objects.filter(resolver_name="Manifold", status="final").count() == 8
    audit_clean()


def test_a_polymarket_market_closed_at_one_and_zero_resolves_yes(source_server):
    markets = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")
    source_server.route("GET", GAMMA + "/markets", Reply(json=markets))
    feed = FeedFactory(source="polymarket")
    feed_pass(feed)
    # Derived: the first recorded market, closed and priced 1/0 as Polymarket shows a YES resolution.
    settled = copy.deepcopy(markets[0])
    settled.update(closed=True, active=False, outcomePrices='["1", "0"]', closedTime="2026-07-31 12:00:00+00")
    source_server.reset()
    source_server.route("GET", GAMMA + "/markets", Reply(json=markets[1:]))
    source_server.route("GET", f"{GAMMA}/markets/{settled['id']}", Reply(json=settled))
    feed_pass(feed)
    market = Market.objects.get(external_id=settled["id"])
    assert (market.outcome, Resolution.objects.get(market=market).resolver_name) == ("YES", "Polymarket")
    audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# A source that fails


def test_a_rate_limited_source_is_retried_after_its_retry_after(source_server):
    page = source_server.load("kalshi/sdv_markets_page.json")
    source_server.route("GET", KALSHI + "/markets", Reply(429, headers={"Retry-After": "1"}), Reply(json=page))
    summary = feed_pass(kalshi_feed())
    seen = source_server.requests_to(KALSHI + "/markets")
    assert summary.imported == 2 and not summary.source_error
    assert len(seen) == 2 and seen[1].at - seen[0].at >= 0.9


def test_a_500_then_a_200_is_one_retry(source_server):
    source_server.route("GET", KALSHI + "/markets", *down(1, 500), Reply.file("kalshi/sdv_markets_page.json"))
    assert feed_pass(kalshi_feed()).imported == 2


def test_a_source_that_times_out_ends_the_pass_with_its_error_recorded(source_server):
    source_server.route("GET", KALSHI + "/markets", Reply.file("kalshi/sdv_markets_page.json", delay=2.0))
    feed = kalshi_feed()
    summary = feed_pass(feed)
    feed.refresh_from_db()
    assert summary.source_error and feed.last_error == summary.source_error and feed.last_ok_at is None
    assert Market.objects.count() == 0


def test_a_source_down_for_several_passes_is_caught_up_without_duplicates(source_server):
    source_server.route("GET", KALSHI + "/markets", *down(9), Reply.file("kalshi/sdv_markets_page.json"))
    feed = kalshi_feed()
    now = timezone.now()
    outcomes = [feed_pass(feed, now=now + timedelta(minutes=5 * n)) for n in range(4)]
    assert [bool(o.source_error) for o in outcomes] == [True, True, True, False]  # 3 attempts a pass
    assert Market.objects.count() == 2 and MarketSnapshot.objects.count() == 2
    feed_pass(feed, now=now + timedelta(minutes=25))
    assert Market.objects.count() == 2 and MarketSnapshot.objects.count() == 2
    audit_clean()


def test_a_refused_connection_is_a_recorded_source_error(unreachable_sources):
    summary = feed_pass(kalshi_feed())
    assert "ConnectError" in summary.source_error and Market.objects.count() == 0


def test_a_page_with_one_malformed_entry_imports_the_rest(source_server, caplog):
    page = source_server.load("kalshi/sdv_markets_page.json")
    broken = copy.deepcopy(page["markets"][0])
    broken["ticker"] = "KXBROKEN-1"
    broken["last_price_dollars"] = "eighty-one cents"  # derived: a price that is not a number
    broken.pop("title")
    page["markets"].insert(0, broken)
    serve_kalshi_page(source_server, page)
    summary = feed_pass(kalshi_feed())
    assert (summary.skipped, summary.imported) == (1, 2)
    assert "KXBROKEN-1" in caplog.text
    assert Feed.objects.get().last_summary["skipped"] == 1


def test_a_cursor_that_pages_is_followed(source_server):
    page = source_server.load("kalshi/sdv_markets_page.json")
    # Derived: the recorded page cut in two, the first answering with a cursor to the second.
    first, second = copy.deepcopy(page), copy.deepcopy(page)
    first["markets"], first["cursor"] = page["markets"][:1], "page-2"
    second["markets"], second["cursor"] = page["markets"][1:], ""
    source_server.route("GET", KALSHI + "/markets", Reply(json=first))
    source_server.route("GET", KALSHI + "/markets", Reply(json=second), query={"cursor": "page-2"})
    assert feed_pass(kalshi_feed()).imported == 2


def test_a_failing_feed_does_not_stop_the_others(source_server):
    source_server.route("GET", KALSHI + "/markets", *down(3))
    source_server.route("GET", GAMMA + "/markets", Reply.file("polymarket/drmanhattan_gamma_markets_active.json"))
    kalshi_feed()
    FeedFactory(source="polymarket")
    summaries = poll_due()
    assert [bool(s.source_error) for s in summaries] == [True, False]
    assert Market.objects.filter(source="polymarket").count() == 5


# --------------------------------------------------------------------------------------------------------------------
# One poller at a time


@pytest.mark.django_db(transaction=True)
def test_a_second_poller_waits_for_the_first(source_server, settings):
    serve_kalshi_page(source_server)
    kalshi_feed()
    first = SingletonLock(LOCK_NAME)
    assert first.try_acquire()
    env = {**os.environ, "KALSHI_API_BASE": settings.KALSHI_API_BASE, "DATABASE_URL": _database_url()}
    second = subprocess.Popen(
        [sys.executable, "manage.py", "run_poller", "--once"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(timeout=4)  # waiting for the lock: nothing polled
        assert Market.objects.count() == 0 and source_server.requests_to(KALSHI + "/markets") == []
        first.release()
        output, _ = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
        first.release()
        connections.close_all()
    assert second.returncode == 0, output
    assert Market.objects.count() == 2


def _database_url() -> str:
    from moltstreet.serving import database_url

    return database_url()


def test_the_lock_is_one_process_s_at_a_time():
    first, second = SingletonLock("test-singleton"), SingletonLock("test-singleton", poll=0.05)
    try:
        assert first.try_acquire() and first.held()
        assert not second.try_acquire()
        stop = threading.Event()
        waiter = threading.Thread(target=second.acquire, kwargs={"stop": stop})
        waiter.start()
        waiter.join(timeout=0.3)
        assert waiter.is_alive()  # still waiting
        first.release()
        waiter.join(timeout=5)
        assert not waiter.is_alive() and second.held()
    finally:
        first.release()
        second.release()


# --------------------------------------------------------------------------------------------------------------------
# Skill against the crowd


def test_brier_vs_market_compares_an_agent_with_the_source_from_five_markets(make_agent, client):
    agent = make_agent("forecaster")
    markets = []
    for n in range(5):
        market = ImportedMarketFactory(question=f"Mirrored {n}?", reference_price=Decimal("0.6"))  # the crowd: 0.60
        ForecastFactory(agent=agent, market=market, probability="0.8")  # the agent says 0.80
        markets.append(market)
    unsourced = ImportedMarketFactory(question="No price?", source="x", external_id="1")
    ForecastFactory(agent=agent, market=unsourced, probability="0.1")
    market_resolve(market_id=unsourced.id, outcome="YES", resolver=operator_resolver())  # no source price: not compared
    for market in markets[:4]:
        market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())
    assert Agent.objects.get(id=agent.id).brier_vs_market is None  # 4 markets: not yet

    market_resolve(market_id=markets[4].id, outcome="YES", resolver=operator_resolver())

    scored = Agent.objects.get(id=agent.id)
    # Agent: 5 x (0.8 - 1)^2 = 0.20; the crowd: 5 x (0.6 - 1)^2 = 0.80; 1 - 0.20 / 0.80 = 0.75.
    assert (scored.brier_ref_count, scored.brier_vs_market) == (5, Decimal("0.750000"))
    shown = api_client().get(f"{API}/agents/forecaster/").json()
    assert (shown["brier_vs_market"], shown["brier_ref_count"]) == ("0.750000", 5)
    assert api_client().get(f"{API}/agents/?ordering=-brier_vs_market").json()["results"][0]["name"] == "forecaster"
    assert "+0.750" in client.get("/agents/?by=vs_market").content.decode()
    assert "against the market: +0.750 over 5 mirrored markets" in client.get("/agents/forecaster/").content.decode()
    audit_clean()


def test_the_market_page_draws_the_source_s_price_beside_ours(source_server, client):
    serve_kalshi_page(source_server)
    feed = kalshi_feed(query="dallas")
    now = timezone.now()
    feed_pass(feed, now=now - timedelta(hours=2))
    feed_pass(feed, now=now - timedelta(minutes=50))
    market = Market.objects.get()
    page = client.get(f"/markets/{market.id}/")
    live = page.context["live"]
    assert [point[1] for point in live["reference"]] == ["0.8100", "0.8100"]
    text = page.content.decode()
    assert 'id="source-link"' in text and market.source_url in text
    assert "Dashed: Kalshi's own probability of YES" in text


# --------------------------------------------------------------------------------------------------------------------
# A page at a time (bench/poller.py): the batch's reads and writes, and what happens when they fail


def test_a_page_s_snapshots_are_stored_together_each_as_news_decides(make_agent):
    from markets.services import snapshots_record

    now = timezone.now()
    first, second = (ImportedMarketFactory(question=f"Batch {n}?", external_id=f"KXB-{n}") for n in range(2))
    values = {"yes_price": Decimal("0.4200"), "yes_bid": None, "yes_ask": None, "volume": None, "status": "open"}
    stored = snapshots_record(source="kalshi", views=[(first.id, values), (second.id, values)], taken_at=now)
    assert set(stored) == {first.id, second.id}
    moved = {**values, "yes_price": Decimal("0.4300")}
    later = snapshots_record(source="kalshi", views=[(first.id, values), (second.id, moved)], taken_at=now)
    assert set(later) == {second.id}  # the first's price did not change within the hour
    assert list(MarketSnapshot.objects.filter(market=second).values_list("seq", "yes_price")) == [
        (1, Decimal("0.4200")),
        (2, Decimal("0.4300")),
    ]
    second.refresh_from_db()
    assert second.reference_price == Decimal("0.4300")
    assert MarketEvent.objects.filter(market=second, kind="reference").count() == 2


def test_when_a_page_s_reads_or_writes_fail_each_market_goes_on_its_own(source_server, monkeypatch):
    from django.db import DatabaseError

    import trading.poller as poller

    serve_kalshi_page(source_server)
    feed = kalshi_feed()

    def failing_read(self, entries):
        raise DatabaseError("the batch's read")

    def failing_write(**kwargs):
        raise DatabaseError("the batch's write")

    monkeypatch.setattr(poller._Pass, "known", failing_read)
    monkeypatch.setattr(poller, "snapshots_record", failing_write)

    summary = feed_pass(feed)

    assert (summary.imported, summary.snapshots, summary.failed) == (2, 2, 0)
    assert MarketSnapshot.objects.count() == 2
