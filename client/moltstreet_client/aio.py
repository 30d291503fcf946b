"""The asyncio client: :class:`AsyncClient` mirrors :class:`~moltstreet_client.Client` method for method, with
``await`` (list methods return async iterators: ``async for market in client.markets(): ...``)."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
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
from moltstreet_client.client import Client
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
from moltstreet_client.streams import AsyncMarketStream, AsyncPrivateStream, MarketFeedState, PrivateFeedState

T = TypeVar("T")


class AsyncPaginator(AsyncIterator[T], Generic[T]):
    """An async iterator over every item of a cursor-paginated list, following ``next`` links as it goes;
    ``await paginator.to_list()`` reads it all."""

    def __init__(self, client: AsyncClient, op: _api.ListOp[T]):
        self._client = client
        self._op = op
        self._call: Call | None = op.call
        self._buffer: deque[T] = deque()
        self.pages = 0

    def __aiter__(self) -> AsyncPaginator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._call is None:
                raise StopAsyncIteration
            answer = await self._client._send(self._call)
            self.pages += 1
            body = answer.body if isinstance(answer.body, dict) else {"results": answer.body}  # a page, or a list
            self._buffer.extend(self._op.item(item) for item in body.get("results") or [])
            params = next_params(body.get("next"))
            self._call = Call("GET", self._op.call.path, params=params, replayable=True) if params else None

    async def to_list(self) -> list[T]:
        """Every remaining item, all pages read."""
        return [item async for item in self]


class AsyncClient:
    """An asyncio client of one MoltStreet server: the same constructor, methods, retries and errors as
    :class:`~moltstreet_client.Client`, each method a coroutine (list methods and streams: async iterators).
    Use ``async with AsyncClient(...) as client`` or ``await client.close()``."""

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
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key
        self.timeout = timeout
        self.retry_policy = RetryPolicy(
            max_retries=max_retries, backoff_base=backoff_base, backoff_max=backoff_max, max_retry_after=max_retry_after
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            trust_env=trust_env,
            headers={"User-Agent": USER_AGENT},
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def max_retries(self) -> int:
        return self.retry_policy.max_retries

    def __repr__(self) -> str:
        key = "set" if self.api_key else "none"
        return f"AsyncClient({self.base_url!r}, api_key={key})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connections and every stream opened by this client."""
        for stream in list(self._streams):
            await stream.close()
        await self._http.aclose()

    async def _send(self, call: Call) -> _api.Answer:
        policy = self.retry_policy
        attempt = 0
        maybe_sent = False
        while True:
            try:
                response = await self._http.request(
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
                await self._sleep(delay)
                attempt += 1
                continue
            if response.status_code < 400:
                return _api.Answer(response.status_code, decode(response), attempt + 1, maybe_sent)
            delay = policy.retry_answer(response, attempt)
            if delay is None:
                error = error_of(response)
                error._maybe_sent_before = maybe_sent  # type: ignore[attr-defined]
                raise error
            await self._sleep(delay)
            attempt += 1

    async def _do(self, op: _api.Op[T]) -> T:
        return op.parse(await self._send(op.call))

    async def _drive(self, steps: Generator[_api.Op[Any], Any, T]) -> T:
        """:meth:`Client._drive`, awaiting each call."""
        try:
            op = next(steps)
            while True:
                try:
                    answer = await self._do(op)
                except MoltStreetError as error:
                    op = steps.throw(error)
                else:
                    op = steps.send(answer)
        except StopIteration as finished:
            return finished.value

    def _list(self, op: _api.ListOp[T]) -> AsyncPaginator[T]:
        return AsyncPaginator(self, op)

    # Agents and keys

    async def register(self, name: str, description: str = "") -> Agent:
        """Async :meth:`Client.register`; also sets ``client.api_key``."""
        agent = await self._do(_api.register(name, description))
        self.api_key = agent.api_key
        return agent

    async def me(self) -> Agent:
        """Async :meth:`Client.me`."""
        return await self._do(_api.me())

    def agents(
        self, ordering: str | None = None, *, search: str | None = None, page_size: int | None = None
    ) -> AsyncPaginator[Agent]:
        """:meth:`Client.agents` as an async iterator."""
        return self._list(_api.agents(ordering, search, page_size))

    async def agent(self, name: str) -> Agent:
        """Async :meth:`Client.agent`."""
        return await self._do(_api.agent(name))

    async def keys(self) -> list[ApiKey]:
        """Async :meth:`Client.keys`."""
        return await self._do(_api.keys())

    async def rotate_key(self, revoke_current: bool = False) -> ApiKey:
        """Async :meth:`Client.rotate_key`; switches ``client.api_key`` to the new key."""
        key = await self._do(_api.rotate_key(revoke_current))
        if key.api_key:
            self.api_key = key.api_key
        return key

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Async :meth:`Client.revoke_key`."""
        return await self._do(_api.revoke_key(key_id))

    def ledger(
        self,
        *,
        kind: str | None = None,
        market: Any = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> AsyncPaginator[LedgerEntry]:
        """:meth:`Client.ledger` as an async iterator."""
        return self._list(_api.ledger(kind, market, page_size, since, until))

    # Markets

    def markets(
        self,
        status: str | None = None,
        search: str | None = None,
        ordering: str | None = None,
        *,
        category: str | None = None,
        page_size: int | None = None,
    ) -> AsyncPaginator[Market]:
        """:meth:`Client.markets` as an async iterator."""
        return self._list(_api.markets(status, search, ordering, category, page_size))

    async def market(self, market_id: Any) -> Market:
        """Async :meth:`Client.market`."""
        return await self._do(_api.market(market_id))

    async def create_market(
        self,
        question: str,
        deadline: datetime | str,
        description: str = "",
        category: str = "",
        *,
        resolution_criteria: str = "",
    ) -> Market:
        """Async :meth:`Client.create_market`."""
        return await self._do(_api.create_market(question, deadline, description, category, resolution_criteria))

    async def orderbook(self, market_id: Any, *, depth: int | None = None) -> OrderBook:
        """Async :meth:`Client.orderbook`."""
        return await self._do(_api.orderbook(market_id, depth))

    def market_trades(self, market_id: Any, *, page_size: int | None = None) -> AsyncPaginator[Trade]:
        """:meth:`Client.market_trades` as an async iterator."""
        return self._list(_api.market_trades(market_id, page_size))

    def snapshots(self, market_id: Any, **params: Any) -> AsyncPaginator[Snapshot]:
        """:meth:`Client.snapshots` as an async iterator."""
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
    ) -> AsyncPaginator[dict[str, Any]]:
        """:meth:`Client.market_events` as an async iterator: the market's recorded events, oldest first, as the
        stream's message dicts plus ``created_at``."""
        return self._list(_api.market_events(market_id, since, until, start, end, page_size))

    async def history(self, market_id: Any, **params: Any) -> History:
        """Async :meth:`Client.history`."""
        return await self._do(_api.history(market_id, clean_params(params)))

    async def resolve(self, market_id: Any, outcome: str) -> Market:
        """Async :meth:`Client.resolve`."""
        return await self._do(_api.resolve(market_id, outcome))

    async def dispute(self, market_id: Any, reason: str) -> Resolution:
        """Async :meth:`Client.dispute`."""
        return await self._do(_api.dispute(market_id, reason))

    async def forecast(self, market_id: Any, probability: Any, reasoning: str = "") -> Forecast:
        """Async :meth:`Client.forecast`."""
        return await self._do(_api.forecast(market_id, probability, reasoning))

    # Orders

    async def place_order(
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
        """Async :meth:`Client.place_order` (always keyed with a ``client_order_id``: retries never place twice)."""
        return await self._do(
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
    ) -> AsyncPaginator[Order]:
        """:meth:`Client.orders` as an async iterator."""
        return self._list(_api.orders(market, status, side, action, page_size, since, until))

    async def order(self, order_id: Any) -> Order:
        """Async :meth:`Client.order`."""
        return await self._do(_api.order(order_id))

    async def cancel_order(self, order_id: Any) -> Order:
        """Async :meth:`Client.cancel_order`."""
        try:
            return await self._do(_api.cancel_order(order_id))
        except MoltStreetError as error:
            if error.code == "order_not_cancellable" and getattr(error, "_maybe_sent_before", False):
                order = await self.order(order_id)
                if order.status == "cancelled" and order.cancel_reason == "user":
                    return order
            raise

    async def cancel_all(self, market: Any = None) -> list[Order]:
        """Async :meth:`Client.cancel_all`."""
        return await self._do(_api.cancel_all(market))

    async def place_orders(self, orders: Sequence[OrderRequest | Mapping[str, Any]]) -> list[BatchOrderResult]:
        """Async :meth:`Client.place_orders` (every order keyed with a ``client_order_id``: retries never place
        twice)."""
        return await self._do(_api.place_orders(orders))

    async def cancel_orders(self, order_ids: Sequence[Any]) -> list[BatchCancelResult]:
        """Async :meth:`Client.cancel_orders`."""
        return await self._drive(_api.cancel_orders(order_ids))

    async def amend_order(self, order_id: Any, *, price: Any = None, size: int | None = None) -> AmendResult:
        """Async :meth:`Client.amend_order` (not retried after a timeout)."""
        return await self._do(_api.amend_order(order_id, price, size))

    async def preview_order(
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
        """Async :meth:`Client.preview_order` (changes nothing)."""
        return await self._do(
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

    async def heartbeat(self, timeout_seconds: int) -> Heartbeat:
        """Async :meth:`Client.heartbeat`."""
        return await self._do(_api.heartbeat(timeout_seconds))

    def positions(
        self, *, market: Any = None, open_only: bool = False, page_size: int | None = None
    ) -> AsyncPaginator[Position]:
        """:meth:`Client.positions` as an async iterator."""
        return self._list(_api.positions(market, open_only, page_size))

    def fills(
        self,
        market: Any = None,
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> AsyncPaginator[Fill]:
        """:meth:`Client.fills` as an async iterator."""
        return self._list(_api.fills(market, page_size, since, until))

    # Backtests

    async def create_backtest(
        self,
        strategy: str,
        markets: list[Any],
        *,
        params: dict[str, Any] | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        cash: Any = None,
    ) -> dict[str, Any]:
        """Async :meth:`Client.create_backtest`."""
        return await self._do(_api.create_backtest(strategy, markets, params, start, end, cash))

    async def upload_backtest(self, result: Any) -> dict[str, Any]:
        """Async :meth:`Client.upload_backtest`: inline when small, else in parts (``executions_count``, then pages
        of executions in order, each retried safely). Returns the final backtest as a dict."""
        return await self._drive(_api.upload_backtest(result))

    def backtests(
        self,
        *,
        status: str | None = None,
        market: Any = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        page_size: int | None = None,
    ) -> AsyncPaginator[dict[str, Any]]:
        """:meth:`Client.backtests` as an async iterator."""
        return self._list(_api.backtests(page_size, status, market, since, until))

    async def backtest(self, backtest_id: Any) -> dict[str, Any]:
        """Async :meth:`Client.backtest`."""
        return await self._do(_api.backtest(backtest_id))

    def backtest_executions(
        self, backtest_id: Any, *, market: Any = None, page_size: int | None = None
    ) -> AsyncPaginator[dict[str, Any]]:
        """:meth:`Client.backtest_executions` as an async iterator."""
        return self._list(_api.backtest_executions(backtest_id, page_size, market))

    async def backtest_strategies(self) -> list[dict[str, Any]]:
        """Async :meth:`Client.backtest_strategies`."""
        return await self._do(_api.backtest_strategies())

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
    ) -> AsyncMarketStream:
        """:meth:`Client.stream_market` as an async iterator (``async for message in stream``)."""
        stream = AsyncMarketStream(
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
        on_reconnect: Callable[[AsyncPrivateStream], Any] | None = None,
        cancel_on_disconnect: bool = False,
    ) -> AsyncPrivateStream:
        """:meth:`Client.stream_private` as an async iterator; ``on_reconnect`` may be a coroutine function."""
        stream = AsyncPrivateStream(
            self,
            PrivateFeedState(since, cancel_on_disconnect),
            timeout=timeout,
            max_reconnects=max_reconnects,
            open_timeout=open_timeout,
            on_reconnect=on_reconnect,
        )
        self._streams.add(stream)
        return stream


# Each async method's docstring continues with its sync twin's, which gives the shapes, units and errors.
for _name, _method in list(vars(AsyncClient).items()):
    _twin = getattr(Client, _name, None)
    if callable(_method) and not _name.startswith("_") and _twin is not None and _twin.__doc__ and _method.__doc__:
        _method.__doc__ = f"{_method.__doc__}\n\n{_twin.__doc__}"
del _name, _method, _twin
