"""Live feeds over websockets (docs/realtime.md): one market's public feed and the agent's private feed.

Both are iterators of messages, each the JSON object the server sent, as a ``dict`` (prices and money as decimal
strings, as on the wire; ``Market.from_dict(message["market"])``, ``Trade.from_dict(message["trade"])``,
``Fill.from_dict(message["fill"])`` give typed values). Iteration blocks until the next message; ``timeout`` (seconds)
bounds the wait and raises ``TimeoutError``; :meth:`close` (from any thread, or the ``with`` block's end) stops
the iteration. Reconnects are invisible to the caller:

* :class:`MarketStream` (``/ws/markets/{id}/``) yields a ``snapshot`` first, then ``book``, ``trade`` and ``market``
  messages with consecutive ``seq``. On a jump in ``seq``, a dropped connection, a ``4503`` close or a
  ``buffer_overflow``/``feed_unavailable`` error it reconnects with ``?since=<last seq yielded>``; the server replays
  what was missed and nothing is yielded twice. It yields another ``snapshot`` only when the server replaces the state
  (``reason`` ``resync``, or ``since_too_old`` when the gap is too old to replay): replace your state with it.
  :attr:`MarketStream.book` is the book as of the last message yielded. With ``batch_ms`` (1-1000) the server sends
  every message of up to that many milliseconds in one frame (a JSON array): fewer frames on a busy market, the same
  messages yielded one by one.
* :class:`PrivateStream` (``/ws/agent/``, the client's API key as ``Authorization: Bearer``) yields a ``snapshot``
  of the agent's account first (balance, resting orders, positions and the agent's own ``seq``), then its
  ``order``, ``fill``, ``position``, ``balance`` and ``heartbeat`` messages with consecutive ``seq``, and resumes
  exactly like the market stream: nothing sent while it was disconnected is lost or yielded twice. A ``heartbeat``
  message (``event`` ``expired``: the dead-man's switch of :meth:`Client.heartbeat` fired; ``disconnected``: a
  private feed opened with ``cancel_on_disconnect`` closed) lists the order ids it ``cancelled`` and the switch's
  ``deadline`` (``None`` for ``disconnected``); each of those orders also has its own ``order`` message. With
  ``cancel_on_disconnect=True`` every connection carries ``?cancel_on_disconnect=true``: its close, a drop the
  stream then repairs included, cancels every resting order of the agent. :attr:`PrivateStream.balance`,
  :attr:`~PrivateStream.orders` and :attr:`~PrivateStream.positions` are the account as of the last message
  yielded. ``on_reconnect`` is still called after each reconnection; a ``snapshot`` with ``reason``
  ``since_too_old`` or ``resync`` is the only time the account is replaced.

Past the server's limits per address (close code 4429) a stream waits the ``retry_after`` of a ``rate_limited`` error
before reconnecting, and raises ``MoltStreetError`` with code ``too_many_connections`` when the address has too many
websockets open (reconnecting cannot help). Consecutive failed connection attempts beyond ``max_reconnects`` raise
:class:`TransportError`. A market that does not
exist raises :class:`NotFound`, an API key the server refuses :class:`InvalidApiKey` (checked over HTTP when a
handshake is refused), a key revoked while the private feed is open ``MoltStreetError`` with code
``api_key_revoked`` (unless the client has moved to a newer key, which the stream then uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from moltstreet_client._base import USER_AGENT, ws_base_url
from moltstreet_client.errors import MoltStreetError, TransportError
from moltstreet_client.models import Level, Order, OrderBook, Position

if TYPE_CHECKING:
    from moltstreet_client.aio import AsyncClient
    from moltstreet_client.client import Client

# Close codes of the server (trading/consumers.py).
CLOSE_BUFFER_OVERFLOW = 4008
CLOSE_KEY_REVOKED = 4401
CLOSE_UNAVAILABLE = 4503
CLOSE_RATE_LIMITED = 4429

UNAVAILABLE_PAUSE = 1.0  # seconds before reconnecting after feed_unavailable / 4503 ("after a pause")
RATE_LIMITED_PAUSE = 5.0  # seconds before reconnecting after a 4429 close that came without its retry_after
MAX_MESSAGE_BYTES = 16 * 2**20  # a snapshot of a deep book is larger than websockets' 1 MiB default
MAX_BATCH_MS = 1000  # the longest batch the market feed takes (?batch_ms=, docs/realtime.md "Batched frames")
_ONE = Decimal("1")

# What handle() tells the loop to do with a message.
DELIVER, SKIP, RECONNECT = "deliver", "skip", "reconnect"


class StreamClosed(Exception):
    """The stream was closed (:meth:`close`); no more messages."""


class _Reconnect(Exception):
    """Internal: drop the connection and reconnect after at least ``pause`` seconds. ``cause``: what to report if
    reconnecting keeps failing (the lost connection's exception, or this one)."""

    def __init__(self, why: str, pause: float = 0.0, cause: BaseException | None = None):
        super().__init__(why)
        self.pause = pause
        self.cause: BaseException = cause if cause is not None else self

    @classmethod
    def after(cls, exc: BaseException, pause: float) -> _Reconnect:
        """Reconnect after the connection failed with ``exc``."""
        return cls(str(exc), pause, cause=exc)


def _server_error(message: dict[str, Any]) -> str | None:
    """What both feeds do with an ``error`` message of the server: ``SKIP``, raise :class:`_Reconnect` (after the
    pause the error asks for), raise :class:`MoltStreetError` (``too_many_connections``: reconnecting cannot help
    while the client's other websockets stay open), or ``None`` to leave it to the feed."""
    code = message.get("code")
    if code == "feed_unavailable":
        raise _Reconnect("feed_unavailable", UNAVAILABLE_PAUSE)
    if code == "rate_limited":  # too many handshakes from this address: wait as long as the server says
        raise _Reconnect("rate_limited", float(message.get("retry_after") or RATE_LIMITED_PAUSE))
    if code == "too_many_connections":
        raise MoltStreetError(str(message.get("message") or "too many websockets"), code="too_many_connections")
    if code == "invalid_message":
        return SKIP
    return None


def _backoff(failures: int, cap: float = 5.0) -> float:
    """Seconds before reconnect attempt number ``failures`` (0: at once), jittered exponential."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, 0.1 * 2 ** (failures - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class _SequencedFeedState:
    """What both feeds share, without I/O: which ``seq`` was yielded last, and what to do with each incoming message
    (yield it, drop it as a repeat, or reconnect with ``?since=`` to fill a gap). The server numbers each feed's
    messages without gaps: the market's ``seq`` or the agent's own."""

    def __init__(self, since: int | None = None):
        if since is not None and (not isinstance(since, int) or isinstance(since, bool) or since < 0):
            raise ValueError("since must be a whole number >= 0 (a seq the caller applied)")
        self.last_seq: int | None = since

    def base_path(self) -> str:
        raise NotImplementedError

    def query(self) -> list[str]:
        """The query parameters of every connection (``name=value``), besides ``since``."""
        return []

    def path(self) -> str:
        params = self.query() + ([f"since={self.last_seq}"] if self.last_seq is not None else [])
        return self.base_path() + ("?" + "&".join(params) if params else "")

    def apply_snapshot(self, message: dict[str, Any]) -> None:
        """Replace the state with a ``snapshot``'s."""

    def apply(self, message: dict[str, Any]) -> None:
        """Apply one message with the next ``seq`` to the state."""

    def error(self, message: dict[str, Any]) -> str | None:
        """A feed's own handling of a server ``error`` (``None``: the shared handling)."""
        return None

    def handle(self, message: Any) -> str:
        """``DELIVER``, ``SKIP``, or raise :class:`_Reconnect`."""
        if not isinstance(message, dict):
            return SKIP
        kind = message.get("type")
        if kind == "snapshot":
            self.last_seq = int(message["seq"])
            self.apply_snapshot(message)
            return DELIVER
        if kind == "error":
            code = message.get("code")
            if code == "buffer_overflow":
                raise _Reconnect("buffer_overflow")
            if code == "invalid_since":
                return SKIP
            return self.error(message) or _server_error(message) or DELIVER
        if kind == "pong":
            return SKIP
        seq = message.get("seq")
        if not isinstance(seq, int):
            return DELIVER
        if self.last_seq is not None:
            if seq <= self.last_seq:
                return SKIP  # already yielded (a replay overlapping the live feed)
            if seq != self.last_seq + 1:
                raise _Reconnect(f"seq jumped from {self.last_seq} to {seq}")
        self.last_seq = seq
        self.apply(message)
        return DELIVER


class MarketFeedState(_SequencedFeedState):
    """The logic of a market feed, without I/O: its ``seq`` (:class:`_SequencedFeedState`) and the book it leaves.
    ``batch_ms`` (1-1000) asks the server for batched frames: every message of up to that many milliseconds in one
    frame (a JSON array), taken apart by the stream, so what it yields is the same message for message."""

    def __init__(self, market_id: str, since: int | None = None, batch_ms: int | None = None):
        super().__init__(since)
        if batch_ms is not None and (
            not isinstance(batch_ms, int) or isinstance(batch_ms, bool) or not 0 <= batch_ms <= MAX_BATCH_MS
        ):
            raise ValueError(f"batch_ms must be a whole number of milliseconds from 0 to {MAX_BATCH_MS}")
        self.market_id = market_id
        self.batch_ms = batch_ms or None
        self._book: dict[str, dict[Decimal, int]] = {"YES": {}, "NO": {}}
        self.book_known = False  # only after a snapshot: a since= resume starts from the caller's own state

    def base_path(self) -> str:
        return f"/ws/markets/{self.market_id}/"

    def query(self) -> list[str]:
        return [f"batch_ms={self.batch_ms}"] if self.batch_ms else []

    def apply_snapshot(self, message: dict[str, Any]) -> None:
        book = message.get("book") or {}
        self._book = {
            side: {Decimal(str(level["price"])): int(level["size"]) for level in book.get(side.lower(), [])}
            for side in ("YES", "NO")
        }
        self.book_known = True

    def apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "book":
            for level in message.get("levels") or []:
                side = self._book.setdefault(str(level["side"]).upper(), {})
                price, size = Decimal(str(level["price"])), int(level["size"])
                if size:
                    side[price] = size
                else:
                    side.pop(price, None)
        elif kind == "market" and (message.get("event") in ("closed", "resolved")):
            self._book = {"YES": {}, "NO": {}}  # closing and resolving cancel every resting order

    def book(self) -> OrderBook:
        """The book as of :attr:`last_seq`, best price first (``no`` at NO prices, as ``GET /orderbook/``)."""
        yes = [Level(price=p, size=s) for p, s in sorted(self._book.get("YES", {}).items(), reverse=True)]
        no = [Level(price=p, size=s) for p, s in sorted(self._book.get("NO", {}).items(), reverse=True)]
        return OrderBook(
            market=self.market_id,
            seq=self.last_seq or 0,
            yes=yes,
            no=no,
            best_bid=yes[0].price if yes else None,
            best_ask=_ONE - no[0].price if no else None,
        )


RESTING = ("open", "partial")
_BALANCE_FIELDS = ("balance", "locked_balance", "available_balance")


class PrivateFeedState(_SequencedFeedState):
    """The logic of the private feed, without I/O: the agent's ``seq`` (:class:`_SequencedFeedState`), the account
    it leaves (balance, resting orders, positions holding contracts), and when to give up (a revoked key)."""

    def __init__(self, since: int | None = None, cancel_on_disconnect: bool = False):
        super().__init__(since)
        self.cancel_on_disconnect = bool(cancel_on_disconnect)
        self.balances: dict[str, Decimal] = {}
        self.resting: dict[str, dict[str, Any]] = {}  # order dicts by id
        self.holdings: dict[str, dict[str, Any]] = {}  # position dicts by market
        self.account_known = False  # only after a snapshot: a since= resume starts from the caller's own state

    def base_path(self) -> str:
        return "/ws/agent/"

    def query(self) -> list[str]:
        # On every connection, reconnections included: each one's close cancels the agent's resting orders.
        return ["cancel_on_disconnect=true"] if self.cancel_on_disconnect else []

    def error(self, message: dict[str, Any]) -> str | None:
        if message.get("code") == "api_key_revoked":
            raise _Reconnect("api_key_revoked")
        return None

    def apply_snapshot(self, message: dict[str, Any]) -> None:
        self.balances = {name: Decimal(str(message[name])) for name in _BALANCE_FIELDS if name in message}
        self.resting = {str(order["id"]): order for order in message.get("orders") or []}
        self.holdings = {str(position["market"]): position for position in message.get("positions") or []}
        self.account_known = True

    def apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "order":
            order = message.get("order") or {}
            if order.get("status") in RESTING:
                self.resting[str(order["id"])] = order
            else:
                self.resting.pop(str(order.get("id")), None)
        elif kind == "position":
            position = message.get("position") or {}
            if position.get("yes_shares") or position.get("no_shares"):
                self.holdings[str(position["market"])] = position
            else:
                self.holdings.pop(str(position.get("market")), None)
        elif kind == "balance":
            self.balances = {name: Decimal(str(message[name])) for name in _BALANCE_FIELDS if name in message}
        elif kind == "heartbeat":  # the switch fired or a cancel_on_disconnect feed closed: these orders are gone
            for order_id in message.get("cancelled") or []:
                self.resting.pop(str(order_id), None)

    def orders(self) -> list[Order]:
        """The resting orders as of :attr:`last_seq`, newest first."""
        orders = [Order.from_dict(order) for order in self.resting.values()]
        return sorted(orders, key=lambda o: (o.created_at is not None, o.created_at), reverse=True)

    def positions(self) -> list[Position]:
        """The positions holding contracts as of :attr:`last_seq`, by market id."""
        return [Position.from_dict(self.holdings[market]) for market in sorted(self.holdings)]


def _close_pause(exc: ConnectionClosed) -> float:
    code = exc.rcvd.code if exc.rcvd is not None else None
    return {CLOSE_UNAVAILABLE: UNAVAILABLE_PAUSE, CLOSE_RATE_LIMITED: RATE_LIMITED_PAUSE}.get(code, 0.0)


def _closed_for_revoked_key(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionClosed) and exc.rcvd is not None and exc.rcvd.code == CLOSE_KEY_REVOKED


def _refused_status(exc: BaseException) -> int | None:
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code
    return None


def _revoked(state: Any, key_used: str | None, current_key: str | None) -> MoltStreetError | None:
    """The error to raise when the private feed's key was revoked and the client has no other key."""
    if isinstance(state, PrivateFeedState) and key_used == current_key:
        return MoltStreetError(
            "The API key of this feed was revoked; set an active key on the client.", code="api_key_revoked"
        )
    return None


class _StreamBase:
    def __init__(
        self,
        base_url: str,
        state: MarketFeedState | PrivateFeedState,
        *,
        timeout: float | None,
        max_reconnects: int | None,
        open_timeout: float,
        on_reconnect: Callable[[Any], None] | None,
    ):
        self._ws_base = ws_base_url(base_url)
        self._state = state
        self.timeout = timeout
        self.max_reconnects = max_reconnects
        self.open_timeout = open_timeout
        self.on_reconnect = on_reconnect
        self.reconnects = 0  # successful reconnections so far
        self.connections = 0  # successful connections so far (the first included)
        self._failures = 0  # consecutive failures to connect or to keep a connection
        self._pause = 0.0
        self._closed = False
        self._key_used: str | None = None
        self._waiting: deque[Any] = deque()  # the messages of the last batched frame not read yet

    @property
    def closed(self) -> bool:
        return self._closed

    def _url(self) -> str:
        return self._ws_base + self._state.path()

    def _headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key and isinstance(self._state, PrivateFeedState) else {}

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self.max_reconnects is not None and self._failures > self.max_reconnects:
            raise TransportError(
                f"{self._url()}: feed lost and {self._failures} connection attempts failed ({exc})",
                cause=exc,
                attempts=self._failures,
                method="GET",
                url=self._url(),
            ) from exc

    def _delay(self) -> float:
        return max(self._pause, _backoff(self._failures))

    def _lost(self, exc: BaseException) -> _Reconnect | BaseException:
        """What a lost connection means, the same for both streams: :class:`StreamClosed` if we closed it, the
        ``api_key_revoked`` error if the server closed it for a revoked key the client still holds, else a
        :class:`_Reconnect` (after the server's pause, if its close code asked for one)."""
        if self._closed:
            return StreamClosed()
        if _closed_for_revoked_key(exc) and (error := self._revoked()) is not None:
            return error
        return _Reconnect.after(exc, _close_pause(exc) if isinstance(exc, ConnectionClosed) else 0.0)

    def _read(self, raw: str | bytes) -> dict[str, Any] | _Reconnect | BaseException | None:
        """What a received frame means: the message to deliver, ``None`` to skip it (not JSON, or nothing for the
        caller), a :class:`_Reconnect` (a gap or a server error the feed state repairs by resuming), or the
        ``api_key_revoked`` error to raise."""
        try:
            frame = json.loads(raw)
        except (TypeError, ValueError):
            return None
        if isinstance(frame, list):  # a batched frame (batch_ms): its messages, one by one
            self._waiting.extend(frame)
            return self._read_waiting()
        return self._take(frame)

    def _read_waiting(self) -> dict[str, Any] | _Reconnect | BaseException | None:
        """What the next messages of the last batched frame mean (as :meth:`_read`), up to the first that is not
        skipped; ``None`` once they are all read."""
        while self._waiting:
            outcome = self._take(self._waiting.popleft())
            if outcome is not None:
                return outcome
        return None

    def _take(self, message: Any) -> dict[str, Any] | _Reconnect | BaseException | None:
        try:
            action = self._state.handle(message)
        except _Reconnect as why:
            return (self._revoked() if str(why) == "api_key_revoked" else None) or why
        except MoltStreetError as error:  # the server said reconnecting cannot help
            return error
        if action != DELIVER:
            return None
        self._failures = 0
        return message

    def _revoked(self) -> MoltStreetError | None:
        return _revoked(self._state, self._key_used, self._client.api_key)

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no message from the live feed in time")
        return remaining


class PrivateStreamMixin:
    """What both private streams add: the agent's seq and its account."""

    _state: PrivateFeedState

    @property
    def last_seq(self) -> int | None:
        """The agent's ``seq`` of the last message yielded (or of the snapshot); ``None`` before the first."""
        return self._state.last_seq

    @property
    def balance(self) -> Decimal | None:
        """The agent's balance (credits) as of :attr:`last_seq`; ``None`` before a snapshot."""
        return self._state.balances.get("balance")

    @property
    def locked_balance(self) -> Decimal | None:
        """Credits reserved by resting BUY orders as of :attr:`last_seq`; ``None`` before a snapshot."""
        return self._state.balances.get("locked_balance")

    @property
    def available_balance(self) -> Decimal | None:
        """``balance - locked_balance`` as of :attr:`last_seq`; ``None`` before a snapshot."""
        return self._state.balances.get("available_balance")

    @property
    def orders(self) -> list[Order]:
        """The agent's resting orders as of :attr:`last_seq`, newest first: the snapshot's and every ``order``
        message's since. Only known after a snapshot (a stream started with ``since=`` starts from the caller's
        own state)."""
        return self._state.orders()

    @property
    def positions(self) -> list[Position]:
        """The agent's positions holding contracts as of :attr:`last_seq` (the snapshot's and every ``position``
        message's since), by market id. Only known after a snapshot."""
        return self._state.positions()


class MarketStreamMixin:
    """What both market streams add: the seq and the book."""

    _state: MarketFeedState

    @property
    def last_seq(self) -> int | None:
        """The ``seq`` of the last message yielded (or of the snapshot); ``None`` before the first."""
        return self._state.last_seq

    @property
    def book(self) -> OrderBook:
        """The market's book as of :attr:`last_seq`, from the snapshot and every ``book`` message since. Only
        known after a snapshot (a stream started with ``since=`` starts from the caller's own state)."""
        return self._state.book()


class Stream(_StreamBase):
    """A live feed read with the sync websockets client; iterate it, :meth:`recv` with a timeout, :meth:`close`."""

    def __init__(self, client: Client, state: MarketFeedState | PrivateFeedState, **options: Any):
        super().__init__(client.base_url, state, **options)
        self._client = client
        self._connection: Any = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set by close(): ends a backoff wait at once

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return self.recv()
        except StreamClosed:
            raise StopIteration from None

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop: close the connection; iteration ends (``recv`` raises :class:`StreamClosed`). Thread-safe."""
        self._closed = True
        self._stopped.set()
        with self._lock:
            connection = self._connection
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def open(self, timeout: float | None = None) -> Stream:
        """Connect now rather than on the first ``recv``. Waits at most ``timeout`` seconds (default: the stream's);
        returns the stream. Raises ``TimeoutError``, :class:`TransportError`, :class:`StreamClosed`."""
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        while self._connection is None:
            if self._closed:
                raise StreamClosed()
            self._connect(deadline)
        return self

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message (a dict, see the module's doc). Waits at most ``timeout`` seconds (default: the stream's
        ``timeout``; ``None`` waits for ever), reconnecting as needed, then raises ``TimeoutError``. Raises
        :class:`StreamClosed` once closed, :class:`TransportError` when reconnecting keeps failing."""
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            if self._closed:
                raise StreamClosed()
            if self._connection is None:
                self._connect(deadline)
                continue
            if self._waiting:
                outcome = self._read_waiting()
            else:
                try:
                    raw = self._recv_raw(self._remaining(deadline))
                except TimeoutError:
                    raise TimeoutError(f"no message from {self._url()} within {wait} s") from None
                except (ConnectionClosed, OSError) as exc:
                    outcome = self._lost(exc)
                else:
                    outcome = self._read(raw)
            if isinstance(outcome, _Reconnect):
                self._drop(outcome.cause, outcome.pause)
            elif isinstance(outcome, BaseException):
                if not isinstance(outcome, StreamClosed):
                    self.close()
                raise outcome from None
            elif outcome is not None:
                return outcome

    def _recv_raw(self, timeout: float | None) -> str | bytes:
        """One frame of the current connection (tests replace this to lose messages on purpose)."""
        return self._connection.recv(timeout=timeout)

    def _drop(self, why: BaseException, pause: float) -> None:
        self._waiting.clear()  # the next connection resumes after the last seq yielded
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
        self._pause = pause
        self._failed(why)

    def _connect(self, deadline: float | None) -> None:
        from websockets.sync.client import connect

        delay = self._delay()
        if delay:
            remaining = self._remaining(deadline)
            if self._stopped.wait(delay if remaining is None else min(delay, remaining)):
                return
            self._remaining(deadline)
        self._pause = 0.0
        api_key = self._client.api_key
        open_timeout = self.open_timeout
        if deadline is not None:
            open_timeout = max(0.1, min(open_timeout, deadline - time.monotonic()))
        try:
            # Entered as a context manager (websockets 17 warns otherwise); closed by _drop() or close().
            connection = connect(
                self._url(),
                additional_headers=self._headers(api_key),
                user_agent_header=USER_AGENT,
                open_timeout=open_timeout,
                close_timeout=2,
                max_size=MAX_MESSAGE_BYTES,
                proxy=None,
            ).__enter__()
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            if _refused_status(exc) is not None and self.connections == 0:
                self._explain_refusal()
            self._failed(exc)
            return
        with self._lock:
            if self._closed:
                connection.close()
                return
            self._connection = connection
        self._key_used = api_key
        self.connections += 1
        if self.connections > 1:
            self.reconnects += 1
            if self.on_reconnect is not None:
                self.on_reconnect(self)

    def _explain_refusal(self) -> None:
        """A refused first handshake: raise the HTTP API's error if it has one (no such market, a bad key)."""
        if isinstance(self._state, MarketFeedState):
            self._client.market(self._state.market_id)
        else:
            self._client.me()


class MarketStream(MarketStreamMixin, Stream):
    """One market's public feed (sync): see the module's doc."""


class PrivateStream(PrivateStreamMixin, Stream):
    """The agent's private feed (sync): see the module's doc."""


class AsyncStream(_StreamBase):
    """A live feed read with the asyncio websockets client; ``async for``, :meth:`recv`, :meth:`close`."""

    def __init__(self, client: AsyncClient, state: MarketFeedState | PrivateFeedState, **options: Any):
        super().__init__(client.base_url, state, **options)
        self._client = client
        self._connection: Any = None

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.recv()
        except StreamClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: close the connection; iteration ends (``recv`` raises :class:`StreamClosed`)."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def open(self, timeout: float | None = None) -> AsyncStream:
        """Connect now rather than on the first ``recv``; as :meth:`Stream.open`."""
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        while self._connection is None:
            if self._closed:
                raise StreamClosed()
            await self._connect(deadline)
        return self

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; as :meth:`Stream.recv`."""
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            if self._closed:
                raise StreamClosed()
            if self._connection is None:
                await self._connect(deadline)
                continue
            if self._waiting:
                outcome = self._read_waiting()
            else:
                try:
                    raw = await asyncio.wait_for(self._recv_raw(), self._remaining(deadline))
                except TimeoutError:
                    raise TimeoutError(f"no message from {self._url()} within {wait} s") from None
                except (ConnectionClosed, OSError) as exc:
                    outcome = self._lost(exc)
                else:
                    outcome = self._read(raw)
            if isinstance(outcome, _Reconnect):
                await self._drop(outcome.cause, outcome.pause)
            elif isinstance(outcome, BaseException):
                if not isinstance(outcome, StreamClosed):
                    await self.close()
                raise outcome from None
            elif outcome is not None:
                return outcome

    async def _recv_raw(self) -> str | bytes:
        return await self._connection.recv()

    async def _drop(self, why: BaseException, pause: float) -> None:
        self._waiting.clear()  # the next connection resumes after the last seq yielded
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
        self._pause = pause
        self._failed(why)

    async def _connect(self, deadline: float | None) -> None:
        from websockets.asyncio.client import connect

        delay = self._delay()
        if delay:
            remaining = self._remaining(deadline)
            await asyncio.sleep(delay if remaining is None else min(delay, remaining))
            self._remaining(deadline)
        self._pause = 0.0
        api_key = self._client.api_key
        open_timeout = self.open_timeout
        if deadline is not None:
            open_timeout = max(0.1, min(open_timeout, deadline - time.monotonic()))
        try:
            connection = await connect(
                self._url(),
                additional_headers=self._headers(api_key),
                user_agent_header=USER_AGENT,
                open_timeout=open_timeout,
                close_timeout=2,
                max_size=MAX_MESSAGE_BYTES,
                proxy=None,
            )
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            if _refused_status(exc) is not None and self.connections == 0:
                await self._explain_refusal()
            self._failed(exc)
            return
        if self._closed:
            await connection.close()
            return
        self._connection = connection
        self._key_used = api_key
        self.connections += 1
        if self.connections > 1:
            self.reconnects += 1
            if self.on_reconnect is not None:
                result = self.on_reconnect(self)
                if asyncio.iscoroutine(result):
                    await result

    async def _explain_refusal(self) -> None:
        if isinstance(self._state, MarketFeedState):
            await self._client.market(self._state.market_id)
        else:
            await self._client.me()


class AsyncMarketStream(MarketStreamMixin, AsyncStream):
    """One market's public feed (asyncio): see the module's doc."""


class AsyncPrivateStream(PrivateStreamMixin, AsyncStream):
    """The agent's private feed (asyncio): see the module's doc."""


__all__ = [
    "AsyncMarketStream",
    "AsyncPrivateStream",
    "MarketFeedState",
    "MarketStream",
    "PrivateFeedState",
    "PrivateStream",
    "StreamClosed",
]
