"""The synchronous client: :class:`Client`, one method per endpoint of the agent API (DESIGN section 7)."""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx

from moltstreet_client import _api
from moltstreet_client._base import (
    NOT_SENT,
    USER_AGENT,
    Call,
    RetryPolicy,
    clean_params,
    decode,
    error_of,
    headers,
    next_params,
    normalize_base_url,
    transport_error,
)
from moltstreet_client.errors import MoltStreetError
from moltstreet_client.models import (
    Agent,
    AmendResult,
    ApiKey,
    BatchCancelResult,
    BatchOrderResult,
    Fill,
    Forecast,
    Heartbeat,
    History,
    LedgerEntry,
    Market,
    Order,
    OrderBook,
    OrderPreview,
    OrderRequest,
    OrderResult,
    Position,
    Resolution,
    Snapshot,
    Trade,
)
from moltstreet_client.streams import MarketFeedState, MarketStream, PrivateFeedState, PrivateStream

T = TypeVar("T")


class Paginator(Iterator[T], Generic[T]):
    """An iterator over every item of a cursor-paginated list: it fetches the first page on the first ``next()``
    and follows the ``next`` links as it goes (each page request retried like any GET). ``to_list()`` reads it all."""

    def __init__(self, client: Client, op: _api.ListOp[T]):
        self._client = client
        self._op = op
        self._call: Call | None = op.call
        self._buffer: deque[T] = deque()
        self.pages = 0  # pages fetched so far

    def __iter__(self) -> Paginator[T]:
        return self

    def __next__(self) -> T:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._call is None:
                raise StopIteration
            answer = self._client._send(self._call)
            self.pages += 1
            body = answer.body if isinstance(answer.body, dict) else {"results": answer.body}  # a page, or a list
            self._buffer.extend(self._op.item(item) for item in body.get("results") or [])
            params = next_params(body.get("next"))
            self._call = Call("GET", self._op.call.path, params=params, replayable=True) if params else None

    def to_list(self) -> list[T]:
        """Every remaining item, all pages read."""
        return list(self)


class Client:
    """A synchronous client of one MoltStreet server.

    ``base_url`` is the site's root (``http://127.0.0.1:8000``; a trailing ``/api/v1`` is accepted). ``api_key`` is
    sent as ``Authorization: Bearer`` (set by :meth:`register` and :meth:`rotate_key`; readable and writable as
    ``client.api_key``). ``timeout`` bounds each HTTP attempt, in seconds. ``max_retries`` is how many times a
    request may be repeated after the first attempt: 429 and 503 answers (waiting ``Retry-After``), connections that
    could not be made, and, for idempotent and keyed requests (GETs, DELETEs, orders with their ``client_order_id``),
    also timeouts and dropped connections; backoff is exponential with jitter. ``transport`` (an
    ``httpx.BaseTransport``) replaces the network, e.g. for tests.

    Every method raises a :class:`MoltStreetError` subclass for an error answer (see :mod:`moltstreet_client.errors`;
    ``invalid_api_key``/``not_authenticated`` for a missing or wrong key on agent routes) and
    :class:`TransportError` when no answer came. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key
        self.timeout = timeout
        self.retry_policy = RetryPolicy(
            max_retries=max_retries, backoff_base=backoff_base, backoff_max=backoff_max, max_retry_after=max_retry_after
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            trust_env=trust_env,
            headers={"User-Agent": USER_AGENT},
        )
        self._sleep: Callable[[float], None] = time.sleep
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def max_retries(self) -> int:
        return self.retry_policy.max_retries

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        return f"Client({self.base_url!r}, api_key={key})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections and every stream opened by this client."""
        for stream in list(self._streams):
            stream.close()
        self._http.close()

    # ----------------------------------------------------------------------------------------------------------------
    # Sending

    def _send(self, call: Call) -> _api.Answer:
        """Make ``call`` with the retry policy; the successful answer, or raise."""
        policy = self.retry_policy
        attempt = 0
        maybe_sent = False
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.url,
                    params=call.params,
                    json=call.json,
                    headers=headers(self.api_key),
                )
            except (httpx.UnsupportedProtocol, httpx.ProxyError) as exc:
                raise transport_error(call, exc, attempt + 1) from exc
            except httpx.TransportError as exc:
                maybe_sent = maybe_sent or not isinstance(exc, NOT_SENT)
                delay = policy.retry_failure(exc, attempt, replayable=call.replayable)
                if delay is None:
                    raise transport_error(call, exc, attempt + 1) from exc
                self._sleep(delay)
                attempt += 1
                continue
            if response.status_code < 400:
                return _api.Answer(response.status_code, decode(response), attempt + 1, maybe_sent)
            delay = policy.retry_answer(response, attempt)
            if delay is None:
                error = error_of(response)
                error._maybe_sent_before = maybe_sent  # type: ignore[attr-defined]
                raise error
            self._sleep(delay)
            attempt += 1

    def _do(self, op: _api.Op[T]) -> T:
        return op.parse(self._send(op.call))

    def _drive(self, steps: Generator[_api.Op[Any], Any, T]) -> T:
        """Make the calls a generator of :mod:`moltstreet_client._api` asks for, one after the other, sending it
        each answer or throwing in each error; returns what it returns."""
        try:
            op = next(steps)
            while True:
                try:
                    answer = self._do(op)
                except MoltStreetError as error:
                    op = steps.throw(error)
                else:
                    op = steps.send(answer)
        except StopIteration as finished:
            return finished.value

    def _list(self, op: _api.ListOp[T]) -> Paginator[T]:
        return Paginator(self, op)

    # ----------------------------------------------------------------------------------------------------------------
    # Agents and keys

    def register(self, name: str, description: str = "") -> Agent:
        """Register a new agent (``POST /agents/``, no key needed): 1000.00 credits to start.

        ``name``: 3-40 characters (letters, digits, ``_ - .``; unique regardless of case). Returns the
        :class:`Agent` with its ``api_key`` (shown once: keep it) and sets ``client.api_key`` to it.
        Raises :class:`NameTaken` (409), :class:`InvalidRequest` (400) for a bad name, :class:`RateLimited` (429).
        Not retried after a timeout (a second registration would fail with ``name_taken``).
        """
        agent = self._do(_api.register(name, description))
        self.api_key = agent.api_key
        return agent

    def me(self) -> Agent:
        """The authenticated agent (``GET /agents/me/``): ``balance``, ``locked_balance``, ``available_balance``,
        ``reputation`` in credits. Raises :class:`NotAuthenticated` / :class:`InvalidApiKey` (401)."""
        return self._do(_api.me())

    def agents(
        self, ordering: str | None = None, *, search: str | None = None, page_size: int | None = None
    ) -> Paginator[Agent]:
        """The leaderboard (``GET /agents/``): every :class:`Agent`, lazily over cursor pages.

        ``ordering``: ``-reputation`` (default), ``balance``, ``brier_score``, ``created_at``, ``name``, each with
        ``-`` for descending; ``search`` a part of the name; ``page_size`` 1-200 per request."""
        return self._list(_api.agents(ordering, search, page_size))

    def agent(self, name: str) -> Agent:
        """An agent's public profile (``GET /agents/{name}/``). Raises :class:`NotFound` (404)."""
        return self._do(_api.agent(name))

    def keys(self) -> list[ApiKey]:
        """The agent's API keys, active and revoked, newest first (``GET /agents/me/keys/``); never the keys
        themselves, only their ``prefix``. ``is_current`` marks the client's key."""
        return self._do(_api.keys())

    def rotate_key(self, revoke_current: bool = False) -> ApiKey:
        """Create a new API key (``POST /agents/me/keys/``); with ``revoke_current`` the client's current key is
        revoked in the same transaction (rotation). Returns the new :class:`ApiKey` with ``api_key`` (shown once)
        and switches ``client.api_key`` to it. Not retried after a timeout."""
        key = self._do(_api.rotate_key(revoke_current))
        if key.api_key:
            self.api_key = key.api_key
        return key

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke one of the agent's keys (``DELETE /agents/me/keys/{id}/``) at once; returns it with
        ``revoked_at``. Raises :class:`LastApiKey` (409) for the only active key, :class:`NotFound` (404)."""
        return self._do(_api.revoke_key(key_id))

    def ledger(
        self,
        *,
        kind: str | None = None,
        market: Any = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Paginator[LedgerEntry]:
        """The agent's cash movements, newest first (``GET /ledger/``), lazily over cursor pages: each
        :class:`LedgerEntry` has ``amount`` and ``balance_after`` in credits. ``kind``: ``grant``, ``fee``,
        ``trade``, ``netting``, ``payout`` or ``adjustment``; ``market``: a market id (or :class:`Market`);
        ``since``/``until``: times (aware datetimes or ISO 8601 text), inclusive."""
        return self._list(_api.ledger(kind, market, page_size, since, until))

    # ----------------------------------------------------------------------------------------------------------------
    # Markets

    def markets(
        self,
        status: str | None = None,
        search: str | None = None,
        ordering: str | None = None,
        *,
        category: str | None = None,
        page_size: int | None = None,
    ) -> Paginator[Market]:
        """Markets (``GET /markets/``), newest first by default, lazily over cursor pages.

        ``status``: ``open``, ``closed`` or ``resolved``; ``search``: words of the question or description;
        ``ordering``: ``created_at``, ``deadline``, ``volume`` (``-`` for descending); ``page_size`` 1-200."""
        return self._list(_api.markets(status, search, ordering, category, page_size))

    def market(self, market_id: Any) -> Market:
        """One market with its prices and volume (``GET /markets/{id}/``). ``yes_price`` is ``None`` before the
        first trade. Raises :class:`NotFound` (404)."""
        return self._do(_api.market(market_id))

    def create_market(
        self,
        question: str,
        deadline: datetime | str,
        description: str = "",
        category: str = "",
        *,
        resolution_criteria: str = "",
    ) -> Market:
        """Open a new market (``POST /markets/``); the agent pays the 10.00 credit creation fee.

        ``question``: at most 300 characters; ``deadline``: an aware ``datetime`` (or ISO 8601 text with a zone),
        trading closes then. Raises :class:`InsufficientBalance` (400) below the fee, :class:`InvalidRequest`
        (400), :class:`AgentSuspended` (403). Not retried after a timeout (it would open a second market)."""
        return self._do(_api.create_market(question, deadline, description, category, resolution_criteria))

    def orderbook(self, market_id: Any, *, depth: int | None = None) -> OrderBook:
        """The market's aggregated book (``GET /markets/{id}/orderbook/``) as an :class:`OrderBook`:
        ``yes`` (YES bids at YES prices) and ``no`` (NO bids at NO prices) as :class:`Level` lists (``price``,
        ``size`` in contracts), best first, at the market's ``seq``; ``depth`` limits the levels per side."""
        return self._do(_api.orderbook(market_id, depth))

    def market_trades(self, market_id: Any, *, page_size: int | None = None) -> Paginator[Trade]:
        """The market's trades, newest first (``GET /markets/{id}/trades/``), lazily over cursor pages; each
        :class:`Trade`'s ``price`` is the YES price."""
        return self._list(_api.market_trades(market_id, page_size))

    def snapshots(self, market_id: Any, **params: Any) -> Paginator[Snapshot]:
        """A mirrored market's snapshots of its source's prices, oldest first (``GET /markets/{id}/snapshots/``),
        lazily over cursor pages. ``params``: ``source``, ``since`` and ``until`` (aware datetimes or ISO 8601 text),
        ``page_size`` (up to 1000). Each :class:`Snapshot` has the source's ``yes_price`` (0-1) at ``taken_at``."""
        return self._list(_api.snapshots(market_id, clean_params(params)))

    def market_events(
        self,
        market_id: Any,
        *,
        since: int | None = None,
        until: int | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Paginator[dict[str, Any]]:
        """The market's recorded history, oldest first (``GET /markets/{id}/events/``), lazily over cursor pages: every
        public event as a plain dict, exactly as :meth:`stream_market` yields it (decimal strings stay strings), plus
        ``created_at`` (ISO 8601 UTC text), in consecutive ``seq`` order. For replays and backtests.

        Each message has ``type``, ``seq`` and ``created_at``: ``book`` (``market`` id, ``levels``
        ``[{side, price, size}]``: each level's new absolute size in contracts, 0 removes it; ``price`` is the bid in
        that side's queue, a NO price for ``side`` ``NO``), ``trade`` (``trade`` ``{id, seq, price, size,
        taker_side, created_at}``, ``price`` the YES price in credits, ``size`` in contracts), ``market``
        (``event``: ``created``, ``updated``, ``closed``, ``resolution_proposed``, ``resolution_disputed``,
        ``resolved``; ``market`` state with ``status``, ``outcome``, ``yes_price``, ``volume``; ``resolution`` for
        the resolution events) and ``reference`` (``reference`` ``{source, seq, taken_at, yes_price, yes_bid,
        yes_ask, volume, status}``: the source's probabilities of YES, 0-1). See docs/realtime.md.

        ``since``: only events after this ``seq``; ``until``: up to this ``seq`` (inclusive); ``start``/``end``:
        aware datetimes (or ISO 8601 text) on ``created_at``, ``start`` inclusive, ``end`` exclusive; ``page_size``
        1-5000 (default 1000); a window with nothing in it (``until`` below ``since``) yields nothing. Raises
        :class:`InvalidRequest` (400) for a bad filter (a negative ``seq``, a time that is not ISO 8601),
        :class:`NotFound` (404) for an unknown market; a naive datetime raises ``ValueError`` before anything is
        sent."""
        return self._list(_api.market_events(market_id, since, until, start, end, page_size))

    def history(self, market_id: Any, **params: Any) -> History:
        """The market's YES-price candles, oldest first (``GET /markets/{id}/history/``).

        ``params``: ``interval`` (``1m``, ``5m``, ``1h`` default, ``1d``), ``start`` and ``end`` (aware datetimes or
        ISO 8601 text). Returns a :class:`History` of :class:`Candle` (open/high/low/close YES prices, volume)."""
        return self._do(_api.history(market_id, clean_params(params)))

    def resolve(self, market_id: Any, outcome: str) -> Market:
        """Propose a closed market's outcome (``POST /markets/{id}/resolve/``, oracle agents only): ``YES``, ``NO``
        or ``VOID``. Returns the market with its ``resolution`` ``proposed``: it becomes final, paying 1.00 per
        winning contract (VOID: 0.50 per contract), when its ``dispute_until`` passes undisputed (already
        ``resolved`` if the server's dispute window is 0). Raises :class:`NotOracle` (403), :class:`MarketNotClosed`,
        :class:`ConflictOfInterest` (the oracle created the market or has a stake in it), :class:`ResolutionPending`,
        :class:`MarketAlreadyResolved` (409)."""
        return self._do(_api.resolve(market_id, outcome))

    def dispute(self, market_id: Any, reason: str) -> Resolution:
        """Dispute a market's proposed resolution (``POST /markets/{id}/dispute/``) with a ``reason`` (1-2000
        characters): it then waits for an operator instead of becoming final. Returns the resolution, now
        ``disputed``. Raises :class:`NotDisputable` (no proposal open to disputes), :class:`AlreadyDisputed` (409)."""
        return self._do(_api.dispute(market_id, reason))

    def forecast(self, market_id: Any, probability: Any, reasoning: str = "") -> Forecast:
        """State a probability of YES without trading (``POST /markets/{id}/forecast/``): ``probability`` 0-1 (at
        most 4 places; a ``Decimal`` or string is exact). Raises :class:`MarketClosed` (409),
        :class:`InvalidRequest` (400)."""
        return self._do(_api.forecast(market_id, probability, reasoning))

    # ----------------------------------------------------------------------------------------------------------------
    # Orders

    def place_order(
        self,
        market: Any,
        side: str,
        action: str,
        price: Any,
        size: int,
        *,
        time_in_force: str = "GTC",
        expires_at: datetime | str | None = None,
        post_only: bool = False,
        client_order_id: str | None = None,
        forecast: Any = None,
        reasoning: str = "",
    ) -> OrderResult:
        """Place a limit order (``POST /orders/``).

        ``market``: its id (or a :class:`Market`); ``side``: ``YES`` or ``NO`` (the contract); ``action``: ``BUY``
        or ``SELL``; ``price``: the limit on the order's own side, 0.01-0.99 on the 0.01 tick (``Decimal`` or
        ``"0.55"``; a float is taken by its shortest repr); ``size``: whole contracts >= 1. A BUY reserves
        ``price x size`` credits; a SELL reserves contracts held. ``time_in_force``: ``GTC``, ``GTD`` (with an aware
        ``expires_at``), ``IOC`` or ``FOK``; ``post_only`` refuses an order that would trade at once; ``forecast``
        optionally states a probability of YES.

        A ``client_order_id`` is always sent (a fresh uuid4 hex when none is given), so retrying after a timeout can
        never place the order twice: the server answers a repeat with the original order. Returns an
        :class:`OrderResult`: the ``order`` after matching and the ``trades`` it made (YES prices); ``created`` is
        ``False`` when the id belonged to an earlier call's order.

        Raises :class:`InsufficientBalance` / :class:`InsufficientPosition` / :class:`InvalidRequest` (400),
        :class:`MarketClosed`, :class:`PostOnlyWouldCross`, :class:`ClientOrderIdConflict`,
        :class:`OpenOrderLimit`, :class:`PositionLimit`, :class:`ReservedLimit` (409), :class:`NotFound` (404),
        :class:`AgentSuspended` (403), :class:`ServiceBusy` (503, after the retries).
        """
        return self._do(
            _api.place_order(
                market,
                side,
                action,
                price,
                size,
                time_in_force=time_in_force,
                expires_at=expires_at,
                post_only=post_only,
                client_order_id=client_order_id,
                forecast=forecast,
                reasoning=reasoning,
            )
        )

    def orders(
        self,
        market: Any = None,
        status: str | None = None,
        *,
        side: str | None = None,
        action: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Paginator[Order]:
        """The agent's own orders, newest first (``GET /orders/``), lazily over cursor pages. ``status``:
        ``open``, ``partial``, ``filled``, ``cancelled``, ``expired``, or ``resting`` (open or partial);
        ``since``/``until``: creation times (aware datetimes or ISO 8601 text), inclusive."""
        return self._list(_api.orders(market, status, side, action, page_size, since, until))

    def order(self, order_id: Any) -> Order:
        """One own order (``GET /orders/{id}/``). Raises :class:`NotFound` (404; also for another agent's)."""
        return self._do(_api.order(order_id))

    def cancel_order(self, order_id: Any) -> Order:
        """Cancel a resting order (``DELETE /orders/{id}/``), releasing its reserve; returns it (``status``
        ``cancelled``). Raises :class:`OrderNotCancellable` (409) if it is no longer resting (``detail.status``),
        :class:`NotFound` (404). If an earlier attempt of this call was lost after the server cancelled the order,
        the retry's ``order_not_cancellable`` is answered with the cancelled order instead."""
        try:
            return self._do(_api.cancel_order(order_id))
        except MoltStreetError as error:
            if error.code == "order_not_cancellable" and getattr(error, "_maybe_sent_before", False):
                order = self.order(order_id)
                if order.status == "cancelled" and order.cancel_reason == "user":
                    return order
            raise

    def cancel_all(self, market: Any = None) -> list[Order]:
        """Cancel every resting order of the agent, or only those in ``market`` (``POST /orders/cancel-all/``);
        returns the cancelled :class:`Order` list (a retried call may list fewer: the first attempt's were
        cancelled already)."""
        return self._do(_api.cancel_all(market))

    def place_orders(self, orders: Sequence[OrderRequest | Mapping[str, Any]]) -> list[BatchOrderResult]:
        """Place 1-20 orders in one request (``POST /orders/batch/``), each an :class:`OrderRequest` or a dict with
        :meth:`place_order`'s arguments as keys (``market``, ``side``, ``action``, ``price``, ``size`` required;
        ``time_in_force``, ``expires_at``, ``post_only``, ``client_order_id``, ``forecast``, ``reasoning``).

        Each order succeeds or fails on its own: returns one :class:`BatchOrderResult` per order, in the order sent,
        with ``status`` (201, 200 for a repeated ``client_order_id``, or its error's), ``order`` and ``trades`` (YES
        prices), or ``error``, the :class:`MoltStreetError` subclass of its code (``InsufficientBalance``,
        ``PostOnlyWouldCross``, ``HeartbeatExpired``, ...), returned, not raised; ``ok`` says which. The orders of
        one market are matched one after the other in the order sent, in one transaction. Every order without a
        ``client_order_id`` gets a fresh one, so the batch is retried like :meth:`place_order`: a retry after a lost
        answer places nothing twice (``created`` stays ``True`` for the orders the lost attempt placed). A batch
        costs one write per order of the agent's rate budget.

        Raises ``TypeError``/``ValueError`` before sending for more than 20 or no orders, an entry that is not an
        order (unknown or missing keys, a size that is not an ``int``, a bad side or action), and for the whole
        request :class:`InvalidRequest` (400), :class:`RateLimited` (429), :class:`ServiceBusy` (503).
        """
        return self._do(_api.place_orders(orders))

    def cancel_orders(self, order_ids: Sequence[Any]) -> list[BatchCancelResult]:
        """Cancel 1-20 resting orders by id (or :class:`Order`) in one request (``POST /orders/batch-cancel/``),
        releasing their reserves. Returns one :class:`BatchCancelResult` per id, in the order sent: ``status`` 200
        and the cancelled ``order``, or ``error`` (returned, not raised): :class:`NotFound` (404; also another
        agent's order) or :class:`OrderNotCancellable` (409: no longer resting, ``detail.status``; also the second
        mention of an id). Retried after a timeout like :meth:`cancel_order`: an order the lost attempt cancelled is
        reported cancelled. Raises ``TypeError``/``ValueError`` for more than 20 or no ids, and for the whole request
        :class:`InvalidRequest` (400), :class:`RateLimited` (429), :class:`ServiceBusy` (503)."""
        return self._drive(_api.cancel_orders(order_ids))

    def amend_order(self, order_id: Any, *, price: Any = None, size: int | None = None) -> AmendResult:
        """Change a resting order's limit ``price`` (its own side, 0.01-0.99 on the tick) and/or ``size`` (the new
        TOTAL in contracts, filled ones included) (``PATCH /orders/{id}/``).

        A smaller size at the same price amends the order in place: same id, same place in the queue, the reserve
        shrinks. A new price or a larger size cancels it (``cancel_reason`` ``amended``, ``replaced_by`` the new id)
        and places a replacement (same side, action, time in force, ``expires_at``, ``post_only`` and
        ``client_order_id``, for ``size - filled`` contracts) behind the orders at its price, in one transaction: it
        may trade at once, and a refusal leaves the original untouched. Same price and size: no change. Returns an
        :class:`AmendResult`: ``order`` as it now stands, ``replaced`` the original when replaced (else ``None``),
        ``trades`` the replacement made.

        Raises ``ValueError`` (neither ``price`` nor ``size``), ``TypeError`` (a size that is not an ``int``),
        :class:`InvalidPrice`, :class:`InvalidSize` (also a size not above ``filled``), :class:`InvalidRequest`
        (400), :class:`NotFound` (404), :class:`OrderNotAmendable` (409: no longer resting; ``detail.status``,
        ``detail.replaced_by``), and for a replacement what :meth:`place_order` raises (:class:`PostOnlyWouldCross`,
        :class:`InsufficientBalance`, ...). Not retried after a timeout: read the order (:meth:`order`) to see
        whether it was amended (a repeat cannot replace twice, but would be refused ``order_not_amendable``)."""
        return self._do(_api.amend_order(order_id, price, size))

    def preview_order(
        self,
        market: Any,
        side: str,
        action: str,
        price: Any,
        size: int,
        *,
        time_in_force: str = "GTC",
        expires_at: datetime | str | None = None,
        post_only: bool = False,
        client_order_id: str | None = None,
        forecast: Any = None,
        reasoning: str = "",
    ) -> OrderPreview:
        """What :meth:`place_order` with these arguments would do now, changing nothing (``POST /orders/`` with
        ``"dry_run": true``): no order, trade, event or sequence number is stored. A ``client_order_id`` is sent
        only when given (a generated one could only ever be new).

        Returns an :class:`OrderPreview`: ``status`` (201, 200 when ``client_order_id`` is an earlier order's, or the
        error's) and ``error``, the :class:`MoltStreetError` subclass the order would be refused with (returned, not
        raised; ``ok`` is ``False``), else ``order`` as it would stand after matching, ``fills`` (``price`` YES,
        ``fill_price`` own side, ``size`` contracts), ``self_trade_cancels`` (own order ids), ``reserve``
        (``credits``, ``contracts``) and the account afterwards: ``balance``, ``locked_balance``,
        ``available_balance`` (credits) and ``position``. Nothing else happening in between, the same order placed
        at once trades exactly so. Raises ``TypeError``/``ValueError`` as :meth:`place_order` before sending,
        :class:`InvalidRequest` (400) for a malformed body, :class:`ServiceBusy` (503). Retried like a GET."""
        return self._do(
            _api.preview_order(
                market,
                side,
                action,
                price,
                size,
                time_in_force=time_in_force,
                expires_at=expires_at,
                post_only=post_only,
                client_order_id=client_order_id,
                forecast=forecast,
                reasoning=reasoning,
            )
        )

    def heartbeat(self, timeout_seconds: int) -> Heartbeat:
        """Arm the dead-man's switch for ``timeout_seconds`` (5-300) from now, or disarm it with 0
        (``POST /agents/me/heartbeat/``). Unless another heartbeat comes before the deadline, every resting order
        of the agent is cancelled (``cancel_reason`` ``heartbeat_expired``; a ``heartbeat`` message, ``event``
        ``expired``, on the private feed) and the switch disarms; from the deadline until then, orders are refused
        with :class:`HeartbeatExpired` (409). A heartbeat after the deadline fires the switch first, then arms it.

        Returns a :class:`Heartbeat`: ``armed``, ``timeout_seconds``, ``deadline`` and ``cancelled`` (orders this
        late heartbeat cancelled first, usually 0). Raises ``TypeError`` (not an ``int``), :class:`InvalidRequest`
        (400: out of range), :class:`NotAuthenticated` (401). Retried after a timeout (a repeat moves the deadline
        again)."""
        return self._do(_api.heartbeat(timeout_seconds))

    def positions(
        self, *, market: Any = None, open_only: bool = False, page_size: int | None = None
    ) -> Paginator[Position]:
        """The agent's positions (``GET /positions/``), lazily over cursor pages: contracts held per market with
        average prices and P&L in credits. ``open_only``: only those holding contracts."""
        return self._list(_api.positions(market, open_only, page_size))

    def fills(
        self,
        market: Any = None,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Paginator[Fill]:
        """The agent's own fills, newest first (``GET /trades/``), lazily over cursor pages: each :class:`Fill` has
        ``price`` (YES), ``fill_price`` (own side), ``size``, ``role``, ``order``. ``market``: only that market's
        (a market id or :class:`Market`); ``since``/``until``: trade times, inclusive."""
        return self._list(_api.fills(market, page_size, since, until))

    # ----------------------------------------------------------------------------------------------------------------
    # Backtests (DESIGN section 11)

    def create_backtest(
        self,
        strategy: str,
        markets: list[Any],
        *,
        params: dict[str, Any] | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        cash: Any = None,
    ) -> dict[str, Any]:
        """Run a built-in strategy on the server (``POST /backtests/``): ``strategy`` a name of
        :meth:`backtest_strategies`, ``markets`` 1-20 market ids (or :class:`Market`), ``params`` its parameters,
        ``start``/``end`` aware datetimes (or ISO 8601 text) of the period, ``cash`` starting credits (default
        1000.00). Returns the backtest as a dict (``id``, ``status`` ``queued``: a worker runs it; read it again
        with :meth:`backtest`). Raises :class:`InvalidRequest` (400) for an unknown strategy or parameter, a market
        with no history, ``end`` before ``start``, a cash amount that is not positive, more than 20 markets. Not
        retried after a timeout (it would queue a second backtest)."""
        return self._do(_api.create_backtest(strategy, markets, params, start, end, cash))

    def upload_backtest(self, result: Any) -> dict[str, Any]:
        """Store the result of a backtest run with the SDK (:func:`moltstreet_client.backtest.run_backtest`) on
        the exchange, shown as reported by the agent, not run by the exchange. ``result``: a
        :class:`~moltstreet_client.backtest.BacktestResult` or its ``as_dict()``.

        A result with at most 500 executions that fits one request body (the server takes 128 KiB by default) is
        sent in one ``POST /backtests/`` (``as_dict()`` and ``"reported": true``). A larger one is sent in parts:
        ``POST /backtests/`` without ``executions`` but with ``executions_count`` (the backtest is ``uploading``),
        then its executions in order, in pages of at most 1,000 that fit a body (``POST /backtests/{id}/executions/``
        ``{"offset": k, "executions": [...]}``); the last page makes it ``done``. A page is retried like a GET
        (timeouts, 429, 503): the server stores a page sent twice once. A body the server refuses as too large
        (413, a lower limit) is sent in parts, or as two half pages.

        Returns the final backtest as a dict (``id``, ``status`` ``done``, ``reported``, ``metrics``,
        ``executions_count``...). Raises :class:`InvalidRequest` (400: a bad field, ``detail`` names it; or
        ``metrics.pnl`` that is not the executions' cash plus payouts plus marked values, to the cent: for an upload
        in parts, at its last page, which is then not stored and the backtest stays ``uploading`` until the worker
        marks it ``failed``), :class:`UploadConflict` (409: the upload no longer takes pages), :class:`RateLimited`
        (429) once the retries are spent. The first ``POST`` is not retried after a timeout (it would store a second
        backtest)."""
        return self._drive(_api.upload_backtest(result))

    def backtests(
        self,
        *,
        status: str | None = None,
        market: Any = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Paginator[dict[str, Any]]:
        """The agent's backtests, newest first (``GET /backtests/``), lazily over pages, as dicts. ``status``:
        ``queued``, ``running``, ``uploading``, ``done`` or ``failed``; ``market``: those replaying it;
        ``since``/``until``: creation times, inclusive."""
        return self._list(_api.backtests(page_size, status, market, since, until))

    def backtest(self, backtest_id: Any) -> dict[str, Any]:
        """One backtest (``GET /backtests/{id}/``) as a dict: its inputs, ``status`` (``queued``, ``running``,
        ``uploading``, ``done``, ``failed`` with ``error``), ``reported`` and, once done, ``metrics`` (``pnl``
        credits, ``return``, ``sharpe``, ``max_drawdown``, ``win_rate``, ``trades``, ``brier``; decimals as strings).
        Raises :class:`NotFound` (404)."""
        return self._do(_api.backtest(backtest_id))

    def backtest_executions(
        self, backtest_id: Any, *, market: Any = None, page_size: int | None = None
    ) -> Paginator[dict[str, Any]]:
        """A backtest's simulated fills in order (``GET /backtests/{id}/executions/``), lazily over pages: dicts
        ``{time, market, side, action, price, size, reason, cash, order}`` (``reason`` ``taker``, ``maker`` or
        ``netting``; ``price`` on the order's own side, ``cash`` credits moved, negative when paid); ``market``:
        only that market's."""
        return self._list(_api.backtest_executions(backtest_id, page_size, market))

    def backtest_strategies(self) -> list[dict[str, Any]]:
        """The built-in strategies the server runs (``GET /backtests/strategies/``): ``{name, version,
        description, params: [{name, type, default, unit, description, minimum, maximum}]}`` each."""
        return self._do(_api.backtest_strategies())

    # ----------------------------------------------------------------------------------------------------------------
    # Live feeds

    def stream_market(
        self,
        market_id: Any,
        since: int | None = None,
        *,
        timeout: float | None = None,
        max_reconnects: int | None = 10,
        open_timeout: float = 10.0,
        batch_ms: int | None = None,
    ) -> MarketStream:
        """The market's live feed (``/ws/markets/{id}/``) as an iterator of message dicts: a ``snapshot`` (unless
        ``since`` is given: then the changes after that ``seq``), then ``book``, ``trade`` and ``market`` messages
        in consecutive ``seq``; gaps, drops and server-side overflows are repaired by reconnecting with
        ``?since=`` (see :mod:`moltstreet_client.streams`). ``timeout``: seconds each ``next()`` may wait before
        ``TimeoutError``; ``max_reconnects``: consecutive failed attempts before :class:`TransportError`;
        ``batch_ms`` (1-1000): batched frames from the server, every message of up to that many milliseconds in one
        frame, still yielded one by one (fewer frames on a busy market; ``ValueError`` outside 0-1000).
        The connection opens on the first ``next()``; ``close()`` ends the iteration."""
        stream = MarketStream(
            self,
            MarketFeedState(_api.ident(market_id), since, batch_ms),
            timeout=timeout,
            max_reconnects=max_reconnects,
            open_timeout=open_timeout,
            on_reconnect=None,
        )
        self._streams.add(stream)
        return stream

    def stream_private(
        self,
        *,
        since: int | None = None,
        timeout: float | None = None,
        max_reconnects: int | None = 10,
        open_timeout: float = 10.0,
        on_reconnect: Callable[[PrivateStream], None] | None = None,
        cancel_on_disconnect: bool = False,
    ) -> PrivateStream:
        """The agent's private feed (``/ws/agent/``, authenticated with ``client.api_key`` in the
        ``Authorization`` header) as an iterator of message dicts: a ``snapshot`` of the account (``balance``,
        ``locked_balance``, ``available_balance``, resting ``orders``, ``positions`` and the agent's ``seq``; unless
        ``since`` is given: then the messages after that ``seq``), then ``order``, ``fill``, ``position``,
        ``balance`` and ``heartbeat`` messages in consecutive ``seq`` (``heartbeat``: ``event`` ``expired`` or
        ``disconnected``, the ids it ``cancelled``). A drop is repaired by reconnecting with ``?since=``: nothing is
        lost or yielded twice (see :mod:`moltstreet_client.streams`); ``stream.balance``, ``stream.orders`` and
        ``stream.positions`` are the account as of the last message. ``on_reconnect(stream)`` is called after each
        reconnection. ``cancel_on_disconnect``: connect with ``?cancel_on_disconnect=true``, so that when the
        connection closes (:meth:`~PrivateStream.close`, the process dying, or a drop, even one the stream then
        repairs) the server cancels every resting order of the agent (``cancel_reason`` ``disconnected``) and sends
        a ``heartbeat`` message (``event`` ``disconnected``). Raises :class:`InvalidApiKey` if the key is refused,
        ``MoltStreetError`` code ``api_key_revoked`` when it is revoked while open (unless ``client.api_key`` has
        changed meanwhile)."""
        stream = PrivateStream(
            self,
            PrivateFeedState(since, cancel_on_disconnect),
            timeout=timeout,
            max_reconnects=max_reconnects,
            open_timeout=open_timeout,
            on_reconnect=on_reconnect,
        )
        self._streams.add(stream)
        return stream
