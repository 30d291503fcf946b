"""Random sequences of exchange commands keep every invariant of DESIGN section 5 (a Hypothesis state machine).

Each step calls one service the way the API would: registering agents, creating markets, placing orders of all four
intents with random prices, sizes and times in force (and invalid ones), alone or in batches, selling held contracts,
amending, cancelling, expiring, closing, resolving (operators at once; oracles proposing, agents disputing, the
scheduler settling), linking agents (one owner: their trades earn no rank), adjusting credits, and arming, missing and
firing the dead-man's switch. After every step ``run_audit`` (which replays the ledger) must
find nothing. Only ``MoltStreetError`` may escape a service, and a refused call must change nothing at all. A preview
followed at once by the same order must have predicted it exactly.

Each example runs inside its own savepoint that is rolled back afterwards, so examples are independent.
"""

from __future__ import annotations

import itertools
import os
import secrets
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone
from hypothesis import seed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    precondition,
    rule,
)

from agents.models import Agent, AgentEvent, LedgerEntry
from agents.services import agent_grant_credits, agents_link
from markets.models import Market
from markets.services import forecast_record
from moltstreet.errors import (
    InsufficientBalance,
    InsufficientPosition,
    InvalidRequest,
    MoltStreetError,
)
from moltstreet.money import quantize
from testsupport.api import operator_resolver
from trading.audit import run_audit
from trading.heartbeat import heartbeat_arm, heartbeat_expire, heartbeats_expire_due
from trading.lifecycle import market_close, orders_expire_due
from trading.models import Order, Position
from trading.order_batch import OrderRequest, order_place_batch
from trading.orders import PlaceResult, order_amend, order_cancel, order_cancel_all, order_place, order_preview
from trading.resolution import market_resolve, resolution_dispute, resolution_propose, resolutions_finalize_due
from trading.suspension import agent_reinstate, agent_suspend
from trading.tests.factories import new_agent, new_market, snapshot

ZERO = Decimal("0.00")
ONE = Decimal("1.00")
CENT = Decimal("0.01")

# Mostly near 0.50 (Hypothesis favours the offset 0, and 0.50 + 0.50 crosses), so that orders often trade; now and
# then anywhere on the tick grid.
prices = st.one_of(st.integers(min_value=-15, max_value=15).map(lambda d: 50 + d), st.integers(1, 99)).map(
    lambda cents: Decimal(cents) * CENT
)
sizes = st.one_of(st.integers(min_value=1, max_value=20), st.integers(min_value=21, max_value=3000))
tifs = st.sampled_from(["GTC", "GTC", "GTD", "IOC", "FOK"])
client_ids = st.sampled_from([None, None, None, None, None, None, "c-1", "c-2"])
forecasts = st.one_of(st.none(), st.integers(min_value=0, max_value=100).map(lambda n: Decimal(n) / 100))
picks = st.integers(min_value=0, max_value=1_000)
order_requests = st.fixed_dictionaries(
    {
        "agent": picks,
        "market": picks,
        # "SELL held" first: Hypothesis often draws the first choice.
        "intent": st.sampled_from(
            ["SELL held", "BUY YES", "BUY NO", "SELL held", "BUY YES", "BUY NO", "SELL YES", "SELL NO"]
        ),
        "price": prices,
        "size": sizes,
        "share": st.integers(min_value=1, max_value=100),
        "tif": tifs,
        "post_only": st.booleans(),
        "expiry_hours": st.integers(min_value=1, max_value=6),
        "client_order_id": client_ids,
        "forecast": forecasts,
    }
)

# (kwargs override, why it is invalid): each must raise a MoltStreetError and change nothing.
INVALID = [
    ({"price": "0.00"}, "price below 0.01"),
    ({"price": "1.00"}, "price above 0.99"),
    ({"price": "0.555"}, "price off the tick"),
    ({"price": "abc"}, "price not a number"),
    ({"size": 0}, "size below 1"),
    ({"size": 10_000_000}, "size above the maximum"),
    ({"size": "2.5"}, "size not whole"),
    ({"side": "MAYBE"}, "unknown side"),
    ({"action": "HOLD"}, "unknown action"),
    ({"time_in_force": "DAY"}, "unknown time in force"),
    ({"time_in_force": "GTD"}, "GTD without expiry"),
    ({"time_in_force": "IOC", "expires_at": "soon"}, "expiry without GTD"),
    ({"time_in_force": "FOK", "post_only": True}, "post_only with FOK"),
    ({"market_id": "00000000-0000-0000-0000-000000000000"}, "unknown market"),
    ({"market_id": "not-a-market"}, "malformed market id"),
    ({"forecast": "1.5"}, "forecast above 1"),
    ({"client_order_id": "x" * 65}, "client_order_id too long"),
]


# A batch entry's invalidity: mostly none (the order as drawn), else an index into INVALID.
invalid_picks = st.one_of(st.none(), st.none(), st.none(), st.integers(min_value=0, max_value=len(INVALID) - 1))
# Heartbeat timeouts that never lapse by the clock within an example (a lapse is a step of its own), and refused ones.
timeouts = st.sampled_from([60, 300])
bad_timeouts = st.sampled_from([-1, 1, 4, 301, "30", 2.5, True, None])


def full_state() -> dict:
    """``snapshot()`` and what it leaves out that the order tools change: order sizes and amend chains, the agents'
    private feeds (a preview must not number a message) and their dead-man's switches."""
    state = snapshot()
    state["amends"] = list(Order.objects.order_by("id").values_list("id", "size", "replaced_by"))
    state["feeds_and_switches"] = list(Agent.objects.order_by("id").values_list("id", "feed_seq", "heartbeat_deadline"))
    state["feed_events"] = AgentEvent.objects.count()
    return state


def position_figures(position: Position | None) -> tuple:
    """What a position holds, owes and made; zeros for none."""
    if position is None:
        return (0, 0, 0, 0, ZERO, ZERO, ZERO)
    return (
        position.yes_shares,
        position.no_shares,
        position.yes_reserved,
        position.no_reserved,
        position.yes_cost,
        position.no_cost,
        position.realized_pnl,
    )


class Exchange(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # Every example runs in a savepoint rolled back at teardown: the next example starts from an empty exchange.
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.agents: list = []
        self.markets: list = []
        self.orders: list[uuid.UUID] = []
        self.keyed: list[dict] = []  # successful requests with a client_order_id, to repeat
        self.names = itertools.count()
        self.audited = None  # the state (snapshot() and the feed message count) last audited

    def teardown(self):
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    # -- helpers ------------------------------------------------------------------------------------------------
    def call(self, fn, /, *, whole: bool = False, **kwargs):
        """Call a service; a refusal must be a MoltStreetError and leave every row as it was (``whole``: also order
        sizes, amend chains, feeds and switches, :func:`full_state`)."""
        state = full_state if whole else snapshot
        before = state()
        try:
            return fn(**kwargs), None
        except MoltStreetError as exc:
            assert state() == before, f"{fn.__name__} refused with {exc.code} but changed something"
            return None, exc

    def pick(self, items, n):
        return items[n % len(items)]

    def refresh(self, agent):
        agent.refresh_from_db()
        return agent

    def check_fills(self, kwargs, result):
        """The taker never trades beyond its limit, and its order's state matches its time in force."""
        order, price = result.order, Decimal(str(kwargs["price"]))
        assert order.filled == sum(t.size for t in result.trades) or not result.created
        for trade in result.trades:
            own_price = trade.price if kwargs["side"] == "YES" else ONE - trade.price
            if kwargs["action"] == "BUY":
                assert own_price <= price, (trade.price, kwargs)
            else:
                assert own_price >= price, (trade.price, kwargs)
            assert trade.maker_agent_id != trade.taker_agent_id
        if result.created:
            if kwargs.get("time_in_force") in ("IOC", "FOK"):
                assert order.status in ("filled", "cancelled")
            if kwargs.get("time_in_force") == "FOK":
                assert order.filled in (0, order.size)
            if kwargs.get("post_only"):
                assert result.trades == []

    def open_market(self, n):
        """A market still open for trading, when there is one (most orders should have a chance to trade)."""
        open_ids = set(Market.objects.filter(status=Market.Status.OPEN).values_list("id", flat=True))
        return self.pick([m for m in self.markets if m.id in open_ids] or self.markets, n)

    def place(self, kwargs):
        agent = self.refresh(kwargs["agent"])
        available = agent.available_balance
        result, error = self.call(order_place, **kwargs)
        if result is not None:
            self.check_fills(kwargs, result)
            if result.created:
                self.orders.append(result.order.id)
                if kwargs.get("client_order_id"):
                    self.keyed.append(kwargs)
        elif isinstance(error, InsufficientBalance):
            # Only a BUY beyond the available balance may be refused for money.
            price, size = Decimal(str(kwargs["price"])), kwargs["size"]
            assert kwargs["action"] == "BUY" and price * size > available, (kwargs, available)
        return result, error

    # -- rules --------------------------------------------------------------------------------------------------
    @initialize()
    def open_the_exchange(self):
        self.agents = [new_agent(f"prop-{next(self.names)}") for _ in range(4)]
        self.markets = [new_market(self.agents[0]), new_market(self.agents[1])]

    @rule(orders=st.lists(order_requests, min_size=1, max_size=4))
    def place_orders(self, orders):
        """One to four orders in a row, each of any intent. "SELL held" sells part of what some agent holds
        unreserved (or buys when nobody holds anything); plain SELLs may exceed the position and must be refused."""
        for request in orders:
            self.place_one(**request)

    @rule(orders=st.lists(order_requests, min_size=1, max_size=4))
    def place_more_orders(self, orders):
        """The same again, so that placing orders gets about two thirds of the steps."""
        for request in orders:
            self.place_one(**request)

    def place_one(self, **request):
        kwargs, free = self.order_kwargs(**request)
        _result, error = self.place(kwargs)
        if free is not None:  # selling contracts it holds unreserved is never refused for the position
            assert not isinstance(error, InsufficientPosition), (kwargs, free)

    def order_kwargs(
        self,
        agent,
        market,
        intent,
        price,
        size,
        share,
        tif,
        post_only,
        expiry_hours,
        client_order_id,
        forecast,
        owner=None,
    ) -> tuple[dict, int | None]:
        """``order_place``'s arguments for one drawn request, and for "SELL held" the contracts the seller holds
        unreserved (``None`` otherwise). ``owner``: the order is that agent's, and sells only what it holds."""
        action, side = intent.split()
        kwargs = {
            "agent": owner or self.pick(self.agents, agent),
            "market_id": self.open_market(market).id,
            "side": side,
            "action": action,
            "price": price,
            "size": size,
            "time_in_force": tif,
            "post_only": post_only and tif in ("GTC", "GTD"),
            "expires_at": timezone.now() + timedelta(hours=expiry_hours) if tif == "GTD" else None,
            "client_order_id": client_order_id,
            "forecast": forecast,
        }
        free = None
        if side == "held":
            held = Position.objects.filter(market__in=[m.id for m in self.markets]).order_by("id")
            if owner is not None:
                held = held.filter(agent=owner)
            sellable = [
                (p, side, free)
                for p in held
                for side, free in (("YES", p.yes_shares - p.yes_reserved), ("NO", p.no_shares - p.no_reserved))
                if free > 0
            ]
            if sellable:
                pos, side, free = self.pick(sellable, agent)
                kwargs |= {"agent": pos.agent, "market_id": pos.market_id, "side": side}
                kwargs["size"] = max(1, free * share // 100)
            else:
                kwargs |= {"action": "BUY", "side": "YES" if share % 2 else "NO"}
        return kwargs, free

    @precondition(lambda self: self.keyed)
    @rule(which=picks)
    def repeat_a_keyed_order(self, which):
        """A repeated client_order_id returns the original order (the newest of its amend chain, as amended) and
        creates nothing."""
        kwargs = self.pick(self.keyed, which)
        before = snapshot()
        result = order_place(**kwargs)
        assert result.created is False
        assert snapshot() == before

    def rekey(self, order: Order) -> None:
        """After an amend: a retry of the request behind ``order``'s chain is answered with ``order`` as it now
        stands (the newest order of a chain holds the ``client_order_id``), so it must now carry its price and size."""
        for kwargs in self.keyed:
            if kwargs["agent"].id == order.agent_id and kwargs["client_order_id"] == order.client_order_id:
                kwargs |= {"price": order.price, "size": order.size}

    @rule(agent=picks, orders=st.lists(st.tuples(order_requests, invalid_picks), min_size=1, max_size=5))
    def place_a_batch(self, agent, orders):
        """One to five orders of one agent in one batch, some of them invalid: each succeeds or fails on its own
        (an invalid one always fails), what succeeds trades within its limits, and a batch that wholly fails changes
        nothing."""
        owner = self.pick(self.agents, agent)
        entries = []
        for request, invalid in orders:
            if invalid is None:
                kwargs, _free = self.order_kwargs(**request, owner=owner)
            else:
                base = {"agent": owner, "market_id": self.open_market(request["market"]).id, "side": "YES"}
                kwargs = base | {"action": "BUY", "price": "0.50", "size": 1} | INVALID[invalid][0]
            entries.append(kwargs)
        requests = [
            OrderRequest(kwargs["market_id"], {k: v for k, v in kwargs.items() if k not in ("agent", "market_id")})
            for kwargs in entries
        ]
        before = full_state()
        outcomes = order_place_batch(agent=owner, requests=requests)
        assert len(outcomes) == len(entries)
        for kwargs, (_request, invalid), outcome in zip(entries, orders, outcomes, strict=True):
            if invalid is not None:
                assert isinstance(outcome, MoltStreetError), f"a batch accepted an order with {INVALID[invalid][1]}"
            if isinstance(outcome, MoltStreetError):
                continue
            assert isinstance(outcome, PlaceResult), outcome
            self.check_fills(kwargs, outcome)
            if outcome.created:
                self.orders.append(outcome.order.id)
                if kwargs.get("client_order_id"):
                    self.keyed.append(kwargs)
        if all(isinstance(outcome, MoltStreetError) for outcome in outcomes):
            assert full_state() == before, "a batch of refused orders changed something"

    @precondition(lambda self: self.orders)
    @rule(
        which=picks,
        resting=st.booleans(),
        own=st.sampled_from([True, True, True, False]),
        agent=picks,
        change=st.sampled_from(["smaller", "smaller", "price", "larger", "price and size", "neither"]),
        price=prices,
        share=st.integers(min_value=0, max_value=100),
    )
    def amend_an_order(self, which, resting, own, agent, change, price, share):
        """Amend one of the orders placed (``resting``: one still resting, if any), usually by its owner: to a
        ``smaller`` size (``share`` percent of it: 0 is refused, 100 changes nothing), a new ``price``, a ``larger``
        size, both, or ``neither`` (refused). A new price or a larger size replaces it by an order for what is left, a
        smaller size shrinks it in place; any refusal changes nothing."""
        candidates = self.orders
        if resting:
            still = set(Order.objects.filter(id__in=self.orders, status__in=Order.RESTING).values_list("id", flat=True))
            candidates = [order_id for order_id in self.orders if order_id in still] or self.orders
        order = Order.objects.get(id=self.pick(candidates, which))
        amender = order.agent if own else self.pick(self.agents, agent)
        size = {
            "smaller": order.size * share // 100,
            "larger": order.size + max(1, order.size * share // 100),
            "price and size": order.size * (share + 50) // 100,
        }.get(change)
        price = price if "price" in change else None
        result, error = self.call(order_amend, whole=True, agent=amender, order_id=order.id, price=price, size=size)
        if error is not None:
            return
        assert amender.id == order.agent_id, "another agent amended an order"
        old = Order.objects.get(id=order.id)
        if result.replaced is None:  # in place (or no change): same order, same price, the new size
            assert result.order.id == old.id and old.status in Order.RESTING
            assert (old.price, old.size) == (order.price, order.size if size is None else size)
        else:
            new = Order.objects.get(id=result.order.id)
            assert (old.status, old.cancel_reason, old.replaced_by_id) == ("cancelled", "amended", new.id)
            assert new.price == (order.price if price is None else price)
            assert new.size == (order.size if size is None else size) - old.filled
            kept = ("side", "action", "time_in_force", "expires_at", "post_only", "client_order_id")
            assert [getattr(new, f) for f in kept] == [getattr(old, f) for f in kept]
            as_placed = {f: getattr(new, f) for f in kept} | {"price": new.price}
            self.check_fills(as_placed, PlaceResult(order=result.order, trades=result.trades, created=True))
            self.orders.append(new.id)
        if old.client_order_id:
            self.rekey(result.order)

    @rule(
        request=order_requests,
        marketable=st.sampled_from([True, True, True, False]),
        reach=st.integers(min_value=0, max_value=3),
    )
    def preview_then_place(self, request, marketable, reach):
        """A preview stores nothing, and the same order placed right after it does exactly what it said: the same
        fills [(price, size, maker order)] in order, the same order, balance, reserve and position, the same
        self-trade cancels, or the same error. ``marketable``: priced to cross the best opposite order and ``reach``
        cents beyond, when there is one, so that most previews predict fills."""
        kwargs, _free = self.order_kwargs(**request)
        if marketable:
            bids_on = kwargs["side"] if kwargs["action"] == "BUY" else {"YES": "NO", "NO": "YES"}[kwargs["side"]]
            best = (
                Order.objects.filter(market_id=kwargs["market_id"], status__in=Order.RESTING)
                .exclude(book_side=bids_on)
                .aggregate(best=Max("book_price"))["best"]
            )
            if best is not None:  # where it rests in the YES-price book, then its own side's price
                book_price = min(ONE - best + reach * CENT, ONE - CENT)
                kwargs["price"] = book_price if kwargs["action"] == "BUY" else ONE - book_price
        agent = self.refresh(kwargs["agent"])
        fields = {k: v for k, v in kwargs.items() if k not in ("agent", "market_id")}
        before = full_state()
        preview = order_preview(agent=agent, market_id=kwargs["market_id"], **fields)
        assert full_state() == before, "a preview changed something"
        self_traded = set(Order.objects.filter(cancel_reason="self_trade").values_list("id", flat=True))
        result, error = self.place(kwargs)
        if preview.error is not None:
            assert error is not None and error.code == preview.error.code, (preview.error, error, kwargs)
            return
        assert error is None, (error, kwargs)
        fills = [(t.price, t.size, t.maker_order_id) for t in result.trades]
        assert [(t.price, t.size, t.maker_order_id) for t in preview.trades] == fills, kwargs
        assert preview.created == result.created
        if not result.created:
            return
        taker, agent = result.order, self.refresh(agent)
        assert (preview.order.status, preview.order.size, preview.order.filled) == (
            taker.status,
            taker.size,
            taker.filled,
        )
        assert (preview.agent.balance, preview.agent.locked_balance) == (agent.balance, agent.locked_balance)
        stored = Position.objects.filter(agent=agent, market_id=kwargs["market_id"]).first()
        assert position_figures(preview.position) == position_figures(stored), kwargs
        cancelled = set(Order.objects.filter(cancel_reason="self_trade").values_list("id", flat=True)) - self_traded
        assert {o.id for o in preview.self_trade_cancels} == cancelled
        left = taker.size - taker.filled if taker.is_resting else 0
        buying = taker.action == "BUY"
        assert (preview.reserve_credits, preview.reserve_contracts) == (
            quantize(taker.price * left) if buying else ZERO,
            0 if buying else left,
        )

    @rule(
        what=st.sampled_from(
            ["arm", "arm", "disarm", "refused", "lapse", "lapse", "late", "expire", "expire", "scheduler"]
        ),
        armed=st.booleans(),
        agent=picks,
        timeout=timeouts,
        bad=bad_timeouts,
        minutes=st.integers(min_value=0, max_value=10),
    )
    def heartbeat(self, what, armed, agent, timeout, bad, minutes):
        """The dead-man's switch of an agent (``armed``: one whose switch is armed, if any): arming and disarming
        it (a ``late`` heartbeat fires it first), a refused timeout, the clock passing its deadline (the deadline moved
        back a second, instead of sleeping), and firing it at a ``now`` past the deadline, by one agent's expiry or
        the scheduler's pass: every resting order of the agent cancelled, the switch disarmed; before its deadline,
        or disarmed, it does not fire."""
        candidates = self.agents
        if armed:
            ids = set(Agent.objects.filter(heartbeat_deadline__isnull=False).values_list("id", flat=True))
            candidates = [a for a in self.agents if a.id in ids] or self.agents
        agent = self.pick(candidates, agent)
        now = timezone.now()
        deadline = Agent.objects.values_list("heartbeat_deadline", flat=True).get(id=agent.id)
        resting = set(Order.objects.filter(agent=agent, status__in=Order.RESTING).values_list("id", flat=True))
        if what == "late":  # the deadline passes, then the heartbeat comes
            deadline = now - timedelta(seconds=1) if deadline is not None else None
            Agent.objects.filter(id=agent.id).update(heartbeat_deadline=deadline)
        if what in ("arm", "late", "disarm"):
            beat, _error = self.call(
                heartbeat_arm, whole=True, agent=agent, timeout_seconds=0 if what == "disarm" else timeout
            )
            late = deadline is not None and deadline <= now
            assert beat.cancelled == (len(resting) if late else 0)
            assert Agent.objects.values_list("heartbeat_deadline", flat=True).get(id=agent.id) == beat.deadline
            assert (beat.deadline is None) == (what == "disarm")
        elif what == "refused":
            _beat, error = self.call(heartbeat_arm, whole=True, agent=agent, timeout_seconds=bad)
            assert isinstance(error, InvalidRequest), bad
        elif what == "lapse":
            Agent.objects.filter(id=agent.id, heartbeat_deadline__isnull=False).update(
                heartbeat_deadline=now - timedelta(seconds=1)
            )
        elif what == "expire":
            before = full_state()
            at = (deadline or now) + timedelta(seconds=1 if minutes else -1)  # past the deadline, or just before
            cancelled = heartbeat_expire(agent_id=agent.id, now=at)
            if deadline is None or at < deadline:
                assert cancelled is None and full_state() == before
            else:
                assert {o.id for o in cancelled} == resting
                assert not Order.objects.filter(agent=agent, status__in=Order.RESTING).exists()
                assert Agent.objects.values_list("heartbeat_deadline", flat=True).get(id=agent.id) is None
                beat = AgentEvent.objects.filter(agent=agent).latest("seq")
                assert (beat.kind, beat.data["event"], set(beat.data["cancelled"])) == (
                    "heartbeat",
                    "expired",
                    {str(order_id) for order_id in resting},
                )
        elif what == "scheduler":
            at = now + timedelta(minutes=minutes)
            due = set(Agent.objects.filter(heartbeat_deadline__lte=at).values_list("id", flat=True))
            assert heartbeats_expire_due(now=at) == len(due)
            assert not Agent.objects.filter(id__in=due, heartbeat_deadline__isnull=False).exists()
            assert not Order.objects.filter(agent__in=due, status__in=Order.RESTING).exists()

    @rule(
        what=st.sampled_from(
            [
                "cancel",
                "cancel",
                "cancel_all",
                "expire",
                "close",
                "resolve",
                "propose",
                "dispute",
                "settle_due",
                "link",
                "forecast",
                "grant",
                "suspend",
                "reinstate",
                "register",
                "create_market",
                "invalid_order",
                "invalid_order",
            ]
        ),
        agent=picks,
        index=picks,
        own=st.booleans(),
        outcome=st.sampled_from(["YES", "NO", "VOID", "MAYBE"]),
        hours=st.integers(min_value=1, max_value=7),
        number=st.integers(min_value=-100_000, max_value=50_000),
    )
    def operate(self, what, agent, index, own, outcome, hours, number):
        """Everything besides placing orders, in one rule so that trading keeps most of the steps."""
        agent = self.pick(self.agents, agent)
        market = self.pick(self.markets, index)
        if what == "cancel" and self.orders:
            order_id = self.pick(self.orders, index)
            owner = Order.objects.get(id=order_id).agent if own else agent
            self.call(order_cancel, agent=owner, order_id=order_id)
        elif what == "cancel_all":
            self.call(order_cancel_all, agent=agent, market_id=market.id if own else None)
        elif what == "expire":
            orders_expire_due(now=timezone.now() + timedelta(hours=hours))
        elif what == "close":
            self.call(market_close, market_id=market.id)
        elif what == "resolve":
            was_resolved = Market.objects.get(id=market.id).status == Market.Status.RESOLVED
            _result, error = self.call(
                market_resolve, market_id=market.id, outcome=outcome, resolver=operator_resolver()
            )
            assert (error is None) == (outcome != "MAYBE" and not was_resolved), (outcome, was_resolved, error)
        elif what == "propose":  # an oracle proposes; refused on open markets and where it has a stake
            Agent.objects.filter(id=agent.id).update(is_oracle=True)
            self.call(resolution_propose, market_id=market.id, outcome=outcome, agent=agent)
        elif what == "dispute":
            self.call(resolution_dispute, market_id=market.id, agent=agent, reason=f"reason {hours}")
        elif what == "settle_due":  # the scheduler, some hours on: undisputed proposals past their window pay
            resolutions_finalize_due(now=timezone.now() + timedelta(hours=hours * 6))
        elif what == "link":  # one owner's agents: their trades with each other from now on earn no rank
            agents_link(agent_ids=[agent.id, self.pick(self.agents, index).id])
        elif what == "forecast":
            self.call(forecast_record, agent=agent, market_id=market.id, probability=Decimal(hours) / 7)
        elif what == "grant":
            self.call(agent_grant_credits, agent_id=agent.id, amount=Decimal(number) * CENT)
        elif what == "suspend":
            agent_suspend(agent_id=agent.id)
            assert not Order.objects.filter(agent=agent, status__in=Order.RESTING).exists()
        elif what == "reinstate":
            agent_reinstate(agent_id=agent.id)
        elif what == "invalid_order":
            override, why = INVALID[number % len(INVALID)]
            kwargs = {
                "agent": agent,
                "market_id": self.open_market(index).id,
                "side": "YES",
                "action": "BUY",
                "price": "0.50",
                "size": 1,
            } | override
            _result, error = self.call(order_place, **kwargs)
            assert error is not None, f"accepted an order with {why}"
        elif what == "register" and len(self.agents) < 6:
            self.agents.append(new_agent(f"prop-{next(self.names)}"))
        elif what == "create_market" and len(self.markets) < 6:
            before = snapshot()
            try:
                self.markets.append(new_market(agent))
            except MoltStreetError:
                assert snapshot() == before

    # -- invariants ---------------------------------------------------------------------------------------------
    @invariant()
    def every_invariant_of_section_5_holds(self):
        # The audit is a pure function of the rows; a step that changed none of them (a refusal) cannot break it.
        state = (snapshot(), AgentEvent.objects.count())  # a switch firing with no order to cancel adds only a message
        if state == self.audited:
            return
        report = run_audit()
        assert report.ok, report.render()
        self.pnl_and_reputation_match_the_ledger()
        self.audited = state

    def pnl_and_reputation_match_the_ledger(self):
        """DESIGN 4a: in a resolved market an agent's realized P&L is its payouts + sale proceeds + netting credits -
        purchase costs, i.e. the sum of its ledger rows for that market (the fee aside); summed over the agents that
        is zero, as every pair was paid out; reputation is the sum of realized P&L over resolved markets, less what
        trades with linked agents made there."""
        resolved = list(Market.objects.filter(status=Market.Status.RESOLVED).values_list("id", flat=True))
        flows = {
            (agent_id, market_id): total
            for agent_id, market_id, total in LedgerEntry.objects.filter(
                market_id__in=resolved, kind__in=["trade", "netting", "payout"]
            )
            .values("agent_id", "market_id")
            .annotate(total=Sum("amount"))
            .values_list("agent_id", "market_id", "total")
        }
        pnl = {
            (agent_id, market_id): realized
            for agent_id, market_id, realized in Position.objects.filter(market_id__in=resolved).values_list(
                "agent_id", "market_id", "realized_pnl"
            )
        }
        assert pnl == {key: total for key, total in flows.items() if total or key in pnl}, (pnl, flows)
        for market_id in resolved:
            assert sum((v for (_, m), v in pnl.items() if m == market_id), ZERO) == ZERO
        # Reputation is that P&L less what trades with linked agents made (DESIGN section 4a), settled at the outcome.
        linked: dict = {}
        for position in Position.objects.filter(market_id__in=resolved).select_related("market"):
            worth = quantize(position.linked_worth(position.market.outcome))
            linked[position.agent_id] = linked.get(position.agent_id, ZERO) + worth
        for agent_id, reputation in Agent.objects.values_list("id", "reputation"):
            realized = sum((v for (a, _), v in pnl.items() if a == agent_id), ZERO)
            assert reputation == realized - linked.get(agent_id, ZERO), agent_id


@pytest.mark.django_db
def test_random_command_sequences_keep_every_invariant(property_settings):
    # How many sequences, and how long, is the profile's (conftest.py: 10 x 40 in `make test`, more in
    # `make test-long`). Which sequences is a new seed each run, named on failure; PROPERTY_SEED=<n> replays one.
    # get_state_machine_test is run_state_machine_as_test without the call, so that @seed can be applied to it.
    chosen = os.environ.get("PROPERTY_SEED")
    run_seed = int(chosen) if chosen else secrets.randbits(64)
    test = seed(run_seed)(get_state_machine_test(Exchange, settings=property_settings))
    try:
        test()
    except Exception as exc:
        exc.add_note(f"Replay these sequences with PROPERTY_SEED={run_seed} (and the same PROPERTY_PROFILE).")
        raise
