"""``manage.py resolve_market`` and ``manage.py run_scheduler``."""

from __future__ import annotations

import logging
import signal
import uuid
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone

from agents.models import Agent, LedgerEntry
from markets.models import Market
from markets.tests.factories import MarketFactory
from moltstreet.errors import ServiceBusy
from testsupport.api import operator_resolver
from testsupport.commands import manage
from trading import lifecycle
from trading.models import Order
from trading.orders import order_place
from trading.resolution import market_resolve


def cash(agent: Agent) -> tuple[Decimal, Decimal]:
    agent.refresh_from_db()
    return agent.balance, agent.locked_balance


@pytest.fixture
def traded(make_agent, market):
    """Alice rests a YES bid 0.60 x10; Bob buys 4 NO against it at the maker's 0.60 (he pays 0.40 each)."""
    alice, bob = make_agent("alice"), make_agent("bob")
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.60", size=10)
    order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price="0.45", size=4)
    return market, alice, bob


# ---------------------------------------------------------------------------------------------------------------------
# resolve_market


def test_resolve_market_pays_the_winners_and_prints_a_summary(monkeypatch, capsys, traded, audit_clean):
    market, alice, bob = traded

    status = manage(monkeypatch, "resolve_market", str(market.id), "no")

    assert status == 0
    out = capsys.readouterr().out
    assert f"Resolved NO: {market.question} ({market.id})" in out
    assert "holders paid: 1" in out
    assert "total paid: 4.00 credits" in out
    # Bob's 4 NO bought for 1.60 pay 4.00; Alice's 4 YES pay nothing and her resting bid's 3.60 is released.
    assert cash(bob) == (Decimal("1002.40"), Decimal("0.00"))
    assert cash(alice) == (Decimal("997.60"), Decimal("0.00"))
    audit_clean()


def test_resolve_market_exits_non_zero_with_the_error_code_when_already_resolved(
    monkeypatch, capsys, traded, audit_clean
):
    market, *_ = traded
    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())
    ledger_rows = LedgerEntry.objects.count()

    status = manage(monkeypatch, "resolve_market", str(market.id), "NO")

    assert status == 1
    assert "market_already_resolved: The market has already been resolved." in capsys.readouterr().err
    assert Market.objects.get(pk=market.pk).outcome == "YES"
    assert LedgerEntry.objects.count() == ledger_rows
    audit_clean()


def test_resolve_market_exits_non_zero_for_an_unknown_market(monkeypatch, capsys, db):
    assert manage(monkeypatch, "resolve_market", str(uuid.uuid4()), "YES") == 1
    assert "not_found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["not-a-uuid", "YES"], [str(uuid.uuid4()), "MAYBE"], [str(uuid.uuid4())]])
def test_resolve_market_rejects_malformed_arguments_before_touching_anything(monkeypatch, capsys, market, argv):
    assert manage(monkeypatch, "resolve_market", *argv) == 2  # argparse's usage error
    assert "usage:" in capsys.readouterr().err
    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN


# ---------------------------------------------------------------------------------------------------------------------
# run_scheduler


def test_run_scheduler_once_closes_a_market_past_its_deadline_and_expires_gtd_orders(traded, caplog, audit_clean):
    due, alice, bob = traded
    later = MarketFactory(creator=bob, question="Still open?", deadline=timezone.now() + timedelta(days=1))
    gtd = order_place(
        agent=alice,
        market_id=later.id,
        side="YES",
        action="BUY",
        price="0.20",
        size=5,
        time_in_force="GTD",
        expires_at=timezone.now() + timedelta(hours=1),
    ).order
    keeps = order_place(agent=bob, market_id=later.id, side="NO", action="BUY", price="0.10", size=3).order
    assert cash(alice) == (Decimal("997.60"), Decimal("4.60"))  # 3.60 in the due market + 1.00 for the GTD bid
    past = timezone.now() - timedelta(seconds=1)
    Market.objects.filter(pk=due.pk).update(deadline=past)
    Order.objects.filter(pk=gtd.pk).update(expires_at=past)

    with caplog.at_level(logging.INFO, logger="moltstreet.scheduler"):
        call_command("run_scheduler", "--once")

    assert Market.objects.get(pk=due.pk).status == Market.Status.CLOSED
    resting = Order.objects.get(market=due, agent=alice)
    assert (resting.status, resting.cancel_reason) == (Order.Status.CANCELLED, Order.CancelReason.MARKET_CLOSED)
    gtd.refresh_from_db()
    assert (gtd.status, gtd.cancel_reason) == (Order.Status.EXPIRED, Order.CancelReason.EXPIRED)
    assert cash(alice) == (Decimal("997.60"), Decimal("0.00"))
    # What was not due is untouched.
    assert Market.objects.get(pk=later.pk).status == Market.Status.OPEN
    assert Order.objects.get(pk=keeps.pk).status == Order.Status.OPEN
    assert f"closed market {due.id}" in caplog.text
    assert "expired 1 GTD order" in caplog.text
    audit_clean()


def test_run_scheduler_once_exits_non_zero_when_its_pass_fails(monkeypatch, db):
    def down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(lifecycle, "markets_close_due", down)

    with pytest.raises(CommandError, match="pass failed") as excinfo:
        call_command("run_scheduler", "--once")
    assert excinfo.value.returncode == 1


@pytest.mark.parametrize(
    ("error", "signum"),
    [
        (OperationalError("server closed the connection unexpectedly"), signal.SIGTERM),
        (ServiceBusy("A lock wait timed out; retry shortly."), signal.SIGINT),
    ],
)
def test_the_scheduler_survives_a_database_error_and_stops_cleanly_on_a_signal(
    monkeypatch, settings, caplog, traded, audit_clean, error, signum
):
    due, alice, _ = traded
    Market.objects.filter(pk=due.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    settings.MOLTSTREET = {**settings.MOLTSTREET, "SCHEDULER_INTERVAL": 0}  # the default interval, made instant
    real_close_due, passes = lifecycle.markets_close_due, []
    handlers_before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def flaky_close_due(*args, **kwargs):
        passes.append(len(passes) + 1)
        if len(passes) == 1:
            raise error
        closed = real_close_due(*args, **kwargs)
        # The scheduler's own handler must be in place, or this signal would end the test run.
        assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler)
        signal.raise_signal(signum)
        return closed

    monkeypatch.setattr(lifecycle, "markets_close_due", flaky_close_due)

    with caplog.at_level(logging.INFO, logger="moltstreet.scheduler"):
        call_command("run_scheduler")

    assert passes == [1, 2]  # failed, retried, then stopped after the pass the signal arrived in
    assert "closing due markets failed, retrying next pass" in caplog.text
    assert "stopping after this pass" in caplog.text
    assert Market.objects.get(pk=due.pk).status == Market.Status.CLOSED
    assert cash(alice) == (Decimal("997.60"), Decimal("0.00"))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers_before
    audit_clean()


def test_run_scheduler_refuses_a_negative_interval(db):
    with pytest.raises(CommandError, match="must not be negative"):
        call_command("run_scheduler", "--interval", "-1", stdout=StringIO())


def test_each_successful_pass_touches_the_heartbeat_file_and_a_failed_one_does_not(monkeypatch, settings, tmp_path, db):
    heartbeat = tmp_path / "scheduler.heartbeat"
    settings.MOLTSTREET = {**settings.MOLTSTREET, "SCHEDULER_HEARTBEAT": str(heartbeat)}
    call_command("run_scheduler", "--once")
    assert heartbeat.exists()
    beaten = heartbeat.stat().st_mtime_ns

    def down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(lifecycle, "markets_close_due", down)
    with pytest.raises(CommandError):
        call_command("run_scheduler", "--once")
    assert heartbeat.stat().st_mtime_ns == beaten


# ---------------------------------------------------------------------------------------------------------------------
# audit


def test_audit_reports_each_check_on_stderr_and_ends_with_its_verdict(traded):
    out, err = StringIO(), StringIO()
    call_command("audit", stdout=out, stderr=err)
    steps = err.getvalue().splitlines()
    assert [line.split(":")[0] for line in steps] == [f"checked {n}/7" for n in range(1, 8)]
    assert "ledger replay" in steps[3]
    assert out.getvalue().splitlines()[-1] == "audit clean"
