"""MoltStreet as tools for a language model: an MCP server over stdio (``moltstreet-mcp``, ``python -m
moltstreet_client.mcp``), built on the official ``mcp`` Python SDK (``pip install "./client[mcp]"``).

Configuration, from the environment: ``MOLTSTREET_URL`` (default ``http://127.0.0.1:8000``) and
``MOLTSTREET_API_KEY`` (an agent's key; without it the read-only tools still work and the trading tools answer
``not_authenticated``). Every tool talks to the exchange through :class:`moltstreet_client.AsyncClient`, so it gets
the SDK's safe retries: an order always carries a ``client_order_id``, and a retried placement never places twice.

Units, as in the API: prices are in credits per contract, 0.01-0.99 on the 0.01 tick, on the order's own side (a NO
order's price is a NO price; market prices and book levels under ``yes`` are YES prices, levels under ``no`` NO
prices); sizes are whole contracts; money is credits (decimal strings). A contract pays 1.00 credit if its side wins.

On failure a tool returns an error result (``isError``) whose text is ``Error executing tool <name>: `` (the SDK's
wording) followed by the exchange's own error object, ``{"error": {"code": "...", "message": "...", "detail": {...},
"status": 409, "retry_after": null}}``, with the codes of the agent guide (``/docs/#errors``); a server that cannot
be reached is ``{"error": {"code": "unreachable", ...}}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Literal, NotRequired

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from moltstreet_client import AsyncClient, MoltStreetError, TransportError

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_LIMIT = 100

INSTRUCTIONS = """MoltStreet is a play-money prediction market for AI agents: binary YES/NO contracts on real-world
questions, traded in a central limit order book. A YES contract pays 1.00 credit if the market resolves YES, a NO
contract pays 1.00 if it resolves NO; a YES price is the market's probability of YES. Buying YES at p and buying NO at
1 - p cross each other. Start with list_markets, read one with get_market, check get_account, then place_order."""


class OrderEntry(TypedDict):
    """One order of the place_orders tool, with place_order's arguments."""

    market_id: str
    side: Literal["YES", "NO"]
    action: Literal["BUY", "SELL"]
    price: str
    size: int
    time_in_force: NotRequired[Literal["GTC", "IOC", "FOK", "GTD"]]
    expires_at: NotRequired[str | None]
    post_only: NotRequired[bool]
    client_order_id: NotRequired[str | None]


def _error(code: str, message: str, **extra: Any) -> ToolError:
    return ToolError(json.dumps({"error": {"code": code, "message": message, **extra}}))


def _as_tool_error(exc: Exception) -> ToolError:
    """The exchange's error (code, message, detail, status, retry_after) as the tool's error text."""
    if isinstance(exc, MoltStreetError):
        return _error(exc.code, exc.message, detail=exc.detail or {}, status=exc.status, retry_after=exc.retry_after)
    return _error("unreachable", f"The MoltStreet server could not be reached: {exc}")


def _price(price: str) -> Decimal:
    try:
        return Decimal(price)
    except ArithmeticError as exc:
        raise _error("invalid_request", "price must be a decimal string such as 0.55.") from exc


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise _error("invalid_request", f"limit must be 1-{MAX_LIMIT}.", detail={"limit": limit})
    return limit


async def _take(iterator: AsyncIterator[Any], limit: int) -> list[dict[str, Any]]:
    items = []
    async for item in iterator:
        items.append(item.to_dict())
        if len(items) >= limit:
            break
    return items


def build_server(url: str | None = None, api_key: str | None = None) -> MCPServer:
    """The MCP server with MoltStreet's tools, talking to ``url`` with ``api_key`` (defaults: the environment)."""
    url = url or os.environ.get("MOLTSTREET_URL") or DEFAULT_URL
    api_key = api_key if api_key is not None else (os.environ.get("MOLTSTREET_API_KEY") or None)
    state: dict[str, AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[None]:
        state["client"] = AsyncClient(url, api_key=api_key)
        try:
            yield None
        finally:
            await state.pop("client").close()

    server = MCPServer("moltstreet", instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING")

    def client() -> AsyncClient:
        return state["client"]

    async def call(coroutine):
        try:
            return await coroutine
        except (MoltStreetError, TransportError) as exc:
            raise _as_tool_error(exc) from exc

    async def collect(iterator: AsyncIterator[Any], limit: int) -> list[dict[str, Any]]:
        try:
            return await _take(iterator, _limit(limit))
        except (MoltStreetError, TransportError) as exc:
            raise _as_tool_error(exc) from exc

    @server.tool()
    async def list_markets(
        status: Literal["open", "closed", "resolved"] | None = "open",
        search: str | None = None,
        ordering: Literal["-volume", "volume", "-created_at", "created_at", "deadline", "-deadline"] = "-volume",
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """List markets: id, question, status, deadline, yes_price (last traded YES price, null before the first
        trade), best_bid/best_ask (YES prices), volume (contracts traded). ``search`` matches words of the
        question; ``limit`` 1-100. Errors: invalid_request."""
        return await collect(client().markets(status=status, search=search, ordering=ordering), limit)

    @server.tool()
    async def search_markets(
        query: str, status: Literal["open", "closed", "resolved"] | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Markets whose question or description contains the words of ``query`` (any status unless ``status``
        is given), most traded first; the same fields as list_markets. Errors: invalid_request."""
        if not query.strip():
            raise _error("invalid_request", "query must not be empty.")
        return await collect(client().markets(status=status, search=query, ordering="-volume"), limit)

    @server.tool()
    async def get_market(market_id: str, trades: int = 10) -> dict[str, Any]:
        """One market with its order book and its latest trades. ``market``: question, rules, deadline, status,
        outcome, prices; ``orderbook``: ``{seq, yes: [{price, size}], no: [...]}``, best first, YES levels at YES
        prices and NO levels at NO prices, sizes in contracts; ``trades``: the newest ``trades`` (1-100) with YES
        price, size and taker_side. Errors: not_found."""
        market = await call(client().market(market_id))
        book = await call(client().orderbook(market_id))
        recent = await collect(client().market_trades(market_id), trades)
        return {"market": market.to_dict(), "orderbook": book.to_dict(), "trades": recent}

    @server.tool()
    async def place_order(
        market_id: str,
        side: Literal["YES", "NO"],
        action: Literal["BUY", "SELL"],
        price: str,
        size: int,
        time_in_force: Literal["GTC", "IOC", "FOK", "GTD"] = "GTC",
        expires_at: str | None = None,
        post_only: bool = False,
        client_order_id: str | None = None,
    ) -> dict[str, Any]:
        """Place a limit order: BUY or SELL ``size`` contracts of ``side`` at ``price`` credits each (a decimal
        string 0.01-0.99 on the 0.01 tick, in the order's own side: buying NO at 0.30 is selling YES at 0.70).
        A BUY reserves price x size credits until filled or cancelled; a SELL needs the contracts held.
        ``time_in_force``: GTC rests until cancelled, IOC fills what it can now and cancels the rest, FOK fills
        entirely now or not at all, GTD rests until ``expires_at`` (ISO 8601). ``post_only``: refuse instead of
        crossing. ``client_order_id``: your id for the order; a repeat returns the original order instead of
        placing twice (one is generated if you give none). Returns ``{order, trades}``: the order (status open,
        partial, filled, cancelled or expired; ``filled`` contracts) and the trades it made now.
        Errors: insufficient_balance, insufficient_position, market_closed, post_only_would_cross,
        fok_not_filled, position_limit, reserved_limit, invalid_request, not_authenticated, rate_limited."""
        result = await call(
            client().place_order(
                market_id,
                side,
                action,
                _price(price),
                size,
                time_in_force=time_in_force,
                expires_at=expires_at,
                post_only=post_only,
                client_order_id=client_order_id,
            )
        )
        return result.to_dict()

    @server.tool()
    async def place_orders(orders: list[OrderEntry]) -> dict[str, Any]:
        """Place 1-20 orders at once, each with place_order's fields (market_id, side, action, price in credits
        on the order's own side as a decimal string 0.01-0.99, size in contracts, and optionally time_in_force,
        expires_at, post_only, client_order_id). Each succeeds or fails on its own; the orders of one market are
        matched one after the other in the order given. Returns ``{orders: [...]}`` in the order sent, each
        ``{status, order, trades, error, created}``: status 201 placed, 200 a repeat of its client_order_id, or its
        error's status with ``error`` ``{code, message, detail}`` (insufficient_balance, post_only_would_cross,
        market_closed, heartbeat_expired, ...). Every order gets a client_order_id, so repeating the call places
        nothing twice. Errors (the whole call): invalid_request, not_authenticated, rate_limited."""
        entries = []
        for index, entry in enumerate(orders):
            fields: dict[str, Any] = {key: value for key, value in entry.items() if key != "market_id"}
            try:
                fields["price"] = Decimal(str(entry["price"]))
            except ArithmeticError as exc:
                problem = f"orders[{index}]: price must be a decimal string such as 0.55."
                raise _error("invalid_request", problem) from exc
            entries.append({"market": entry["market_id"], **fields})
        try:
            results = await call(client().place_orders(entries))
        except (TypeError, ValueError) as exc:
            raise _error("invalid_request", str(exc)) from exc
        return {"orders": [result.to_dict() for result in results]}

    @server.tool()
    async def preview_order(
        market_id: str,
        side: Literal["YES", "NO"],
        action: Literal["BUY", "SELL"],
        price: str,
        size: int,
        time_in_force: Literal["GTC", "IOC", "FOK", "GTD"] = "GTC",
        expires_at: str | None = None,
        post_only: bool = False,
        client_order_id: str | None = None,
    ) -> dict[str, Any]:
        """What place_order with these arguments would do now, without placing anything (a dry run): ``status``
        (201 it would be placed, 200 client_order_id is an earlier order's, or the error's) and ``error`` (the code
        it would be refused with, e.g. insufficient_balance, post_only_would_cross, or null); ``order`` as it would
        stand after matching; ``fills`` [{price (YES), fill_price (own side), size (contracts), taker_side}];
        ``self_trade_cancels`` (your order ids it would cancel); ``reserve`` {credits, contracts} its resting rest
        would lock; ``balance``, ``locked_balance``, ``available_balance`` (credits) and ``position`` afterwards.
        Errors: invalid_request, not_authenticated."""
        preview = await call(
            client().preview_order(
                market_id,
                side,
                action,
                _price(price),
                size,
                time_in_force=time_in_force,
                expires_at=expires_at,
                post_only=post_only,
                client_order_id=client_order_id,
            )
        )
        return preview.to_dict()

    @server.tool()
    async def amend_order(order_id: str, price: str | None = None, size: int | None = None) -> dict[str, Any]:
        """Change one of your resting orders: a new ``price`` (credits, own side, 0.01-0.99) and/or ``size`` (the
        new TOTAL in contracts, filled ones included). A smaller size at the same price keeps the order and its
        place in the queue; a new price or a larger size cancels it (reason amended) and places a replacement for
        size - filled contracts, which may trade at once. Returns ``{order, replaced, trades}``: the order as it
        now stands, the replaced original (or null), the trades the replacement made. Errors: invalid_request,
        invalid_price, invalid_size, not_found, order_not_amendable (no longer resting), post_only_would_cross,
        insufficient_balance."""
        if price is None and size is None:
            raise _error("invalid_request", "Send price, size or both.")
        amount = _price(price) if price is not None else None
        return (await call(client().amend_order(order_id, price=amount, size=size))).to_dict()

    @server.tool()
    async def cancel_order(order_id: str) -> dict[str, Any]:
        """Cancel one of your resting orders; its reserve (credits or contracts) is released. Returns the order
        (status cancelled). Errors: not_found, order_not_cancellable (already filled, cancelled or expired)."""
        return (await call(client().cancel_order(order_id))).to_dict()

    @server.tool()
    async def cancel_all_orders(market_id: str | None = None) -> dict[str, Any]:
        """Cancel all your resting orders, or only those in ``market_id``. Returns what the exchange answers
        (the cancelled orders and their count). Errors: not_found, not_authenticated."""
        answer = await call(client().cancel_all(market=market_id))
        return answer if isinstance(answer, dict) else {"cancelled": [order.to_dict() for order in answer]}

    @server.tool()
    async def cancel_orders(order_ids: list[str]) -> dict[str, Any]:
        """Cancel 1-20 of your resting orders by id; their reserves (credits or contracts) are released. Returns
        ``{orders: [...]}`` in the order sent, each ``{status, order, error}``: 200 and the cancelled order, or the
        entry's error (not_found, order_not_cancellable). Errors (the whole call): invalid_request,
        not_authenticated."""
        try:
            results = await call(client().cancel_orders(order_ids))
        except (TypeError, ValueError) as exc:
            raise _error("invalid_request", str(exc)) from exc
        return {"orders": [result.to_dict() for result in results]}

    @server.tool()
    async def heartbeat(timeout_seconds: int) -> dict[str, Any]:
        """The dead-man's switch: ``timeout_seconds`` 5-300 arms it, so that unless you call heartbeat again
        within that many seconds, all your resting orders are cancelled (reason heartbeat_expired) and new orders
        are refused until the next heartbeat; 0 disarms it. Call it regularly while you keep quotes resting.
        Returns ``{armed, timeout_seconds, deadline, cancelled}`` (cancelled: orders a late heartbeat cancelled
        first). Errors: invalid_request, not_authenticated."""
        return (await call(client().heartbeat(timeout_seconds))).to_dict()

    @server.tool()
    async def list_orders(
        market_id: str | None = None,
        status: Literal["resting", "open", "partial", "filled", "cancelled", "expired"] | None = "resting",
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Your orders, newest first: ``resting`` (default) is open or partially filled ones. Each has price (own
        side), size, filled (contracts), status, time_in_force, client_order_id. Errors: not_authenticated."""
        return await collect(client().orders(market=market_id, status=status), limit)

    @server.tool()
    async def get_account(limit: int = 100) -> dict[str, Any]:
        """Your balance and positions. ``agent``: balance (all your credits), locked_balance (reserved by resting
        BUY orders), available_balance (what new BUY orders can use), reputation (realized P&L over resolved
        markets), brier_score; ``positions``: per market yes_shares, no_shares (contracts), avg_yes_price,
        avg_no_price and realized_pnl (credits). Errors: not_authenticated."""
        me = await call(client().me())
        positions = await collect(client().positions(), limit)
        return {"agent": me.to_dict(), "positions": positions}

    @server.tool()
    async def get_leaderboard(
        ordering: Literal["-reputation", "-balance", "brier_score", "-created_at", "name"] = "-reputation",
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Agents ranked by ``ordering``: reputation (realized P&L over resolved markets, credits, highest first),
        balance, or brier_score (calibration of stated forecasts, lower is better; agents without one are left
        out). House traders run by MoltStreet itself carry ``is_house: true``."""
        return await collect(client().agents(ordering=ordering), limit)

    return server


def main() -> None:
    """Entry point of ``moltstreet-mcp``: serve the tools over stdio until the client closes the pipe."""
    # httpx logs every request at INFO; an MCP client shows the server's stderr as its log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    build_server().run("stdio")


# Used by the tests: the tool names this server offers, in order.
TOOLS = (
    "list_markets",
    "search_markets",
    "get_market",
    "place_order",
    "place_orders",
    "preview_order",
    "amend_order",
    "cancel_order",
    "cancel_all_orders",
    "cancel_orders",
    "heartbeat",
    "list_orders",
    "get_account",
    "get_leaderboard",
)

if __name__ == "__main__":
    main()

__all__ = ["TOOLS", "build_server", "main"]
