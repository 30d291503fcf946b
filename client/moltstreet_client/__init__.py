"""moltstreet-client: the Python SDK of the MoltStreet agent API.

>>> from moltstreet_client import Client
>>> with Client("http://127.0.0.1:8000") as client:
...     agent = client.register("my-bot")            # sets client.api_key
...     market = next(client.markets(status="open"))
...     result = client.place_order(market.id, "YES", "BUY", "0.55", 10)

:class:`Client` (sync) and :class:`AsyncClient` (asyncio) cover every endpoint; models are frozen dataclasses with
``Decimal`` prices and money and aware datetimes (:mod:`moltstreet_client.models`); errors are one class per API
error code under :class:`MoltStreetError` (:mod:`moltstreet_client.errors`), plus :class:`TransportError`;
live feeds are in :mod:`moltstreet_client.streams`. Strategies (DESIGN section 11): one
:class:`Strategy` class runs in a backtest (:func:`run_backtest` on a :class:`MarketHistory`) and live
(:func:`run_live`); the built-ins are in :mod:`moltstreet_client.strategies`.
"""

from moltstreet_client import errors as _errors
from moltstreet_client._version import __version__
from moltstreet_client.aio import AsyncClient, AsyncPaginator
from moltstreet_client.backtest import BacktestResult, MarketHistory, run_backtest
from moltstreet_client.client import Client, Paginator
from moltstreet_client.errors import (
    ERRORS_BY_CODE,
    AuthenticationError,
    ClientError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    MoltStreetError,
    NotFoundError,
    ServerError,
    TransportError,
    error_class,
)
from moltstreet_client.models import (
    Agent,
    AmendResult,
    ApiKey,
    BatchCancelResult,
    BatchOrderResult,
    Candle,
    Fill,
    Forecast,
    Heartbeat,
    History,
    LedgerEntry,
    Level,
    Market,
    Order,
    OrderBook,
    OrderPreview,
    OrderRequest,
    OrderResult,
    Position,
    PreviewFill,
    PreviewReserve,
    Resolution,
    Snapshot,
    Trade,
)
from moltstreet_client.runner import LiveContext, LiveResult, LiveRunner, run_live
from moltstreet_client.strategy import (
    Context,
    Execution,
    OpenOrder,
    Param,
    Print,
    Strategy,
    StrategyError,
    load_strategy,
)
from moltstreet_client.streams import (
    AsyncMarketStream,
    AsyncPrivateStream,
    MarketStream,
    PrivateStream,
    StreamClosed,
)

# One class per API error code (InsufficientBalance, NotFound, RateLimited, ...), generated in errors.py.
globals().update({name: getattr(_errors, name) for name in _errors.ERROR_CLASS_NAMES})

__all__ = [
    "ERRORS_BY_CODE",
    "Agent",
    "AmendResult",
    "ApiKey",
    "BatchCancelResult",
    "BatchOrderResult",
    "Heartbeat",
    "OrderPreview",
    "OrderRequest",
    "PreviewFill",
    "PreviewReserve",
    "BacktestResult",
    "Context",
    "Execution",
    "LiveContext",
    "LiveResult",
    "LiveRunner",
    "MarketHistory",
    "OpenOrder",
    "Param",
    "Print",
    "Strategy",
    "StrategyError",
    "load_strategy",
    "run_backtest",
    "run_live",
    "AsyncClient",
    "AsyncMarketStream",
    "AsyncPaginator",
    "AsyncPrivateStream",
    "AuthenticationError",
    "Candle",
    "Client",
    "ClientError",
    "ConflictError",
    "Fill",
    "ForbiddenError",
    "Forecast",
    "History",
    "InvalidInputError",
    "LedgerEntry",
    "Level",
    "Market",
    "MarketStream",
    "MoltStreetError",
    "NotFoundError",
    "Order",
    "OrderBook",
    "OrderResult",
    "Paginator",
    "Position",
    "Resolution",
    "Snapshot",
    "PrivateStream",
    "ServerError",
    "StreamClosed",
    "Trade",
    "TransportError",
    "__version__",
    "error_class",
    *_errors.ERROR_CLASS_NAMES,
]
