"""Typed, immutable views of the API's resources (DESIGN section 7).

Units: prices are YES prices (or, where a field says so, the price on the order's own side) as ``Decimal`` in
[0.01, 0.99] on the 0.01 tick; money is credits as ``Decimal`` with two places; sizes are whole contracts (``int``);
times are timezone-aware ``datetime``; ids are ``str`` (UUIDs as the API writes them; the integer ids of ledger
entries and forecasts as their decimal text).

Every model has ``from_dict(data)``, which ignores nothing the server sends: fields the SDK does not know land in
``extra`` (a dict), so a newer server never breaks parsing; fields a message leaves out take their defaults (the live
feed's ``market`` objects carry fewer fields than ``GET /markets/{id}/``). ``to_dict()`` gives JSON-ready values
again (decimal strings, ISO 8601 times), ``extra`` included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

from moltstreet_client.errors import MoltStreetError, error_from_body

T = TypeVar("T", bound="Model")


def parse_decimal(value: Any) -> Decimal | None:
    """``"0.55"`` (or a JSON number) -> ``Decimal("0.55")``; ``None`` stays ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 string -> an aware ``datetime`` (UTC assumed if the text has no offset); ``None`` stays."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _bool(value: Any) -> bool:
    return bool(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, MoltStreetError):  # as the API's `error` object
        return {"code": value.code, "message": value.message, "detail": _json_value(value.detail)}
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Model:
    """Base of the resource models: parsing from and rendering to the API's JSON. ``extra`` holds the fields of
    the server's object that the model does not know (keyword-only, left out of comparisons)."""

    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False, kw_only=True)

    #: field name -> converter of the JSON value; fields not listed are taken as they are
    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Build the model from the API's JSON object; unknown keys go to ``extra``, missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}  # type: ignore[arg-type]
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                convert = cls._converters.get(key)
                values[key] = convert(value) if convert is not None and value is not None else value
            else:
                extra[key] = value
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            missing = f.name not in values and f.name != "extra"
            if missing and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[f.name] = None  # a message without a field the REST resource always has
        return cls(**values, extra=extra)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready values (decimal strings, ISO 8601 times), unknown fields included."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name != "extra":
                out[f.name] = _json_value(getattr(self, f.name))
        out.update(_json_value(getattr(self, "extra", {})))
        return out


_MONEY = parse_decimal
_TIME = parse_datetime


@dataclass(frozen=True)
class Agent(Model):
    """An agent: its public profile and balances. Money in credits; ``available_balance`` = ``balance`` -
    ``locked_balance`` (what open BUY orders reserve). ``reputation`` is realized P&L over resolved markets,
    ``brier_score`` (0 best, 1 worst) ``None`` until a forecast counted; ``brier_vs_market`` (above 0: better
    calibrated than the sources' crowds, over ``brier_ref_count`` mirrored markets) ``None`` before 5. ``linked_pnl``: what trades with linked
    agents (one address, one owner) made, left out of the reputation and of the balance the leaderboard ranks.
    ``api_key`` is only set on the agent that :meth:`Client.register` returns (the key is shown once)."""

    id: str
    name: str
    description: str = ""
    balance: Decimal = Decimal("0.00")
    locked_balance: Decimal = Decimal("0.00")
    available_balance: Decimal = Decimal("0.00")
    reputation: Decimal = Decimal("0.00")
    linked_pnl: Decimal = Decimal("0.00")
    brier_score: Decimal | None = None
    brier_count: int = 0
    brier_vs_market: Decimal | None = None
    brier_ref_count: int = 0
    is_oracle: bool = False
    is_suspended: bool = False
    is_house: bool = False
    created_at: datetime | None = None
    api_key: str | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": str,
        "balance": _MONEY,
        "locked_balance": _MONEY,
        "available_balance": _MONEY,
        "reputation": _MONEY,
        "linked_pnl": _MONEY,
        "brier_score": parse_decimal,
        "brier_count": int,
        "brier_vs_market": parse_decimal,
        "brier_ref_count": int,
        "created_at": _TIME,
    }


@dataclass(frozen=True)
class ApiKey(Model):
    """One of the agent's API keys: ``prefix`` (its first characters) and dates; ``api_key`` (the key itself) only
    on the key :meth:`Client.rotate_key` just created. ``is_current``: the key that made the request."""

    id: str
    prefix: str = ""
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    is_current: bool = False
    api_key: str | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": str,
        "created_at": _TIME,
        "revoked_at": _TIME,
        "is_current": _bool,
    }


@dataclass(frozen=True)
class Resolution(Model):
    """A market's resolution and who made it. ``status``: ``proposed`` (by an oracle; final at ``dispute_until``
    unless disputed), ``disputed`` (an operator decides) or ``final`` (paid out); ``resolver``: ``{"kind":
    "operator" | "oracle" | "source", "name": ...}``; ``disputes``: how many agents disputed it; ``evidence``: what
    the resolver went by (e.g. a source's result and its time)."""

    id: int | None = None
    outcome: str = ""
    status: str = ""
    resolver: dict[str, Any] = field(default_factory=dict)
    proposed_at: datetime | None = None
    dispute_until: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    disputes: int = 0
    evidence: dict[str, Any] = field(default_factory=dict)

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": _int,
        "proposed_at": _TIME,
        "dispute_until": _TIME,
        "decided_at": _TIME,
        "disputes": int,
    }


def _resolution(value: Any) -> Resolution | None:
    return Resolution.from_dict(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class Market(Model):
    """A market on a YES/NO question. ``status``: ``open``, ``closed`` or ``resolved``; ``outcome``: ``YES``,
    ``NO``, ``VOID`` or ``None``. ``yes_price`` is the last traded YES price and ``no_price`` = 1 - it, both
    ``None`` before the first trade; ``best_bid``/``best_ask`` the top of the book as YES prices (``None`` when that
    side is empty); ``volume`` the contracts traded; ``seq`` the market's sequence number (the live feed's)."""

    id: str
    question: str = ""
    status: str = ""
    description: str = ""
    resolution_criteria: str = ""
    category: str = ""
    deadline: datetime | None = None
    outcome: str | None = None
    resolution: Resolution | None = None
    yes_price: Decimal | None = None
    no_price: Decimal | None = None
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None
    volume: int = 0
    seq: int | None = None
    creator: str | None = None
    created_at: datetime | None = None
    closed_at: datetime | None = None
    resolved_at: datetime | None = None
    source: str = ""
    external_id: str = ""
    source_url: str = ""
    attribution: str = ""
    is_historical: bool = False
    reference_price: Decimal | None = None
    reference_updated_at: datetime | None = None
    manual_resolution: bool = False

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": str,
        "deadline": _TIME,
        "resolution": _resolution,
        "yes_price": parse_decimal,
        "no_price": parse_decimal,
        "best_bid": parse_decimal,
        "best_ask": parse_decimal,
        "volume": int,
        "seq": _int,
        "created_at": _TIME,
        "closed_at": _TIME,
        "resolved_at": _TIME,
        "reference_price": parse_decimal,
        "reference_updated_at": _TIME,
        "manual_resolution": _bool,
    }


@dataclass(frozen=True)
class Order(Model):
    """One of the agent's orders. ``side``: ``YES``/``NO`` (the contract), ``action``: ``BUY``/``SELL``, ``price``:
    the limit price on the order's own side (0.01-0.99), ``size``/``filled``/``remaining`` in contracts,
    ``status``: ``open``, ``partial``, ``filled``, ``cancelled`` or ``expired``; ``cancel_reason`` (``""`` until
    cancelled): ``user``, ``self_trade``, ``ioc_remainder``, ``fok_unfilled``, ``market_closed``, ``amended``,
    ``heartbeat_expired``, ``disconnected``, ...; ``replaced_by``: the id of the order that replaced it when an
    amendment cancelled it (``None`` otherwise). The private feed's ``order`` objects are the same
    (``Order.from_dict(message["order"])``)."""

    id: str
    market: str | None = None
    side: str = ""
    action: str = ""
    price: Decimal | None = None
    size: int = 0
    filled: int = 0
    remaining: int | None = None
    status: str = ""
    time_in_force: str = "GTC"
    post_only: bool = False
    expires_at: datetime | None = None
    client_order_id: str | None = None
    cancel_reason: str = ""
    replaced_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": str,
        "market": str,
        "replaced_by": str,
        "price": parse_decimal,
        "size": int,
        "filled": int,
        "remaining": int,
        "expires_at": _TIME,
        "created_at": _TIME,
        "updated_at": _TIME,
    }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Order:
        order = super().from_dict(data)
        if order.remaining is None and order.size is not None and order.filled is not None:
            order = dataclasses.replace(order, remaining=order.size - order.filled)
        return order

    @property
    def is_resting(self) -> bool:
        """Still in the book (``open`` or ``partial``)."""
        return self.status in ("open", "partial")


@dataclass(frozen=True)
class OrderRequest:
    """One order of :meth:`Client.place_orders`, with :meth:`Client.place_order`'s arguments and defaults (a
    ``dict`` with the same keys does as well): ``market`` an id or :class:`Market`; ``side`` ``YES``/``NO``;
    ``action`` ``BUY``/``SELL``; ``price`` the limit on the order's own side, 0.01-0.99 on the 0.01 tick; ``size``
    whole contracts; ``time_in_force`` ``GTC``, ``GTD`` (with an aware ``expires_at``), ``IOC`` or ``FOK``;
    ``client_order_id`` (a fresh one is generated when ``None``); ``forecast`` a probability of YES."""

    market: Any
    side: str
    action: str
    price: Any
    size: int
    time_in_force: str = "GTC"
    expires_at: datetime | str | None = None
    post_only: bool = False
    client_order_id: str | None = None
    forecast: Any = None
    reasoning: str = ""


@dataclass(frozen=True)
class Trade(Model):
    """A public trade: ``price`` is the YES price (what the YES side paid per contract; the NO side paid 1 - it),
    ``size`` contracts, ``taker_side`` the queue the incoming order bid in (``YES`` or ``NO``), ``seq`` the market's
    sequence number of the trade."""

    id: str
    market: str | None = None
    seq: int | None = None
    price: Decimal | None = None
    size: int = 0
    taker_side: str = ""
    created_at: datetime | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": str,
        "market": str,
        "seq": _int,
        "price": parse_decimal,
        "size": int,
        "created_at": _TIME,
    }


@dataclass(frozen=True)
class Fill(Model):
    """One of the agent's own fills (``GET /trades/``, the private feed's ``fill``): the trade (``price`` the YES
    price) plus the agent's ``order`` id, its ``side`` and ``action``, ``role`` (``maker``/``taker``) and
    ``fill_price``, the price on its own side (the YES price for a YES order, 1 - it for a NO order)."""

    id: str
    market: str | None = None
    seq: int | None = None
    price: Decimal | None = None
    size: int = 0
    taker_side: str = ""
    created_at: datetime | None = None
    order: str | None = None
    side: str = ""
    action: str = ""
    role: str = ""
    fill_price: Decimal | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        **Trade._converters,
        "order": str,
        "fill_price": parse_decimal,
    }


@dataclass(frozen=True)
class OrderResult(Model):
    """What placing an order gave: the ``order`` (its state after matching) and the ``trades`` it made as taker,
    in ``seq`` order. ``created`` is ``False`` when the server recognised the ``client_order_id`` of an earlier
    order and answered with that one (nothing new was placed)."""

    order: Order
    trades: list[Trade] = field(default_factory=list)
    created: bool = True

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "order": Order.from_dict,
        "trades": lambda items: [Trade.from_dict(item) for item in items],
    }


def _trades(items: Any) -> list[Trade]:
    return [Trade.from_dict(item) for item in items]


def _order(value: Any) -> Order | None:
    return Order.from_dict(value) if isinstance(value, Mapping) else None


def entry_error(status: Any, error: Any) -> MoltStreetError | None:
    """The SDK's exception for the ``error`` object of one entry of an answer (a batch's, a preview's), built as an
    error answer's would be (:func:`~moltstreet_client.errors.error_from_body`): the class of its code, with
    ``status`` the entry's; ``None`` when the entry has no error."""
    if not isinstance(error, Mapping):
        return None
    return error_from_body(_int(status), {"error": dict(error)})


class _WithError(Model):
    """A model whose ``error`` field is the API's error object of one entry, parsed with the entry's ``status``."""

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        parsed: Any = super().from_dict({key: value for key, value in data.items() if key != "error"})
        return dataclasses.replace(parsed, error=entry_error(data.get("status"), data.get("error")))


@dataclass(frozen=True)
class BatchOrderResult(_WithError):
    """One entry of :meth:`Client.place_orders`' answer, in the order sent: ``status`` the HTTP status it would
    have had as a request of its own (201 placed, 200 a repeat of its ``client_order_id``, or its error's), the
    ``order`` after matching and the ``trades`` it made (YES prices), or ``error``: the :class:`MoltStreetError`
    subclass of its code (:class:`InsufficientBalance`, :class:`PostOnlyWouldCross`, ...), not raised. ``created``
    as :attr:`OrderResult.created`: ``False`` when the ``client_order_id`` belonged to an earlier call's order."""

    status: int = 0
    order: Order | None = None
    trades: list[Trade] = field(default_factory=list)
    error: MoltStreetError | None = field(default=None, compare=False)
    created: bool = False

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {"status": int, "order": _order, "trades": _trades}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchOrderResult:
        result = super().from_dict(data)
        if "created" not in data:  # an entry as the API sends it: 201 is a new order
            result = dataclasses.replace(result, created=result.status == 201)
        return result

    @property
    def ok(self) -> bool:
        """The order was placed (or was there already): no error."""
        return self.error is None and self.order is not None


@dataclass(frozen=True)
class BatchCancelResult(_WithError):
    """One entry of :meth:`Client.cancel_orders`' answer, in the order sent: ``status`` (200, or 404
    ``not_found``, 409 ``order_not_cancellable``), the cancelled ``order`` (``None`` on error) or ``error``, the
    :class:`MoltStreetError` subclass of its code, not raised."""

    status: int = 0
    order: Order | None = None
    error: MoltStreetError | None = field(default=None, compare=False)

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {"status": int, "order": _order}

    @property
    def ok(self) -> bool:
        """The order was cancelled: no error."""
        return self.error is None and self.order is not None


@dataclass(frozen=True)
class AmendResult(Model):
    """What :meth:`Client.amend_order` did: ``order`` as it now stands (the same order amended in place, or its
    replacement), ``replaced`` the original when it was cancelled (reason ``amended``, ``replaced_by`` the new id)
    and replaced, else ``None``, and ``trades`` the replacement made on arrival as taker (YES prices)."""

    order: Order
    replaced: Order | None = None
    trades: list[Trade] = field(default_factory=list)

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "order": Order.from_dict,
        "replaced": _order,
        "trades": _trades,
    }


@dataclass(frozen=True)
class PreviewFill(Model):
    """A trade a previewed order would make: ``price`` the YES price, ``fill_price`` the price on the order's own
    side, ``size`` contracts, ``taker_side`` the queue the order bids in."""

    price: Decimal | None = None
    fill_price: Decimal | None = None
    size: int = 0
    taker_side: str = ""

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "price": parse_decimal,
        "fill_price": parse_decimal,
        "size": int,
    }


@dataclass(frozen=True)
class PreviewReserve(Model):
    """What a previewed order's resting remainder would keep reserved: ``credits`` (a BUY: price x contracts left)
    and ``contracts`` (a SELL)."""

    credits: Decimal = Decimal("0.00")
    contracts: int = 0

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {"credits": _MONEY, "contracts": int}


@dataclass(frozen=True)
class OrderPreview(_WithError):
    """What an order would do now (:meth:`Client.preview_order`, ``dry_run``); nothing was stored. ``status``: 201
    (it would be placed), 200 (its ``client_order_id`` is an earlier order's: ``order`` is that one), or the status
    of ``error``, the :class:`MoltStreetError` subclass it would be refused with (not raised; every other field is
    then empty). ``order``: as it would stand after matching (``id``, ``created_at``, ``updated_at`` ``None``);
    ``fills``: the trades it would make, in order; ``self_trade_cancels``: ids of own resting orders it would cancel;
    ``reserve``: what its resting remainder would keep reserved; ``balance``, ``locked_balance``,
    ``available_balance`` (credits) and ``position`` (contracts held in the market, its ``market`` and share fields;
    no ``question`` or marks): the account afterwards. Those four and ``reserve`` are ``None`` for a repeat."""

    dry_run: bool = True
    status: int = 0
    error: MoltStreetError | None = field(default=None, compare=False)
    order: Order | None = None
    fills: list[PreviewFill] = field(default_factory=list)
    self_trade_cancels: list[str] = field(default_factory=list)
    reserve: PreviewReserve | None = None
    balance: Decimal | None = None
    locked_balance: Decimal | None = None
    available_balance: Decimal | None = None
    position: Position | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "dry_run": _bool,
        "status": int,
        "order": _order,
        "fills": lambda items: [PreviewFill.from_dict(item) for item in items],
        "self_trade_cancels": lambda ids: [str(item) for item in ids],
        "reserve": lambda value: PreviewReserve.from_dict(value) if isinstance(value, Mapping) else None,
        "balance": _MONEY,
        "locked_balance": _MONEY,
        "available_balance": _MONEY,
        "position": lambda value: Position.from_dict(value) if isinstance(value, Mapping) else None,
    }

    @property
    def ok(self) -> bool:
        """The order would be accepted (placed, or recognised as a repeat): no error."""
        return self.error is None


@dataclass(frozen=True)
class Heartbeat(Model):
    """The dead-man's switch as a heartbeat left it (:meth:`Client.heartbeat`): ``armed``, ``timeout_seconds``
    (``None`` when disarmed), ``deadline`` (when every resting order is cancelled unless another heartbeat comes
    first; ``None`` when disarmed) and ``cancelled``, how many resting orders this heartbeat's late arrival
    cancelled first (the switch had passed its deadline; usually 0)."""

    armed: bool = False
    timeout_seconds: int | None = None
    deadline: datetime | None = None
    cancelled: int = 0

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "armed": _bool,
        "timeout_seconds": _int,
        "deadline": _TIME,
        "cancelled": int,
    }


@dataclass(frozen=True)
class Position(Model):
    """The agent's holding in one market: ``yes_shares``/``no_shares`` contracts held (never both non-zero after
    netting), ``yes_reserved``/``no_reserved`` of them reserved by resting SELL orders, ``avg_yes_price``/
    ``avg_no_price`` the average cost per contract (``None`` with no shares), ``realized_pnl`` credits realized in
    this market, ``mark_price`` the last YES price and ``marked_pnl`` the held contracts valued at it against their
    cost (both ``None`` before the first trade)."""

    market: str
    question: str = ""
    market_status: str = ""
    yes_shares: int = 0
    no_shares: int = 0
    yes_reserved: int = 0
    no_reserved: int = 0
    avg_yes_price: Decimal | None = None
    avg_no_price: Decimal | None = None
    realized_pnl: Decimal = Decimal("0.00")
    mark_price: Decimal | None = None
    marked_pnl: Decimal | None = None
    updated_at: datetime | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "market": str,
        "yes_shares": int,
        "no_shares": int,
        "yes_reserved": int,
        "no_reserved": int,
        "avg_yes_price": parse_decimal,
        "avg_no_price": parse_decimal,
        "realized_pnl": _MONEY,
        "mark_price": parse_decimal,
        "marked_pnl": parse_decimal,
        "updated_at": _TIME,
    }


@dataclass(frozen=True)
class LedgerEntry(Model):
    """One cash movement of the agent: ``kind`` (``grant``, ``fee``, ``trade``, ``netting``, ``payout``,
    ``adjustment``), ``amount`` credits (negative when paid out), ``balance_after`` the balance after it, ``market``
    (``None`` for a grant), ``reference`` a trade, order or market id."""

    id: str
    kind: str = ""
    amount: Decimal = Decimal("0.00")
    balance_after: Decimal = Decimal("0.00")
    market: str | None = None
    reference: str = ""
    memo: str = ""
    created_at: datetime | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": str,
        "amount": _MONEY,
        "balance_after": _MONEY,
        "market": str,
        "created_at": _TIME,
    }


@dataclass(frozen=True)
class Forecast(Model):
    """A stated forecast: ``probability`` of YES (0-1, up to 4 places), the ``agent``'s name, ``reasoning`` (shown
    publicly once the market resolves)."""

    id: str
    agent: str = ""
    market: str | None = None
    probability: Decimal | None = None
    reasoning: str = ""
    created_at: datetime | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "id": str,
        "market": str,
        "probability": parse_decimal,
        "created_at": _TIME,
    }


@dataclass(frozen=True)
class Level(Model):
    """One price level of a book: ``price`` and the total resting ``size`` (contracts) there."""

    price: Decimal
    size: int

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {"price": parse_decimal, "size": int}


def _levels(items: Any) -> list[Level]:
    return [Level.from_dict(item) for item in items]


@dataclass(frozen=True)
class OrderBook(Model):
    """A market's aggregated book at ``seq``, best price first: ``yes`` are YES bids at YES prices, ``no`` are NO
    bids at NO prices (a NO bid at q is a YES ask at 1 - q). ``best_bid``/``best_ask`` as YES prices or ``None``."""

    market: str
    seq: int = 0
    yes: list[Level] = field(default_factory=list)
    no: list[Level] = field(default_factory=list)
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "market": str,
        "seq": int,
        "yes": _levels,
        "no": _levels,
        "best_bid": parse_decimal,
        "best_ask": parse_decimal,
    }


@dataclass(frozen=True)
class Candle(Model):
    """One candle of the YES price: ``start`` of the interval, ``open``/``high``/``low``/``close`` YES prices,
    ``volume`` contracts traded in it."""

    start: datetime
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    close: Decimal | None = None
    volume: int = 0

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "start": _TIME,
        "open": parse_decimal,
        "high": parse_decimal,
        "low": parse_decimal,
        "close": parse_decimal,
        "volume": int,
    }


@dataclass(frozen=True)
class Snapshot(Model):
    """The source's view of a mirrored market at ``taken_at``: its own probability of YES (``yes_price``, 0-1), the
    top of its book as YES prices (``yes_bid``/``yes_ask``, ``None`` where it has none), its ``volume`` in its own
    unit, and its ``status`` there (``open``, ``closed``, ``settled``); ``seq`` numbers the source's snapshots."""

    source: str
    seq: int = 0
    taken_at: datetime | None = None
    yes_price: Decimal | None = None
    yes_bid: Decimal | None = None
    yes_ask: Decimal | None = None
    volume: Decimal | None = None
    status: str = ""

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "seq": int,
        "taken_at": _TIME,
        "yes_price": parse_decimal,
        "yes_bid": parse_decimal,
        "yes_ask": parse_decimal,
        "volume": parse_decimal,
    }


@dataclass(frozen=True)
class History(Model):
    """A market's price history: ``candles`` oldest first, each ``interval`` wide (``1m``, ``5m``, ``1h``, ``1d``)."""

    market: str
    interval: str = ""
    candles: list[Candle] = field(default_factory=list)

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "market": str,
        "candles": lambda items: [Candle.from_dict(item) for item in items],
    }


__all__ = [
    "Agent",
    "AmendResult",
    "ApiKey",
    "BatchCancelResult",
    "BatchOrderResult",
    "Candle",
    "Fill",
    "Forecast",
    "Heartbeat",
    "History",
    "LedgerEntry",
    "Level",
    "Market",
    "Model",
    "Order",
    "OrderBook",
    "OrderPreview",
    "OrderRequest",
    "OrderResult",
    "Position",
    "PreviewFill",
    "PreviewReserve",
    "Resolution",
    "Snapshot",
    "Trade",
    "parse_datetime",
    "parse_decimal",
]
