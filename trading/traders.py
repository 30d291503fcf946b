"""House traders: simple, documented strategies that keep the demo markets alive (``manage.py run_traders``).

They trade through the Python SDK (``moltstreet_client``) over the HTTP API exactly like an outside agent: the same
authentication, rate limits, validation and matching. Nothing here touches the order book or balances directly, so
they cannot break the invariants of DESIGN section 5; the only server-side steps the command takes are the ones an
operator takes in the admin (marking the agents as house traders, issuing them keys, topping up their credits with a
ledgered operator adjustment).

Every strategy is a pure function of what it sees (:class:`View`: the top of the book, the last trade price, its
own holding, recent trade prices) to the orders it wants (:class:`Quote`), so each can be tested without a server.
Prices are YES prices in credits (0.01-0.99, tick 0.01) unless a quote says NO; sizes are whole contracts.

- :class:`MarketMaker` rests a post-only bid and ask around a fair value (the last trade, else the book's mid, else
  0.50), skewed against its inventory and withdrawn on the side that would take it past ``max_inventory``: the
  classic inventory-aware quoting of Avellaneda and Stoikov (2008, "High-frequency trading in a limit order book"),
  with a constant spread instead of their optimal one.
- :class:`NoiseTrader` trades at random, mostly taking the best price with IOC orders and sometimes resting a GTD
  limit order a few ticks away from the mid: the uninformed flow of Kyle (1985, "Continuous auctions and insider
  trading") that gives the market maker something to trade with.
- :class:`MomentumTrader` buys the side whose price has risen over its lookback window and unwinds when the move
  reverses (time-series momentum; Moskowitz, Ooi and Pedersen 2012).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from threading import Event

from moltstreet_client import Client, MoltStreetError, TransportError

from moltstreet.money import CENT, HALF, MAX_PRICE, MIN_PRICE, ONE

YES, NO = "YES", "NO"
BUY, SELL = "BUY", "SELL"


def clamp_price(price: Decimal, rounding: str = ROUND_FLOOR) -> Decimal:
    """``price`` on the 0.01 tick (rounded by ``rounding``) and within 0.01-0.99."""
    return min(MAX_PRICE, max(MIN_PRICE, price.quantize(CENT, rounding=rounding)))


@dataclass(frozen=True)
class View:
    """What a strategy sees of one market. Prices are YES prices; ``None`` where the book or tape has none.

    ``yes_bid``/``yes_ask``: the best resting bid and ask for YES (a NO bid at q is a YES ask at 1 - q);
    ``last``: the last traded YES price; ``yes_shares``/``no_shares``: the trader's holding (contracts);
    ``recent``: recent trade prices, oldest first.
    """

    market: str
    yes_bid: Decimal | None = None
    yes_ask: Decimal | None = None
    last: Decimal | None = None
    yes_shares: int = 0
    no_shares: int = 0
    recent: tuple[Decimal, ...] = ()

    @property
    def inventory(self) -> int:
        """Net YES contracts held (negative: net NO)."""
        return self.yes_shares - self.no_shares

    @property
    def mid(self) -> Decimal | None:
        if self.yes_bid is not None and self.yes_ask is not None:
            return (self.yes_bid + self.yes_ask) / 2
        return None

    @property
    def fair(self) -> Decimal:
        """The last trade, else the book's mid, else 0.50 (a market nobody has priced yet)."""
        if self.last is not None:
            return self.last
        mid = self.mid
        return mid if mid is not None else HALF


@dataclass(frozen=True)
class Quote:
    """An order a strategy wants: ``side`` YES/NO, ``action`` BUY/SELL, ``price`` in credits of that side.

    ``expires_in``: seconds until a GTD order expires (``time_in_force`` GTD only).
    """

    market: str
    side: str
    action: str
    price: Decimal
    size: int
    time_in_force: str = "GTC"
    post_only: bool = False
    expires_in: float | None = None

    @property
    def cost(self) -> Decimal:
        """Credits a BUY reserves (price x size); a SELL reserves contracts, not credits."""
        return self.price * self.size if self.action == BUY else Decimal(0)


def buy_yes_exposure(market: str, yes_price: Decimal, size: int, no_shares: int, **order) -> Quote:
    """Gain YES exposure at ``yes_price``: sell NO held (at the complement) if there is enough, else buy YES."""
    if no_shares >= size:
        return Quote(market, NO, SELL, clamp_price(ONE - yes_price, ROUND_CEILING), size, **order)
    return Quote(market, YES, BUY, clamp_price(yes_price), size, **order)


def buy_no_exposure(market: str, yes_price: Decimal, size: int, yes_shares: int, **order) -> Quote:
    """Gain NO exposure at the YES price ``yes_price``: sell YES held if there is enough, else buy NO at 1 - price."""
    if yes_shares >= size:
        return Quote(market, YES, SELL, clamp_price(yes_price, ROUND_CEILING), size, **order)
    return Quote(market, NO, BUY, clamp_price(ONE - yes_price), size, **order)


@dataclass
class MarketMaker:
    """Rests a post-only YES bid and ask ``half_spread`` either side of the fair value, skewed by inventory.

    Skew: each net contract held moves both quotes ``skew`` against it (long YES: lower quotes, so it sells more
    and buys less). At ``max_inventory`` net contracts it quotes only the side that reduces them.
    """

    half_spread: Decimal = Decimal("0.02")
    skew: Decimal = Decimal("0.002")
    size: int = 5
    max_inventory: int = 50

    def quotes(self, view: View) -> list[Quote]:
        centre = view.fair - self.skew * view.inventory
        bid = clamp_price(centre - self.half_spread, ROUND_FLOOR)
        ask = clamp_price(centre + self.half_spread, ROUND_CEILING)
        if bid >= ask:  # pinned at an end of the price range
            if bid <= MIN_PRICE:
                ask = bid + CENT
            else:
                bid = ask - CENT
        wanted = []
        if view.inventory < self.max_inventory:
            wanted.append(buy_yes_exposure(view.market, bid, self.size, view.no_shares, post_only=True))
        if view.inventory > -self.max_inventory:
            wanted.append(buy_no_exposure(view.market, ask, self.size, view.yes_shares, post_only=True))
        return wanted


@dataclass
class NoiseTrader:
    """Each turn, with probability ``take``: take the best YES or NO price (IOC, 1 to ``max_size`` contracts), or sell
    part of a holding at the best bid; otherwise rest a GTD order 1-5 ticks behind the mid for ``rest_seconds``."""

    take: float = 0.6
    max_size: int = 5
    rest_seconds: float = 120.0

    def act(self, view: View, rng: random.Random) -> list[Quote]:
        size = rng.randint(1, self.max_size)
        held = max(view.yes_shares, view.no_shares)
        if rng.random() < self.take:
            if held and rng.random() < 0.35:
                # Sell part of what is held, at the best bid of that side (IOC: whatever is there now).
                if view.yes_shares and view.yes_bid is not None:
                    return [Quote(view.market, YES, SELL, view.yes_bid, min(size, view.yes_shares), "IOC")]
                if view.no_shares and view.yes_ask is not None:
                    no_bid = clamp_price(ONE - view.yes_ask)
                    return [Quote(view.market, NO, SELL, no_bid, min(size, view.no_shares), "IOC")]
                return []
            if rng.random() < 0.5:
                if view.yes_ask is None:
                    return []
                return [Quote(view.market, YES, BUY, view.yes_ask, size, "IOC")]
            if view.yes_bid is None:
                return []
            return [Quote(view.market, NO, BUY, clamp_price(ONE - view.yes_bid), size, "IOC")]
        ticks = CENT * rng.randint(1, 5)
        order = {"time_in_force": "GTD", "expires_in": self.rest_seconds}
        fair = view.fair
        if rng.random() < 0.5:
            return [Quote(view.market, YES, BUY, clamp_price(fair - ticks), size, **order)]
        return [Quote(view.market, NO, BUY, clamp_price(ONE - fair - ticks), size, **order)]


@dataclass
class MomentumTrader:
    """Compares the last trade with the mean of the ``lookback`` before it: above by ``threshold`` or more, it buys
    YES at the best ask; below, NO at the best bid's complement (IOC, ``size`` contracts, at most ``max_inventory``
    net). When the move turns against what it holds, it sells the holding at the best bid."""

    lookback: int = 10
    threshold: Decimal = Decimal("0.03")
    size: int = 3
    max_inventory: int = 30

    def signal(self, prices: Sequence[Decimal]) -> Decimal | None:
        """``last - mean(previous lookback)`` in YES credits, or ``None`` with too few trades to tell."""
        if len(prices) < self.lookback + 1:
            return None
        window = prices[-self.lookback - 1 : -1]
        return prices[-1] - sum(window, Decimal(0)) / len(window)

    def act(self, view: View) -> list[Quote]:
        signal = self.signal(view.recent)
        if signal is None:
            return []
        if signal >= self.threshold:
            if view.no_shares and view.yes_ask is not None:  # unwind the NO held first
                no_bid = clamp_price(ONE - view.yes_ask)
                return [Quote(view.market, NO, SELL, no_bid, view.no_shares, "IOC")]
            if view.inventory + self.size <= self.max_inventory and view.yes_ask is not None:
                return [Quote(view.market, YES, BUY, view.yes_ask, self.size, "IOC")]
        elif signal <= -self.threshold:
            if view.yes_shares and view.yes_bid is not None:
                return [Quote(view.market, YES, SELL, view.yes_bid, view.yes_shares, "IOC")]
            if -view.inventory + self.size <= self.max_inventory and view.yes_bid is not None:
                return [Quote(view.market, NO, BUY, clamp_price(ONE - view.yes_bid), self.size, "IOC")]
        return []


@dataclass
class Tally:
    """What a trader did: orders accepted, contracts and trades filled, refusals by error code."""

    orders: int = 0
    cancels: int = 0
    trades: int = 0
    contracts: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1

    def add(self, other: Tally) -> None:
        self.orders += other.orders
        self.cancels += other.cancels
        self.trades += other.trades
        self.contracts += other.contracts
        for code, count in other.refused.items():
            self.refused[code] = self.refused.get(code, 0) + count


# --------------------------------------------------------------------------------------------------------------------
# Running them against a server, through the SDK.

MAKER, NOISE, MOMENTUM = "maker", "noise", "momentum"
DESCRIPTIONS = {
    MAKER: "House market maker run by MoltStreet: rests post-only bids and asks around the last price, "
    "skewed against its inventory. Not a real participant.",
    NOISE: "House noise trader run by MoltStreet: trades small random sizes to keep the demo markets moving. "
    "Not a real participant.",
    MOMENTUM: "House momentum trader run by MoltStreet: buys the side whose price has been rising. "
    "Not a real participant.",
}
# Seconds between a trader's turns: (shortest, longest), drawn uniformly each turn.
PACE = {MAKER: (3.0, 5.0), NOISE: (2.0, 6.0), MOMENTUM: (4.0, 8.0)}
# Seconds between balance checks of one trader (GET /agents/me/) for the top-up.
BALANCE_CHECK_EVERY = 60.0


@dataclass
class Trader:
    """One house agent: its SDK client, its strategy and when it acts next (``time.monotonic()`` seconds)."""

    name: str
    kind: str
    client: Client
    strategy: MarketMaker | NoiseTrader | MomentumTrader
    next_at: float = 0.0
    balance_checked_at: float = float("-inf")
    tally: Tally = field(default_factory=Tally)


def view_of(market, holding=None, recent: Sequence[Decimal] = ()) -> View:
    """A :class:`View` from an SDK ``Market`` (``best_bid``/``best_ask``/``yes_price``) and ``Position``."""
    return View(
        market=str(market.id),
        yes_bid=market.best_bid,
        yes_ask=market.best_ask,
        last=market.yes_price,
        yes_shares=int(holding.yes_shares) if holding is not None else 0,
        no_shares=int(holding.no_shares) if holding is not None else 0,
        recent=tuple(recent),
    )


class Desk:
    """Runs house traders in one thread, each at its own pace, until ``stop`` is set or ``duration`` passes.

    ``markets``: how many open markets they trade (the most traded ones, refreshed every ``refresh`` seconds).
    ``top_up(trader)``: called before a turn when the trader's available balance is below ``top_up_below``
    credits (the command grants credits there as an operator would). ``report(line)``: progress lines.
    Every order and cancel goes through the trader's SDK client; refusals (the exchange's error codes) are counted,
    never fatal: a book that moved, a market that closed, a rate limit.
    """

    def __init__(
        self,
        traders: list[Trader],
        *,
        markets: int = 6,
        seed: int | None = None,
        refresh: float = 30.0,
        top_up: Callable[[Trader], None] | None = None,
        top_up_below: Decimal = Decimal("100"),
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.traders = traders
        self.market_count = markets
        self.rng = random.Random(seed)
        self.refresh = refresh
        self.top_up = top_up
        self.top_up_below = top_up_below
        self.report = report or (lambda line: None)
        self.clock = clock
        self.markets: list = []
        self.markets_at = float("-inf")
        self.transport_errors = 0
        self.unwithdrawn: list[Trader] = []

    # What the traders see ------------------------------------------------------------------------------------------

    def _open_markets(self, client: Client) -> list:
        """The most traded open markets (one page of ``GET /markets/``), at most every ``refresh`` seconds."""
        if self.clock() - self.markets_at >= self.refresh:
            soon = datetime.now(UTC) + timedelta(minutes=2)
            listed = client.markets(status="open", ordering="-volume")
            chosen = [m for m in itertools.islice(listed, 50) if m.deadline > soon][: self.market_count]
            self.markets, self.markets_at = chosen, self.clock()
        return self.markets

    # Turns ---------------------------------------------------------------------------------------------------------

    def turn(self, trader: Trader) -> None:
        """One turn of ``trader``: read what it needs, then place (and for the maker, cancel) orders."""
        client = trader.client
        if self.top_up is not None and self.clock() - trader.balance_checked_at >= BALANCE_CHECK_EVERY:
            trader.balance_checked_at = self.clock()
            if client.me().available_balance < self.top_up_below:
                self.top_up(trader)
        chosen = self._open_markets(client)
        if not chosen:
            return
        if trader.kind != MAKER:
            chosen = [self.rng.choice(chosen)]
        # The current top of book of each (one GET /markets/{id}/ each) and the trader's holdings.
        markets = [client.market(m.id) for m in chosen]
        holdings = {str(p.market): p for p in client.positions()}
        if trader.kind == MAKER:
            resting: dict[str, list] = {}
            for order in client.orders(status="resting"):
                resting.setdefault(str(order.market), []).append(order)
            for market in markets:
                view = view_of(market, holdings.get(str(market.id)))
                self._reconcile(trader, trader.strategy.quotes(view), resting.pop(str(market.id), []))
            for orders in resting.values():  # markets no longer traded: withdraw
                for order in orders:
                    self._cancel(trader, order)
            return
        market = markets[0]
        holding = holdings.get(str(market.id))
        if trader.kind == NOISE:
            quotes = trader.strategy.act(view_of(market, holding), self.rng)
        else:
            recent = [t.price for t in _first(client.market_trades(market.id), trader.strategy.lookback + 1)]
            quotes = trader.strategy.act(view_of(market, holding, reversed(recent)))
        for quote in quotes:
            self._place(trader, quote)

    def _reconcile(self, trader: Trader, wanted: list[Quote], resting: list) -> None:
        """Keep resting orders that match a wanted quote (side, action, price), cancel the rest, place what is missing."""
        missing = list(wanted)
        for order in resting:
            match = next(
                (q for q in missing if (q.side, q.action, q.price) == (order.side, order.action, order.price)), None
            )
            if match is not None:
                missing.remove(match)
            else:
                self._cancel(trader, order)
        for quote in missing:
            self._place(trader, quote)

    def _place(self, trader: Trader, quote: Quote) -> None:
        expires_at = None
        if quote.expires_in is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=quote.expires_in)
        try:
            result = trader.client.place_order(
                quote.market,
                quote.side,
                quote.action,
                quote.price,
                quote.size,
                time_in_force=quote.time_in_force,
                expires_at=expires_at,
                post_only=quote.post_only,
            )
        except MoltStreetError as exc:
            trader.tally.refuse(exc.code)
            return
        trader.tally.orders += 1
        trader.tally.trades += len(result.trades)
        trader.tally.contracts += sum(int(t.size) for t in result.trades)

    def _cancel(self, trader: Trader, order) -> None:
        try:
            trader.client.cancel_order(order.id)
        except MoltStreetError as exc:
            trader.tally.refuse(exc.code)  # filled or cancelled meanwhile: order_not_cancellable
            return
        trader.tally.cancels += 1

    # The loop ------------------------------------------------------------------------------------------------------

    def schedule(self, trader: Trader, now: float) -> None:
        low, high = PACE[trader.kind]
        trader.next_at = now + self.rng.uniform(low, high)

    def run(self, stop: Event, *, duration: float | None = None, report_every: float = 30.0) -> Tally:
        """Turns until ``stop`` (a ``threading.Event``) is set or ``duration`` seconds pass; then every trader
        cancels its resting orders (those whose cancel got no answer are left in ``unwithdrawn``). Returns the
        total :class:`Tally`."""
        started = self.clock()
        for trader in self.traders:  # spread the first turns over a second
            trader.next_at = started + self.rng.uniform(0, 1)
        reported = started
        while not stop.is_set():
            now = self.clock()
            if duration is not None and now - started >= duration:
                break
            if now - reported >= report_every:
                self.report(self.summary(now - started))
                reported = now
            trader = min(self.traders, key=lambda t: t.next_at)
            if trader.next_at > now:
                stop.wait(min(trader.next_at - now, 0.5))
                continue
            try:
                self.turn(trader)
            except TransportError as exc:
                # The server is down or restarting (the SDK already retried): skip the turn.
                self.transport_errors += 1
                self.report(f"{trader.name}: server unreachable ({exc}); retrying next turn")
                self.markets_at = float("-inf")
            except MoltStreetError as exc:
                trader.tally.refuse(exc.code)
            self.schedule(trader, self.clock())
        self.unwithdrawn = self.withdraw()
        return self.total()

    def withdraw(self) -> list[Trader]:
        """Cancel every house trader's resting orders (``POST /orders/cancel-all/``); returns the traders whose
        cancel got no answer (the server stopping at the same time, as when Ctrl-C reaches both)."""
        unanswered: list[Trader] = []
        server_gone = False
        for trader in self.traders:
            if server_gone:  # no point waiting out the SDK's retries once per trader
                unanswered.append(trader)
                continue
            try:
                trader.client.cancel_all()
            except (MoltStreetError, TransportError) as exc:
                self.report(f"{trader.name}: the server did not cancel its resting orders ({exc})")
                server_gone = isinstance(exc, TransportError)
                unanswered.append(trader)
        return unanswered

    def total(self) -> Tally:
        total = Tally()
        for trader in self.traders:
            total.add(trader.tally)
        return total

    def summary(self, elapsed: float) -> str:
        total = self.total()
        refused = ", ".join(f"{code} {n}" for code, n in sorted(total.refused.items())) or "none"
        return (
            f"{elapsed:.0f} s: {total.orders} orders, {total.trades} trades ({total.contracts} contracts), "
            f"{total.cancels} cancels in {len(self.markets)} markets; refused: {refused}; "
            f"turns without a server: {self.transport_errors}"
        )


def _first(iterable: Iterable, count: int) -> list:
    return list(itertools.islice(iterable, count))
