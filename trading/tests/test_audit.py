"""The audit (trading/audit.py) and ``manage.py audit``: every check of DESIGN section 5 catches what it claims.

Each check of ``trading.audit.CHECKS`` gets a breach planted behind the services' back, in a world the services built
(trades, resting BUYs and SELLs in both queues, reserves, a ledger, an event sequence). The audit must report that
breach from that check, word for word, and nothing else; and with that one check switched off the audit must find
the world clean, which shows that no other check sees the plant and that deleting the check turns its test red.

Three checks guard what a named database constraint already forbids (locked within 0..balance, reserved within
shares, filled within size): their plants drop the constraint first, inside the test's transaction (PostgreSQL's DDL
rolls back with it). The audit is what still catches such a row if a constraint is ever lost.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import F
from django.utils import timezone

from agents.models import Agent, AgentEvent, LedgerEntry
from markets.models import Market, MarketEvent
from moltstreet.serving import database_url
from testsupport.commands import manage
from trading import audit
from trading.audit import CHECKS, AuditReport, run_audit
from trading.models import BookLevel, Order, Position, Trade
from trading.orders import order_place

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(market, make_agent):
    """Built by the services only: alice bids YES 0.40 x 5; bob buys NO 0.60 x 3 from her (one mint trade: alice holds
    3 YES, bob 3 NO); alice offers 1 of her YES at 0.70 (a NO bid at 0.30, 1 YES reserved); carol bids NO 0.55 x 2;
    alice bids YES 0.30 x 2. The book then rests YES 0.40 x 2, YES 0.30 x 2, NO 0.55 x 2 and NO 0.30 x 1, uncrossed;
    alice has 1.40 reserved for her BUYs, carol 1.10."""
    alice, bob, carol = make_agent("alice"), make_agent("bob"), make_agent("carol")

    def place(agent, side, action, price, size):
        placed = order_place(
            agent=agent, market_id=market.id, side=side, action=action, price=Decimal(price), size=size
        )
        return Order.objects.get(id=placed.order.id)

    w = SimpleNamespace(market=market, alice=alice, bob=bob, carol=carol)
    w.alice_bid = place(alice, "YES", "BUY", "0.40", 5)
    w.bob_bid = place(bob, "NO", "BUY", "0.60", 3)
    w.alice_offer = place(alice, "YES", "SELL", "0.70", 1)
    w.carol_bid = place(carol, "NO", "BUY", "0.55", 2)
    w.alice_low_bid = place(alice, "YES", "BUY", "0.30", 2)
    for order in (w.alice_bid, w.bob_bid, w.alice_offer, w.carol_bid, w.alice_low_bid):
        order.refresh_from_db()
    w.trade = Trade.objects.get(market=market)
    w.alice_position = Position.objects.get(agent=alice, market=market)
    w.bob_position = Position.objects.get(agent=bob, market=market)
    market.refresh_from_db()

    # The world is what the docstring says, so that each plant below breaks exactly one thing.
    assert (w.trade.size, w.trade.price, w.trade.maker_order_id, w.trade.taker_order_id) == (
        3,
        Decimal("0.40"),
        w.alice_bid.id,
        w.bob_bid.id,
    )
    assert (w.alice_bid.status, w.alice_bid.filled, w.bob_bid.status, w.bob_bid.filled) == ("partial", 3, "filled", 3)
    assert {o.status for o in (w.alice_offer, w.carol_bid, w.alice_low_bid)} == {"open"}
    assert (w.alice_position.yes_shares, w.alice_position.yes_reserved, w.alice_position.no_shares) == (3, 1, 0)
    assert (w.bob_position.no_shares, w.bob_position.no_reserved, w.bob_position.yes_shares) == (3, 0, 0)
    assert cash(alice) == (Decimal("998.80"), Decimal("1.40"))
    assert cash(bob) == (Decimal("998.20"), Decimal("0.00"))
    assert cash(carol) == (Decimal("1000.00"), Decimal("1.10"))
    assert book(market) == {("YES", "0.40"): 2, ("YES", "0.30"): 2, ("NO", "0.55"): 2, ("NO", "0.30"): 1}
    assert market.trade_count == 1 and market.seq > 3
    return w


def cash(agent: Agent) -> tuple[Decimal, Decimal]:
    agent.refresh_from_db()
    return agent.balance, agent.locked_balance


def book(market: Market) -> dict[tuple[str, str], int]:
    return {
        (side, str(price)): size
        for side, price, size in BookLevel.objects.filter(market=market, size__gt=0).values_list(
            "book_side", "price", "size"
        )
    }


def drop_constraint(model, name: str) -> None:
    """Drop one named constraint of ``model`` for the rest of the test (its transaction rolls the DDL back)."""
    (constraint,) = [c for c in model._meta.constraints if c.name == name]
    with connection.cursor() as cursor:
        # PostgreSQL alters no table with deferred foreign-key checks pending (the world's rows): run them now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        with connection.schema_editor() as editor:
            editor.remove_constraint(model, constraint)
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def last_entry(agent: Agent) -> LedgerEntry:
    return LedgerEntry.objects.filter(agent=agent).latest("id")


# ---------------------------------------------------------------------------------------------------------------------
# One plant per check. Each breaks one thing, keeping everything the other checks compare consistent, and returns
# the lines the audit must report for it.


def plant_locked_above_balance(w) -> list[str]:
    # An operator adjustment takes alice's balance below what her resting BUYs hold, ledgered and counted in the
    # money, so only the range check can see it.
    drop_constraint(Agent, "agents_agent_locked_lte_balance")
    Agent.objects.filter(id=w.alice.id).update(balance=Decimal("1.39"))
    LedgerEntry.objects.create(
        agent=w.alice, kind="adjustment", amount=Decimal("1.39") - Decimal("998.80"), balance_after=Decimal("1.39")
    )
    return ["[invariant 1] agent alice: locked 1.40 not within 0..balance 1.39"]


def plant_a_reserve_nobody_holds(w) -> list[str]:
    Agent.objects.filter(id=w.alice.id).update(locked_balance=F("locked_balance") + 1)
    return ["[invariant 1] agent alice: locked 2.40 != reserves of resting BUYs 1.40"]


def plant_a_sell_without_contracts(w) -> list[str]:
    # alice's 3 YES move to carol behind the services' back: the pairs still match, but alice's resting SELL is
    # backed by nothing.
    drop_constraint(Position, "trading_position_yes_reserved_range")
    Position.objects.filter(id=w.alice_position.id).update(yes_shares=0)
    Position.objects.create(agent=w.carol, market=w.market, yes_shares=3)
    return [f"[invariant 1] position {w.alice_position.id}: YES shares 0, reserved 1"]


def plant_a_reserve_without_its_sell(w) -> list[str]:
    Position.objects.filter(id=w.alice_position.id).update(yes_reserved=2)
    return [f"[invariant 1] position {w.alice_position.id}: YES reserved 2 != resting SELLs 1"]


def plant_a_lost_no_contract(w) -> list[str]:
    # A NO contract vanishes: the money counts pairs by their YES side, so only the pairs check sees it.
    Position.objects.filter(id=w.bob_position.id).update(no_shares=2)
    return [f"[invariant 2] market {w.market.id}: 3 YES held != 2 NO held"]


def plant_a_credit_from_nowhere(w) -> list[str]:
    # A credit paid as a "trade" no trade explains, ledgered so the replay holds: only the money check sees it.
    Agent.objects.filter(id=w.bob.id).update(balance=Decimal("999.20"))
    LedgerEntry.objects.create(agent=w.bob, kind="trade", amount=Decimal("1.00"), balance_after=Decimal("999.20"))
    return ["[invariant 3] balances 3988.00 + pairs 3 x 1.00 != grants - fees +/- adjustments 3990.00"]


def plant_a_ledger_that_replays_elsewhere(w) -> list[str]:
    # bob's last row (his trade) says he paid 1.79, and its balance_after follows: the chain holds, the sum does not.
    entry = last_entry(w.bob)
    assert (entry.kind, entry.amount, entry.balance_after) == ("trade", Decimal("-1.80"), Decimal("998.20"))
    LedgerEntry.objects.filter(id=entry.id).update(amount=Decimal("-1.79"), balance_after=Decimal("998.21"))
    return ["[invariant 4] agent bob: ledger replays to 998.21, balance is 998.20"]


def plant_a_broken_balance_after(w) -> list[str]:
    entry = last_entry(w.bob)
    LedgerEntry.objects.filter(id=entry.id).update(balance_after=Decimal("998.21"))
    return [f"[invariant 4] ledger entry {entry.id}: balance_after 998.21 but replay gives 998.20"]


def plant_a_crossed_book(w) -> list[str]:
    # carol's NO bid moves from 0.55 to 0.65 with its book level and her reserve, so the book is consistent with
    # itself and crossed: best YES 0.40 + best NO 0.65 >= 1.
    Order.objects.filter(id=w.carol_bid.id).update(price=Decimal("0.65"), book_price=Decimal("0.65"))
    assert BookLevel.objects.filter(market=w.market, book_side="NO", price=Decimal("0.55")).update(
        price=Decimal("0.65")
    )
    Agent.objects.filter(id=w.carol.id).update(locked_balance=Decimal("1.30"))
    return [f"[invariant 5] market {w.market.id}: book crossed (best YES bid 0.40 + best NO bid 0.65 >= 1)"]


def plant_a_book_level_out_of_step(w) -> list[str]:
    BookLevel.objects.filter(market=w.market, book_side="YES", price=Decimal("0.30")).update(size=3)
    return [f"[invariant 5] market {w.market.id}: book level YES 0.30 holds 3, its resting orders 2"]


def plant_a_closed_market_with_resting_orders(w) -> list[str]:
    Market.objects.filter(id=w.market.id).update(status="closed", closed_at=timezone.now())
    return ["[invariant 5] 4 orders still resting in closed or resolved markets"]


def plant_an_overfilled_order(w) -> list[str]:
    # bob's filled order (3 of 3) shrinks to 2: it has still filled what it traded, and it rests nowhere.
    drop_constraint(Order, "trading_order_filled_lte_size")
    drop_constraint(Order, "trading_order_filled_status_is_full")
    Order.objects.filter(id=w.bob_bid.id).update(size=2)
    return ["[invariant 5] an order has filled > size"]


def plant_a_trade_rewritten(w) -> list[str]:
    Trade.objects.filter(id=w.trade.id).update(size=2)
    return [
        f"[invariant 5] order {w.bob_bid.id}: filled 3 != traded contracts",
        f"[invariant 5] order {w.alice_bid.id}: filled 3 != traded contracts",
    ]


def plant_fills_wiped(w) -> list[str]:
    # bob's order forgets its fills (and, no longer full, reads as cancelled): its trade now belongs to an order
    # that never filled.
    Order.objects.filter(id=w.bob_bid.id).update(filled=0, status="cancelled")
    return [f"[invariant 5] trades against orders with filled = 0: {[w.bob_bid.id]}"]


def plant_a_trade_count_off(w) -> list[str]:
    Market.objects.filter(id=w.market.id).update(trade_count=F("trade_count") + 1)
    return [f"[invariant 5] market {w.market.id}: trade_count 2 != 1 trades"]


def plant_a_gap_in_the_sequence(w) -> list[str]:
    # An order event in the middle goes: the first event is still 1 and the last still the market's seq, so only
    # the count of events shows the gap.
    seq = w.market.seq
    middle = MarketEvent.objects.filter(market=w.market, kind="order", seq__gt=1, seq__lt=seq).order_by("seq")[0]
    middle.delete()
    return [f"[invariant 6] market {w.market.id}: seq {seq} but events {seq - 1} from 1 to {seq}"]


def plant_a_reset_seq(w) -> list[str]:
    Market.objects.filter(id=w.market.id).update(seq=0)
    return [f"[invariant 6] market {w.market.id}: events exist but seq is 0"]


def plant_a_trade_at_an_order_event(w) -> list[str]:
    # The trade moves to the seq of an order event: every event is still there, one per seq.
    order_event = MarketEvent.objects.filter(market=w.market, kind="order").order_by("seq")[0]
    Trade.objects.filter(id=w.trade.id).update(seq=order_event.seq)
    return ["[invariant 6] 1 trades without a trade event at their seq"]


def plant_a_gap_in_an_agent_s_feed(w) -> list[str]:
    # One of alice's private feed messages in the middle goes: her first is still 1 and her last her feed_seq.
    w.alice.refresh_from_db()
    seq = w.alice.feed_seq
    AgentEvent.objects.filter(agent=w.alice, seq=seq // 2).delete()
    return [f"[invariant 6] agent alice: feed seq {seq} but messages {seq - 1} from 1 to {seq}"]


def plant_reputation_from_thin_air(w) -> list[str]:
    Agent.objects.filter(id=w.bob.id).update(reputation=Decimal("5.00"))
    return ["[invariant 4a] agent bob: reputation 5.00 != positions' 0.00"]


def plant_a_linked_trade_nobody_booked(w) -> list[str]:
    # alice's position records her trade with bob as linked (paid 1.20 for 3 YES); her linked_pnl was never told.
    Position.objects.filter(id=w.alice_position.id).update(linked_cash=Decimal("-1.20"), linked_yes=3)
    return ["[invariant 4a] agent alice: linked_pnl 0.00 != positions' 1.80"]


PLANTS: dict[str, Callable[[SimpleNamespace], list[str]]] = {
    "locked within balance": plant_locked_above_balance,
    "locked = BUY reserves": plant_a_reserve_nobody_holds,
    "position within shares": plant_a_sell_without_contracts,
    "reserved = SELL orders": plant_a_reserve_without_its_sell,
    "pairs": plant_a_lost_no_contract,
    "money": plant_a_credit_from_nowhere,
    "ledger replay": plant_a_ledger_that_replays_elsewhere,
    "ledger chain": plant_a_broken_balance_after,
    "crossed book": plant_a_crossed_book,
    "book levels": plant_a_book_level_out_of_step,
    "resting in closed markets": plant_a_closed_market_with_resting_orders,
    "filled within size": plant_an_overfilled_order,
    "filled = traded": plant_a_trade_rewritten,
    "trades of unfilled orders": plant_fills_wiped,
    "trade count": plant_a_trade_count_off,
    "sequence": plant_a_gap_in_the_sequence,
    "events without seq": plant_a_reset_seq,
    "trade events": plant_a_trade_at_an_order_event,
    "agent sequence": plant_a_gap_in_an_agent_s_feed,
    "reputation": plant_reputation_from_thin_air,
    "linked pnl": plant_a_linked_trade_nobody_booked,
}


def switch_off(monkeypatch, check: str) -> None:
    """Make ``check``'s ``report.breach`` call a no-op: the audit as if that check's lines were deleted (each name
    stands at exactly one call site: test_every_breach_the_audit_files_names_its_check)."""
    original = AuditReport.breach

    def breach(self, invariant, message, *, check: str) -> None:
        if check != switched_off:
            original(self, invariant, message, check=check)

    switched_off = check
    monkeypatch.setattr(AuditReport, "breach", breach)


# ---------------------------------------------------------------------------------------------------------------------
# The audit


def test_the_world_the_services_built_is_clean(world):
    report = run_audit()
    assert report.ok and report.breaches == [] and report.by_check == {}, report.render()
    assert report.render().splitlines()[-1] == "All invariants hold."
    assert report.figures["pairs outstanding"] == 3
    assert report.figures["trades"] == 1
    assert report.figures["resting orders"] == 4


def test_every_check_has_a_plant():
    assert set(PLANTS) == set(CHECKS)
    assert len(CHECKS) == len(set(CHECKS))


def test_every_breach_the_audit_files_names_its_check():
    """Each ``report.breach`` call of trading/audit.py names a check of CHECKS, each name at one call site, in the
    order of CHECKS: a new check without a name (and so without a plant here) fails this test."""
    tree = ast.parse(inspect.getsource(audit))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "breach"
    ]
    names = []
    for call in sorted(calls, key=lambda node: (node.lineno, node.col_offset)):
        (keyword,) = [k for k in call.keywords if k.arg == "check"]
        assert isinstance(keyword.value, ast.Constant), ast.unparse(call)
        names.append(keyword.value.value)
    assert tuple(names) == CHECKS


@pytest.mark.parametrize("check", CHECKS)
def test_the_audit_reports_a_planted_breach_from_its_own_check_and_no_other(check, world):
    expected = PLANTS[check](world)
    report = run_audit()
    assert not report.ok
    assert sorted(report.breaches) == sorted(expected), report.render()
    assert {name: sorted(lines) for name, lines in report.by_check.items()} == {check: sorted(expected)}
    assert set(expected) <= set(report.render().splitlines())


@pytest.mark.parametrize("check", CHECKS)
def test_with_its_check_switched_off_the_audit_misses_the_planted_breach(check, world, monkeypatch):
    """The negative control: the plant is seen by its check alone, so the test above fails if the check goes."""
    switch_off(monkeypatch, check)
    PLANTS[check](world)
    report = run_audit()
    assert report.ok, report.render()
    assert report.render().splitlines()[-1] == "All invariants hold."


def test_switching_one_check_off_leaves_the_others_on(world, monkeypatch):
    switch_off(monkeypatch, "pairs")
    plant_a_lost_no_contract(world)
    expected = plant_a_trade_count_off(world)
    assert run_audit().by_check == {"trade count": expected}


def test_the_audit_reports_each_breach_of_several(world):
    """Planted together, breaches of different checks are each reported (one check's finding hides no other's)."""
    planted = ("book levels", "reputation", "ledger chain", "trade events", "reserved = SELL orders")
    expected = {check: PLANTS[check](world) for check in planted}
    report = run_audit()
    assert report.by_check == expected
    assert len(report.breaches) == len(planted)


def seq_beyond_the_last_event(w) -> str:
    Market.objects.filter(id=w.market.id).update(seq=F("seq") + 1)
    seq = w.market.seq
    return f"[invariant 6] market {w.market.id}: seq {seq + 1} but events {seq} from 1 to {seq}"


def first_event_missing(w) -> str:
    MarketEvent.objects.filter(market=w.market, seq=1).delete()
    seq = w.market.seq
    return f"[invariant 6] market {w.market.id}: seq {seq} but events {seq - 1} from 2 to {seq}"


def last_event_renumbered(w) -> str:
    # As many events as the seq says, the first one 1, but the last one numbered past the market's seq.
    seq = w.market.seq
    MarketEvent.objects.filter(market=w.market, seq=seq).update(seq=seq + 1)
    return f"[invariant 6] market {w.market.id}: seq {seq} but events {seq} from 1 to {seq + 1}"


@pytest.mark.parametrize("plant", [seq_beyond_the_last_event, first_event_missing, last_event_renumbered])
def test_the_sequence_check_sees_each_way_a_sequence_goes_wrong(plant, world):
    expected = plant(world)
    assert run_audit().by_check == {"sequence": [expected]}


# ---------------------------------------------------------------------------------------------------------------------
# manage.py audit


def test_the_audit_command_passes_a_clean_world(world, monkeypatch, capsys):
    out = StringIO()
    call_command("audit", stdout=out, stderr=StringIO())
    assert out.getvalue().splitlines()[-2:] == ["All invariants hold.", "audit clean"]
    assert manage(monkeypatch, "audit") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "audit clean"


def test_the_audit_command_fails_on_a_breach(world, monkeypatch, capsys):
    expected = plant_a_crossed_book(world)
    out = StringIO()
    with pytest.raises(CommandError, match=r"^audit found 1 breach\(es\)$"):
        call_command("audit", stdout=out, stderr=StringIO())
    assert out.getvalue().splitlines()[-1:] == expected
    assert "audit clean" not in out.getvalue()
    assert manage(monkeypatch, "audit") == 1
    captured = capsys.readouterr()
    assert expected[0] in captured.out.splitlines()
    assert "CommandError: audit found 1 breach(es)" in captured.err


@pytest.mark.django_db(transaction=True)
def test_python_manage_py_audit_exits_non_zero_on_a_breach_and_zero_when_clean(market, make_agent):
    """The real process: ``python manage.py audit`` against the test database (committed rows), before and after a
    breach."""
    alice, bob = make_agent("alice"), make_agent("bob")
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price=Decimal("0.40"), size=5)
    order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price=Decimal("0.60"), size=3)

    def audit_process() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "audit", "--verbosity", "0"],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "DATABASE_URL": database_url()},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    clean = audit_process()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.splitlines()[-1] == "audit clean"
    Market.objects.filter(id=market.id).update(trade_count=F("trade_count") + 1)
    breached = audit_process()
    assert breached.returncode == 1, breached.stdout + breached.stderr
    assert f"[invariant 5] market {market.id}: trade_count 2 != 1 trades" in breached.stdout.splitlines()
    assert "audit found 1 breach(es)" in breached.stderr
