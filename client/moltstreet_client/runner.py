"""The live runner: a :class:`~moltstreet_client.strategy.Strategy` trading on a server, unchanged from its backtest
(DESIGN section 11; ``moltstreet-run module:Class --url ... --key ... --market ...``).

:func:`run_live` opens the agent's private feed and each market's public feed (:mod:`moltstreet_client.streams`),
reads them in threads into one queue, and dispatches from one loop, so hooks never run concurrently. The hooks and
their order are the backtest engine's (:mod:`moltstreet_client.backtest`):

* :meth:`~Strategy.on_start` for each market once its feed's snapshot and the agent's orders, positions and balance
  are read; then, as the feeds deliver them, :meth:`~Strategy.on_book` (a ``book`` message, while the market is
  open), :meth:`~Strategy.on_trade` (a ``trade``, as a :class:`Print`), :meth:`~Strategy.on_reference` (a
  ``reference``), :meth:`~Strategy.on_market` (a ``market`` message: ``closed``, ``resolved``...);
  :meth:`~Strategy.on_tick` every ``strategy.tick_interval`` seconds of the wall clock for each open market;
  :meth:`~Strategy.on_end` for each market when the runner stops.
* Fills reach :meth:`~Strategy.on_fill` as :class:`Execution` after the hook that caused them returns: an order's
  own taking fills from ``place``'s answer (reason ``taker``), resting orders' fills from the private feed (reason
  ``maker``, or the fill's role), and the netting of YES and NO contracts (reason ``netting``), which the runner
  derives as the exchange does it (DESIGN section 3: unreserved pairs merge into 1.00 credit each). Each fill is
  delivered once (by trade and order id), whichever way it arrived first. One difference no runner can hide: a
  resting order's fill and the public trade that made it come by two feeds, so live ``on_fill`` may come before or
  after that ``on_trade`` (in a backtest the fill is applied first and delivered after ``on_trade`` returns).
* Refusals of the exchange raised out of a hook (``InsufficientBalance``, ``MarketClosed``, ``PostOnlyWouldCross``,
  a rate limit...: any :class:`MoltStreetError`) are counted by code, never fatal, as in a backtest; so is a request
  that got no answer (:class:`TransportError`, counted as ``transport_errors``). Any other exception is the
  strategy's bug: the runner stops (cleaning up as below) and re-raises it.

Batches: :meth:`Context.place_orders` and :meth:`Context.cancel_orders` (which the built-ins' requotes use:
:func:`~moltstreet_client.strategies.reconcile`) go to the exchange as ``POST /orders/batch/`` and
``POST /orders/batch-cancel/``, 20 orders a request, instead of one request an order; each entry succeeds or fails
on its own. The orders taken are booked as single ones; the first entry's refusal is raised out of the call once
all are booked (so the hook stops there, and is counted, as with one order), the others are counted by the runner.
A backtest places and cancels them one after the other (the same outcome as before batches existed).

The dead-man's switch (``heartbeat_seconds``, ``moltstreet-run --heartbeat``): the runner arms it when it connects
(``POST /agents/me/heartbeat/`` with the timeout, before reading the agent's orders), sends a heartbeat every third
of the timeout from its loop, and disarms it (timeout 0) on the way out, after withdrawing its orders. A runner that
dies or stalls longer than the timeout has its resting orders cancelled by the server (``cancel_reason``
``heartbeat_expired``). A heartbeat that fails is reported and counted, and the next one arms the switch again. An
order refused with ``heartbeat_expired`` (the loop stalled past the deadline), or the private feed's ``heartbeat``
message saying the switch fired, makes the next heartbeat due at once (a late heartbeat fires the switch first, then
arms it); once it is armed again, the orders the switch cancelled are booked so and :meth:`~Strategy.on_book` is
called in each open market, so that a quoting strategy quotes again at once. If the orders could not be withdrawn
on the way out (the server went away), the switch is left armed: the server cancels them at the deadline.

What the context shows: the book, the last trades and the reference price from the market feed, in ``seq`` order;
the agent's holding, resting orders and available cash from ``GET /positions/``, ``/orders/`` and
``/agents/me/`` at the start (and again whenever the private feed replaces the account with a ``snapshot``: after a
gap too old to replay; a reconnect that resumes with ``since`` misses nothing), kept current from each order's
answer and the private feed's ``order``, ``fill`` and ``balance`` messages (applied a committed transaction at a
time: a ``balance`` message closes each). ``cash`` is the last ``balance`` message's available
credits, adjusted at once for what the runner's own orders reserve and release until the next one arrives.

Stopping: :meth:`LiveRunner.stop` (thread-safe), SIGINT/SIGTERM (when run from the main thread), ``duration``, or a
feed that cannot be recovered (its error is raised after the cleanup). Then ``on_end``, then, unless
``cancel_on_exit=False``, every resting order of the agent in the runner's markets is cancelled
(``LiveResult.withdrawn``: whether that worked), the dead-man's switch is disarmed (unless the withdrawal failed),
and the feeds close. Reconnections are the streams' business.

Several runners in one process (the house traders: several agents in the same markets) can share the public feeds
through one :class:`MarketFeeds`: one websocket a market instead of one a market and runner.
"""

from __future__ import annotations

import itertools
import queue
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from moltstreet_client.errors import MoltStreetError, TransportError, error_class
from moltstreet_client.strategy import (
    BUY,
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
    parse_price,
    refusal,
)
from moltstreet_client.streams import StreamClosed

if TYPE_CHECKING:
    from moltstreet_client.client import Client
    from moltstreet_client.models import Order

TERMINAL = ("filled", "cancelled", "expired")
SEEN_FILLS = 100_000  # fill keys (and ended orders' ids) remembered to apply each once
IDLE = 0.5  # seconds the loop waits for a message before checking stop, ticks and the clock
MAX_BATCH = 20  # orders (or ids) one POST /orders/batch/ or /orders/batch-cancel/ carries at most
HEARTBEAT_MIN, HEARTBEAT_MAX = 5, 300  # the timeouts the server arms the dead-man's switch with (seconds)
HEARTBEAT_EXPIRED = "heartbeat_expired"
NOT_RESTING = ("order_not_cancellable", "not_found")  # a cancel's refusals that just mean "no longer resting"


def _decimal(value: Any) -> Decimal | None:
    return Decimal(str(value)) if value is not None else None


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _order_problem(side: Any, action: Any, price: Any, size: Any, time_in_force: str) -> str | None:
    """Why the exchange would refuse this order's fields (``invalid_request``), or ``None``."""
    if side not in (YES, NO):
        return f"side must be YES or NO, got {side!r}"
    if action not in (BUY, SELL):
        return f"action must be BUY or SELL, got {action!r}"
    if time_in_force not in TIMES_IN_FORCE:
        return f"time_in_force must be one of {', '.join(TIMES_IN_FORCE)}, got {time_in_force!r}"
    if type(size) is not int or size < 1:
        return f"size must be a whole number of contracts >= 1, got {size!r}"
    try:
        parse_price(price)
    except ValueError as exc:
        return str(exc)
    return None


def _entry_error(answer: Any) -> MoltStreetError:
    """The refusal one entry of a batch got, as the SDK raises it for a single request."""
    error = getattr(answer, "error", None)
    if isinstance(error, MoltStreetError):
        return error
    status = getattr(answer, "status", None)
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        detail = error.get("detail") if isinstance(error.get("detail"), dict) else {}
        return error_class(code, status)(str(error.get("message") or ""), code=code, detail=detail, status=status)
    return error_class(None, status)(f"the batch entry failed (status {status})", status=status)


# --------------------------------------------------------------------------------------------------------------------
# State of one market


class _LiveMarket:
    """What the runner knows of one market: the book (``yes``: YES bids by YES price, ``no``: NO bids by NO price,
    contracts), the tape, the reference price, the status, and the agent's holding and orders there."""

    def __init__(self, market_id: str):
        self.id = market_id
        self.question = ""
        self.deadline: datetime | None = None
        self.status = "open"
        self.outcome: str | None = None
        self.yes: dict[Decimal, int] = {}
        self.no: dict[Decimal, int] = {}
        self.last_price: Decimal | None = None
        self.recent: deque[Decimal] = deque(maxlen=Context.RECENT)
        self.reference: Decimal | None = None
        self.yes_shares = 0
        self.no_shares = 0
        self.orders: dict[str, OpenOrder] = {}  # insertion order: oldest first
        self.ctx: LiveContext | None = None

    def snapshot(self, message: dict[str, Any]) -> None:
        """Replace the public state with a feed's ``snapshot``."""
        market = message.get("market") or {}
        self.question = market.get("question") or self.question
        if market.get("deadline"):
            self.deadline = _time(market["deadline"])
        self.status = market.get("status") or self.status
        self.outcome = market.get("outcome")
        if "reference_price" in market:
            self.reference = _decimal(market.get("reference_price"))
        book = message.get("book") or {}
        self.yes = {Decimal(str(lv["price"])): int(lv["size"]) for lv in book.get("yes") or []}
        self.no = {Decimal(str(lv["price"])): int(lv["size"]) for lv in book.get("no") or []}
        trades = list(reversed(message.get("trades") or []))  # sent newest first
        self.recent.clear()
        self.recent.extend(Decimal(str(t["price"])) for t in trades)
        last = market.get("yes_price")
        self.last_price = _decimal(last) if last is not None else (self.recent[-1] if self.recent else None)

    def set_levels(self, levels: Iterable[dict[str, Any]]) -> None:
        for level in levels:
            book = self.yes if str(level["side"]).upper() == YES else self.no
            price, size = Decimal(str(level["price"])), int(level["size"])
            if size > 0:
                book[price] = size
            else:
                book.pop(price, None)

    def reserved(self, side: str) -> int:
        """Contracts of ``side`` that resting SELL orders reserve."""
        return sum(o.remaining for o in self.orders.values() if o.action == SELL and o.side == side)

    def resting(self) -> list[OpenOrder]:
        return [order for order in self.orders.values() if order.is_resting]


class LiveContext(MarketContext):
    """The :class:`~moltstreet_client.strategy.Context` of one market traded live through a :class:`Client`."""

    def __init__(self, runner: LiveRunner, market: _LiveMarket):
        super().__init__(market)
        self._runner = runner

    @property
    def now(self) -> datetime:
        return datetime.now(UTC)

    @property
    def best_bid(self) -> Decimal | None:
        return max(self._m.yes) if self._m.yes else None

    @property
    def best_ask(self) -> Decimal | None:
        return ONE - max(self._m.no) if self._m.no else None

    @property
    def bid_size(self) -> int:
        return self._m.yes[max(self._m.yes)] if self._m.yes else 0

    @property
    def ask_size(self) -> int:
        return self._m.no[max(self._m.no)] if self._m.no else 0

    @property
    def cash(self) -> Decimal:
        return self._runner.cash

    @property
    def orders(self) -> list[OpenOrder]:
        return self._m.resting()

    def _place(self, side, action, price, size, time_in_force, post_only, expires_at) -> OpenOrder:
        return self._runner.place(self._m, side, action, price, size, time_in_force, post_only, expires_at)

    def place_orders(
        self,
        orders: Iterable[tuple[str, str, Decimal | str, int]],
        *,
        time_in_force: str = "GTC",
        post_only: bool = False,
        expires_at: datetime | None = None,
    ) -> list[OpenOrder]:
        return self._runner.place_orders(self._m, list(orders), time_in_force, post_only, expires_at)

    def cancel(self, order: OpenOrder | str) -> bool:
        return self._runner.cancel(self._m, order if isinstance(order, str) else order.id)

    def cancel_orders(self, orders: Iterable[OpenOrder | str]) -> list[bool]:
        return self._runner.cancel_orders(self._m, [order if isinstance(order, str) else order.id for order in orders])

    def cancel_all(self) -> int:
        return self._runner.cancel_all(self._m)

    def _forecast(self, probability: Decimal, reasoning: str) -> None:
        self._runner.client.forecast(self.market, probability, reasoning)
        self._runner.result.forecasts += 1


# --------------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class LiveResult:
    """What a live run did: its ``executions`` (fills and nettings, as a backtest's), orders placed and cancelled,
    forecasts stated, refusals by error code, requests without an answer, heartbeats the server took (with
    ``heartbeat_seconds``), and whether its resting orders were withdrawn at the end (``None`` when not asked:
    ``cancel_on_exit=False``)."""

    strategy: str
    markets: list[str]
    started_at: datetime
    ended_at: datetime | None = None
    executions: list[Execution] = field(default_factory=list)
    orders: int = 0
    cancels: int = 0
    forecasts: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    transport_errors: int = 0
    heartbeats: int = 0
    withdrawn: bool | None = None

    @property
    def trades(self) -> int:
        """Fills (netting is not a trade)."""
        return sum(1 for e in self.executions if e.reason != NETTING)

    @property
    def contracts(self) -> int:
        return sum(e.size for e in self.executions if e.reason != NETTING)

    @property
    def cash_flows(self) -> Decimal:
        """Credits the executions moved (negative: paid)."""
        return sum((e.cash for e in self.executions), ZERO)

    def summary(self) -> str:
        refused = ", ".join(f"{code} {n}" for code, n in sorted(self.refusals.items())) or "none"
        return (
            f"{self.orders} orders, {self.trades} trades ({self.contracts} contracts), {self.cancels} cancels, "
            f"{self.forecasts} forecasts in {len(self.markets)} markets; refused: {refused}; "
            f"requests without an answer: {self.transport_errors}"
        )


# --------------------------------------------------------------------------------------------------------------------
# The runner


class LiveRunner:
    """One strategy trading ``markets`` through ``client`` (which holds the agent's API key). Use :func:`run_live`,
    or build one to :meth:`stop` it from another thread; :meth:`run` blocks until it stops. ``feeds``: a
    :class:`MarketFeeds` to read the public feeds from, shared with other runners, instead of opening its own.
    ``heartbeat_seconds`` (5-300, ``None``: off): arm the agent's dead-man's switch with that timeout and keep it
    armed while the runner runs (see the module's doc). Raises ``ValueError`` for no market, a market listed twice,
    a client without a key or another ``heartbeat_seconds``."""

    def __init__(
        self,
        strategy: Strategy,
        client: Client,
        markets: Iterable[Any],
        *,
        cancel_on_exit: bool = True,
        stop_event: threading.Event | None = None,
        open_timeout: float = 15.0,
        max_reconnects: int | None = 10,
        report: Callable[[str], None] | None = None,
        feeds: MarketFeeds | None = None,
        heartbeat_seconds: int | None = None,
    ):
        ids = [str(getattr(m, "id", m)) for m in markets]
        if not ids:
            raise ValueError("run_live needs at least one market")
        if len(set(ids)) != len(ids):
            raise ValueError("a market is listed twice")
        if not client.api_key:
            raise ValueError("run_live needs a client with an API key (it places orders and reads the private feed)")
        if heartbeat_seconds is not None and (
            type(heartbeat_seconds) is not int or not HEARTBEAT_MIN <= heartbeat_seconds <= HEARTBEAT_MAX
        ):
            raise ValueError(
                f"heartbeat_seconds must be a whole number of seconds from {HEARTBEAT_MIN} to {HEARTBEAT_MAX} "
                "(or None: no heartbeat)"
            )
        self.strategy = strategy
        self.client = client
        self.markets = {market_id: _LiveMarket(market_id) for market_id in ids}
        for market in self.markets.values():
            market.ctx = LiveContext(self, market)
        self.cancel_on_exit = cancel_on_exit
        self.heartbeat_seconds = heartbeat_seconds
        self._next_beat: float | None = None  # when the next heartbeat is due (monotonic); None before the first
        self._armed = False  # the last heartbeat armed the switch, and no expiry was seen since
        self._resume = False  # the switch cancelled the strategy's orders: on_book once it is armed again
        self._beat_at: datetime | None = None  # when the server took the last heartbeat (its deadline - timeout)
        self.feeds = feeds
        self.open_timeout = open_timeout
        self.max_reconnects = max_reconnects
        self.report = report or (lambda line: None)
        self._stop = stop_event or threading.Event()
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stamps = itertools.count()
        self._cutoff = 0  # private messages stamped before it are older than the state read over REST
        self._streams: list[Any] = []
        self._sinks: dict[str, Callable[[Any], None]] = {}
        self._threads: list[threading.Thread] = []
        self._private_batch: list[dict[str, Any]] = []
        self._batch_since: float | None = None
        self._pending: deque[tuple[_LiveMarket, Execution]] = deque()
        self._seen: set[tuple[str, str]] = set()
        self._seen_order: deque[tuple[str, str]] = deque()
        self._ended: set[str] = set()
        self._ended_order: deque[str] = deque()
        self.cash = ZERO
        self._closing = False
        self._connected = False  # the feeds are open and the state was read: there may be orders to withdraw
        self._started = False  # on_start ran: on_end will
        self.result = LiveResult(strategy.label(), ids, datetime.now(UTC))

    # Control ---------------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the runner to stop (thread-safe): it finishes the hook it is in, then cleans up."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, duration: float | None = None) -> LiveResult:
        """Connect, start, dispatch until stopped (or ``duration`` seconds), clean up; returns the
        :class:`LiveResult`. Raises what could not be recovered (a feed that failed for good, a strategy's bug)
        after the cleanup."""
        deadline = time.monotonic() + duration if duration is not None else None
        try:
            self._connect()
            for market in self.markets.values():
                self._heartbeat_if_due()
                self._call(market, self.strategy.on_start)
            self._started = True
            self._loop(deadline)
        finally:
            self._finish()
        return self.result

    # Connecting ------------------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        # The private feed first, so that nothing committed after the state is read over REST is missed; it resumes
        # by itself after a drop, and says so with a snapshot when it cannot (then the state is read again).
        private = self.client.stream_private(max_reconnects=self.max_reconnects, open_timeout=self.open_timeout)
        self._streams.append(private)
        private.open(timeout=self.open_timeout)
        self._read_in_thread(private, "private", None)
        for market in self.markets.values():
            if self.feeds is not None:
                self._sinks[market.id] = self._market_sink(market.id)
                first = self.feeds.subscribe(market.id, self._sinks[market.id])
            else:
                stream = self.client.stream_market(
                    market.id, max_reconnects=self.max_reconnects, open_timeout=self.open_timeout
                )
                self._streams.append(stream)
                first = stream.recv(timeout=self.open_timeout)  # NotFound for an unknown market
            if first.get("type") == "snapshot":
                market.snapshot(first)
            if self.feeds is None:
                self._read_in_thread(stream, "market", market.id)
        if self.heartbeat_seconds:
            # Armed before the state is read: a switch left expired by an earlier run fires now (its orders are
            # cancelled), and the read below already shows it.
            self._heartbeat(first=True)
        self._read_state()
        self._connected = True

    def _market_sink(self, market_id: str) -> Callable[[dict[str, Any] | BaseException], None]:
        """Where a shared :class:`MarketFeeds` delivers the market's messages (or its feed's final error)."""

        def deliver(message: dict[str, Any] | BaseException) -> None:
            if isinstance(message, BaseException):
                if not self._closing:
                    self._queue.put(("error", market_id, message, next(self._stamps)))
            else:
                self._queue.put(("market", market_id, message, next(self._stamps)))

        return deliver

    def _read_in_thread(self, stream: Any, kind: str, market_id: str | None) -> None:
        def read() -> None:
            try:
                for message in stream:
                    self._queue.put((kind, market_id, message, next(self._stamps)))
            except StreamClosed:
                pass
            except Exception as exc:  # handed to the loop, which raises it (unless it is stopping anyway)
                if not self._closing:
                    self._queue.put(("error", market_id, exc, next(self._stamps)))

        name = f"moltstreet-{kind}-{market_id or 'agent'}"
        thread = threading.Thread(target=read, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_state(self) -> None:
        """The agent's balance, holdings and resting orders in the runner's markets, over REST; private messages
        queued before this read are dropped (the read includes what they said)."""
        self._cutoff = next(self._stamps)
        self._private_batch.clear()
        self.cash = self.client.me().available_balance
        for market in self.markets.values():
            market.yes_shares = market.no_shares = 0
            for position in self.client.positions(market=market.id):
                market.yes_shares, market.no_shares = int(position.yes_shares), int(position.no_shares)
            market.orders = {}
            resting = list(self.client.orders(market=market.id, status="resting"))
            for order in reversed(resting):  # listed newest first
                self._track(market, order)

    # The loop --------------------------------------------------------------------------------------------------------

    def _loop(self, deadline: float | None) -> None:
        interval = self.strategy.tick_interval
        next_tick = time.monotonic() + interval if interval else None
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            self._heartbeat_if_due()
            if self._resume and (self._armed or not self.heartbeat_seconds):
                self._resume_quoting()
            wait = IDLE
            for moment in (deadline, next_tick, self._next_beat):
                if moment is not None:
                    wait = min(wait, max(0.0, moment - now))
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            if item is not None:
                self._handle(*item)
            elif self._private_batch and self._batch_since is not None and now - self._batch_since > 1.0:
                self._apply_private_batch()  # a batch whose balance message never came
            if next_tick is not None and time.monotonic() >= next_tick:
                for market in self.markets.values():
                    if market.status == "open" and not self._stop.is_set():
                        self._call(market, self.strategy.on_tick)
                while next_tick <= time.monotonic():
                    next_tick += interval

    def _handle(self, kind: str, market_id: str | None, message: Any, stamp: int) -> None:
        if kind == "error":
            raise message
        if kind == "private":
            if stamp < self._cutoff:
                return  # older than the state read over REST
            if message.get("type") == "snapshot":  # the feed replaced the account: read the state again
                self.report(f"{self.strategy.label()}: private feed resynchronised; reading the state again")
                self._read_state()
                return
            self._on_private(message)
            return
        self._on_market_message(self.markets[market_id], message)

    def _call(self, market: _LiveMarket, hook: Callable[..., Any], *args: Any) -> None:
        """Run a hook (as the backtest engine does), then deliver the fills it caused; refusals are counted."""
        self._guard(hook, market.ctx, *args)
        self._deliver()

    def _deliver(self) -> None:
        """Each queued fill to ``on_fill`` (which may cause more)."""
        while self._pending:
            filled_market, execution = self._pending.popleft()
            self._guard(self.strategy.on_fill, filled_market.ctx, execution)

    def _guard(self, hook: Callable[..., Any], *args: Any) -> None:
        try:
            hook(*args)
        except MoltStreetError as exc:
            self._refused(exc)
        except TransportError as exc:
            self.result.transport_errors += 1
            self.report(f"{self.strategy.label()}: no answer from the server ({exc})")

    def _refused(self, exc: MoltStreetError) -> None:
        """Count a refusal of the exchange; one for ``heartbeat_expired`` (the switch passed its deadline: the loop
        stalled) also makes the next heartbeat due at once, so that the strategy's next attempt is taken."""
        self.result.refusals[exc.code] = self.result.refusals.get(exc.code, 0) + 1
        self._heartbeat_expired(exc)

    def _heartbeat_expired(self, exc: MoltStreetError) -> None:
        if exc.code == HEARTBEAT_EXPIRED and self.heartbeat_seconds:
            self._next_beat = time.monotonic()
            self._armed = False
            self._resume = True

    # The dead-man's switch -------------------------------------------------------------------------------------------

    def _heartbeat_if_due(self) -> None:
        if self._next_beat is not None and time.monotonic() >= self._next_beat:
            self._heartbeat()

    def _heartbeat(self, *, first: bool = False) -> None:
        """``POST /agents/me/heartbeat/`` with ``heartbeat_seconds``: arms the switch (again) and moves its deadline;
        the next one is due a third of the timeout later. A heartbeat that fails is reported and counted, and the
        next one arms the switch again; only the first one's refusal, unless retryable, is raised (the server does
        not take this timeout or this key: better not to trade unprotected)."""
        timeout = self.heartbeat_seconds
        assert timeout is not None
        self._next_beat = time.monotonic() + timeout / 3
        try:
            beat = self.client.heartbeat(timeout)
        except TransportError as exc:
            self.result.transport_errors += 1
            self.report(f"{self.strategy.label()}: the heartbeat got no answer ({exc}); the next one re-arms")
            return
        except MoltStreetError as exc:
            if first and not exc.retryable:
                self._next_beat = None  # never armed: nothing to disarm on the way out
                raise
            self.result.refusals[exc.code] = self.result.refusals.get(exc.code, 0) + 1
            self.report(f"{self.strategy.label()}: the heartbeat was refused ({exc}); the next one re-arms")
            return
        self.result.heartbeats += 1
        self._armed = True
        if beat.deadline is not None and beat.timeout_seconds:
            self._beat_at = beat.deadline - timedelta(seconds=beat.timeout_seconds)
        if beat.cancelled and not first:  # at the start, the state read next shows it
            # It came after the deadline: the switch fired first, cancelling every resting order of the agent.
            self.report(
                f"{self.strategy.label()}: the dead-man's switch had expired; {beat.cancelled} resting orders were "
                "cancelled and the switch is armed again"
            )
            self._switch_fired(None)
            self._resume = True

    def _switch_fired(self, order_ids: set[str] | None) -> int:
        """The switch cancelled the strategy's resting orders (``order_ids``, or all): book it as the exchange did
        (their late ``order`` messages are then ignored). Returns how many were still resting here."""
        booked = 0
        for market in self.markets.values():
            for order in market.resting():
                if order_ids is None or order.id in order_ids:
                    self._release(market, order)
                    order.status, order.cancel_reason = "cancelled", HEARTBEAT_EXPIRED
                    booked += 1
            self._net(market)
            self._prune(market)
        return booked

    def _resume_quoting(self) -> None:
        """After the switch fired: :meth:`Strategy.on_book` in each open market (its orders left the book), so that
        a strategy that quotes there places them again without waiting for the market to move."""
        self._resume = False
        for market in self.markets.values():
            if market.status == "open" and not self._stop.is_set():
                self._call(market, self.strategy.on_book)

    def _disarm(self) -> None:
        """``POST /agents/me/heartbeat/`` with 0: the switch is off (a clean stop)."""
        try:
            self.client.heartbeat(0)
        except (MoltStreetError, TransportError) as exc:
            self.report(
                f"{self.strategy.label()}: could not disarm the dead-man's switch ({exc}); it fires at its deadline"
            )

    # The public feed -------------------------------------------------------------------------------------------------

    def _on_market_message(self, market: _LiveMarket, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "snapshot":  # the server replaced the state (resync, since_too_old)
            market.snapshot(message)
            if market.status == "open":
                self._call(market, self.strategy.on_book)
        elif kind == "book":
            market.set_levels(message.get("levels") or ())
            if market.status == "open":
                self._call(market, self.strategy.on_book)
        elif kind == "trade":
            trade = message.get("trade") or {}
            price = Decimal(str(trade["price"]))
            market.last_price = price
            market.recent.append(price)
            seq = int(message.get("seq") or trade.get("seq") or 0)
            print_ = Print(
                _time(trade.get("created_at")), price, int(trade["size"]), trade.get("taker_side") or "", seq
            )
            self._call(market, self.strategy.on_trade, print_)
        elif kind == "reference":
            reference = message.get("reference") or {}
            market.reference = _decimal(reference.get("yes_price"))
            self._call(market, self.strategy.on_reference, market.reference)
        elif kind == "market":
            self._on_market_event(market, message)

    def _on_market_event(self, market: _LiveMarket, message: dict[str, Any]) -> None:
        state = message.get("market") or {}
        name = message.get("event") or ""
        status = state.get("status") or market.status
        if state.get("deadline"):
            market.deadline = _time(state["deadline"])
        if status != "open" and market.status == "open":
            # Closing and resolving cancel every resting order (the private feed confirms it).
            reason = "market_closed" if status == "closed" else "market_resolved"
            for order in market.resting():
                self._release(market, order)
                order.status, order.cancel_reason = "cancelled", reason
            self._prune(market)
            market.yes.clear()
            market.no.clear()
        market.status = status
        if name == "resolved" and state.get("outcome") and market.outcome is None:
            market.outcome = state["outcome"]
            # Paid as in section 4; the balance message that follows has the exchange's figure.
            if market.outcome == YES:
                self.cash += market.yes_shares
            elif market.outcome == NO:
                self.cash += market.no_shares
            else:
                self.cash += Decimal("0.50") * (market.yes_shares + market.no_shares)
            market.yes_shares = market.no_shares = 0
        self._call(market, self.strategy.on_market, name)

    # The private feed ------------------------------------------------------------------------------------------------

    def _on_private(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("order", "fill"):
            if message.get("market") in self.markets:
                if not self._private_batch:
                    self._batch_since = time.monotonic()
                self._private_batch.append(message)
        elif kind == "balance":
            # The last message of a committed transaction: apply its orders and fills together, then the balance.
            self._apply_private_batch()
            if message.get("available_balance") is not None:
                self.cash = Decimal(str(message["available_balance"]))
        elif kind == "heartbeat" and message.get("event") == "expired":
            # The switch fired and is off now: book its cancellations, arm it again at once, then quote again. Unless
            # a heartbeat the server took after that deadline re-armed it already (a late heartbeat fires it first).
            cancelled = {str(order_id) for order_id in message.get("cancelled") or ()}
            fired = _time(message["deadline"]) if message.get("deadline") else None
            rearmed = self._beat_at is not None and fired is not None and self._beat_at > fired
            if not rearmed:
                self.report(
                    f"{self.strategy.label()}: the dead-man's switch fired; {len(cancelled)} resting orders cancelled"
                )
                if self.heartbeat_seconds:
                    self._next_beat = time.monotonic()
                    self._armed = False
            if self._switch_fired(cancelled) or not rearmed:
                self._resume = True

    def _apply_private_batch(self) -> None:
        batch, self._private_batch, self._batch_since = self._private_batch, [], None
        touched: dict[str, _LiveMarket] = {}
        for message in batch:
            market = self.markets[message["market"]]
            touched[market.id] = market
            if message["type"] == "order":
                self._order_message(market, message.get("order") or {})
            else:
                fill = message.get("fill") or {}
                own = Decimal(str(fill.get("fill_price") or fill["price"]))
                self._fill(
                    market,
                    str(fill["id"]),
                    str(fill.get("order") or ""),
                    fill["side"],
                    fill["action"],
                    own,
                    int(fill["size"]),
                    fill.get("role") or MAKER,
                    _time(fill.get("created_at")),
                )
        for market in touched.values():
            self._net(market)
            self._prune(market)
        self._deliver()

    def _order_message(self, market: _LiveMarket, data: dict[str, Any]) -> None:
        order_id = str(data.get("id"))
        if order_id in self._ended:
            return  # an older message of an order that has ended
        known = market.orders.get(order_id)
        if known is None:  # placed by another program with the same agent, or before the runner read the state
            known = OpenOrder(
                id=order_id,
                market=market.id,
                side=data.get("side") or "",
                action=data.get("action") or "",
                price=Decimal(str(data.get("price"))),
                size=int(data.get("size") or 0),
                filled=0,
                status="open",
            )
            market.orders[order_id] = known
        self._update(known, data.get("status") or known.status, int(data.get("filled") or 0))

    @staticmethod
    def _update(order: OpenOrder, status: str, filled: int) -> None:
        """Messages of one order can arrive after its answer: a final state stays final, ``filled`` only grows."""
        if order.status in TERMINAL:
            return
        order.filled = max(order.filled, filled)
        if status in TERMINAL:
            order.status = status
        else:
            order.status = "partial" if order.filled else "open"

    # Orders ----------------------------------------------------------------------------------------------------------

    def _track(self, market: _LiveMarket, order: Order) -> OpenOrder:
        view = market.orders.get(str(order.id))
        if view is None:
            view = OpenOrder(
                id=str(order.id),
                market=market.id,
                side=order.side,
                action=order.action,
                price=order.price,
                size=int(order.size),
                filled=0,
                status="open",
                time_in_force=order.time_in_force or "GTC",
                post_only=bool(order.post_only),
                expires_at=order.expires_at,
                created_at=order.created_at,
            )
            market.orders[view.id] = view
        self._update(view, order.status, int(order.filled))
        view.cancel_reason = order.cancel_reason or view.cancel_reason
        return view

    def place(
        self,
        market: _LiveMarket,
        side: str,
        action: str,
        price: Decimal | str,
        size: int,
        time_in_force: str,
        post_only: bool,
        expires_at: datetime | None,
    ) -> OpenOrder:
        """``POST /orders/`` in ``market``; the order's taking fills are applied at once and delivered after the
        hook. Raises the exchange's refusals."""
        if market.status != "open":
            raise refusal("market_closed", "The market is closed.", market=market.id)
        try:
            answer = self.client.place_order(
                market.id,
                side,
                action,
                price,
                size,
                time_in_force=time_in_force,
                expires_at=expires_at,
                post_only=post_only,
            )
        except (ValueError, TypeError) as exc:  # refused by the SDK before sending: the server's code for it
            raise refusal("invalid_request", str(exc)) from None
        except MoltStreetError as exc:
            self._heartbeat_expired(exc)
            raise
        return self._placed(market, answer.order, answer.trades)

    def _placed(self, market: _LiveMarket, order: Order, trades: Iterable[Any]) -> OpenOrder:
        """Book an order the exchange took (as its answer has it after matching) and its taking ``trades``."""
        self.result.orders += 1
        view = self._track(market, order)
        if order.action == BUY:
            self.cash -= order.price * order.size  # reserved until filled or released
        for trade in trades:
            own = trade.price if order.side == YES else ONE - trade.price
            if order.action == BUY:
                self.cash += (order.price - own) * trade.size  # bought below the limit: the difference is released
            self._fill(
                market,
                str(trade.id),
                view.id,
                order.side,
                order.action,
                own,
                int(trade.size),
                TAKER,
                trade.created_at or datetime.now(UTC),
            )
        if not view.is_resting:
            self._release_rest(market, view)
        self._net(market)
        self._prune(market)
        return view

    def cancel(self, market: _LiveMarket, order_id: str) -> bool:
        """``DELETE /orders/{id}/``; ``False`` when it was no longer resting (or is not the agent's)."""
        try:
            order = self.client.cancel_order(order_id)
        except MoltStreetError as exc:
            if exc.code in ("order_not_cancellable", "not_found"):
                return False
            raise
        return self._cancelled(market, order_id, order)

    def _cancelled(self, market: _LiveMarket, order_id: str, order: Order) -> bool:
        """Book an order the exchange cancelled (``order``: as the answer has it)."""
        self.result.cancels += 1
        view = market.orders.get(order_id)
        if view is not None and view.is_resting:
            self._release(market, view)
        self._track(market, order)
        self._net(market)
        self._prune(market)
        return True

    def place_orders(
        self,
        market: _LiveMarket,
        entries: list[tuple[str, str, Decimal | str, int]],
        time_in_force: str,
        post_only: bool,
        expires_at: datetime | None,
    ) -> list[OpenOrder]:
        """``POST /orders/batch/`` of ``entries`` (``(side, action, price, size)``, all with the same options) in
        ``market``, :data:`MAX_BATCH` a request: every entry is sent, each succeeds or fails on its own, and each
        order taken is booked as :meth:`place` books one. Returns the orders taken, in the order given. Raises the
        first entry's refusal once all are booked (the other refusals are counted here), or what a whole request
        got (a :class:`TransportError`, a refusal of the batch itself) once the entries before it are booked."""
        if market.status != "open":
            raise refusal("market_closed", "The market is closed.", market=market.id)
        placed: list[OpenOrder] = []
        errors: list[tuple[int, MoltStreetError]] = []  # by the entry's index
        bodies: list[tuple[int, dict[str, Any]]] = []
        for index, (side, action, price, size) in enumerate(entries):
            problem = _order_problem(side, action, price, size, time_in_force)
            if problem is not None:  # what the SDK or the server would refuse anyway, not sent
                errors.append((index, refusal("invalid_request", problem)))
                continue
            body: dict[str, Any] = {
                "market": market.id,
                "side": side,
                "action": action,
                "price": price,
                "size": size,
                "time_in_force": time_in_force,
                "post_only": post_only,
                "client_order_id": uuid.uuid4().hex,  # a retried request cannot place an order twice
            }
            if expires_at is not None:
                body["expires_at"] = expires_at
            bodies.append((index, body))
        try:
            for start in range(0, len(bodies), MAX_BATCH):
                chunk = bodies[start : start + MAX_BATCH]
                try:
                    answers = self.client.place_orders([body for _index, body in chunk])
                except (ValueError, TypeError) as exc:  # refused by the SDK before sending
                    raise refusal("invalid_request", str(exc)) from None
                for (index, _body), answer in zip(chunk, answers, strict=True):
                    if answer.ok and answer.order is not None:
                        placed.append(self._placed(market, answer.order, answer.trades or ()))
                    else:
                        errors.append((index, _entry_error(answer)))
        except BaseException:
            for _index, error in errors:
                self._refused(error)
            raise
        self._raise_first([error for _index, error in sorted(errors, key=lambda item: item[0])])
        return placed

    def cancel_orders(self, market: _LiveMarket, order_ids: list[str]) -> list[bool]:
        """``POST /orders/batch-cancel/`` of ``order_ids`` (:data:`MAX_BATCH` a request); for each, whether it was
        cancelled (``False``: no longer resting, or not the agent's), in the order given. Raises as
        :meth:`place_orders` does for a refusal other than those."""
        done: list[bool] = []
        errors: list[MoltStreetError] = []
        try:
            for start in range(0, len(order_ids), MAX_BATCH):
                chunk = order_ids[start : start + MAX_BATCH]
                answers = self.client.cancel_orders(chunk)
                for order_id, answer in zip(chunk, answers, strict=True):
                    if answer.ok and answer.order is not None:
                        done.append(self._cancelled(market, order_id, answer.order))
                        continue
                    error = _entry_error(answer)
                    if error.code not in NOT_RESTING:
                        errors.append(error)
                    done.append(False)
        except BaseException:
            for error in errors:
                self._refused(error)
            raise
        self._raise_first(errors)
        return done

    def _raise_first(self, errors: list[MoltStreetError]) -> None:
        """A batch's refusals, in the order of its entries: count all but the first, raise the first (a hook that
        does not catch it stops there, and the runner counts it as a single order's refusal)."""
        for error in errors:
            self._heartbeat_expired(error)
        if errors:
            for error in errors[1:]:
                self._refused(error)
            raise errors[0]

    def cancel_all(self, market: _LiveMarket) -> int:
        """``POST /orders/cancel-all/`` for ``market``; how many were cancelled."""
        cancelled = self.client.cancel_all(market.id)
        for order in cancelled:
            view = market.orders.get(str(order.id))
            if view is not None and view.is_resting:
                self._release(market, view)
            self._track(market, order)
        self.result.cancels += len(cancelled)
        self._net(market)
        self._prune(market)
        return len(cancelled)

    def _prune(self, market: _LiveMarket) -> None:
        """Forget the orders that ended (a long run places many), remembering their ids so that a late message of
        one (its ``placed``, after the answer said ``filled``) cannot bring it back."""
        for order_id in [o.id for o in market.orders.values() if not o.is_resting]:
            del market.orders[order_id]
            self._ended.add(order_id)
            self._ended_order.append(order_id)
            if len(self._ended_order) > SEEN_FILLS:
                self._ended.discard(self._ended_order.popleft())

    def _release(self, market: _LiveMarket, order: OpenOrder) -> None:
        """What a resting order still reserves comes back (credits for a BUY; contracts need no booking here)."""
        if order.action == BUY:
            self.cash += order.price * order.remaining

    def _release_rest(self, market: _LiveMarket, order: OpenOrder) -> None:
        """An order that ended at placement (IOC/FOK remainder, filled): its unfilled part's reserve comes back."""
        if order.action == BUY:
            self.cash += order.price * (order.size - order.filled)

    # Fills and netting -----------------------------------------------------------------------------------------------

    def _fill(
        self,
        market: _LiveMarket,
        trade_id: str,
        order_id: str,
        side: str,
        action: str,
        own_price: Decimal,
        size: int,
        reason: str,
        when: datetime,
    ) -> None:
        """Book one fill of an order, once (by trade and order id), and queue it for ``on_fill``. A BUY's credits
        were reserved when it was placed (a taker's price improvement is released by :meth:`place`); a SELL's
        proceeds are available at once."""
        key = (trade_id, order_id)
        if key in self._seen:
            return
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > SEEN_FILLS:
            self._seen.discard(self._seen_order.popleft())
        amount = own_price * size
        if action == BUY:
            cash = -amount
            if side == YES:
                market.yes_shares += size
            else:
                market.no_shares += size
        else:
            cash = amount
            self.cash += amount
            if side == YES:
                market.yes_shares -= size
            else:
                market.no_shares -= size
        execution = Execution(when, market.id, side, action, own_price, size, reason, cash, order_id or None)
        self.result.executions.append(execution)
        self._pending.append((market, execution))

    def _net(self, market: _LiveMarket) -> None:
        """Merge the unreserved YES and NO contracts pairwise, as the exchange does after every change (section 3)."""
        pairs = min(market.yes_shares - market.reserved(YES), market.no_shares - market.reserved(NO))
        if pairs <= 0:
            return
        market.yes_shares -= pairs
        market.no_shares -= pairs
        amount = Decimal(pairs)
        self.cash += amount
        execution = Execution(datetime.now(UTC), market.id, "PAIR", "MERGE", ONE, pairs, NETTING, amount, None)
        self.result.executions.append(execution)
        self._pending.append((market, execution))

    # Stopping --------------------------------------------------------------------------------------------------------

    def _finish(self) -> None:
        self._closing = True  # the feeds' errors from here on are the runner's own closing
        try:
            if self._started:
                for market in self.markets.values():
                    self._call(market, self.strategy.on_end)
        finally:
            if self.cancel_on_exit and self._connected:
                self.result.withdrawn = self._withdraw()
            if self._next_beat is not None:  # the switch was armed (or tried to be)
                if self.result.withdrawn is False:
                    # Left armed on purpose: the server cancels what could not be withdrawn at the deadline.
                    self.report(f"{self.strategy.label()}: the dead-man's switch stays armed and fires at its deadline")
                else:
                    self._disarm()
            for stream in self._streams:
                stream.close()
            if self.feeds is not None:
                for market_id in self.markets:
                    if market_id in self._sinks:
                        self.feeds.unsubscribe(market_id, self._sinks[market_id])
            for thread in self._threads:
                thread.join(timeout=5)
            self.result.ended_at = datetime.now(UTC)

    def _withdraw(self) -> bool:
        for market in self.markets.values():
            try:
                cancelled = self.client.cancel_all(market.id)
            except (MoltStreetError, TransportError) as exc:
                self.report(f"{self.strategy.label()}: the server did not cancel the resting orders ({exc})")
                return False
            self.result.cancels += len(cancelled)
        return True


# --------------------------------------------------------------------------------------------------------------------
# Shared feeds


class _SharedFeed:
    """One market's stream, read in a thread, and its messages since the snapshot (replayed to late subscribers)."""

    def __init__(self, market_id: str, stream: Any, snapshot: dict[str, Any]):
        self.stream = stream
        self.snapshot = snapshot
        self.log: list[dict[str, Any]] = []
        self.sinks: list[Callable[[Any], None]] = []
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, name=f"moltstreet-shared-{market_id}", daemon=True)

    def _read(self) -> None:
        try:
            for message in self.stream:
                with self.lock:  # delivering under the lock: a subscriber joining now gets each message once
                    self.log.append(message)
                    for sink in self.sinks:
                        sink(message)
        except StreamClosed:
            pass
        except Exception as exc:  # the feed failed for good: every subscriber's runner stops with it
            with self.lock:
                self.error = exc
                for sink in self.sinks:
                    sink(exc)

    def add(self, sink: Callable[[Any], None]) -> dict[str, Any]:
        with self.lock:
            for message in self.log:
                sink(message)
            if self.error is not None:
                sink(self.error)
            self.sinks.append(sink)
        return self.snapshot


class MarketFeeds:
    """One public feed per market, shared by several :class:`LiveRunner` of one process (``LiveRunner(...,
    feeds=...)``): a house desk of several agents in the same markets opens one websocket a market instead of one
    a market and agent (the server limits websockets per address). Each subscriber gets the feed's first snapshot,
    then every message since, in ``seq`` order, however late it subscribes. :meth:`close` when the runners are
    done."""

    def __init__(self, client: Client, *, open_timeout: float = 15.0, max_reconnects: int | None = 10):
        self.client = client
        self.open_timeout = open_timeout
        self.max_reconnects = max_reconnects
        self._feeds: dict[str, _SharedFeed] = {}
        self._lock = threading.Lock()

    def subscribe(self, market_id: str, sink: Callable[[Any], None]) -> dict[str, Any]:
        """The market's snapshot; ``sink`` is then called with each message (or the feed's final error). Opens the
        feed on the first subscription (raises :class:`NotFound` for an unknown market)."""
        with self._lock:
            feed = self._feeds.get(market_id)
            if feed is None:
                stream = self.client.stream_market(
                    market_id, max_reconnects=self.max_reconnects, open_timeout=self.open_timeout
                )
                try:
                    first = stream.recv(timeout=self.open_timeout)
                except BaseException:
                    stream.close()
                    raise
                feed = _SharedFeed(market_id, stream, first)
                feed.thread.start()
                self._feeds[market_id] = feed
        return feed.add(sink)

    def unsubscribe(self, market_id: str, sink: Callable[[Any], None]) -> None:
        feed = self._feeds.get(market_id)
        if feed is not None:
            with feed.lock:
                if sink in feed.sinks:
                    feed.sinks.remove(sink)

    def close(self) -> None:
        """Close every feed and wait for its thread."""
        with self._lock:
            feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.stream.close()
        for feed in feeds:
            feed.thread.join(timeout=5)


def run_live(
    strategy: Strategy,
    client: Client,
    markets: Any,
    *,
    duration: float | None = None,
    cancel_on_exit: bool = True,
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
    report: Callable[[str], None] | None = None,
    open_timeout: float = 15.0,
    max_reconnects: int | None = 10,
    heartbeat_seconds: int | None = None,
) -> LiveResult:
    """Trade ``strategy`` live in ``markets`` (one id or :class:`Market`, or several) through ``client`` (with the
    agent's API key) until ``stop_event`` is set, SIGINT/SIGTERM arrives (``handle_signals``, in the main thread),
    or ``duration`` seconds pass; hooks as in the module's doc. On the way out the strategy's resting orders in
    those markets are cancelled unless ``cancel_on_exit=False``. ``heartbeat_seconds`` (5-300 seconds; ``None``:
    off) keeps the agent's dead-man's switch armed while it runs, so that a runner that dies or stalls has its
    resting orders cancelled by the server that many seconds after its last heartbeat; a clean stop disarms it.
    Returns the :class:`LiveResult`.

    Raises ``ValueError`` for no market, a market listed twice, a client without a key or another
    ``heartbeat_seconds``; :class:`NotFound` for an unknown market; :class:`InvalidApiKey` for a refused key;
    :class:`TransportError` when a feed cannot be recovered after ``max_reconnects`` attempts; the first
    heartbeat's refusal (not a retryable one); and whatever the strategy's own code raises (not a refusal)."""
    if isinstance(markets, (str, bytes)) or hasattr(markets, "id"):
        markets = [markets]
    runner = LiveRunner(
        strategy,
        client,
        markets,
        cancel_on_exit=cancel_on_exit,
        stop_event=stop_event,
        open_timeout=open_timeout,
        max_reconnects=max_reconnects,
        report=report,
        heartbeat_seconds=heartbeat_seconds,
    )
    previous: dict[int, Any] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: runner.stop())
    try:
        return runner.run(duration)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = ["LiveContext", "LiveResult", "LiveRunner", "MarketFeeds", "run_live"]
