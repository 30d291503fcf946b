"""Strategies: one class that runs in a backtest and live, unchanged (DESIGN section 11).

A strategy subclasses :class:`Strategy`, declares its parameters (:class:`Param`: default, unit, bounds) and reacts
to market data through hooks, each called with the :class:`Context` of one market::

    from decimal import Decimal
    from moltstreet_client.strategy import Param, Strategy

    class BuyTheDip(Strategy):
        \"\"\"Buys YES when the last trade is ``drop`` below the source's reference price.\"\"\"
        params = {"drop": Param(Decimal("0.05"), "credits (YES price)", "How far below the reference to buy."),
                  "size": Param(5, "contracts", "Contracts per order.", minimum=1)}

        def on_trade(self, ctx, trade):
            if ctx.reference_price and trade.price <= ctx.reference_price - self.drop and ctx.inventory < 50:
                ctx.buy("YES", ctx.best_ask or trade.price, self.size, time_in_force="IOC")

Runs: in a backtest on recorded history (:func:`moltstreet_client.backtest.run_backtest`, ``moltstreet-backtest
module:Class --url ... --market ...``), live against a server (:mod:`moltstreet_client.runner`, ``moltstreet-run
module:Class --url ... --key ...``), and on the server for the built-ins (:mod:`moltstreet_client.strategies`,
``POST /api/v1/backtests/``).

Units, as everywhere in MoltStreet: prices are credits per contract on the order's own side (0.01-0.99 on the 0.01
tick), and book and trade prices are YES prices (a NO bid at q is a YES ask at 1 - q); sizes are whole contracts;
cash is credits. Orders the exchange would refuse raise the same :class:`~moltstreet_client.errors.MoltStreetError`
subclass in a backtest as live (``InsufficientBalance``, ``InsufficientPosition``, ``MarketClosed``,
``PostOnlyWouldCross``, ``InvalidRequest``); a refusal raised out of a hook is counted by the runner, never fatal.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from moltstreet_client.errors import MoltStreetError, error_class

YES, NO = "YES", "NO"
BUY, SELL = "BUY", "SELL"
TIMES_IN_FORCE = ("GTC", "GTD", "IOC", "FOK")
ZERO = Decimal("0")
CENT = Decimal("0.01")
HALF = Decimal("0.50")
ONE = Decimal("1")
MIN_PRICE, MAX_PRICE = Decimal("0.01"), Decimal("0.99")
PROBABILITY = Decimal("0.0001")  # a forecast's places, as the exchange keeps it
# An Execution's reasons.
TAKER, MAKER, NETTING = "taker", "maker", "netting"


class StrategyError(ValueError):
    """A strategy or its parameters cannot be used: ``code`` is the API's error code (``invalid_request``) and
    ``detail`` names the field, as the server's one error shape does."""

    code = "invalid_request"

    def __init__(self, message: str, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or {}


def refusal(code: str, message: str, **detail: Any) -> MoltStreetError:
    """The SDK's error for the API error ``code`` (``market_closed``...), as the server would raise it, with
    ``detail``'s values as text."""
    return error_class(code)(message, code=code, detail={key: str(value) for key, value in detail.items()})


# --------------------------------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class Param:
    """One parameter of a strategy: its ``default`` (whose type, ``int``, ``Decimal`` or ``float``, is the
    parameter's), its ``unit`` (``"contracts"``, ``"credits (YES price)"``, ``"seconds"``...), a ``description``,
    and optional inclusive ``minimum``/``maximum``."""

    default: int | Decimal | float
    unit: str
    description: str
    minimum: int | Decimal | float | None = None
    maximum: int | Decimal | float | None = None

    @property
    def type(self) -> str:
        """The JSON Schema type of the value: ``integer``, ``number`` (a ``float``), or ``decimal`` (a decimal
        string, as the API writes money and prices)."""
        if isinstance(self.default, bool):
            raise TypeError("boolean parameters are not supported")
        if isinstance(self.default, int):
            return "integer"
        if isinstance(self.default, Decimal):
            return "decimal"
        return "number"

    def parse(self, name: str, value: Any) -> int | Decimal | float:
        """``value`` as this parameter's type, within its bounds. Accepts the type itself or its text (``"0.02"``,
        ``"5"``); a ``float`` for a decimal parameter is read through its shortest text (``0.1`` is ``0.1``).
        Raises :class:`StrategyError` for anything else: a boolean, a fraction for an integer, a non-finite
        number, a value out of bounds."""
        bad = StrategyError(f"{name} must be {self._expected()}.", detail={name: _jsonable(value)})
        if isinstance(value, bool) or value is None:
            raise bad
        kind = self.type
        try:
            if kind == "integer":
                if isinstance(value, float):
                    if not value.is_integer():
                        raise bad
                    value = int(value)
                parsed: int | Decimal | float = int(value) if isinstance(value, int) else int(str(value).strip())
            elif kind == "decimal":
                parsed = Decimal(str(value).strip())
                if not parsed.is_finite():
                    raise bad
            else:
                parsed = float(value)
                if not math.isfinite(parsed):
                    raise bad
        except (ValueError, TypeError, InvalidOperation):
            raise bad from None
        if (self.minimum is not None and parsed < self.minimum) or (self.maximum is not None and parsed > self.maximum):
            raise bad
        return parsed

    def _expected(self) -> str:
        kind = {"integer": "a whole number", "decimal": "a decimal number", "number": "a number"}[self.type]
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} from {self.minimum} to {self.maximum} ({self.unit})"
        if self.minimum is not None:
            return f"{kind} of at least {self.minimum} ({self.unit})"
        if self.maximum is not None:
            return f"{kind} of at most {self.maximum} ({self.unit})"
        return f"{kind} ({self.unit})"

    def describe(self, name: str) -> dict[str, Any]:
        """``{name, type, default, unit, description, minimum, maximum}``; decimals as strings, as the API writes
        them."""
        return {
            "name": name,
            "type": self.type,
            "default": _jsonable(self.default),
            "unit": self.unit,
            "description": self.description,
            "minimum": _jsonable(self.minimum),
            "maximum": _jsonable(self.maximum),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------------------------------
# What a strategy sees


@dataclass(frozen=True, slots=True)
class Print:
    """A recorded trade of the market: ``price`` the YES price (credits), ``size`` contracts, ``taker_side`` the
    queue the incoming order bid in (``YES``/``NO``), ``seq`` the market's sequence number, ``time`` when it
    executed."""

    time: datetime
    price: Decimal
    size: int
    taker_side: str
    seq: int


@dataclass(slots=True)
class OpenOrder:
    """One of the strategy's own orders: ``side`` YES/NO, ``action`` BUY/SELL, ``price`` on its own side (credits),
    ``size``/``filled`` contracts, ``status`` (``open``, ``partial``, ``filled``, ``cancelled``, ``expired``),
    ``cancel_reason`` (``""``, ``user``, ``self_trade``, ``ioc_remainder``, ``fok_unfilled``, ``market_closed``,
    ``market_resolved``), as the API's order."""

    id: str
    market: str
    side: str
    action: str
    price: Decimal
    size: int
    filled: int = 0
    status: str = "open"
    time_in_force: str = "GTC"
    post_only: bool = False
    expires_at: datetime | None = None
    created_at: datetime | None = None
    cancel_reason: str = ""

    @property
    def remaining(self) -> int:
        """Contracts still to fill (0 once the order is no longer resting)."""
        return self.size - self.filled if self.status in ("open", "partial") else 0

    @property
    def is_resting(self) -> bool:
        return self.status in ("open", "partial")


@dataclass(frozen=True, slots=True)
class Execution:
    """A fill of one of the strategy's orders, or a netting of its contracts (DESIGN section 3).

    ``side``/``action``/``price``: the order's side, action and the fill price on that side (credits); ``size``
    contracts; ``cash`` the credits it moved (negative: paid). ``reason``: ``taker`` (the order crossed the recorded
    book and took its displayed size), ``maker`` (a resting order that a later trade printed through, filled at its
    own price), or ``netting`` (``side`` ``PAIR``, ``action`` ``MERGE``, ``price`` 1.00: YES and NO contracts
    merged into 1.00 credit each). Live, ``taker`` and ``maker`` are the fill's role. ``order`` is the order's id
    (``None`` for netting)."""

    time: datetime
    market: str
    side: str
    action: str
    price: Decimal
    size: int
    reason: str
    cash: Decimal
    order: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The API's shape: ``{time, market, side, action, price, size, reason, cash, order}``, decimals as
        strings, ``time`` ISO 8601."""
        return {
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "market": self.market,
            "side": self.side,
            "action": self.action,
            "price": str(self.price),
            "size": self.size,
            "reason": self.reason,
            "cash": str(self.cash),
            "order": self.order,
        }


class Context(ABC):
    """One market as a strategy sees it, and the calls it trades with. The backtest engine and the live runner each
    implement it; a strategy uses nothing else.

    Read: ``market`` (its id), ``now``, ``question``, ``deadline``, ``status`` (``open``, ``closed``,
    ``resolved``); the book as YES prices (``best_bid``, ``best_ask``, ``bid_size``, ``ask_size``, ``mid``,
    ``spread``; ``None`` where a side is empty); ``last_price`` and ``recent_prices`` (the market's last trades'
    YES prices, oldest first); ``reference_price`` (the source's probability of YES, DESIGN section 10, or
    ``None``); the holding (``yes_shares``, ``no_shares``, ``inventory`` = YES - NO) and ``cash`` (available
    credits: balance less what resting BUY orders reserve); ``orders`` (its resting orders here).

    Trade: :meth:`place` (and :meth:`buy`/:meth:`sell`), :meth:`cancel`, :meth:`cancel_all`, :meth:`forecast`;
    several orders at once: :meth:`place_orders` and :meth:`cancel_orders` (live, one batch request for all; in a
    backtest, one after the other, as :meth:`place` and :meth:`cancel` would).
    """

    market: str
    RECENT = 100  # how many recent trade prices recent_prices keeps

    # What it sees ---------------------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def now(self) -> datetime: ...

    @property
    @abstractmethod
    def question(self) -> str: ...

    @property
    @abstractmethod
    def deadline(self) -> datetime | None: ...

    @property
    @abstractmethod
    def status(self) -> str: ...

    @property
    @abstractmethod
    def best_bid(self) -> Decimal | None:
        """The best YES bid (credits), ``None`` with none."""

    @property
    @abstractmethod
    def best_ask(self) -> Decimal | None:
        """The best YES ask (credits): 1 - the best NO bid, ``None`` with none."""

    @property
    @abstractmethod
    def bid_size(self) -> int:
        """Contracts bid at ``best_bid`` (0 with none)."""

    @property
    @abstractmethod
    def ask_size(self) -> int:
        """Contracts offered at ``best_ask`` (0 with none)."""

    @property
    @abstractmethod
    def last_price(self) -> Decimal | None:
        """The last trade's YES price, ``None`` before the first."""

    @property
    @abstractmethod
    def recent_prices(self) -> tuple[Decimal, ...]:
        """The YES prices of the market's last trades (up to ``RECENT``), oldest first."""

    @property
    @abstractmethod
    def reference_price(self) -> Decimal | None:
        """The source's probability of YES (0-1), ``None`` for a market without a source price."""

    @property
    @abstractmethod
    def yes_shares(self) -> int: ...

    @property
    @abstractmethod
    def no_shares(self) -> int: ...

    @property
    @abstractmethod
    def cash(self) -> Decimal:
        """Available credits: the balance less what resting BUY orders reserve (in every market)."""

    @property
    @abstractmethod
    def orders(self) -> list[OpenOrder]:
        """The strategy's resting orders in this market, oldest first."""

    @property
    def mid(self) -> Decimal | None:
        """``(best_bid + best_ask) / 2``, ``None`` unless both sides have a level."""
        bid, ask = self.best_bid, self.best_ask
        return (bid + ask) / 2 if bid is not None and ask is not None else None

    @property
    def spread(self) -> Decimal | None:
        """``best_ask - best_bid`` (credits), ``None`` unless both sides have a level."""
        bid, ask = self.best_bid, self.best_ask
        return ask - bid if bid is not None and ask is not None else None

    @property
    def inventory(self) -> int:
        """Net YES contracts held (negative: net NO)."""
        return self.yes_shares - self.no_shares

    # What it does ---------------------------------------------------------------------------------------------------

    def place(
        self,
        side: str,
        action: str,
        price: Decimal | str,
        size: int,
        *,
        time_in_force: str = "GTC",
        post_only: bool = False,
        expires_at: datetime | None = None,
    ) -> OpenOrder:
        """Place an order in this market (``POST /orders/``): ``side`` YES/NO, ``action`` BUY/SELL, ``price`` on
        that side, ``size`` contracts. Returns the order as matching left it (``filled``, ``status``); its fills
        reach :meth:`Strategy.on_fill` after the hook that placed it returns. Raises the exchange's refusals (see
        the module)."""
        return self._place(side, action, price, size, time_in_force, post_only, expires_at)

    @abstractmethod
    def _place(
        self,
        side: str,
        action: str,
        price: Decimal | str,
        size: int,
        time_in_force: str,
        post_only: bool,
        expires_at: datetime | None,
    ) -> OpenOrder:
        """What :meth:`place` does, with every option given: the implementation's one hook for orders. It
        validates as the exchange would (a backtest as the server does; live, the SDK and the server) and raises
        the exchange's refusals."""

    def place_orders(
        self,
        orders: Iterable[tuple[str, str, Decimal | str, int]],
        *,
        time_in_force: str = "GTC",
        post_only: bool = False,
        expires_at: datetime | None = None,
    ) -> list[OpenOrder]:
        """Place several orders in this market, in the order given: each ``(side, action, price, size)`` as
        :meth:`place` takes them (price on that side, credits; size contracts), all with the same options. Returns
        the orders as matching left them, in the order given.

        Here (and in a backtest) they are placed one after the other and the first refusal is raised at once: the
        orders before it are placed, those after it are not. Live (:class:`~moltstreet_client.runner.LiveContext`)
        they go in one ``POST /orders/batch/`` (20 a request), every one is sent, and the first refusal is raised
        once all are applied (the runner counts the others)."""
        return [
            self.place(
                side, action, price, size, time_in_force=time_in_force, post_only=post_only, expires_at=expires_at
            )
            for side, action, price, size in orders
        ]

    @abstractmethod
    def cancel(self, order: OpenOrder | str) -> bool:
        """Cancel a resting order (``DELETE /orders/{id}/``); ``False`` when it was no longer resting."""

    def cancel_orders(self, orders: Iterable[OpenOrder | str]) -> list[bool]:
        """Cancel several resting orders (or ids), in the order given; for each, ``False`` when it was no longer
        resting. Here (and in a backtest) one :meth:`cancel` after the other; live, one
        ``POST /orders/batch-cancel/`` (20 a request)."""
        return [self.cancel(order) for order in orders]

    @abstractmethod
    def cancel_all(self) -> int:
        """Cancel every resting order of the strategy in this market; returns how many were cancelled."""

    @abstractmethod
    def forecast(self, probability: Decimal | float | str, reasoning: str = "") -> None:
        """State a probability of YES (0-1) for this market (``POST /markets/{id}/forecast/``): the last one before
        the market closes counts for the Brier score (DESIGN section 4a)."""

    def buy(self, side: str, price: Decimal | str, size: int, **options: Any) -> OpenOrder:
        """:meth:`place` a BUY of ``side``."""
        return self.place(side, BUY, price, size, **options)

    def sell(self, side: str, price: Decimal | str, size: int, **options: Any) -> OpenOrder:
        """:meth:`place` a SELL of ``side`` (contracts held)."""
        return self.place(side, SELL, price, size, **options)


class MarketContext(Context):
    """A :class:`Context` over a per-market state object (``self._m``), as the backtest engine and the live runner
    keep one: it has the attributes ``id``, ``question``, ``deadline``, ``status``, ``last_price`` (YES price or
    ``None``), ``recent`` (the last trades' YES prices, oldest first, up to ``Context.RECENT``), ``reference`` (the
    source's probability of YES or ``None``), ``yes_shares`` and ``no_shares`` (contracts held). What these
    properties read, and how :meth:`forecast` checks its probability, is the same in both; a subclass gives what
    differs: ``now``, the book's top, ``cash``, ``orders`` and the trading calls (``_place``, ``cancel``,
    ``cancel_all``, ``_forecast``)."""

    def __init__(self, state: Any):
        self._m = state
        self.market = state.id

    @property
    def question(self) -> str:
        return self._m.question

    @property
    def deadline(self) -> datetime | None:
        return self._m.deadline

    @property
    def status(self) -> str:
        return self._m.status

    @property
    def last_price(self) -> Decimal | None:
        return self._m.last_price

    @property
    def recent_prices(self) -> tuple[Decimal, ...]:
        return tuple(self._m.recent)

    @property
    def reference_price(self) -> Decimal | None:
        return self._m.reference

    @property
    def yes_shares(self) -> int:
        return self._m.yes_shares

    @property
    def no_shares(self) -> int:
        return self._m.no_shares

    def forecast(self, probability: Decimal | float | str, reasoning: str = "") -> None:
        try:
            value = Decimal(str(probability))
        except ArithmeticError:
            value = Decimal("NaN")
        if not value.is_finite() or not ZERO <= value <= ONE:
            raise refusal("invalid_request", "probability must be from 0 to 1.", probability=probability)
        if self._m.status != "open":
            raise refusal("market_closed", "The market is closed.", market=self.market)
        # The exchange takes 4 places; the backtest keeps the same (a reference price may carry more).
        self._forecast(value.quantize(PROBABILITY), reasoning)

    @abstractmethod
    def _forecast(self, probability: Decimal, reasoning: str) -> None:
        """Record a checked forecast: ``probability`` of YES (0-1, 4 places)."""


# --------------------------------------------------------------------------------------------------------------------
# The strategy


class Strategy:
    """Base of every strategy. Subclasses set ``name``/``description`` (the built-ins' listing), ``params`` (the
    :class:`Param` of each parameter) and override the hooks they need; parameters arrive as attributes of the same
    name (``self.size``), parsed and bounded.

    Hooks, each called with the market's :class:`Context` (``ctx``) in time order: :meth:`on_start` (before the
    first event), :meth:`on_book` (the book changed), :meth:`on_trade` (a trade printed, a :class:`Print`),
    :meth:`on_reference` (the source's reference price changed), :meth:`on_fill` (one of its orders filled, or its
    contracts were netted: an :class:`Execution`), :meth:`on_market` (the market opened, changed, closed or
    resolved: the event's name), :meth:`on_tick` (every ``interval`` seconds, when the strategy has the parameter
    ``interval``), :meth:`on_end` (after the last event).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **params: Any) -> None:
        self.settings = self.parse_params(params)
        for key, value in self.settings.items():
            setattr(self, key, value)

    @classmethod
    def parse_params(cls, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every parameter's value: ``raw``'s, parsed (:meth:`Param.parse`), else its default. Raises
        :class:`StrategyError` for a name the strategy does not have or a value out of its type or bounds."""
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(cls.params))
        if unknown:
            raise StrategyError(
                f"Unknown parameter {unknown[0]!r} for strategy {cls.label()!r}; it takes: "
                f"{', '.join(cls.params) or 'no parameters'}.",
                detail={"params": unknown},
            )
        return {key: (param.parse(key, raw[key]) if key in raw else param.default) for key, param in cls.params.items()}

    @classmethod
    def label(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """``{name, version, description, params: [Param.describe...]}``: what ``GET /backtests/strategies/``
        lists."""
        doc = cls.description or (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        return {
            "name": cls.label(),
            "version": cls.version,
            "description": " ".join(doc.split()),
            "params": [param.describe(key) for key, param in cls.params.items()],
        }

    @property
    def tick_interval(self) -> float | None:
        """Seconds between :meth:`on_tick` calls: the ``interval`` parameter, ``None`` (no ticks) without one."""
        value = self.settings.get("interval")
        return float(value) if value is not None else None

    # Hooks: override what the strategy needs. --------------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        """Before the first event of the market (live: once connected)."""

    def on_book(self, ctx: Context) -> None:
        """The market's book changed (``ctx.best_bid``/``best_ask`` have the new top)."""

    def on_trade(self, ctx: Context, trade: Print) -> None:
        """A trade printed in the market (anyone's, the strategy's own included)."""

    def on_reference(self, ctx: Context, price: Decimal | None) -> None:
        """The source's reference price (probability of YES) changed."""

    def on_fill(self, ctx: Context, fill: Execution) -> None:
        """One of the strategy's orders filled, or its YES and NO contracts were netted."""

    def on_market(self, ctx: Context, event: str) -> None:
        """The market changed: ``event`` is ``created``, ``updated``, ``closed`` or ``resolved`` (``ctx.status``)."""

    def on_tick(self, ctx: Context) -> None:
        """Every ``interval`` seconds of the clock (simulated in a backtest), for strategies with that parameter."""

    def on_end(self, ctx: Context) -> None:
        """After the last event (live: when the runner stops)."""


def parse_price(value: Decimal | str | float | int) -> Decimal:
    """A price as the exchange takes it: 0.01-0.99 on the 0.01 tick (credits). Raises ``ValueError``."""
    try:
        price = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError(f"price must be a decimal from 0.01 to 0.99, got {value!r}") from None
    if not price.is_finite() or not MIN_PRICE <= price <= MAX_PRICE or price != price.quantize(CENT):
        raise ValueError(f"price must be from 0.01 to 0.99 on the 0.01 tick, got {value!r}")
    return price.quantize(CENT)


def load_strategy(spec: str) -> type[Strategy]:
    """The class named by ``module:Class`` (``my_bots:Leaner``), or a built-in by name (``market_maker``).
    Raises :class:`StrategyError` when it cannot be imported or is not a :class:`Strategy`."""
    from importlib import import_module

    from moltstreet_client.strategies import BUILTINS

    if ":" not in spec:
        if spec in BUILTINS:
            return BUILTINS[spec]
        raise StrategyError(
            f"Unknown strategy {spec!r}: give module:Class, or one of {', '.join(sorted(BUILTINS))}.",
            detail={"strategy": spec},
        )
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise StrategyError(f"Cannot load strategy {spec!r}: {exc}", detail={"strategy": spec}) from exc
    if not (isinstance(target, type) and issubclass(target, Strategy)):
        raise StrategyError(
            f"{spec!r} is not a subclass of moltstreet_client.strategy.Strategy.", detail={"strategy": spec}
        )
    return target
