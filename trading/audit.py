"""Checks of every invariant of DESIGN section 5, for ``manage.py audit`` and the test suite.

:func:`run_audit` reads the whole database and returns an :class:`AuditReport`; it changes nothing.
Run it on a quiet database (or accept that a trade committing mid-read may show as a transient breach).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, Exists, F, Max, Min, OuterRef, Sum

from agents.models import Agent, AgentEvent, LedgerEntry
from markets.models import Market, MarketEvent
from moltstreet.money import ONE, ZERO, quantize
from trading.models import Action, BookLevel, Order, Position, Side, Trade

# Every check of the audit, by the name its breaches are filed under (``AuditReport.by_check``): one name for each
# ``report.breach`` call below, in their order. trading/tests/test_audit.py plants a breach for each and shows that no
# other check sees it.
CHECKS = (
    "locked within balance",
    "locked = BUY reserves",
    "position within shares",
    "reserved = SELL orders",
    "pairs",
    "money",
    "ledger replay",
    "ledger chain",
    "crossed book",
    "book levels",
    "resting in closed markets",
    "filled within size",
    "filled = traded",
    "trades of unfilled orders",
    "trade count",
    "sequence",
    "events without seq",
    "trade events",
    "agent sequence",
    "reputation",
    "linked pnl",
)


@dataclass
class AuditReport:
    breaches: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    # The same breaches by the check (a name of CHECKS) that found them.
    by_check: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.breaches

    def breach(self, invariant: int | str, message: str, *, check: str) -> None:
        line = f"[invariant {invariant}] {message}"
        self.breaches.append(line)
        self.by_check.setdefault(check, []).append(line)

    def render(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.figures.items()]
        lines += self.breaches or ["All invariants hold."]
        return "\n".join(lines)


def run_audit(progress: Callable[[str], object] | None = None) -> AuditReport:
    """Check invariants 1-6 of DESIGN section 5 across all agents, markets, orders, trades and the ledger (each
    agent's private feed sequence with invariant 6's market sequences, DESIGN section 8), and that every agent's
    reputation and ``linked_pnl`` agree with its positions (DESIGN section 4a; breaches "[invariant 4a]").

    ``progress`` (optional) gets a line after each of the seven checks: ``checked 3/7: money (0.4 s)``.
    """
    report = AuditReport()
    checks = (
        ("balances and reserves", _balances_and_reserves),
        ("pairs", _pairs),
        ("money", _money),
        ("ledger replay", _ledger),
        ("books", _book),
        ("sequences", _sequences),
        ("ranks", _ranks),
    )
    for number, (name, check) in enumerate(checks, start=1):
        started = time.monotonic()
        check(report)
        if progress is not None:
            progress(f"checked {number}/{len(checks)}: {name} ({time.monotonic() - started:.1f} s)")
    return report


def _balances_and_reserves(report: AuditReport) -> None:
    locked_by_agent: defaultdict[uuid.UUID, Decimal] = defaultdict(lambda: ZERO)
    buys = Order.objects.filter(status__in=Order.RESTING, action=Action.BUY).values_list(
        "agent_id", "price", "size", "filled"
    )
    for agent_id, price, size, filled in buys:
        locked_by_agent[agent_id] += price * (size - filled)
    for agent in Agent.objects.only("id", "name", "balance", "locked_balance"):
        if not (ZERO <= agent.locked_balance <= agent.balance):
            report.breach(
                1,
                f"agent {agent.name}: locked {agent.locked_balance} not within 0..balance {agent.balance}",
                check="locked within balance",
            )
        if agent.locked_balance != locked_by_agent[agent.id]:
            report.breach(
                1,
                f"agent {agent.name}: locked {agent.locked_balance} != reserves of resting BUYs {locked_by_agent[agent.id]}",
                check="locked = BUY reserves",
            )
    reserved: defaultdict[tuple[uuid.UUID, uuid.UUID, str], int] = defaultdict(int)
    sells = Order.objects.filter(status__in=Order.RESTING, action=Action.SELL).values_list(
        "agent_id", "market_id", "side", "size", "filled"
    )
    for agent_id, market_id, side, size, filled in sells:
        reserved[(agent_id, market_id, side)] += size - filled
    for pos in Position.objects.all():
        for side, shares, res in (
            (Side.YES, pos.yes_shares, pos.yes_reserved),
            (Side.NO, pos.no_shares, pos.no_reserved),
        ):
            if shares < 0 or res < 0 or res > shares:
                report.breach(
                    1, f"position {pos.id}: {side} shares {shares}, reserved {res}", check="position within shares"
                )
            if res != reserved[(pos.agent_id, pos.market_id, side)]:
                report.breach(
                    1,
                    f"position {pos.id}: {side} reserved {res} != resting SELLs {reserved[(pos.agent_id, pos.market_id, side)]}",
                    check="reserved = SELL orders",
                )


def _pairs(report: AuditReport) -> None:
    for row in Position.objects.values("market_id").annotate(yes=Sum("yes_shares"), no=Sum("no_shares")):
        if row["yes"] != row["no"]:
            report.breach(2, f"market {row['market_id']}: {row['yes']} YES held != {row['no']} NO held", check="pairs")


def _money(report: AuditReport) -> None:
    # quantize: SQLite sums decimals in floating point; PostgreSQL's sums are exact already.
    balances = quantize(Agent.objects.aggregate(s=Sum("balance"))["s"] or ZERO)
    pairs = Position.objects.aggregate(s=Sum("yes_shares"))["s"] or 0
    by_kind = dict(LedgerEntry.objects.values_list("kind").annotate(s=Sum("amount")).values_list("kind", "s"))
    external = quantize(sum((by_kind.get(k, ZERO) for k in ("grant", "fee", "adjustment")), ZERO))
    report.figures.update(
        {
            "agents": Agent.objects.count(),
            "credits held by agents": balances,
            "pairs outstanding": pairs,
            "grants - fees +/- adjustments": external,
        }
    )
    if balances + pairs * ONE != external:
        report.breach(
            3,
            f"balances {balances} + pairs {pairs} x 1.00 != grants - fees +/- adjustments {external}",
            check="money",
        )


def _ledger(report: AuditReport) -> None:
    sums = {
        agent_id: quantize(total)
        for agent_id, total in LedgerEntry.objects.values("agent_id")
        .annotate(s=Sum("amount"))
        .values_list("agent_id", "s")
    }
    for agent in Agent.objects.only("id", "name", "balance"):
        if sums.get(agent.id, ZERO) != agent.balance:
            report.breach(
                4,
                f"agent {agent.name}: ledger replays to {sums.get(agent.id, ZERO)}, balance is {agent.balance}",
                check="ledger replay",
            )
    # Each row's balance_after must continue the previous one (the ledger replays row by row).
    running: dict = defaultdict(lambda: ZERO)
    for agent_id, amount, after, entry_id in (
        LedgerEntry.objects.order_by("id")
        .values_list("agent_id", "amount", "balance_after", "id")
        .iterator(chunk_size=5000)
    ):
        running[agent_id] += amount
        if running[agent_id] != after:
            report.breach(
                4,
                f"ledger entry {entry_id}: balance_after {after} but replay gives {running[agent_id]}",
                check="ledger chain",
            )
            running[agent_id] = after
    report.figures["ledger entries"] = LedgerEntry.objects.count()


def _book(report: AuditReport) -> None:
    best = (
        Order.objects.filter(status__in=Order.RESTING).values("market_id", "book_side").annotate(best=Max("book_price"))
    )
    tops: dict = defaultdict(dict)
    for row in best:
        tops[row["market_id"]][row["book_side"]] = row["best"]
    for market_id, top in tops.items():
        if Side.YES in top and Side.NO in top and top[Side.YES] + top[Side.NO] >= ONE:
            report.breach(
                5,
                f"market {market_id}: book crossed (best YES bid {top[Side.YES]} + best NO bid {top[Side.NO]} >= 1)",
                check="crossed book",
            )
    # The stored book levels are the sums of the resting orders (what the order book and the live feed show).
    resting = {
        (r["market_id"], r["book_side"], r["book_price"]): r["size"]
        for r in Order.objects.filter(status__in=Order.RESTING)
        .values("market_id", "book_side", "book_price")
        .annotate(size=Sum(F("size") - F("filled")))
    }
    stored = {
        (market_id, side, price): size
        for market_id, side, price, size in BookLevel.objects.filter(size__gt=0).values_list(
            "market_id", "book_side", "price", "size"
        )
    }
    for key in sorted(set(resting) | set(stored), key=str):
        if resting.get(key, 0) != stored.get(key, 0):
            report.breach(
                5,
                f"market {key[0]}: book level {key[1]} {key[2]} holds {stored.get(key, 0)}, "
                f"its resting orders {resting.get(key, 0)}",
                check="book levels",
            )
    closed = Order.objects.filter(status__in=Order.RESTING).exclude(market__status=Market.Status.OPEN).count()
    if closed:
        report.breach(
            5, f"{closed} orders still resting in closed or resolved markets", check="resting in closed markets"
        )
    if Order.objects.filter(filled__gt=F("size")).exists():
        report.breach(5, "an order has filled > size", check="filled within size")
    traded: defaultdict[uuid.UUID, int] = defaultdict(int)
    for order_id, size in (
        Trade.objects.values_list("maker_order_id").annotate(s=Sum("size")).values_list("maker_order_id", "s")
    ):
        traded[order_id] += size
    for order_id, size in (
        Trade.objects.values_list("taker_order_id").annotate(s=Sum("size")).values_list("taker_order_id", "s")
    ):
        traded[order_id] += size
    for order_id, filled in Order.objects.filter(filled__gt=0).values_list("id", "filled"):
        if traded.pop(order_id, 0) != filled:
            report.breach(5, f"order {order_id}: filled {filled} != traded contracts", check="filled = traded")
    if any(traded.values()):
        report.breach(
            5, f"trades against orders with filled = 0: {list(traded)[:5]}", check="trades of unfilled orders"
        )
    counted = dict(Trade.objects.values_list("market_id").annotate(n=Count("id")).values_list("market_id", "n"))
    for market_id, trade_count in Market.objects.values_list("id", "trade_count"):
        if trade_count != counted.get(market_id, 0):
            report.breach(
                5,
                f"market {market_id}: trade_count {trade_count} != {counted.get(market_id, 0)} trades",
                check="trade count",
            )
    report.figures["trades"] = Trade.objects.count()
    report.figures["resting orders"] = Order.objects.filter(status__in=Order.RESTING).count()


def _sequences(report: AuditReport) -> None:
    stats = {
        row["market_id"]: row
        for row in MarketEvent.objects.values("market_id").annotate(n=Count("id"), lo=Min("seq"), hi=Max("seq"))
    }
    for market in Market.objects.only("id", "seq"):
        row = stats.get(market.id, {"n": 0, "lo": None, "hi": None})
        if market.seq and (row["n"] != market.seq or row["lo"] != 1 or row["hi"] != market.seq):
            report.breach(
                6,
                f"market {market.id}: seq {market.seq} but events {row['n']} from {row['lo']} to {row['hi']}",
                check="sequence",
            )
        if not market.seq and row["n"]:
            report.breach(6, f"market {market.id}: events exist but seq is 0", check="events without seq")
    # An anti-join on the unique (market, seq) index: linear in the trades (a join of every trade with every event of
    # its market, as this once was, never finished on a market of 100,000 trades).
    trade_event = MarketEvent.objects.filter(
        market_id=OuterRef("market_id"), seq=OuterRef("seq"), kind=MarketEvent.Kind.TRADE
    )
    stray = Trade.objects.filter(~Exists(trade_event)).count()
    if stray:
        report.breach(6, f"{stray} trades without a trade event at their seq", check="trade events")
    report.figures["markets"] = Market.objects.count()
    # Each agent's private feed numbers its messages 1..feed_seq without gaps, as a market numbers its events
    # (DESIGN section 8: a client resuming with ?since= gets every message it missed).
    feeds = {
        row["agent_id"]: (row["n"], row["lo"], row["hi"])
        for row in AgentEvent.objects.values("agent_id").annotate(n=Count("id"), lo=Min("seq"), hi=Max("seq"))
    }
    for agent_id, name, seq in Agent.objects.values_list("id", "name", "feed_seq"):
        n, lo, hi = feeds.get(agent_id, (0, None, None))
        if (n, lo, hi) != ((seq, 1, seq) if seq else (0, None, None)):
            report.breach(6, f"agent {name}: feed seq {seq} but messages {n} from {lo} to {hi}", check="agent sequence")


def _ranks(report: AuditReport) -> None:
    """Reputation is the realized P&L of resolved markets less what trades with linked agents made there, and
    ``linked_pnl`` what those trades made: settled in resolved markets, at most in open ones (DESIGN section 4a)."""
    reputation: dict = defaultdict(lambda: ZERO)
    linked: dict = defaultdict(lambda: ZERO)
    positions = Position.objects.select_related("market").only(
        "agent_id", "realized_pnl", "linked_cash", "linked_yes", "linked_no", "market__status", "market__outcome"
    )
    for pos in positions.iterator(chunk_size=5000):
        if pos.market.status == Market.Status.RESOLVED:
            settled = quantize(pos.linked_worth(pos.market.outcome))
            reputation[pos.agent_id] += pos.realized_pnl - settled
            linked[pos.agent_id] += settled
        else:
            linked[pos.agent_id] += pos.linked_worth()
    for agent_id, name, agent_reputation, agent_linked in Agent.objects.values_list(
        "id", "name", "reputation", "linked_pnl"
    ):
        if agent_reputation != reputation[agent_id]:
            report.breach(
                "4a",
                f"agent {name}: reputation {agent_reputation} != positions' {reputation[agent_id]}",
                check="reputation",
            )
        if agent_linked != linked[agent_id]:
            report.breach(
                "4a", f"agent {name}: linked_pnl {agent_linked} != positions' {linked[agent_id]}", check="linked pnl"
            )


__all__ = ["CHECKS", "AuditReport", "run_audit"]
