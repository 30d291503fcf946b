"""Replay real Polymarket executions through the exchange's own services, or through the HTTP API of a server.

Input: a CSV of executed trades (``ylcoder/random-walk``, Apache-2.0), newest first, one row per trader's side of an
execution: ``user_id, trade_direction (BUY/SELL), shares, option_yes_no (Yes/No), option_type (the question),
price (0-1, the price of the option traded), total_trade_amount, timestamp``.

Each row is replayed, oldest first, as two orders: a liquidity agent rests the counter order and the real trader's
agent (one per real trader) crosses it with an IOC order at the real price rounded to the 0.01 tick and clamped to
0.01-0.99, for ``max(1, round(shares * scale))`` contracts:

- trader BUY YES at p: liquidity rests BUY NO at 1 - p (a pair is minted); BUY NO at q: liquidity rests BUY YES at 1 - q.
- trader SELL of contracts the trader holds in the replay: liquidity rests the matching BUY at the same price.
- trader SELL of contracts it does not hold (bought before the file starts): replayed as the equivalent economic
  trade, SELL YES at p as BUY NO at 1 - p (and SELL NO at q as BUY YES at 1 - q). Holding some but too few is the
  same: netting turns the held part into the sale it was. These rows are counted as ``converted``.

A BUY the trader cannot afford is trimmed to what its available balance buys, or skipped when that is nothing.
A row is all or nothing: locally both orders run in one ``transaction.atomic()`` (the services nest inside it); over
HTTP, the liquidity order is cancelled when the crossing order fails. Every order carries a ``client_order_id``
derived from the row, so a local replay that is run again skips the rows already replayed.

Locally, the liquidity agent is topped up with operator adjustments (``agent_grant_credits``, ledgered, so money stays
conserved); over HTTP credits cannot be granted, so the run stops cleanly when the liquidity agent runs out.
"""

from __future__ import annotations

import csv
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from agents.models import Agent
from agents.services import NAME_RE, agent_grant_credits, agent_register
from markets.models import Market
from markets.services import market_import
from moltstreet.errors import InsufficientBalance, MoltStreetError
from moltstreet.money import MAX_PRICE, MIN_PRICE, complement, quantize
from moltstreet.progress import Progress
from trading.models import Action, Order, Position, Side
from trading.orders import order_cancel, order_place

SOURCE = "polymarket"
DEFAULT_SCALE = Decimal("0.1")
DEFAULT_MARKET_DAYS = 30
LOCAL_PREFIX = "pm-"
LIQUIDITY = "liquidity"
# Local top-ups of the liquidity agent come in steps of at least this many credits (fewer adjustment rows).
TOP_UP = Decimal("1000.00")
COLUMNS = ("user_id", "trade_direction", "shares", "option_yes_no", "option_type", "price", "timestamp")
TIME_ZONES = {
    "EST": -5,
    "EDT": -4,
    "CST": -6,
    "CDT": -5,
    "MST": -7,
    "MDT": -6,
    "PST": -8,
    "PDT": -7,
    "UTC": 0,
    "GMT": 0,
}
ATTRIBUTION = (
    "Question and trades from Polymarket, as published in the public repository ylcoder/random-walk "
    "(https://github.com/ylcoder/random-walk, file fed_march_2026_polymarket_trades.csv), licensed under Apache-2.0 "
    "(https://www.apache.org/licenses/LICENSE-2.0). Replayed here with one agent per real trader (named after its "
    "public Polymarket user id), sizes scaled and prices rounded to the 0.01 tick."
)


class BadRow(ValueError):
    """A CSV row that cannot be replayed; the message says why."""


class ReplayStop(Exception):
    """The replay cannot go on (e.g. the liquidity agent ran out of credits over HTTP)."""


class RowFailed(Exception):
    """A row was attempted and rolled back for a reason that is not a service error."""

    code = "not_replayed"

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


# --------------------------------------------------------------------------------------------------------------------
# Reading the CSV


@dataclass(frozen=True)
class TradeRow:
    """One trader's side of one real execution. ``price`` is the real price of ``outcome`` (0-1)."""

    line: int
    user_id: str
    direction: str  # BUY or SELL
    outcome: str  # YES or NO
    question: str
    price: Decimal
    shares: Decimal
    at: datetime
    key: str  # stable id of this execution in the file, for client_order_id

    @property
    def yes_price(self) -> Decimal:
        """The real price expressed as a YES price."""
        return self.price if self.outcome == Side.YES else complement(self.price)

    @property
    def client_order_id(self) -> str:
        return f"replay-{self.key}"


def parse_timestamp(text: str) -> datetime:
    """``Friday, February 27, 2026 21:22:03 EST`` as an aware datetime; raises :class:`BadRow`."""
    head, _, zone = (text or "").strip().rpartition(" ")
    if zone.upper() not in TIME_ZONES:
        raise BadRow(f"timestamp {text!r} has no known time zone")
    try:
        naive = datetime.strptime(head, "%A, %B %d, %Y %H:%M:%S")
    except ValueError as exc:
        raise BadRow(f"timestamp {text!r} is not like 'Friday, February 27, 2026 21:22:03 EST'") from exc
    return naive.replace(tzinfo=dt_timezone(timedelta(hours=TIME_ZONES[zone.upper()])))


def _decimal(value: str, name: str) -> Decimal:
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise BadRow(f"{name} {value!r} is not a number") from exc
    if not number.is_finite():
        raise BadRow(f"{name} {value!r} is not a number")
    return number


def parse_row(raw: dict[str, Any], line: int, occurrence: int = 0) -> TradeRow:
    """Validate one CSV row; raises :class:`BadRow` with the reason. ``occurrence`` tells identical rows apart."""
    values = {name: (raw.get(name) or "").strip() for name in COLUMNS}
    if not values["user_id"]:
        raise BadRow("no user_id")
    direction = values["trade_direction"].upper()
    if direction not in Action.values:
        raise BadRow(f"trade_direction {values['trade_direction']!r} is not BUY or SELL")
    outcome = values["option_yes_no"].upper()
    if outcome not in Side.values:
        raise BadRow(f"option_yes_no {values['option_yes_no']!r} is not Yes or No")
    question = " ".join(values["option_type"].split())
    if not question:
        raise BadRow("no question (option_type)")
    question_limit = Market._meta.get_field("question").max_length
    if question_limit is not None and len(question) > question_limit:
        raise BadRow("question longer than 500 characters")
    shares = _decimal(values["shares"], "shares")
    if shares <= 0:
        raise BadRow(f"shares {values['shares']!r} is not positive")
    price = _decimal(values["price"], "price")
    if not 0 <= price <= 1:
        raise BadRow(f"price {values['price']!r} is not between 0 and 1")
    at = parse_timestamp(values["timestamp"])
    fingerprint = "|".join([*(values[name] for name in COLUMNS), str(occurrence)])
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    return TradeRow(line, values["user_id"], direction, outcome, question, price, shares, at, key)


def read_trades(path: str | Path) -> tuple[list[TradeRow], list[str]]:
    """The valid rows of a trades CSV, oldest first, and one message per malformed row (reported, skipped).

    Raises :class:`ValueError` when the file cannot be read or lacks a column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in COLUMNS if name not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
            raw_rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    rows: list[TradeRow] = []
    problems: list[str] = []
    seen: dict[tuple, int] = {}
    for line, raw in raw_rows:
        identity = tuple((raw.get(name) or "").strip() for name in COLUMNS)
        seen[identity] = seen.get(identity, -1) + 1
        try:
            rows.append(parse_row(raw, line, seen[identity]))
        except BadRow as exc:
            problems.append(f"line {line}: {exc}")
    # The file is newest first: reversed, then a stable sort, keeps the file's order among equal timestamps.
    rows.reverse()
    rows.sort(key=lambda r: r.at)
    return rows, problems


# --------------------------------------------------------------------------------------------------------------------
# Prices, sizes, names


def tick_price(price: Decimal) -> tuple[Decimal, bool]:
    """The real price on the 0.01 tick (half to even), clamped to 0.01-0.99; also whether it was clamped."""
    rounded = quantize(price)
    clamped = min(max(rounded, MIN_PRICE), MAX_PRICE)
    return clamped, clamped != rounded


def contracts(shares: Decimal, scale: Decimal) -> int:
    """Whole contracts for a real size: ``max(1, round(shares * scale))``."""
    return max(1, int((shares * scale).to_integral_value(rounding=ROUND_HALF_EVEN)))


def parse_scale(value: str) -> Decimal:
    """A ``--scale`` argument: a positive decimal (contracts per real share); raises :class:`ValueError`."""
    try:
        scale = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"scale {value!r} is not a number") from exc
    if not scale.is_finite() or scale <= 0:
        raise ValueError(f"scale {value!r} is not positive")
    return scale


def agent_name(user_id: str, prefix: str = LOCAL_PREFIX, *, hashed: bool = False) -> str:
    """A valid agent name (``agents.services.NAME_RE``) for a real trader: ``prefix + user_id``, or, when the id
    has other characters or is too long (or ``hashed``), a shortened id with 8 hex digits of its SHA-1."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", user_id)
    name = prefix + clean
    if not hashed and clean == user_id and NAME_RE.match(name):
        return name
    digest = hashlib.sha1(user_id.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{prefix}{clean[: 40 - len(prefix) - 9]}-{digest}"


def agent_names(user_ids: Iterable[str], prefix: str = LOCAL_PREFIX) -> dict[str, str]:
    """Names for every trader, unique ignoring case (as registration requires) and never the liquidity agent's."""
    taken = {(prefix + LIQUIDITY).lower()}
    names: dict[str, str] = {}
    for user_id in sorted(set(user_ids)):
        name = agent_name(user_id, prefix)
        if name.lower() in taken:
            name = agent_name(user_id, prefix, hashed=True)
        taken.add(name.lower())
        names[user_id] = name
    return names


def other(side: str) -> str:
    return Side.NO if side == Side.YES else Side.YES


# --------------------------------------------------------------------------------------------------------------------
# Report


@dataclass
class MarketStats:
    question: str
    market_id: str | None = None
    rows: int = 0
    trades: int = 0
    volume: int = 0
    real_last: Decimal | None = None
    our_last: Decimal | None = None


@dataclass
class ReplayReport:
    rows: int = 0
    malformed: list[str] = field(default_factory=list)
    replayed: int = 0
    already: int = 0
    converted: int = 0
    trimmed: int = 0
    clamped: int = 0
    unaffordable: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: str = ""
    markets: dict[str, MarketStats] = field(default_factory=dict)

    def market(self, question: str) -> MarketStats:
        return self.markets.setdefault(question, MarketStats(question))

    def render(self, limit: int = 20) -> str:
        lines = [
            f"{self.rows} rows attempted (oldest first): {self.replayed} replayed, {self.already} already replayed, "
            f"{len(self.unaffordable)} skipped as unaffordable, {len(self.failed)} failed; {len(self.malformed)} malformed "
            f"rows skipped.",
            f"{self.converted} sells of contracts the trader did not hold were replayed as the equivalent buy of the "
            f"other side; {self.trimmed} sizes trimmed to what the trader could afford; {self.clamped} prices "
            "clamped to 0.01-0.99.",
        ]
        if self.stopped:
            lines.append(f"Stopped early: {self.stopped}")
        for title, problems in (
            ("malformed", self.malformed),
            ("unaffordable", self.unaffordable),
            ("failed", self.failed),
        ):
            lines += [f"  {title}: {p}" for p in problems[:limit]]
            if len(problems) > limit:
                lines.append(f"  … and {len(problems) - limit} more {title} rows")
        lines.append(f"{'market':<72} {'rows':>5} {'trades':>6} {'volume':>8} {'our last':>8} {'real last':>9}")
        for stats in self.markets.values():
            question = stats.question if len(stats.question) <= 72 else stats.question[:71] + "…"
            ours = "-" if stats.our_last is None else str(stats.our_last)
            real = "-" if stats.real_last is None else str(stats.real_last.quantize(Decimal("0.001")))
            lines.append(f"{question:<72} {stats.rows:>5} {stats.trades:>6} {stats.volume:>8} {ours:>8} {real:>9}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Where the orders go: the services in this process, or a server's HTTP API


class Exchange(Protocol):
    def agent(self, name: str, description: str) -> Any: ...
    def available(self, agent: Any) -> Decimal: ...
    def held(self, agent: Any, market_id: str, side: str) -> int: ...
    def already_replayed(self, agent: Any, client_order_id: str) -> bool: ...
    def fund(self, agent: Any, amount: Decimal) -> None: ...
    def execute(
        self, *, market_id: str, maker_agent: Any, maker: dict, taker_agent: Any, taker: dict
    ) -> list[tuple[Decimal, int]]: ...
    def last_price(self, market_id: str) -> Decimal | None: ...


class LocalExchange:
    """Replays through the trading services in this process (the same services the API calls)."""

    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}

    def agent(self, name: str, description: str) -> Agent:
        if name not in self.agents:
            found = Agent.objects.filter(name__iexact=name).first()
            self.agents[name] = found or agent_register(name=name, description=description)[0]
        return self.agents[name]

    def available(self, agent: Agent) -> Decimal:
        balance, locked = Agent.objects.filter(id=agent.id).values_list("balance", "locked_balance").get()
        return balance - locked

    def held(self, agent: Agent, market_id: str, side: str) -> int:
        fields = ("yes_shares", "yes_reserved") if side == Side.YES else ("no_shares", "no_reserved")
        row = Position.objects.filter(agent=agent, market_id=market_id).values_list(*fields).first()
        return row[0] - row[1] if row else 0

    def already_replayed(self, agent: Agent, client_order_id: str) -> bool:
        return Order.objects.filter(agent=agent, client_order_id=client_order_id).exists()

    def fund(self, agent: Agent, amount: Decimal) -> None:
        """Top the liquidity agent up (an operator adjustment) so it can rest an order costing ``amount``.

        Its own transaction, before the row's: the grant locks the agent row, and inside the row's transaction it
        would come before the market lock, against the lock order of DESIGN section 6. A grant without its row
        costs nothing: the money invariant counts adjustments.
        """
        available = self.available(agent)
        if available < amount:
            top_up = max(quantize(amount - available), TOP_UP)
            agent_grant_credits(agent_id=agent.id, amount=top_up, memo="liquidity for the Polymarket trade replay")

    def execute(
        self, *, market_id: str, maker_agent: Agent, maker: dict, taker_agent: Agent, taker: dict
    ) -> list[tuple[Decimal, int]]:
        with transaction.atomic():  # both orders or neither; the services' transactions nest as savepoints
            made = order_place(agent=maker_agent, market_id=market_id, **maker)
            taken = order_place(agent=taker_agent, market_id=market_id, time_in_force="IOC", **taker)
            if not taken.order.filled:
                raise RowFailed("the crossing order did not trade")
            # Another agent's better order may have taken the trader's order first: leave no liquidity behind.
            if Order.objects.filter(id=made.order.id, status__in=Order.RESTING).exists():
                order_cancel(agent=maker_agent, order_id=made.order.id)
        return [(t.price, t.size) for t in [*made.trades, *taken.trades]]

    def last_price(self, market_id: str) -> Decimal | None:
        return Market.objects.filter(id=market_id).values_list("last_price", flat=True).first()


class ApiError(Exception):
    """An error response of the API, in its ``{"error": {code, message, detail}}`` shape."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None):
        self.status, self.code, self.message, self.detail = status, code, message, detail or {}
        super().__init__(f"{code}: {message}")


@dataclass
class ApiAgent:
    name: str
    key: str
    id: str
    client: Any = field(default=None, repr=False)  # its moltstreet_client.Client, authenticated with ``key``


class HttpExchange:
    """Replays through the agent API of a running server, with the Python SDK (``moltstreet_client``, in
    ``client/``): one SDK client per agent, all sharing one connection pool.

    The SDK retries 429 and 503 answers as ``Retry-After`` says (at most :attr:`RETRIES` times, waits up to
    :attr:`MAX_WAIT` seconds) and keys every order with its ``client_order_id``, so a retried order never trades
    twice. Its error answers become :class:`ApiError`; a server it cannot reach ends the run (:class:`ReplayStop`).
    """

    RETRIES = 5
    MAX_WAIT = 30.0

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        # Imported here: only this HTTP mode needs the SDK, the local replay (and `bootstrap`) runs without it.
        import httpx
        from moltstreet_client import Client

        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP URL: {base_url}")
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self._transport = httpx.HTTPTransport()
        self._new_client = lambda key=None: Client(
            self.base,
            key,
            timeout=timeout,
            max_retries=self.RETRIES,
            max_retry_after=self.MAX_WAIT,
            transport=self._transport,
        )
        self.client = self._new_client()  # no key: registration and the public reads
        self.agents: dict[str, ApiAgent | ApiError] = {}

    def _sdk(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)`` through the SDK, its errors as :class:`ApiError` / :class:`ReplayStop`."""
        from moltstreet_client import MoltStreetError as SdkError
        from moltstreet_client import TransportError

        try:
            return call(*args, **kwargs)
        except SdkError as exc:
            raise ApiError(exc.status or 0, exc.code, exc.message, exc.detail) from exc
        except TransportError as exc:
            raise ReplayStop(f"cannot reach {self.base}: {exc.cause or exc}") from exc

    def close(self) -> None:
        """Close the connections (the shared pool of every agent's client)."""
        self._transport.close()

    def find_market(self, question: str) -> str | None:
        """The id of the market with exactly this question, via ``GET /markets/?search=`` (its first 10 pages).

        The question is searched as one quoted phrase (the API takes a few terms and 200 characters), its first 150
        characters when longer; the results are then compared with the whole question."""
        text = question[:150].replace("\\", "\\\\").replace('"', '\\"')
        phrase = f'"{text}"'

        def search() -> str | None:
            pages = self.client.markets(search=phrase)
            for market in pages:
                if pages.pages > 10:
                    return None
                if market.question == question:
                    return market.id
            return None

        return self._sdk(search)

    def agent(self, name: str, description: str) -> ApiAgent:
        if name not in self.agents:
            try:
                registered = self._sdk(self.client.register, name, description)
                self.agents[name] = ApiAgent(
                    name=registered.name,
                    key=registered.api_key,
                    id=registered.id,
                    client=self._new_client(registered.api_key),
                )
            except ApiError as exc:
                self.agents[name] = exc
            finally:
                self.client.api_key = None  # register() signs the shared client in; it stays anonymous
        found = self.agents[name]
        if isinstance(found, ApiError):
            raise found
        return found

    def available(self, agent: ApiAgent) -> Decimal:
        return self._sdk(agent.client.me).available_balance

    def held(self, agent: ApiAgent, market_id: str, side: str) -> int:
        def first_page() -> int:
            for pos in agent.client.positions(market=market_id):
                if pos.market == str(market_id):
                    return pos.yes_shares - pos.yes_reserved if side == Side.YES else pos.no_shares - pos.no_reserved
            return 0

        return self._sdk(first_page)

    def already_replayed(self, agent: ApiAgent, client_order_id: str) -> bool:
        return False  # fresh agents each run; a repeated client_order_id would anyway return the original order

    def fund(self, agent: ApiAgent, amount: Decimal) -> None:
        """Credits cannot be granted over the API: the liquidity agent lives on its registration grant."""

    def _order(self, agent: ApiAgent, market_id: str, order: dict) -> Any:
        order = dict(order)
        return self._sdk(
            agent.client.place_order,
            str(market_id),
            order.pop("side"),
            order.pop("action"),
            order.pop("price"),
            order.pop("size"),
            **order,
        )

    def _cancel(self, agent: ApiAgent, order_id: str) -> None:
        try:
            self._sdk(agent.client.cancel_order, order_id)
        except ApiError as exc:
            if exc.status not in (404, 409):  # 409: already filled, nothing rests
                raise

    def execute(
        self, *, market_id: str, maker_agent: ApiAgent, maker: dict, taker_agent: ApiAgent, taker: dict
    ) -> list[tuple[Decimal, int]]:
        try:
            made = self._order(maker_agent, market_id, maker)
        except ApiError as exc:
            if exc.code == InsufficientBalance.code:
                raise ReplayStop(
                    f"the liquidity agent {maker_agent.name} ran out of credits (credits cannot be granted over the "
                    "API; replay locally for the whole file)"
                ) from exc
            raise
        try:
            taken = self._order(taker_agent, market_id, {**taker, "time_in_force": "IOC"})
        except BaseException:
            self._cancel(maker_agent, made.order.id)
            raise
        # Cancel whatever of the liquidity order still rests (a better order of another agent may have traded).
        self._cancel(maker_agent, made.order.id)
        if not taken.order.filled:
            raise RowFailed("the crossing order did not trade")
        return [(t.price, t.size) for t in [*made.trades, *taken.trades]]

    def last_price(self, market_id: str) -> Decimal | None:
        return self._sdk(self.client.market, market_id).yes_price


# --------------------------------------------------------------------------------------------------------------------
# Markets


def market_fields(question: str, rows: list[TradeRow], *, scale: Decimal) -> dict[str, Any]:
    """What ``market_import`` needs for the market of one question of the file (external id: the question's slug)."""
    mine = [r for r in rows if r.question == question]
    first, last = mine[0].at, mine[-1].at
    return {
        "question": question,
        "source": SOURCE,
        "external_id": slugify(question)[:100] or hashlib.sha1(question.encode(), usedforsecurity=False).hexdigest(),
        "description": (
            f"A real Polymarket market, reopened here. Its first trading is a replay of {len(mine)} real executions "
            f"between {first:%d %B %Y} and {last:%d %B %Y} (one agent per real trader, sizes x{scale}, prices "
            "rounded to the 0.01 tick)."
        ),
        "resolution_criteria": "Resolves as the original Polymarket market with the same question resolved.",
        "attribution": ATTRIBUTION,
        "reference_price": mine[-1].yes_price,
        "is_historical": True,
    }


def ensure_markets_local(
    rows: list[TradeRow], *, scale: Decimal, days: int = DEFAULT_MARKET_DAYS, now: datetime | None = None
) -> tuple[dict[str, str], int]:
    """The market id of every question in ``rows``, importing missing ones (open for ``days`` days, no fee).

    Returns ``(ids by question, how many were created)``.
    """
    now = now or timezone.now()
    ids: dict[str, str] = {}
    created = 0
    for question in dict.fromkeys(r.question for r in rows):
        fields = market_fields(question, rows, scale=scale)
        found = Market.objects.filter(source=SOURCE, external_id=fields["external_id"]).values_list("id", flat=True)
        if found:
            ids[question] = str(found[0])
            continue
        ids[question] = str(market_import(deadline=now + timedelta(days=days), **fields).id)
        created += 1
    return ids, created


def find_markets_http(exchange: HttpExchange, rows: list[TradeRow]) -> dict[str, str | None]:
    """The server's market id of every question in ``rows`` (``None`` when the server has no such market)."""
    return {question: exchange.find_market(question) for question in dict.fromkeys(r.question for r in rows)}


# --------------------------------------------------------------------------------------------------------------------
# The replay


def replay(
    rows: list[TradeRow],
    exchange: Exchange,
    *,
    market_ids: Mapping[str, str | None],
    scale: Decimal = DEFAULT_SCALE,
    prefix: str = LOCAL_PREFIX,
    limit: int | None = None,
    progress: Callable[[str], None] = lambda line: None,
    interval: float = 2.0,
) -> ReplayReport:
    """Replay ``rows`` (oldest first; the first ``limit`` of them) through ``exchange``; returns the report.

    ``progress`` gets a line (``1,200/5,000 rows (24%): 1,190 replayed, 10 failed``) every ``interval`` seconds and
    one at the end.

    ``market_ids`` maps each question to its market (rows of a question without one are reported and skipped).
    Raises nothing for a row: row errors are reported; a :class:`ReplayStop` ends the run cleanly.
    """
    report = ReplayReport()
    for question in dict.fromkeys(r.question for r in rows):
        report.market(question).market_id = market_ids.get(question)
    selected = rows if limit is None else rows[:limit]
    names = agent_names((r.user_id for r in selected), prefix)
    try:
        liquidity = exchange.agent(
            prefix + LIQUIDITY, "Provides the resting side of every replayed real Polymarket execution."
        )
    except (MoltStreetError, ApiError, ReplayStop) as exc:
        report.stopped = f"cannot register the liquidity agent {prefix + LIQUIDITY}: {exc}"
        return report
    tracker = Progress(progress, len(selected), prefix="  ", interval=interval)

    def counts() -> str:
        return f"{report.replayed:,} replayed, {len(report.failed):,} failed"

    for number, row in enumerate(selected, start=1):
        if number > 1:
            tracker(number - 1, counts)
        report.rows += 1
        stats = report.market(row.question)
        stats.rows += 1
        stats.real_last = row.yes_price
        try:
            done = _replay_row(row, exchange, stats.market_id, names[row.user_id], liquidity, scale)
        except ReplayStop as exc:
            report.stopped = f"at line {row.line}: {exc}"
            report.rows -= 1
            stats.rows -= 1
            break
        except (MoltStreetError, ApiError, RowFailed) as exc:
            report.failed.append(f"line {row.line} ({row.user_id}): {exc.code}: {exc.message}")
            continue
        if done.already:
            report.already += 1
        elif done.unaffordable:
            report.unaffordable.append(f"line {row.line} ({row.user_id}): {done.unaffordable}")
        else:
            report.replayed += 1
            report.converted += done.converted
            report.trimmed += done.trimmed
            report.clamped += done.clamped
            stats.trades += len(done.trades)
            stats.volume += sum(size for _, size in done.trades)
    if not report.stopped:
        tracker(len(selected), counts)
    for stats in report.markets.values():
        if stats.market_id is not None:
            try:
                stats.our_last = exchange.last_price(stats.market_id)
            except (ApiError, ReplayStop):
                stats.our_last = None
    return report


@dataclass
class RowResult:
    """What became of one row: its trades ``(YES price, size)``, or why it was not replayed."""

    trades: list[tuple[Decimal, int]] = field(default_factory=list)
    converted: bool = False
    trimmed: bool = False
    clamped: bool = False
    already: bool = False
    unaffordable: str = ""


def _replay_row(
    row: TradeRow, exchange: Exchange, market_id: str | None, name: str, liquidity: Any, scale: Decimal
) -> RowResult:
    """Replay one row (see the module docstring for the four intents). Raises :class:`MoltStreetError`,
    :class:`ApiError` or :class:`RowFailed` when it fails (nothing of it stays), :class:`ReplayStop` to end the run."""
    if market_id is None:
        raise RowFailed("no market for this question (import it first)")
    trader = exchange.agent(
        name, f"Replays the real Polymarket trader {row.user_id} (public trades, ylcoder/random-walk, Apache-2.0)."
    )
    if exchange.already_replayed(trader, row.client_order_id):
        return RowResult(already=True)
    price, clamped = tick_price(row.price)
    size = contracts(row.shares, scale)
    side, action, converted, trimmed = row.outcome, row.direction, False, False
    if action == Action.SELL and exchange.held(trader, market_id, side) < size:
        # Their contracts predate the file: the same economic trade is a buy of the other side at 1 - p.
        side, action, price, converted = other(side), Action.BUY, complement(price), True
    if action == Action.BUY:
        affordable = int((exchange.available(trader) / price).to_integral_value(rounding=ROUND_FLOOR))
        if affordable < 1:
            return RowResult(unaffordable=f"cannot afford one contract at {price}")
        if affordable < size:
            size, trimmed = affordable, True
        maker_side, maker_price = other(side), complement(price)
    else:
        maker_side, maker_price = side, price
    maker = {"side": maker_side, "action": Action.BUY, "price": maker_price, "size": size}
    exchange.fund(liquidity, maker_price * size)
    trades = exchange.execute(
        market_id=market_id,
        maker_agent=liquidity,
        maker={**maker, "client_order_id": row.client_order_id + "-lp"},
        taker_agent=trader,
        taker={"side": side, "action": action, "price": price, "size": size, "client_order_id": row.client_order_id},
    )
    return RowResult(trades=trades, converted=converted, trimmed=trimmed, clamped=clamped)


def default_http_prefix() -> str:
    """A fresh name prefix for an HTTP replay (``pm3fa2-``): agents of an earlier run keep their names."""
    return f"pm{secrets.token_hex(2)}-"


__all__ = [
    "DEFAULT_SCALE",
    "ApiError",
    "HttpExchange",
    "LocalExchange",
    "ReplayReport",
    "TradeRow",
    "agent_name",
    "agent_names",
    "contracts",
    "ensure_markets_local",
    "find_markets_http",
    "parse_scale",
    "read_trades",
    "replay",
    "tick_price",
]
