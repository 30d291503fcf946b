"""The built-in strategies: the house traders of ``make run``, and what ``POST /api/v1/backtests/`` runs on the server.

Each is a :class:`~moltstreet_client.strategy.Strategy`: the same class in a backtest and live. Prices are YES
prices in credits (0.01-0.99, tick 0.01) unless an order says NO; sizes are whole contracts.

- :class:`MarketMaker` (``market_maker``) rests a post-only bid and ask around a fair value (the last trade, else
  the book's mid, else the source's reference price, else 0.50), skewed against its inventory and withdrawn on the
  side that would take it past ``max_inventory``: the inventory-aware quoting of Avellaneda and Stoikov (2008,
  "High-frequency trading in a limit order book"), with a constant spread instead of their optimal one.
- :class:`Momentum` (``momentum``) buys the side whose price has risen over its lookback window and unwinds when the
  move reverses (time-series momentum; Moskowitz, Ooi and Pedersen 2012).
- :class:`ReferenceLeaner` (``reference_leaner``) leans toward the source's reference price (DESIGN section 10):
  it bids YES ``edge`` below the reference and offers ``edge`` above it, so it buys from whoever sells well below
  the source and sells to whoever buys well above, and states the reference as its forecast.
- :class:`NoiseTrader` (``noise``) trades small random sizes every few seconds: the uninformed flow of Kyle (1985,
  "Continuous auctions and insider trading") that gives the market maker something to trade with.
"""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from moltstreet_client.strategy import (
    BUY,
    CENT,
    HALF,
    MAX_PRICE,
    MIN_PRICE,
    NO,
    ONE,
    SELL,
    YES,
    Context,
    Execution,
    OpenOrder,
    Param,
    Print,
    Strategy,
)

YES_PRICE = "credits (YES price)"


def clamp_price(price: Decimal, rounding: str = ROUND_FLOOR) -> Decimal:
    """``price`` on the 0.01 tick (rounded by ``rounding``) and within 0.01-0.99."""
    return min(MAX_PRICE, max(MIN_PRICE, price.quantize(CENT, rounding=rounding)))


def fair_value(ctx: Context) -> Decimal:
    """The last trade, else the book's mid, else the source's reference price, else 0.50 (nobody priced it yet)."""
    if (value := ctx.last_price) is not None:  # read one by one: each is a property of a live or simulated book
        return value
    if (value := ctx.mid) is not None:
        return value
    if (value := ctx.reference_price) is not None:
        return value
    return HALF


def yes_exposure(yes_price: Decimal, size: int, no_shares: int) -> tuple[str, str, Decimal]:
    """How to gain YES exposure at the YES price ``yes_price``: sell NO held (at the complement) if there is
    enough, else buy YES. Returns ``(side, action, price on that side)``."""
    if no_shares >= size:
        return NO, SELL, clamp_price(ONE - yes_price, ROUND_CEILING)
    return YES, BUY, clamp_price(yes_price)


def no_exposure(yes_price: Decimal, size: int, yes_shares: int) -> tuple[str, str, Decimal]:
    """How to gain NO exposure at the YES price ``yes_price``: sell YES held if there is enough, else buy NO at
    1 - it. Returns ``(side, action, price on that side)``."""
    if yes_shares >= size:
        return YES, SELL, clamp_price(yes_price, ROUND_CEILING)
    return NO, BUY, clamp_price(ONE - yes_price)


def reconcile(ctx: Context, wanted: list[tuple[str, str, Decimal, int]], **options) -> None:
    """Make the strategy's resting orders in ``ctx``'s market the ``wanted`` ``(side, action, price, size)``: keep
    those already resting (same side, action and price), cancel the rest, place what is missing with ``options``
    (``post_only``...). The cancels go together (:meth:`Context.cancel_orders`), then the new orders
    (:meth:`Context.place_orders`): live, one batch request each; in a backtest, one after the other."""
    missing = list(wanted)
    stale = []
    for order in ctx.orders:
        match = next((w for w in missing if w[:3] == (order.side, order.action, order.price)), None)
        if match is not None:
            missing.remove(match)
        else:
            stale.append(order)
    if stale:
        ctx.cancel_orders(stale)
    if missing:
        ctx.place_orders(missing, **options)


def rests_at(ctx: Context, yes_queue: bool, yes_price: Decimal) -> bool:
    """Whether one of the strategy's resting orders in ``ctx``'s market bids ``yes_price`` as a YES bid
    (``yes_queue``: BUY YES, SELL NO) or offers it as a YES ask (BUY NO, SELL YES)."""
    for order in ctx.orders:
        price = order.price if order.side == YES else ONE - order.price
        if ((order.side == YES) == (order.action == BUY)) == yes_queue and price == yes_price:
            return True
    return False


class MarketMaker(Strategy):
    """Rests a post-only YES bid and ask ``half_spread`` either side of the fair value, skewed by inventory.

    Skew: each net contract held moves both quotes ``skew`` against it (long YES: lower quotes, so it sells more and
    buys less). At ``max_inventory`` net contracts it quotes only the side that reduces them. A new quote never crosses
    the book (a bid goes below the best ask, an ask above the best bid), so post-only holds; a quote already resting
    where it wants it stays even when the book comes to cross it (in a backtest, the next print through it fills
    it). It requotes whenever the book, a trade or a fill moves what it wants: live, a requote is at most one batch
    cancel of the quotes that moved and one batch place of the new ones (:func:`reconcile`).
    """

    name = "market_maker"
    version = "1"
    params = {
        "half_spread": Param(Decimal("0.02"), YES_PRICE, "Distance of each quote from the fair value.", CENT, HALF),
        "skew": Param(
            Decimal("0.002"), YES_PRICE + " per contract", "Quote shift per net contract held.", 0, CENT * 10
        ),
        "size": Param(5, "contracts", "Contracts per quote.", 1, 10_000),
        "max_inventory": Param(50, "contracts", "Net contracts beyond which it quotes one side only.", 1, 100_000),
    }

    def quotes(self, ctx: Context) -> list[tuple[str, str, Decimal, int]]:
        """The ``(side, action, price, size)`` it wants resting now."""
        inventory = ctx.inventory
        centre = fair_value(ctx) - self.skew * inventory
        bid = clamp_price(centre - self.half_spread, ROUND_FLOOR)
        ask = clamp_price(centre + self.half_spread, ROUND_CEILING)
        best_bid, best_ask = ctx.best_bid, ctx.best_ask
        # A new quote must not cross (post-only), but a quote already resting stays where it is when the book comes
        # to cross it: live, the crossing order would have traded with it; in a backtest, the recorded order that
        # crosses it did not see it, and the next print through it fills it (DESIGN section 11). Moving it out of
        # the way would make a recorded market maker never fill.
        if best_ask is not None and bid >= best_ask and not rests_at(ctx, True, bid):
            bid = best_ask - CENT
        if best_bid is not None and ask <= best_bid and not rests_at(ctx, False, ask):
            ask = best_bid + CENT
        wanted = []
        if inventory < self.max_inventory and bid >= MIN_PRICE:
            wanted.append((*yes_exposure(bid, self.size, ctx.no_shares), self.size))
        if inventory > -self.max_inventory and ask <= MAX_PRICE:
            wanted.append((*no_exposure(ask, self.size, ctx.yes_shares), self.size))
        return wanted

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.quoted: dict[str, tuple] = {}  # by market: what its quotes were last made from

    def _inputs(self, ctx: Context) -> tuple:
        """Everything :meth:`quotes` and :func:`reconcile` read: when none of it changed, requoting changes nothing."""
        orders = tuple((o.id, o.filled) for o in ctx.orders)
        return fair_value(ctx), ctx.yes_shares, ctx.no_shares, ctx.best_bid, ctx.best_ask, orders

    def requote(self, ctx: Context) -> None:
        if ctx.status != "open" or self.quoted.get(ctx.market) == self._inputs(ctx):
            return
        reconcile(ctx, self.quotes(ctx), post_only=True)
        self.quoted[ctx.market] = self._inputs(ctx)

    def on_start(self, ctx: Context) -> None:
        self.requote(ctx)

    def on_book(self, ctx: Context) -> None:
        self.requote(ctx)

    def on_trade(self, ctx: Context, trade: Print) -> None:
        self.requote(ctx)

    def on_fill(self, ctx: Context, fill: Execution) -> None:
        self.requote(ctx)


class Momentum(Strategy):
    """Compares the last trade with the mean of the ``lookback`` trades before it. Up by ``threshold`` or more: it
    unwinds NO held, else buys YES (``size`` contracts, at most ``max_inventory`` net); down: the mirror image.

    It takes the best price when the book shows one (IOC); on an empty side it bids at the last trade's price for
    ``rest_seconds`` (GTD), replacing that bid at each new signal.
    """

    name = "momentum"
    version = "1"
    params = {
        "lookback": Param(10, "trades", "Trades in the mean the last trade is compared with.", 1, 1_000),
        "threshold": Param(Decimal("0.03"), YES_PRICE, "How far the last trade must be from that mean.", CENT, ONE),
        "size": Param(3, "contracts", "Contracts per order.", 1, 10_000),
        "max_inventory": Param(30, "contracts", "Net contracts it holds at most.", 1, 100_000),
        "rest_seconds": Param(300.0, "seconds", "How long a bid on an empty book rests.", 1.0, 86_400.0),
    }

    def signal(self, prices: tuple[Decimal, ...]) -> Decimal | None:
        """``last - mean(previous lookback)`` in YES credits, or ``None`` with too few trades to tell."""
        if len(prices) < self.lookback + 1:
            return None
        window = prices[-self.lookback - 1 : -1]
        return prices[-1] - sum(window, Decimal(0)) / len(window)

    def on_trade(self, ctx: Context, trade: Print) -> None:
        signal = self.signal(ctx.recent_prices)
        if signal is None or ctx.status != "open":
            return
        if signal >= self.threshold:
            self.lean(ctx, up=True, last=trade.price)
        elif signal <= -self.threshold:
            self.lean(ctx, up=False, last=trade.price)

    def lean(self, ctx: Context, *, up: bool, last: Decimal) -> None:
        if ctx.orders:
            ctx.cancel_all()  # a bid left from the previous signal
        inventory = ctx.inventory if up else -ctx.inventory
        held_against = ctx.no_shares if up else ctx.yes_shares
        if held_against:  # unwind what the move turned against, first
            side = NO if up else YES
            quote = ctx.best_ask if up else ctx.best_bid
            if quote is not None:
                own = clamp_price(ONE - quote) if up else quote  # the best bid of the side sold
                ctx.sell(side, own, held_against, time_in_force="IOC")
            return
        if inventory + self.size > self.max_inventory:
            return
        if up:
            best = ctx.best_ask
            side, price = YES, (best if best is not None else last)
        else:
            best = ctx.best_bid
            side, price = NO, clamp_price(ONE - (best if best is not None else last))
        if best is not None:
            ctx.buy(side, clamp_price(price), self.size, time_in_force="IOC")
        else:
            expires = ctx.now + timedelta(seconds=self.rest_seconds)
            ctx.buy(side, clamp_price(price), self.size, time_in_force="GTD", expires_at=expires)


class ReferenceLeaner(Strategy):
    """Bids YES ``edge`` below the source's reference price and offers YES ``edge`` above it (``size`` contracts
    each, at most ``max_inventory`` net), moving both as the reference moves, and states the reference as its
    forecast when it changes by ``forecast_step`` or more. Its orders are plain limits: they take what the book
    offers beyond the edge at once and rest for the rest. Without a reference price it does nothing.
    """

    name = "reference_leaner"
    version = "1"
    params = {
        "edge": Param(Decimal("0.03"), YES_PRICE, "Distance from the reference at which it buys or sells.", CENT, HALF),
        "size": Param(5, "contracts", "Contracts per order.", 1, 10_000),
        "max_inventory": Param(50, "contracts", "Net contracts it holds at most, each way.", 1, 100_000),
        "forecast_step": Param(
            Decimal("0.01"), "probability", "Change of the reference that makes it state a new forecast.", CENT, ONE
        ),
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.stated: dict[str, Decimal] = {}

    def act(self, ctx: Context) -> None:
        reference = ctx.reference_price
        if reference is None or ctx.status != "open":
            return
        stated = self.stated.get(ctx.market)
        if stated is None or abs(reference - stated) >= self.forecast_step:
            ctx.forecast(reference)
            self.stated[ctx.market] = reference
        wanted = []
        bid, ask = reference - self.edge, reference + self.edge
        if ctx.inventory < self.max_inventory and bid >= MIN_PRICE:
            wanted.append((*yes_exposure(bid, self.size, ctx.no_shares), self.size))
        if ctx.inventory > -self.max_inventory and ask <= MAX_PRICE:
            wanted.append((*no_exposure(ask, self.size, ctx.yes_shares), self.size))
        reconcile(ctx, wanted)

    def on_start(self, ctx: Context) -> None:
        self.act(ctx)

    def on_reference(self, ctx: Context, price: Decimal | None) -> None:
        self.act(ctx)

    def on_fill(self, ctx: Context, fill: Execution) -> None:
        self.act(ctx)


class NoiseTrader(Strategy):
    """Every ``interval`` seconds, with probability ``take``: takes the best YES or NO price (IOC, 1 to ``max_size``
    contracts), or sells part of a holding at the best bid; otherwise rests a GTD order 1-5 ticks behind the fair
    value for ``rest_seconds``. It buys only what its available cash pays for (a turn it cannot afford is skipped,
    not sent to be refused). ``seed`` makes its choices repeatable (the same backtest gives the same result)."""

    name = "noise"
    version = "1"
    params = {
        "take": Param(0.6, "probability", "Chance a turn takes liquidity rather than resting an order.", 0.0, 1.0),
        "max_size": Param(5, "contracts", "Largest order.", 1, 10_000),
        "rest_seconds": Param(120.0, "seconds", "How long a resting order lives.", 1.0, 86_400.0),
        "interval": Param(4.0, "seconds", "Time between turns.", 0.5, 86_400.0),
        "seed": Param(0, "integer", "Seed of its random choices.", 0, 2**31 - 1),
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.rng = random.Random(self.seed)

    def on_tick(self, ctx: Context) -> None:
        # The context is read only where a branch needs it (a turn is the hot path of a long backtest); the random
        # choices come in the same order whatever is read.
        rng = self.rng
        size = rng.randint(1, self.max_size)
        if rng.random() < self.take:
            yes_shares, no_shares = ctx.yes_shares, ctx.no_shares
            if (yes_shares or no_shares) and rng.random() < 0.35:
                # Sell part of what is held, at the best bid of that side (IOC: whatever is there now).
                if yes_shares and (best_bid := ctx.best_bid) is not None:
                    ctx.sell(YES, best_bid, min(size, yes_shares), time_in_force="IOC")
                elif no_shares and (best_ask := ctx.best_ask) is not None:
                    ctx.sell(NO, clamp_price(ONE - best_ask), min(size, no_shares), time_in_force="IOC")
                return
            if rng.random() < 0.5:
                if (best_ask := ctx.best_ask) is not None:
                    self.buy(ctx, YES, best_ask, size, time_in_force="IOC")
            elif (best_bid := ctx.best_bid) is not None:
                self.buy(ctx, NO, clamp_price(ONE - best_bid), size, time_in_force="IOC")
            return
        ticks = CENT * rng.randint(1, 5)
        expires = ctx.now + timedelta(seconds=self.rest_seconds)
        fair = fair_value(ctx)
        if rng.random() < 0.5:
            self.buy(ctx, YES, clamp_price(fair - ticks), size, time_in_force="GTD", expires_at=expires)
        else:
            self.buy(ctx, NO, clamp_price(ONE - fair - ticks), size, time_in_force="GTD", expires_at=expires)

    @staticmethod
    def buy(ctx: Context, side: str, price: Decimal, size: int, **options) -> None:
        """``ctx.buy`` of at most what the available cash pays for at ``price`` (credits); nothing if not one."""
        size = min(size, int(ctx.cash // price))
        if size > 0:
            ctx.buy(side, price, size, **options)


BUILTINS: dict[str, type[Strategy]] = {cls.name: cls for cls in (MarketMaker, Momentum, ReferenceLeaner, NoiseTrader)}

__all__ = [
    "BUILTINS",
    "BUY",
    "MarketMaker",
    "Momentum",
    "NoiseTrader",
    "OpenOrder",
    "ReferenceLeaner",
    "clamp_price",
    "fair_value",
    "no_exposure",
    "reconcile",
    "yes_exposure",
]
