"""The backtest engine: a strategy replayed on a market's recorded history, on a simulated clock (DESIGN section 11).

History is what ``GET /api/v1/markets/{id}/events/`` returns (:meth:`MarketHistory.fetch`, or the server's own
reader): the market's public events in ``seq`` order, each with its ``created_at``: ``book`` (levels with their new
absolute size), ``trade``, ``reference`` (the source's snapshot, DESIGN section 10) and ``market`` (created,
closed, resolved...). Several markets are merged by time and share one cash balance.

The fill rules, never more optimistic than the recorded market:

* **Crossing orders** fill against the recorded book at its prices (the resting level's, as a maker's price), up to
  the displayed sizes, best price first. What the strategy took stays taken: a level's available size is its
  recorded size less what the strategy consumed there, and when a later event shrinks the level, the consumed part
  shrinks with it (``min(consumed, new size)``: as if the strategy's share came off first). A recorded trade takes
  its size off the maker's level when it prints (the book event that records it comes next), so no hook takes
  liquidity a recorded trade already took. The strategy's own resting orders are not in the recorded book; a new
  order that would cross one of them cancels it first (self-trade prevention, reason ``self_trade``), as the
  exchange does.
* **Resting orders** fill only when a later recorded trade prints *through* their price (a YES bid at p when a trade
  prints below p; a NO bid at q, a YES ask at 1 - q, when a trade prints above 1 - q), at their own price, up to
  that trade's size shared among them best price first, then oldest. A trade printing *at* the price does not
  fill them: the queue ahead is unknown.
* **Collateral and netting** as in section 3: a BUY reserves ``price x size`` credits when placed (refused with
  ``InsufficientBalance`` beyond the available cash), a SELL reserves contracts held (``InsufficientPosition``);
  after each fill the unreserved YES and NO contracts of a market merge pairwise into 1.00 credit each. A backtest
  can never spend money it does not have.
* **Time in force**: GTC rests; GTD rests until ``expires_at`` on the simulated clock; IOC cancels what did not fill
  at once; FOK fills wholly at once or not at all; ``post_only`` refuses an order that would cross. An order after
  the market closed (its ``closed`` event, or its deadline) is refused with ``MarketClosed``, and closing cancels
  resting orders.
* **Resolution** pays as in section 4: 1.00 per winning contract, 0.50 per contract on both sides for VOID.
  What is left at the end is marked at the last recorded trade's YES price (NO at 1 - it), else at the source's
  reference price, else at the strategy's last fill price in that market.

Hooks run in time order; fills reach ``on_fill`` after the hook that caused them returns, as a live client learns of
them from the private feed. Refusals raised out of a hook are counted (``refusals``), not fatal. Events before
``start`` build the book, the last price and the reference price without calling the strategy; the clock stops at
the last recorded event before ``end``.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from moltstreet_client import metrics
from moltstreet_client.errors import MoltStreetError, error_class
from moltstreet_client.strategy import (
    BUY,
    CENT,
    HALF,
    MAKER,
    NETTING,
    NO,
    ONE,
    SELL,
    TAKER,
    TIMES_IN_FORCE,
    YES,
    ZERO,
    Context,
    Execution,
    MarketContext,
    OpenOrder,
    Print,
    Strategy,
    StrategyError,
    parse_price,
)

if TYPE_CHECKING:
    from moltstreet_client.client import Client

DEFAULT_CASH = Decimal("1000.00")
MAX_MARKETS = 20
MAX_ORDER_SIZE = 100_000  # contracts: the exchange's default MAX_ORDER_SIZE
FOREVER = datetime.max.replace(tzinfo=UTC)


def parse_time(value: str | datetime | None) -> datetime | None:
    """An aware datetime from ISO 8601 text (``Z`` allowed) or a datetime (a naive one is taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------------------------------
# History


@dataclass
class MarketHistory:
    """One market's recorded history: ``market`` (its id), ``question``, ``deadline``, and ``events`` as
    ``GET /api/v1/markets/{id}/events/`` returns them (dicts with ``type``, ``seq``, ``created_at``...)."""

    market: str
    question: str = ""
    deadline: datetime | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def fetch(cls, client: Client, market_id: Any, *, end: datetime | None = None) -> MarketHistory:
        """The market's history through the API (``GET /markets/{id}/`` and every page of ``/events/``, up to
        ``end``). Raises the SDK's errors (``NotFound`` for an unknown market)."""
        market = client.market(market_id)
        events = list(client.market_events(market.id, end=end, page_size=5000))
        return cls(str(market.id), market.question, market.deadline, events)

    @property
    def trades(self) -> int:
        """How many trades the history records."""
        return sum(1 for event in self.events if event.get("type") == "trade")

    @property
    def snapshots(self) -> int:
        """How many source snapshots (``reference`` events) the history records."""
        return sum(1 for event in self.events if event.get("type") == "reference")

    @property
    def has_data(self) -> bool:
        """Whether there is anything to trade on: a trade, a book level or a source snapshot."""
        return any(event.get("type") in ("trade", "reference", "book") for event in self.events)


# --------------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class BacktestResult:
    """What a backtest gives: its inputs, every execution, payouts by market, what is left (``positions``
    ``{market: (yes, no)}``, ``marked`` credits by market), the equity series (``equity``: ``(time, credits)`` at
    each change), the stated forecasts (``(time, market, probability)``), the outcomes of the markets that resolved,
    the refusals by error code, and ``metrics`` (:func:`moltstreet_client.metrics.summary`)."""

    strategy: str
    version: str
    params: dict[str, Any]
    markets: list[str]
    start: datetime
    end: datetime
    cash: Decimal
    executions: list[Execution]
    payouts: dict[str, Decimal]
    positions: dict[str, tuple[int, int]]
    marked: dict[str, Decimal]
    final_equity: Decimal
    equity: list[tuple[datetime, Decimal]]
    forecasts: list[tuple[datetime, str, Decimal]]
    outcomes: dict[str, str]
    closed_at: dict[str, datetime]
    refusals: dict[str, int]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def pnl(self) -> Decimal:
        return self.final_equity - self.cash

    def cash_flows(self) -> Decimal:
        """The executions' cash flows (credits): what the P&L identity adds to payouts and marked values."""
        return sum((execution.cash for execution in self.executions), ZERO)

    def pnl_by_market(self) -> dict[str, Decimal]:
        """Each market's P&L: its executions' cash flows, payout and marked value left."""
        pnl = dict.fromkeys(self.markets, ZERO)
        for execution in self.executions:
            pnl[execution.market] += execution.cash
        for market, amount in itertools.chain(self.payouts.items(), self.marked.items()):
            pnl[market] += amount
        return pnl

    def scored_forecasts(self) -> list[tuple[Decimal, int]]:
        """``(probability, outcome 1/0)`` of each market that resolved YES or NO: the last forecast stated before it
        closed (DESIGN section 4a)."""
        last: dict[str, Decimal] = {}
        for time, market, probability in self.forecasts:
            closed = self.closed_at.get(market)
            if closed is None or time < closed:
                last[market] = probability
        return [
            (probability, 1 if self.outcomes[market] == YES else 0)
            for market, probability in last.items()
            if self.outcomes.get(market) in (YES, NO)
        ]

    def equity_curve(self, points: int = 500) -> list[tuple[datetime, Decimal]]:
        """The equity series thinned to about ``points`` for a chart: the first and last points and, in each of
        ``points / 2`` equal stretches, the lowest and highest (so peaks and troughs, and the drawdown, survive)."""
        return metrics.thin(self.equity, points)

    def as_dict(self, *, executions: bool = True) -> dict[str, Any]:
        """The JSON the API stores and shows (``POST /backtests/`` with ``reported``): decimals as strings, times
        ISO 8601."""
        data = {
            "strategy": self.strategy,
            "version": self.version,
            "params": {key: _json(value) for key, value in self.params.items()},
            "markets": list(self.markets),
            "start": _iso(self.start),
            "end": _iso(self.end),
            "cash": str(self.cash),
            "metrics": {key: _json(value) for key, value in self.metrics.items()},
            "equity": [[_iso(time), str(value)] for time, value in self.equity_curve()],
            "payouts": {market: str(amount) for market, amount in self.payouts.items()},
            "marked": {market: str(amount) for market, amount in self.marked.items()},
            "reliability": metrics.reliability(self.scored_forecasts()),
            "refusals": dict(self.refusals),
        }
        if executions:
            data["executions"] = [execution.as_dict() for execution in self.executions]
        return data


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


# --------------------------------------------------------------------------------------------------------------------
# The engine


@dataclass(slots=True, eq=False)  # compared by identity: an order is itself, whatever its fields
class _Order:
    """A resting or matching order of the strategy, with its queue (``bid_yes``: it bids in the YES queue) and its
    bid price in that queue, and what it still reserves (credits for a BUY, contracts for a SELL)."""

    view: OpenOrder
    bid_yes: bool
    bid: Decimal
    reserve: Decimal
    seqno: int


class _Market:
    """The simulated state of one market: the recorded book (``yes``: YES bids by YES price, ``no``: NO bids by NO
    price, contracts), what the strategy consumed of it, the tape, the source price, the status, and the strategy's
    orders and holding there."""

    __slots__ = (
        "best_no",
        "best_yes",
        "closed_at",
        "consumed",
        "ctx",
        "deadline",
        "id",
        "index",
        "last_fill",
        "last_price",
        "no",
        "no_reserved",
        "no_shares",
        "orders",
        "outcome",
        "payout",
        "question",
        "recent",
        "reference",
        "status",
        "tops",
        "value",
        "yes",
        "yes_reserved",
        "yes_shares",
    )

    def __init__(self, index: int, history: MarketHistory):
        self.id = history.market
        self.index = index
        self.question = history.question
        self.deadline = parse_time(history.deadline) if history.deadline is not None else None
        self.yes: dict[Decimal, int] = {}
        self.no: dict[Decimal, int] = {}
        self.consumed: dict[tuple[bool, Decimal], int] = {}
        # top() of each queue (True: YES bids), kept until the book or what the strategy consumed changes.
        self.tops: dict[bool, tuple[Decimal | None, int]] = {}
        self.best_yes: Decimal | None = None
        self.best_no: Decimal | None = None
        self.last_price: Decimal | None = None
        self.recent: deque[Decimal] = deque(maxlen=Context.RECENT)
        self.reference: Decimal | None = None
        self.status = "open"
        self.outcome: str | None = None
        self.closed_at: datetime | None = None
        self.orders: list[_Order] = []
        self.yes_shares = self.no_shares = self.yes_reserved = self.no_reserved = 0
        self.last_fill: Decimal | None = None
        self.value = ZERO
        self.payout: Decimal | None = None
        self.ctx: SimContext | None = None

    # The recorded book -----------------------------------------------------------------------------------------------

    def set_level(self, yes_side: bool, price: Decimal, size: int) -> None:
        levels = self.yes if yes_side else self.no
        self.tops.clear()
        if size > 0:
            levels[price] = size
        else:
            levels.pop(price, None)
        key = (yes_side, price)
        taken = self.consumed.get(key)
        if taken is not None:
            if size <= 0:
                del self.consumed[key]
            elif taken > size:
                self.consumed[key] = size
        best = max(levels) if levels else None
        if yes_side:
            self.best_yes = best
        else:
            self.best_no = best

    def available(self, yes_side: bool, price: Decimal) -> int:
        levels = self.yes if yes_side else self.no
        return levels.get(price, 0) - self.consumed.get((yes_side, price), 0)

    def top(self, yes_side: bool) -> tuple[Decimal | None, int]:
        """The best level of a queue with its available size, skipping levels the strategy took entirely."""
        found = self.tops.get(yes_side)
        if found is None:
            found = self.tops[yes_side] = self._top(yes_side)
        return found

    def _top(self, yes_side: bool) -> tuple[Decimal | None, int]:
        levels = self.yes if yes_side else self.no
        best = self.best_yes if yes_side else self.best_no
        if best is None:
            return None, 0
        size = levels[best] - self.consumed.get((yes_side, best), 0) if self.consumed else levels[best]
        if size > 0:
            return best, size
        for price in sorted(levels, reverse=True):
            size = self.available(yes_side, price)
            if size > 0:
                return price, size
        return None, 0

    def mark(self) -> Decimal | None:
        """The YES price what is held is marked at: the last trade, else the reference, else the last own fill."""
        if self.last_price is not None:
            return self.last_price
        if self.reference is not None:
            return self.reference
        return self.last_fill


class SimContext(MarketContext):
    """The :class:`~moltstreet_client.strategy.Context` of one market in a backtest."""

    def __init__(self, engine: Backtest, market: _Market):
        super().__init__(market)
        self._engine = engine

    @property
    def now(self) -> datetime:
        return self._engine.now

    @property
    def best_bid(self) -> Decimal | None:
        return self._m.top(True)[0]

    @property
    def best_ask(self) -> Decimal | None:
        best = self._m.top(False)[0]
        return ONE - best if best is not None else None

    @property
    def bid_size(self) -> int:
        return self._m.top(True)[1]

    @property
    def ask_size(self) -> int:
        return self._m.top(False)[1]

    @property
    def cash(self) -> Decimal:
        return self._engine.balance - self._engine.reserved

    @property
    def orders(self) -> list[OpenOrder]:
        return [order.view for order in self._m.orders]

    def _place(self, side, action, price, size, time_in_force, post_only, expires_at) -> OpenOrder:
        return self._engine.place(self._m, side, action, price, size, time_in_force, post_only, expires_at)

    def cancel(self, order: OpenOrder | str) -> bool:
        order_id = order if isinstance(order, str) else order.id
        for resting in self._m.orders:
            if resting.view.id == order_id:
                self._engine.cancel(self._m, resting, "user")
                return True
        return False

    def cancel_all(self) -> int:
        orders = list(self._m.orders)
        for order in orders:
            self._engine.cancel(self._m, order, "user")
        return len(orders)

    def _forecast(self, probability: Decimal, reasoning: str) -> None:
        self._engine.forecasts.append((self._engine.now, self.market, probability))


def _refusal(code: str, message: str, **detail: Any) -> Exception:
    return error_class(code)(message, code=code, detail={key: _json(value) for key, value in detail.items()})


class Backtest:
    """One run of a strategy over histories. Use :func:`run_backtest`; the class is the engine's state."""

    def __init__(
        self,
        strategy: Strategy,
        histories: Sequence[MarketHistory],
        *,
        cash: Decimal = DEFAULT_CASH,
        start: datetime | None = None,
        end: datetime | None = None,
    ):
        self.strategy = strategy
        self.markets = [_Market(index, history) for index, history in enumerate(histories)]
        for market in self.markets:
            market.ctx = SimContext(self, market)
        self.histories = histories
        self.cash = cash
        self.balance = cash
        self.reserved = ZERO
        self.start = start
        self.end = end
        self.now = start or datetime.min.replace(tzinfo=UTC)
        self.started = False
        self.began_at = self.now
        self.executions: list[Execution] = []
        self.pending: deque[tuple[_Market, Execution]] = deque()
        self.payouts: dict[str, Decimal] = {}
        self.forecasts: list[tuple[datetime, str, Decimal]] = []
        self.refusals: dict[str, int] = {}
        self.equity: list[tuple[datetime, Decimal]] = []
        self.expiring: list[_Order] = []
        # No GTD order expires before this (it may be earlier than the first of them: _advance then looks and
        # moves it on).
        self.next_expiry = FOREVER
        self._ids = itertools.count(1)
        self._value_total = ZERO

    # Running ---------------------------------------------------------------------------------------------------------

    def run(self) -> BacktestResult:
        records = self._records()
        end = self.end
        interval = self.strategy.tick_interval
        step = timedelta(seconds=interval) if interval else None
        next_tick: datetime | None = None
        last_time: datetime | None = None
        for time, _index, _seq, market, kind, payload in records:
            if end is not None and time >= end:
                break
            if not self.started and (self.start is None or time >= self.start):
                self._begin(self.start or time)
                next_tick = self.now + step if step else None
            if self.started:
                while next_tick is not None and next_tick <= time:
                    self._advance(next_tick)
                    self._ticks()
                    next_tick += step
                self._advance(time)
            else:
                self.now = time
            self._apply(market, kind, payload)
            last_time = time
        if not self.started:
            # Nothing inside the period: the strategy starts and ends at once, on the state the history built.
            self._begin(self.start or last_time or datetime.now(UTC))
        for market in self.markets:
            self._call(market, self.strategy.on_end)
        return self._result(self.now)

    def _records(self) -> list[tuple]:
        """Every market's events as ``(time, market index, seq, market, kind, payload)``, merged by time; a market's
        own events keep their ``seq`` order, on a clock that never runs backwards."""
        streams = []
        for market, history in zip(self.markets, self.histories, strict=True):
            rows = []
            previous: datetime | None = None
            for event in sorted(history.events, key=lambda e: e["seq"]):
                time = parse_time(event["created_at"])
                if previous is not None and time < previous:
                    time = previous
                previous = time
                kind = event["type"]
                rows.append((time, market.index, event["seq"], market, kind, event))
            streams.append(rows)
        return list(heapq.merge(*streams, key=lambda row: (row[0], row[1], row[2])))

    def _begin(self, time: datetime) -> None:
        self.started = True
        self.now = self.began_at = time
        self._record_equity()
        for market in self.markets:
            self._call(market, self.strategy.on_start)

    def _advance(self, time: datetime) -> None:
        """Move the clock to ``time``: GTD orders expire and markets past their deadline close."""
        if time > self.now:
            self.now = time
        if self.expiring and self.next_expiry <= self.now:
            for order in [o for o in self.expiring if o.view.expires_at <= self.now]:
                market = next(m for m in self.markets if m.id == order.view.market)
                self._end_order(market, order, "expired", "")
            self.next_expiry = min((o.view.expires_at for o in self.expiring), default=FOREVER)
        for market in self.markets:
            if market.status == "open" and market.deadline is not None and market.deadline <= self.now:
                self._close(market, "closed")

    def _ticks(self) -> None:
        for market in self.markets:
            if market.status == "open":
                self._call(market, self.strategy.on_tick)

    def _call(self, market: _Market, hook: Any, *args: Any) -> None:
        """Run a hook; then deliver the fills it caused (each ``on_fill`` may cause more). A refusal of the exchange
        raised out of a hook is counted; anything else is the strategy's bug and ends the backtest."""
        try:
            hook(market.ctx, *args)
        except MoltStreetError as exc:
            self.refusals[exc.code] = self.refusals.get(exc.code, 0) + 1
        while self.pending:
            filled_market, execution = self.pending.popleft()
            try:
                self.strategy.on_fill(filled_market.ctx, execution)
            except MoltStreetError as exc:
                self.refusals[exc.code] = self.refusals.get(exc.code, 0) + 1

    # Recorded events -------------------------------------------------------------------------------------------------

    def _apply(self, market: _Market, kind: str, event: dict[str, Any]) -> None:
        started = self.started
        if kind == "book":
            for level in event.get("levels") or ():
                market.set_level(level["side"] == YES, Decimal(level["price"]), int(level["size"]))
            if started and market.status == "open":
                self._call(market, self.strategy.on_book)
        elif kind == "trade":
            trade = event["trade"]
            price = Decimal(trade["price"])
            market.last_price = price
            market.recent.append(price)
            # The trade took its size from the maker's level; the book event that records that comes right after
            # it. Take it off now, so that no hook in between sees (and takes) liquidity the trade already took.
            taker = trade.get("taker_side")
            if taker in (YES, NO):
                maker_yes = taker == NO
                level = price if maker_yes else ONE - price
                shown = (market.yes if maker_yes else market.no).get(level)
                if shown is not None:
                    market.set_level(maker_yes, level, shown - int(trade["size"]))
            if started:
                size = int(trade["size"])
                if market.orders:
                    self._prints_through(market, price, size)
                self._revalue(market)
                print_ = Print(self.now, price, size, trade.get("taker_side") or "", int(event["seq"]))
                self._call(market, self.strategy.on_trade, print_)
        elif kind == "reference":
            reference = event.get("reference") or {}
            value = reference.get("yes_price")
            market.reference = Decimal(value) if value is not None else None
            if started:
                self._revalue(market)
                self._call(market, self.strategy.on_reference, market.reference)
        elif kind == "market":
            state = event.get("market") or {}
            name = event.get("event") or ""
            status = state.get("status") or market.status
            if status != "open" and market.status == "open":
                self._close(market, "closed" if status == "closed" else "resolved")
            if status == "open" and market.status == "closed" and market.payout is None:
                market.status, market.closed_at = "open", None  # reopened by an operator
            if name == "resolved" and state.get("outcome"):
                self._resolve(market, state["outcome"])
            if state.get("deadline"):
                market.deadline = parse_time(state["deadline"])
            if started:
                self._call(market, self.strategy.on_market, name)

    def _close(self, market: _Market, reason: str) -> None:
        market.status = "closed"
        market.closed_at = self.now
        for order in list(market.orders):
            self._end_order(market, order, "cancelled", "market_closed" if reason == "closed" else "market_resolved")

    def _resolve(self, market: _Market, outcome: str) -> None:
        if market.payout is not None:
            return
        if market.status == "open":
            self._close(market, "resolved")
        market.status = "resolved"
        market.outcome = outcome
        if outcome == YES:
            payout = Decimal(market.yes_shares)
        elif outcome == NO:
            payout = Decimal(market.no_shares)
        else:  # VOID: 0.50 a contract on both sides
            payout = HALF * (market.yes_shares + market.no_shares)
        payout = payout.quantize(CENT)
        market.payout = payout
        self.payouts[market.id] = payout
        self.balance += payout
        market.yes_shares = market.no_shares = 0
        self._revalue(market)

    # Orders ----------------------------------------------------------------------------------------------------------

    def place(
        self,
        market: _Market,
        side: str,
        action: str,
        price: Decimal | str,
        size: int,
        time_in_force: str,
        post_only: bool,
        expires_at: datetime | None,
    ) -> OpenOrder:
        """An order of the strategy, validated, collateralised and matched as the exchange would (module doc)."""
        if side not in (YES, NO):
            raise _refusal("invalid_request", "side must be YES or NO.", side=side)
        if action not in (BUY, SELL):
            raise _refusal("invalid_request", "action must be BUY or SELL.", action=action)
        try:
            price = parse_price(price)
        except ValueError as exc:
            raise _refusal("invalid_price", str(exc), price=str(price)) from None
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_ORDER_SIZE:
            raise _refusal("invalid_size", f"size must be between 1 and {MAX_ORDER_SIZE} contracts.", size=str(size))
        if time_in_force not in TIMES_IN_FORCE:
            raise _refusal(
                "invalid_request", "time_in_force must be GTC, GTD, IOC or FOK.", time_in_force=time_in_force
            )
        expires_at = parse_time(expires_at)
        if time_in_force == "GTD" and (expires_at is None or expires_at <= self.now):
            raise _refusal("invalid_request", "A GTD order needs expires_at in the future.", expires_at=expires_at)
        if time_in_force != "GTD" and expires_at is not None:
            raise _refusal("invalid_request", "expires_at is only allowed with time_in_force GTD.")
        if post_only and time_in_force in ("IOC", "FOK"):
            raise _refusal("invalid_request", "post_only cannot be combined with IOC or FOK.")
        if market.status != "open" or (market.deadline is not None and market.deadline <= self.now):
            raise _refusal("market_closed", "The market is closed.", market=market.id)

        bid_yes = (side == YES) == (action == BUY)  # BUY YES and SELL NO bid in the YES queue
        bid = price if action == BUY else ONE - price
        # The levels of the other queue it crosses (their bid + ours >= 1), best first, with what is available, and
        # its own resting orders it crosses; for a post-only order before anything else, for the others only once
        # the collateral is there (a refused order never needs them).
        crossing = own_crossed = None
        if post_only:
            crossing = self._crossing(market, bid_yes, bid)
            own_crossed = [o for o in market.orders if o.bid_yes != bid_yes and o.bid + bid >= ONE]
            if crossing or own_crossed:
                raise _refusal("post_only_would_cross", "The order would cross the book.", price=price)
        if action == BUY:
            cost = price * size
            if cost > self.balance - self.reserved:
                raise _refusal(
                    "insufficient_balance",
                    "Not enough available credits.",
                    required=cost,
                    available=self.balance - self.reserved,
                )
        else:
            held = (market.yes_shares - market.yes_reserved) if side == YES else (market.no_shares - market.no_reserved)
            if size > held:
                raise _refusal("insufficient_position", "Not enough unreserved contracts.", required=size, held=held)
        if crossing is None:
            crossing = self._crossing(market, bid_yes, bid)
            own_crossed = [o for o in market.orders if o.bid_yes != bid_yes and o.bid + bid >= ONE]
        if time_in_force == "FOK" and sum(available for _, available in crossing) < size:
            view = self._new_view(market, side, action, price, size, time_in_force, post_only, expires_at)
            view.status, view.cancel_reason = "cancelled", "fok_unfilled"
            return view

        view = self._new_view(market, side, action, price, size, time_in_force, post_only, expires_at)
        before = len(self.executions)
        order = _Order(view, bid_yes, bid, price * size if action == BUY else Decimal(size), next(self._ids))
        if action == BUY:
            self.reserved += order.reserve
        elif side == YES:
            market.yes_reserved += size
        else:
            market.no_reserved += size
        for resting in own_crossed:  # self-trade prevention: the resting order goes
            self._end_order(market, resting, "cancelled", "self_trade")
        for level, available in crossing:
            take = min(available, size - view.filled)
            if take <= 0:
                break
            key = (not bid_yes, level)
            market.consumed[key] = market.consumed.get(key, 0) + take
            market.tops.clear()
            yes_price = ONE - level if bid_yes else level  # the maker's price, as a YES price
            self._fill(market, order, take, yes_price, TAKER)
        if view.filled >= size:
            view.status = "filled"
        elif time_in_force in ("IOC", "FOK"):
            self._release(market, order)
            view.status, view.cancel_reason = "cancelled", "ioc_remainder"
        else:
            view.status = "partial" if view.filled else "open"
            market.orders.append(order)
            if time_in_force == "GTD":
                self.expiring.append(order)
                self.next_expiry = min(self.next_expiry, expires_at)
        self._net(market)
        if len(self.executions) > before:  # filled or netted; else cash and holdings are as they were
            self._revalue(market)
        return view

    def _new_view(self, market, side, action, price, size, time_in_force, post_only, expires_at) -> OpenOrder:
        return OpenOrder(
            id=f"bt-{next(self._ids)}",
            market=market.id,
            side=side,
            action=action,
            price=price,
            size=size,
            time_in_force=time_in_force,
            post_only=post_only,
            expires_at=expires_at,
            created_at=self.now,
        )

    def _crossing(self, market: _Market, bid_yes: bool, bid: Decimal) -> list[tuple[Decimal, int]]:
        levels = market.no if bid_yes else market.yes
        out = []
        for level in sorted(levels, reverse=True):
            if level + bid < ONE:
                break
            available = market.available(not bid_yes, level)
            if available > 0:
                out.append((level, available))
        return out

    def _fill(self, market: _Market, order: _Order, size: int, yes_price: Decimal, reason: str) -> None:
        """``size`` contracts of ``order`` at the YES price ``yes_price``: cash, holding and reserve move."""
        view = order.view
        own_price = yes_price if view.side == YES else ONE - yes_price
        amount = own_price * size
        if view.action == BUY:
            release = view.price * size
            order.reserve -= release
            self.reserved -= release
            self.balance -= amount
            cash = -amount
            if view.side == YES:
                market.yes_shares += size
            else:
                market.no_shares += size
        else:
            order.reserve -= size
            self.balance += amount
            cash = amount
            if view.side == YES:
                market.yes_shares -= size
                market.yes_reserved -= size
            else:
                market.no_shares -= size
                market.no_reserved -= size
        view.filled += size
        market.last_fill = yes_price
        execution = Execution(self.now, market.id, view.side, view.action, own_price, size, reason, cash, view.id)
        self.executions.append(execution)
        self.pending.append((market, execution))

    def _net(self, market: _Market) -> None:
        """Merge the unreserved YES and NO contracts pairwise into 1.00 credit each (DESIGN section 3)."""
        pairs = min(market.yes_shares - market.yes_reserved, market.no_shares - market.no_reserved)
        if pairs <= 0:
            return
        market.yes_shares -= pairs
        market.no_shares -= pairs
        amount = Decimal(pairs)
        self.balance += amount
        execution = Execution(self.now, market.id, "PAIR", "MERGE", ONE, pairs, NETTING, amount, None)
        self.executions.append(execution)
        self.pending.append((market, execution))

    def _release(self, market: _Market, order: _Order) -> None:
        view = order.view
        if view.action == BUY:
            self.reserved -= order.reserve
        elif view.side == YES:
            market.yes_reserved -= int(order.reserve)
        else:
            market.no_reserved -= int(order.reserve)
        order.reserve = ZERO

    def _end_order(self, market: _Market, order: _Order, status: str, reason: str) -> None:
        self._release(market, order)
        order.view.status, order.view.cancel_reason = status, reason
        if order in market.orders:
            market.orders.remove(order)
        if order.view.time_in_force == "GTD" and order in self.expiring:
            self.expiring.remove(order)

    def cancel(self, market: _Market, order: _Order, reason: str) -> None:
        self._end_order(market, order, "cancelled", reason)

    def _prints_through(self, market: _Market, price: Decimal, size: int) -> None:
        """A recorded trade at the YES price ``price`` fills the resting orders it printed through (module doc)."""
        through = [
            order
            for order in market.orders
            if (order.bid > price if order.bid_yes else order.bid > ONE - price) and order.view.is_resting
        ]
        if not through:
            return
        through.sort(key=lambda order: (-order.bid, order.seqno))
        left = size
        for order in through:
            take = min(order.view.size - order.view.filled, left)
            if take <= 0:
                break
            yes_price = order.bid if order.bid_yes else ONE - order.bid
            self._fill(market, order, take, yes_price, MAKER)
            left -= take
            if order.view.filled >= order.view.size:
                order.view.status = "filled"
                market.orders.remove(order)
                if order in self.expiring:
                    self.expiring.remove(order)
            else:
                order.view.status = "partial"
        self._net(market)

    # Equity ----------------------------------------------------------------------------------------------------------

    def _revalue(self, market: _Market) -> None:
        """Mark the market's holding and record the equity when it changed."""
        mark = market.mark()
        value = ZERO
        if mark is not None and (market.yes_shares or market.no_shares):
            value = mark * market.yes_shares + (ONE - mark) * market.no_shares
        self._value_total += value - market.value
        market.value = value
        self._record_equity()

    def _record_equity(self) -> None:
        equity = self.balance + self._value_total
        if self.equity and self.equity[-1][1] == equity:
            return
        if self.equity and self.equity[-1][0] == self.now:
            self.equity[-1] = (self.now, equity)
        else:
            self.equity.append((self.now, equity))

    def _result(self, finish: datetime) -> BacktestResult:
        for market in self.markets:
            self._revalue(market)
        result = BacktestResult(
            strategy=self.strategy.label(),
            version=getattr(self.strategy, "version", "") or "",
            params=dict(self.strategy.settings),
            markets=[market.id for market in self.markets],
            start=self.began_at,
            end=self.end if self.end is not None else finish,
            cash=self.cash,
            executions=self.executions,
            payouts=dict(self.payouts),
            positions={m.id: (m.yes_shares, m.no_shares) for m in self.markets if m.yes_shares or m.no_shares},
            marked={market.id: market.value for market in self.markets if market.value},
            final_equity=self.balance + self._value_total,
            equity=self.equity,
            forecasts=self.forecasts,
            outcomes={m.id: m.outcome for m in self.markets if m.outcome},
            closed_at={m.id: m.closed_at for m in self.markets if m.closed_at is not None},
            refusals=self.refusals,
        )
        result.metrics = metrics.summary(result)
        return result


def run_backtest(
    strategy: Strategy,
    histories: MarketHistory | Iterable[MarketHistory],
    *,
    cash: Decimal | str | int = DEFAULT_CASH,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
) -> BacktestResult:
    """Replay ``histories`` (one or up to ``MAX_MARKETS`` markets, sharing one cash balance) through ``strategy``
    from ``start`` to ``end`` (default: the whole history) with ``cash`` credits (default 1000.00), by the rules
    of the module's doc. Returns a :class:`BacktestResult` with ``metrics``.

    Raises :class:`~moltstreet_client.strategy.StrategyError` (code ``invalid_request``) for no market or more than
    ``MAX_MARKETS``, a market with no history (no trade, book level or snapshot), ``end`` not after ``start``, or
    a cash amount that is not a positive number of credits. Exceptions of the strategy's own code propagate.
    """
    if isinstance(histories, MarketHistory):
        histories = [histories]
    histories = list(histories)
    if not histories:
        raise StrategyError("A backtest needs at least one market.", detail={"markets": []})
    if len(histories) > MAX_MARKETS:
        raise StrategyError(
            f"A backtest takes at most {MAX_MARKETS} markets.", detail={"markets": len(histories), "max": MAX_MARKETS}
        )
    if len({history.market for history in histories}) != len(histories):
        raise StrategyError("A market is listed twice.", detail={"markets": [h.market for h in histories]})
    for history in histories:
        if not history.has_data:
            raise StrategyError(
                f"Market {history.market} has no history to replay (no trade, book level or source snapshot).",
                detail={"markets": [history.market]},
            )
    cash = parse_cash(cash)
    start, end = parse_time(start), parse_time(end)
    if start is not None and end is not None and end <= start:
        raise StrategyError("end must be after start.", detail={"start": _iso(start), "end": _iso(end)})
    return Backtest(strategy, histories, cash=cash, start=start, end=end).run()


def parse_cash(value: Decimal | str | int | float) -> Decimal:
    """Starting credits: a positive amount with at most 2 decimal places, at most 1,000,000,000. Raises
    :class:`StrategyError`."""
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        amount = Decimal("NaN")
    if (
        isinstance(value, bool)
        or not amount.is_finite()
        or amount <= 0
        or amount > 1_000_000_000
        or amount != amount.quantize(CENT)
    ):
        raise StrategyError(
            "cash must be a positive number of credits (at most 2 decimal places, at most 1,000,000,000).",
            detail={"cash": str(value)},
        )
    return amount.quantize(CENT)
