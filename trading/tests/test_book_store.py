"""``trading.book_store`` at its boundaries, on PostgreSQL (the suite's database) and on SQLite (``make run``'s).

Each ``check_*`` function is one scenario that builds its rows through the services and asks the store; the tests
below run them in the suite's PostgreSQL test database, and :func:`test_every_check_on_sqlite` runs them all again in
a fresh process on a migrated SQLite database (the conftest refuses SQLite for the suite itself).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from agents.models import Agent, AgentEvent, LedgerEntry
from agents.tests.factories import AgentFactory
from markets.models import Market, MarketEvent
from markets.tests.factories import MarketFactory
from moltstreet.errors import NotFound
from trading import book_store
from trading.market_tx import MarketTx
from trading.models import BookLevel, Order, Position, Side, Trade
from trading.orders import order_cancel, order_place

ROOT = Path(__file__).resolve().parents[2]


def _agent() -> Agent:
    return AgentFactory()


def _market() -> Market:
    return MarketFactory(question="Will the store hold?")


def _place(agent, market, side, action, price, size, **kwargs) -> Order:
    return order_place(
        agent=agent, market_id=market.id, side=side, action=action, price=price, size=size, **kwargs
    ).order


def check_lock_market_finds_the_market_and_refuses_unknown_and_malformed_ids():
    market = _market()
    with transaction.atomic():
        assert book_store.lock_market(market.id) == market
        assert book_store.lock_market(str(market.id)).question == "Will the store hold?"
    for bad in (uuid.uuid4(), "not-a-uuid", ""):
        with pytest.raises(NotFound), transaction.atomic():
            book_store.lock_market(bad)


def check_lock_for_order_reads_the_crossing_queue_in_priority_order():
    market, alice, bob = _market(), _agent(), _agent()
    # Resting NO bids (BUY NO at p rests at NO price p): a BUY YES at 0.60 crosses NO bids at >= 0.40.
    first = _place(alice, market, "NO", "BUY", "0.45", 1)
    best = _place(bob, market, "NO", "BUY", "0.50", 1)
    second = _place(bob, market, "NO", "BUY", "0.45", 1)
    _place(alice, market, "NO", "BUY", "0.39", 1)  # does not cross 0.60
    _place(alice, market, "YES", "BUY", "0.30", 1)  # its own side's queue: never crossed by a YES bid
    cancelled = _place(alice, market, "NO", "BUY", "0.48", 1)
    order_cancel(agent=alice, order_id=cancelled.id)
    _place(bob, market, "NO", "BUY", "0.41", 1, client_order_id="mine-1")

    def buy_yes_at_60(market_id, agent, page):  # a BUY YES at 0.60 rests in the YES queue at 0.60
        with transaction.atomic():
            return book_store.lock_for_order(
                market_id=market_id,
                agent_id=agent.id,
                book_side=Side.YES,
                book_price=Decimal("0.60"),
                page=page,
                client_order_id="mine-1",
            )

    context = buy_yes_at_60(market.id, bob, 3)
    assert context.market.id == market.id
    assert [o.id for o in context.crossing] == [best.id, first.id, second.id]  # price, then arrival; a page of 3
    assert context.earlier is not None and context.earlier.client_order_id == "mine-1"
    nothing = buy_yes_at_60(market.id, alice, 10)
    assert nothing.earlier is None  # client order ids are per agent
    prices = [o.book_price for o in nothing.crossing]
    assert prices == [Decimal(p) for p in ("0.50", "0.45", "0.45", "0.41")]
    with pytest.raises(NotFound):
        buy_yes_at_60(uuid.uuid4(), bob, 1)


def check_crossing_page_continues_after_an_order_across_equal_prices():
    market, alice = _market(), _agent()
    orders = [_place(alice, market, "NO", "BUY", price, 1) for price in ("0.45", "0.45", "0.45", "0.44", "0.45")]
    expected = [orders[i].id for i in (0, 1, 2, 4, 3)]
    with transaction.atomic():
        after_first = book_store.crossing_page(market.id, Side.YES, Decimal("0.60"), after=orders[0], limit=2)
        after_last_45 = book_store.crossing_page(market.id, Side.YES, Decimal("0.60"), after=orders[4], limit=10)
    assert [o.id for o in after_first] == expected[1:3]
    assert [o.id for o in after_last_45] == [orders[3].id]


def check_load_parties_locks_agents_and_reads_what_was_asked():
    market, alice, bob = _market(), _agent(), _agent()
    _place(alice, market, "YES", "BUY", "0.40", 3)
    _place(bob, market, "NO", "BUY", "0.60", 2)  # trades 2 at 0.40: both now hold contracts
    _place(bob, market, "NO", "BUY", "0.55", 1, client_order_id="twin")
    other = _market()
    _place(bob, other, "YES", "BUY", "0.10", 1)
    stranger = _agent()
    with transaction.atomic():
        parties = book_store.load_parties(
            market.id,
            agent_ids=[bob.id, alice.id, stranger.id],
            position_ids=[alice.id, bob.id, stranger.id],
            levels=True,
            count_resting_of=bob.id,
            client_order=(bob.id, "twin"),
        )
    assert list(parties.agents) == sorted([alice.id, bob.id, stranger.id])  # locked in ascending id order
    assert parties.agents[alice.id].locked_balance == Decimal("0.40")  # the 1 contract left resting at 0.40
    assert set(parties.positions) == {alice.id, bob.id}  # the stranger has no position row
    assert parties.positions[alice.id].yes_shares == 2 and parties.positions[bob.id].no_shares == 2
    assert parties.levels == {(Side.YES, Decimal("0.40")): 1, (Side.NO, Decimal("0.55")): 1}
    assert parties.resting_count == 2  # across all markets
    assert parties.earlier is not None and parties.earlier.client_order_id == "twin"
    with transaction.atomic():
        bare = book_store.load_parties(market.id, agent_ids=[alice.id])
    assert bare.positions == {} and bare.levels is None and bare.resting_count is None and bare.earlier is None


def check_the_smaller_reads():
    market, alice, bob = _market(), _agent(), _agent()
    now = timezone.now()
    gtd = _place(alice, market, "YES", "BUY", "0.20", 4, time_in_force="GTD", expires_at=now + timedelta(minutes=5))
    gtc = _place(alice, market, "YES", "BUY", "0.21", 5)
    sell_side = _place(alice, market, "NO", "BUY", "0.10", 2)
    bobs = _place(bob, market, "NO", "BUY", "0.79", 3)  # takes 3 of alice's 0.21 bid
    later = _market()
    _place(alice, later, "YES", "BUY", "0.05", 1)
    with transaction.atomic():
        assert [o.id for o in book_store.resting_orders(market.id)] == [gtd.id, gtc.id, sell_side.id]
        assert [o.id for o in book_store.resting_orders(market.id, agent_id=bob.id)] == []  # bob's order filled
        assert [o.id for o in book_store.resting_orders(market.id, order_id=gtc.id)] == [gtc.id]
        assert book_store.resting_orders(market.id, order_id=bobs.id) == []
        expiry = gtd.expires_at
        assert [o.id for o in book_store.resting_orders(market.id, expired_by=expiry)] == [gtd.id]  # at: expired
        assert book_store.resting_orders(market.id, expired_by=expiry - timedelta(microseconds=1)) == []
        assert book_store.resting_markets(alice.id) == sorted([market.id, later.id])
        assert book_store.resting_markets(alice.id, market.id) == [market.id]
        assert book_store.resting_markets(bob.id) == []
        assert book_store.own_order(alice.id, gtc.id).id == gtc.id
        assert book_store.own_order(bob.id, gtc.id) is None  # another agent's order
        assert book_store.own_order(alice.id, "nope") is None
        assert book_store.resting_buy_contracts(alice.id, market.id, Side.YES) == 4 + 2  # size - filled
        assert book_store.resting_buy_contracts(alice.id, market.id, Side.NO) == 2
        assert book_store.resting_buy_contracts(bob.id, market.id, Side.NO) == 0
        trades = book_store.taker_trades(bobs.id)
    assert [(t.price, t.size) for t in trades] == [(Decimal("0.21"), 3)]
    assert trades == list(Trade.objects.filter(taker_order=bobs).order_by("seq"))


def check_write_stores_what_a_transaction_changed_and_reads_back_the_same():
    market, alice, bob = _market(), _agent(), _agent()
    resting = _place(alice, market, "YES", "BUY", "0.40", 2)
    passer_by = _agent()
    with transaction.atomic():
        tx = MarketTx(book_store.lock_market(market.id))
        tx.prepare({alice.id, bob.id, passer_by.id})
        tx.position(passer_by.id)  # read, changed by nothing: no row is written for it
        tx.end_order(resting, Order.Status.CANCELLED, Order.CancelReason.USER, "cancelled")
        tx.cash.reserve(tx.agents[bob.id], Decimal("1.50"))
        events = tx.flush()
    assert [e.data["event"] for e in events] == ["cancelled"]
    assert events[0].data["level"] == {"side": "YES", "price": "0.40", "size": 0}
    stored = Order.objects.get(id=resting.id)
    assert (stored.status, stored.cancel_reason, stored.updated_seq) == ("cancelled", "user", events[0].seq)
    assert Agent.objects.get(id=alice.id).locked_balance == Decimal("0.00")
    assert Agent.objects.get(id=bob.id).locked_balance == Decimal("1.50")
    assert not Position.objects.filter(market=market, agent=passer_by).exists()
    assert BookLevel.objects.get(market=market, book_side="YES", price=Decimal("0.40")).size == 0
    fresh = Market.objects.get(id=market.id)
    assert fresh.seq == events[0].seq and fresh.best_bid is None and fresh.best_ask is None
    assert MarketEvent.objects.filter(market=market, seq=fresh.seq).exists()
    # The read side returns what the ORM returns: every field, converted alike (UUIDs, decimals, datetimes).
    with transaction.atomic():
        again = book_store.own_order(alice.id, resting.id)
    orm = Order.objects.get(id=resting.id)
    assert {f.attname: getattr(again, f.attname) for f in Order._meta.concrete_fields} == {
        f.attname: getattr(orm, f.attname) for f in Order._meta.concrete_fields
    }
    assert LedgerEntry.objects.filter(agent=bob).count() == 1  # reserving moves no money: no ledger row


def check_write_stores_the_private_feed_messages_with_the_agents_seq():
    market, alice, bob = _market(), _agent(), _agent()
    resting = _place(alice, market, "YES", "BUY", "0.40", 2)
    before = {a.id: Agent.objects.get(id=a.id).feed_seq for a in (alice, bob)}
    with transaction.atomic():
        tx = MarketTx(book_store.lock_market(market.id))
        tx.prepare({alice.id, bob.id})
        tx.end_order(resting, Order.Status.CANCELLED, Order.CancelReason.USER, "cancelled")
        tx.cash.reserve(tx.agents[bob.id], Decimal("1.50"))
        [event] = tx.flush()
    stored = {
        agent.id: [(e.seq, e.kind) for e in AgentEvent.objects.filter(agent=agent, seq__gt=before[agent.id])]
        for agent in (alice, bob)
    }
    assert stored == {
        alice.id: [(before[alice.id] + 1, "order"), (before[alice.id] + 2, "balance")],
        bob.id: [(before[bob.id] + 1, "balance")],  # its reserve moved: a balance message, nothing else
    }
    assert {a.id: a.feed_seq for a in Agent.objects.filter(id__in=[alice.id, bob.id])} == {
        alice.id: before[alice.id] + 2,
        bob.id: before[bob.id] + 1,
    }
    order = AgentEvent.objects.get(agent=alice, seq=before[alice.id] + 1).message()
    assert (order["event"], order["market_seq"], order["order"]["status"]) == ("cancelled", event.seq, "cancelled")
    assert AgentEvent.objects.get(agent=bob, seq=before[bob.id] + 1).data["locked_balance"] == "1.50"


def check_rows_beyond_one_statement_are_inserted_in_chunks_and_in_order():
    agent = _agent()
    start = Agent.objects.get(id=agent.id).feed_seq
    per_statement = book_store._MAX_VALUES // len(book_store._insertable(AgentEvent))
    rows = [
        AgentEvent(agent=agent, seq=start + n, kind="balance", data={"n": n}) for n in range(1, 2 * per_statement + 3)
    ]
    with transaction.atomic():
        book_store._insert(AgentEvent, rows)
    stored = list(AgentEvent.objects.filter(agent=agent, seq__gt=start).order_by("id").values_list("seq", "data"))
    assert stored == [(start + n, {"n": n}) for n in range(1, 2 * per_statement + 3)]  # ids in the rows' order


CHECKS = [value for name, value in sorted(globals().items()) if name.startswith("check_")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
def test_on_postgresql(check):
    check()


SQLITE_RUNNER = """
import os, sys
sys.path.insert(0, {root!r})
os.environ["DATABASE_URL"] = "sqlite:///" + {db!r}
os.environ.pop("REDIS_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moltstreet.settings")
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.db import connection
assert connection.vendor == "sqlite", connection.vendor
from trading.tests import test_book_store
for check in test_book_store.CHECKS:
    check()
    print("ok", check.__name__)
"""


def test_every_check_on_sqlite(tmp_path):
    code = SQLITE_RUNNER.format(root=str(ROOT), db=str(tmp_path / "store.sqlite3"))
    done = subprocess.run(  # noqa: S603  (this interpreter, our own code)
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok check_") == len(CHECKS), done.stdout
