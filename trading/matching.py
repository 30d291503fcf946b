"""The matching engine's pure part: which resting orders an incoming order trades with (DESIGN section 3).

Both queues hold bids: YES bids (BUY YES at p, SELL NO at q as 1 - q) and NO bids (BUY NO at q, SELL YES at p as
1 - p). A YES bid at p crosses a NO bid at q when p + q >= 1. Resting orders are visited best price first, then
earliest arrival; a trade executes at the resting (maker) order's price, so the taker gets any price improvement.

This module reads no database and changes nothing: ``plan_match`` returns a plan that the service applies after
locking the agents involved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from moltstreet.money import ONE, complement
from trading.models import Action, Order, Side


def book_position(side: str, action: str, price: Decimal) -> tuple[str, Decimal]:
    """The queue and bid price of an intent: BUY YES p -> (YES, p), SELL NO q -> (YES, 1 - q),
    BUY NO q -> (NO, q), SELL YES p -> (NO, 1 - p)."""
    if action == Action.BUY:
        return side, price
    return opposite(side), complement(price)


def opposite(book_side: str) -> str:
    return Side.NO if book_side == Side.YES else Side.YES


def crosses(book_price: Decimal, other_book_price: Decimal) -> bool:
    """A bid at ``book_price`` in one queue crosses a bid at ``other_book_price`` in the other when they sum to >= 1."""
    return book_price + other_book_price >= ONE


def yes_price_of_maker(maker_book_side: str, maker_book_price: Decimal) -> Decimal:
    """The trade's YES price x: the maker's price expressed as a YES price."""
    return maker_book_price if maker_book_side == Side.YES else complement(maker_book_price)


def trade_kind(yes_party_action: str, no_party_action: str) -> str:
    """mint (both buy), transfer_yes (YES bought from a YES seller), transfer_no (NO bought from a NO seller), burn."""
    if yes_party_action == Action.BUY and no_party_action == Action.BUY:
        return "mint"
    if yes_party_action == Action.BUY:
        return "transfer_yes"
    if no_party_action == Action.BUY:
        return "transfer_no"
    return "burn"


@dataclass
class Fill:
    """One planned trade: ``size`` contracts with the resting ``maker`` order at ``yes_price`` (the maker's price as
    a YES price, credits per contract)."""

    maker: Order
    size: int
    yes_price: Decimal


@dataclass
class MatchPlan:
    """What an incoming order does to the book: its ``fills`` in priority order, the agent's own resting orders it
    would trade with (cancelled instead: self-trade prevention) and the resting GTD orders found expired on the way."""

    fills: list[Fill] = field(default_factory=list)
    self_trade_cancels: list[Order] = field(default_factory=list)
    expired: list[Order] = field(default_factory=list)

    @property
    def filled(self) -> int:
        return sum(f.size for f in self.fills)

    @property
    def touched(self) -> list[Order]:
        """The resting orders the plan changes: expired, cancelled as self-trades, or filled (makers)."""
        return self.expired + self.self_trade_cancels + [f.maker for f in self.fills]


def plan_match(
    *,
    agent_id: uuid.UUID,
    book_side: str,
    book_price: Decimal,
    size: int,
    resting: Iterable[Order],
    now: datetime,
) -> MatchPlan:
    """Walk ``resting`` (the opposite queue's crossing orders, in priority order) and plan the fills.

    Resting orders of the same agent are cancelled (self-trade prevention) and matching goes on past them, so the
    book is never left crossed. GTD orders found past their ``expires_at`` are expired instead of traded.
    """
    plan = MatchPlan()
    left = size
    for order in resting:
        if left == 0:
            break
        if not crosses(book_price, order.book_price):
            break
        if order.expires_at is not None and order.expires_at <= now:
            plan.expired.append(order)
            continue
        if order.agent_id == agent_id:
            plan.self_trade_cancels.append(order)
            continue
        qty = min(left, order.size - order.filled)
        plan.fills.append(Fill(maker=order, size=qty, yes_price=yes_price_of_maker(order.book_side, order.book_price)))
        left -= qty
    return plan
