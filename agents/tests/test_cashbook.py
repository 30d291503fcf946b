"""``CashBook`` on its own, at its boundaries, to the cent (DESIGN sections 2 and 5, invariants 1, 3 and 4).

The cash book is the one place an agent's ``balance`` and ``locked_balance`` change: ``move`` (with a ledger row),
``reserve``/``release`` (the reserve of BUY orders) and ``flush`` (one write per agent, the ledger rows in bulk). It does
not net YES/NO pairs: netting is ``trading.market_tx.MarketTx.net``, which calls ``move`` with kind ``netting``.

Each test works on agents locked as the services lock them (``lock_agents`` inside a transaction), flushes, and then
reads the database back: the stored balances, the ledger rows with their ``balance_after`` chain, and the audit.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Sum

from agents.models import Agent, AgentEvent, LedgerEntry
from agents.services import CashBook, lock_agents
from agents.tests.factories import AgentFactory
from moltstreet.errors import InsufficientBalance
from trading.audit import run_audit

D = Decimal
GRANT = D("1000.00")
Kind = LedgerEntry.Kind


def locked(agent: Agent) -> Agent:
    """The agent's row, locked as the services lock it (call inside ``transaction.atomic``)."""
    return lock_agents([agent.id])[agent.id]


def stored(agent: Agent) -> tuple[Decimal, Decimal]:
    """(balance, locked_balance) as stored now."""
    row = Agent.objects.get(id=agent.id)
    return row.balance, row.locked_balance


def ledger(agent: Agent) -> list[tuple[str, Decimal, Decimal]]:
    """The agent's ledger rows, oldest first: (kind, amount, balance_after)."""
    return list(LedgerEntry.objects.filter(agent=agent).order_by("id").values_list("kind", "amount", "balance_after"))


def assert_ledger_replays(agent: Agent) -> None:
    """Invariant 4 for one agent: the ledger sums to the balance, and each row's balance_after continues the last."""
    balance, _ = stored(agent)
    assert LedgerEntry.objects.filter(agent=agent).aggregate(s=Sum("amount"))["s"] == balance
    running = D("0.00")
    for kind, amount, after in ledger(agent):
        running += amount
        assert after == running, (kind, amount, after, running)


def only_breaches(*invariants: str) -> list[str]:
    """Run the audit and return its breaches, asserting each is of one of ``invariants`` (e.g. "1")."""
    report = run_audit()
    assert report.breaches, "the audit saw nothing"
    for breach in report.breaches:
        assert any(breach.startswith(f"[invariant {n}]") for n in invariants), report.render()
    return report.breaches


@pytest.fixture
def agent(db):
    return AgentFactory(name="cash")


# --------------------------------------------------------------------------------------------------------------------
# reserve: setting credits aside for a BUY.


def test_it_reserves_exactly_the_available_balance(agent, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        book.reserve(a, D("1000.00"))
        assert (a.balance, a.locked_balance, a.available_balance) == (GRANT, GRANT, D("0.00"))
        book.flush()
    assert stored(agent) == (GRANT, GRANT)
    assert ledger(agent) == [(Kind.GRANT, GRANT, GRANT)]  # a reserve moves no money: no ledger row
    # A reserve without a resting order is exactly what the audit's invariant 1 compares against the book.
    [breach] = only_breaches("1")
    assert "locked 1000.00 != reserves of resting BUYs 0" in breach

    with transaction.atomic():
        a = locked(agent)
        book.release(a, D("1000.00"))  # releasing exactly what is reserved
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    assert_ledger_replays(agent)
    audit_clean()


def test_it_refuses_to_reserve_one_cent_beyond_the_available_balance_and_changes_nothing(agent, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        book.reserve(a, D("400.00"))
        with pytest.raises(InsufficientBalance) as refused:
            book.reserve(a, D("600.01"))
        assert refused.value.code == "insufficient_balance"
        assert refused.value.detail == {"required": "600.01", "available": "600.00"}
        assert "600.01" in refused.value.message and "600.00" in refused.value.message
        assert (a.balance, a.locked_balance) == (GRANT, D("400.00"))  # the refused reserve left no trace
        book.reserve(a, D("600.00"))  # and the exact remainder is still there
        assert a.available_balance == D("0.00")
        with pytest.raises(InsufficientBalance):
            book.reserve(a, D("0.01"))
        assert a.locked_balance == GRANT
        book.release(a, GRANT)
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    audit_clean()


def test_a_refused_first_reserve_leaves_the_agent_untouched_so_flush_writes_nothing(agent, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        with pytest.raises(InsufficientBalance):
            book.reserve(a, D("1000.01"))
        assert book.touched == {} and book.entries == []
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    audit_clean()


@pytest.mark.parametrize(
    ("amount", "reserved", "allowed"),
    [
        ("1000.004", D("1000.00"), True),  # rounds down to the available balance
        ("1000.005", D("1000.00"), True),  # half to even: .005 rounds to the even cent, .00
        ("1000.015", D("1000.02"), False),  # half to even: .015 rounds up to .02, a cent too many
        ("999.995", D("1000.00"), True),  # rounds up to exactly the available balance
        ("0.004", D("0.00"), True),
    ],
)
def test_a_reserve_is_rounded_to_the_cent_before_it_is_checked(agent, amount, reserved, allowed, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        if allowed:
            book.reserve(a, D(amount))
            assert a.locked_balance == reserved
            book.release(a, reserved)
        else:
            with pytest.raises(InsufficientBalance) as refused:
                book.reserve(a, D(amount))
            assert refused.value.detail == {"required": str(reserved), "available": "1000.00"}
        assert a.locked_balance == D("0.00")
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    audit_clean()


def test_a_zero_reserve_changes_nothing(agent, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        book.reserve(a, D("0"))
        book.release(a, D("0.00"))
        assert (a.balance, a.locked_balance) == (GRANT, D("0.00"))
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    assert ledger(agent) == [(Kind.GRANT, GRANT, GRANT)]
    audit_clean()


def test_a_negative_reserve_below_zero_is_refused_by_the_database_at_flush(agent, audit_clean):
    """``reserve`` does not check the sign (callers reserve ``price * size``, both validated positive): a negative
    reserve taking ``locked_balance`` below zero passes in memory and is stopped by the check constraint."""
    with pytest.raises(IntegrityError, match="agents_agent_locked_gte_0"), transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.reserve(a, D("-0.01"))
        assert a.locked_balance == D("-0.01")
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# release: releasing a reserve.


def test_it_releases_exactly_what_is_reserved_to_the_cent(agent, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        book.reserve(a, D("0.03"))
        book.release(a, D("0.01"))
        book.release(a, D("0.02"))
        assert (a.locked_balance, a.available_balance) == (D("0.00"), GRANT)
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    audit_clean()


def test_releasing_one_cent_more_than_is_reserved_is_refused_as_a_bookkeeping_bug(agent, audit_clean):
    with pytest.raises(AssertionError, match=r"locked balance of .* would go negative"), transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.reserve(a, D("5.00"))
        book.release(a, D("5.01"))
    assert stored(agent) == (GRANT, D("0.00"))  # the transaction that tried it wrote nothing
    audit_clean()


def test_a_refused_release_leaves_the_agent_as_it_was(agent):
    with transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.reserve(a, D("5.00"))
        with pytest.raises(AssertionError):
            book.release(a, D("5.01"))
        assert a.locked_balance == D("5.00")  # checked before it is changed, as lock and move do


def test_a_negative_release_beyond_the_balance_is_refused_by_the_database_at_flush(agent, audit_clean):
    """``release`` does not check the sign either: a negative release is a reserve that skips ``reserve``'s check of
    the available balance; ``locked_balance <= balance`` is then kept only by the check constraint."""
    with pytest.raises(IntegrityError, match="agents_agent_locked_lte_balance"), transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.release(a, D("-1000.01"))
        assert a.locked_balance == D("1000.01")
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# move: every balance change, with its ledger row.


def test_fees_and_payouts_write_one_ledger_row_each_with_a_continuous_balance_after_chain(db, audit_clean):
    payer, payee = AgentFactory(name="payer"), AgentFactory(name="payee")
    market_id = uuid.uuid4()
    with transaction.atomic():
        agents = lock_agents([payer.id, payee.id])
        p, q = agents[payer.id], agents[payee.id]
        book = CashBook()
        book.move(p, D("-10.00"), Kind.FEE, reference=market_id, memo="market creation fee")
        book.move(p, D("-0.01"), Kind.TRADE, market_id=market_id, reference="t1", memo="buy")
        book.move(q, D("0.01"), Kind.PAYOUT, market_id=market_id, reference=market_id, memo="resolved YES")
        book.move(p, D("-989.99"), Kind.TRADE, market_id=market_id, reference="t2")  # to exactly zero
        book.move(q, D("989.99"), Kind.TRADE, market_id=market_id, reference="t2")
        assert [e.balance_after for e in book.entries] == [
            D("990.00"),
            D("989.99"),
            D("1000.01"),
            D("0.00"),
            D("1990.00"),
        ]
        assert set(book.touched) == {payer.id, payee.id}
        book.flush()
        assert book.entries == [] and book.touched == {}
    assert stored(payer) == (D("0.00"), D("0.00"))
    assert stored(payee) == (D("1990.00"), D("0.00"))
    assert ledger(payer) == [
        (Kind.GRANT, GRANT, GRANT),
        (Kind.FEE, D("-10.00"), D("990.00")),
        (Kind.TRADE, D("-0.01"), D("989.99")),
        (Kind.TRADE, D("-989.99"), D("0.00")),
    ]
    assert ledger(payee) == [
        (Kind.GRANT, GRANT, GRANT),
        (Kind.PAYOUT, D("0.01"), D("1000.01")),
        (Kind.TRADE, D("989.99"), D("1990.00")),
    ]
    fee = LedgerEntry.objects.get(agent=payer, kind=Kind.FEE)
    assert (fee.market_id, fee.reference, fee.memo) == (None, str(market_id), "market creation fee")
    payout = LedgerEntry.objects.get(agent=payee, kind=Kind.PAYOUT)
    assert (payout.market_id, payout.reference) == (market_id, str(market_id))
    for a in (payer, payee):
        assert_ledger_replays(a)
    audit_clean()  # a fee is external money; the payout and trades are zero-sum between the two


def test_a_payout_backed_by_no_pairs_is_ledgered_but_breaks_conservation(agent):
    """The ledger replays (invariant 4) yet money is not conserved (invariant 3): the audit tells the two apart."""
    with transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.move(a, D("1.00"), Kind.PAYOUT, market_id=uuid.uuid4(), memo="resolved YES")
        book.flush()
    assert stored(agent) == (D("1001.00"), D("0.00"))
    assert_ledger_replays(agent)
    [breach] = only_breaches("3")
    assert "balances 1001.00 + pairs 0 x 1.00 != grants - fees +/- adjustments 1000.00" in breach


def test_it_spends_exactly_the_available_balance_and_refuses_one_cent_more(agent, audit_clean):
    """A debit may use the balance down to the reserve, not a cent into it (``locked_balance <= balance``)."""
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        book.reserve(a, D("300.00"))
        with pytest.raises(InsufficientBalance) as refused:
            book.move(a, D("-700.01"), Kind.ADJUSTMENT)
        assert refused.value.detail == {"agent": agent.name, "needed": "700.01", "available": "700.00"}
        assert (a.balance, a.locked_balance) == (GRANT, D("300.00"))
        assert book.entries == []
        book.move(a, D("-700.00"), Kind.ADJUSTMENT, memo="to the reserve")
        assert (a.balance, a.locked_balance, a.available_balance) == (D("300.00"), D("300.00"), D("0.00"))
        with pytest.raises(InsufficientBalance):
            book.move(a, D("-0.01"), Kind.ADJUSTMENT)
        with pytest.raises(InsufficientBalance):  # and no reserve beyond the balance either
            book.reserve(a, D("0.01"))
        book.release(a, D("300.00"))
        book.flush()
    assert stored(agent) == (D("300.00"), D("0.00"))
    assert ledger(agent) == [(Kind.GRANT, GRANT, GRANT), (Kind.ADJUSTMENT, D("-700.00"), D("300.00"))]
    assert_ledger_replays(agent)
    audit_clean()


def test_it_refuses_a_debit_below_zero_and_changes_nothing(agent, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        with pytest.raises(InsufficientBalance) as refused:
            book.move(a, D("-1000.01"), Kind.ADJUSTMENT)
        assert refused.value.detail["available"] == "1000.00"
        assert a.balance == GRANT and book.entries == [] and book.touched == {}
        book.move(a, D("-1000.00"), Kind.ADJUSTMENT)
        book.flush()
    assert stored(agent) == (D("0.00"), D("0.00"))
    assert ledger(agent)[-1] == (Kind.ADJUSTMENT, D("-1000.00"), D("0.00"))
    audit_clean()


@pytest.mark.parametrize("amount", ["0", "0.00", "-0.00", "0.004", "-0.005", "0.005"])
def test_a_move_that_rounds_to_zero_writes_nothing(agent, amount, audit_clean):
    book = CashBook()
    with transaction.atomic():
        a = locked(agent)
        book.move(a, D(amount), Kind.PAYOUT)
        assert book.entries == [] and book.touched == {}
        assert a.balance == GRANT
        book.flush()
    assert ledger(agent) == [(Kind.GRANT, GRANT, GRANT)]
    audit_clean()


@pytest.mark.parametrize(
    ("amount", "booked"),
    [
        ("0.015", D("0.02")),  # half to even, up
        ("0.025", D("0.02")),  # half to even, down
        ("-0.015", D("-0.02")),
        ("12.3449", D("12.34")),
        ("-999.999", D("-1000.00")),  # rounds to exactly the whole balance: allowed
    ],
)
def test_a_move_with_more_than_two_decimals_is_booked_to_the_cent(agent, amount, booked, audit_clean):
    with transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.move(a, D(amount), Kind.ADJUSTMENT)
        book.flush()
    assert stored(agent) == (GRANT + booked, D("0.00"))
    assert ledger(agent)[-1] == (Kind.ADJUSTMENT, booked, GRANT + booked)
    assert_ledger_replays(agent)
    audit_clean()


@pytest.mark.parametrize(
    ("amount", "allowed"),
    [("-1000.004", True), ("-1000.005", True), ("-1000.015", False), ("-1000.006", False)],
)
def test_a_debit_is_checked_after_rounding(agent, amount, allowed, audit_clean):
    with transaction.atomic():
        a = locked(agent)
        book = CashBook()
        if allowed:
            book.move(a, D(amount), Kind.ADJUSTMENT)
            assert a.balance == D("0.00")
        else:
            with pytest.raises(InsufficientBalance) as refused:
                book.move(a, D(amount), Kind.ADJUSTMENT)
            assert refused.value.detail["needed"] in ("1000.02", "1000.01")
            assert a.balance == GRANT and book.entries == []
        book.flush()
    assert stored(agent) == ((D("0.00") if allowed else GRANT), D("0.00"))
    assert_ledger_replays(agent)
    audit_clean()


def test_settling_a_reserve_with_a_cheaper_fill_keeps_locked_within_the_balance(agent, audit_clean):
    """What a BUY fill does (``MarketTx.buy``): release the limit's reserve, pay the (cheaper) trade price."""
    with transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.reserve(a, D("1000.00"))  # BUY 2000 @ 0.50 reserves everything
        book.release(a, D("0.50"))  # one contract fills at 0.49
        book.move(a, D("-0.49"), Kind.TRADE, reference="fill")
        assert (a.balance, a.locked_balance, a.available_balance) == (D("999.51"), D("999.50"), D("0.01"))
        book.release(a, D("999.50"))  # the rest is cancelled
        book.move(a, D("0.49"), Kind.TRADE, reference="sold back")  # zero-sum for the audit: it is not a pair
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    assert_ledger_replays(agent)
    audit_clean()


def test_a_settlement_that_pays_for_a_reserve_before_releasing_it_is_refused(agent, audit_clean):
    """The order matters: debiting the reserved credits before releasing them would dip into the reserve."""
    with transaction.atomic():
        a = locked(agent)
        book = CashBook()
        book.reserve(a, D("1000.00"))
        with pytest.raises(InsufficientBalance):
            book.move(a, D("-0.01"), Kind.TRADE)
        assert (a.balance, a.locked_balance) == (GRANT, GRANT)
        book.release(a, GRANT)
        book.flush()
    assert stored(agent) == (GRANT, D("0.00"))
    audit_clean()


def test_flush_writes_each_touched_agent_once_and_clears_the_book(db, audit_clean, django_assert_num_queries):
    first, second, idle = AgentFactory(name="one"), AgentFactory(name="two"), AgentFactory(name="idle")
    with transaction.atomic():
        agents = lock_agents([first.id, second.id, idle.id])
        book = CashBook()
        for _ in range(3):
            book.move(agents[first.id], D("-1.00"), Kind.TRADE)
            book.move(agents[second.id], D("1.00"), Kind.TRADE)
        assert len(book.entries) == 6 and set(book.touched) == {first.id, second.id}
        # One UPDATE batch for the agents, one INSERT batch for the ledger, one for their balance messages.
        with django_assert_num_queries(3):
            book.flush()
        assert book.entries == [] and book.touched == {}
        with django_assert_num_queries(0):  # nothing left to write
            book.flush()
    assert stored(first)[0] == D("997.00") and stored(second)[0] == D("1003.00")
    assert [after for _, _, after in ledger(first)] == [GRANT, D("999.00"), D("998.00"), D("997.00")]
    assert [after for _, _, after in ledger(second)] == [GRANT, D("1001.00"), D("1002.00"), D("1003.00")]
    assert ledger(idle) == [(Kind.GRANT, GRANT, GRANT)]
    # Each touched agent's private feed got one balance message, the idle one's nothing beyond its grant's.
    for agent, balance, seq in ((first, "997.00", 2), (second, "1003.00", 2), (idle, "1000.00", 1)):
        agent.refresh_from_db()
        last = AgentEvent.objects.get(agent=agent, seq=agent.feed_seq)
        assert (agent.feed_seq, last.kind, last.data["balance"], last.data["market"]) == (seq, "balance", balance, None)
    audit_clean()
