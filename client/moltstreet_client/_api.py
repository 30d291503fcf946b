"""The agent API's endpoints as request descriptions and answer parsers, shared by :class:`Client` and
:class:`AsyncClient` (which only differ in how they send). Each function returns an :class:`Op`: the :class:`Call` to
make and how to turn the answer into models."""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from moltstreet_client._base import (
    Call,
    clean_params,
    decimal_text,
    ident,
    new_client_order_id,
    optional_ident,
    price_text,
    time_text,
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

T = TypeVar("T")
# A time filter (`since`, `until`): an aware datetime or ISO 8601 text; None for none.
Time = datetime | str | None

SIDES = ("YES", "NO")
ACTIONS = ("BUY", "SELL")
OUTCOMES = ("YES", "NO", "VOID")


@dataclass(frozen=True)
class Answer:
    """A successful answer: HTTP status, decoded JSON body, how many attempts it took, and whether an earlier
    attempt may have reached the server (it failed after the request could have been sent)."""

    status: int
    body: Any
    attempts: int = 1
    maybe_sent_before: bool = False


@dataclass(frozen=True)
class Op(Generic[T]):
    call: Call
    parse: Callable[[Answer], T]


@dataclass(frozen=True)
class ListOp(Generic[T]):
    """A cursor-paginated list: the first page's call and the parser of one item."""

    call: Call
    item: Callable[[dict[str, Any]], T]


def _one(model: Callable[[dict[str, Any]], T]) -> Callable[[Answer], T]:
    return lambda answer: model(answer.body)


def _many(model: Callable[[dict[str, Any]], T]) -> Callable[[Answer], list[T]]:
    return lambda answer: [model(item) for item in answer.body or []]


def _get(path: str, **params: Any) -> Call:
    return Call("GET", path, params=clean_params(params) or None, replayable=True)


def _page_size(page_size: int | None) -> dict[str, Any]:
    return {"page_size": page_size} if page_size is not None else {}


def _upper(value: str | None, name: str, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    text = str(value).upper()
    if text not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return text


# --------------------------------------------------------------------------------------------------------------------
# Agents and keys


def register(name: str, description: str) -> Op[Agent]:
    body = {"name": name, "description": description}
    return Op(Call("POST", "/agents/", json=body), _one(Agent.from_dict))


def me() -> Op[Agent]:
    return Op(_get("/agents/me/"), _one(Agent.from_dict))


def agents(ordering: str | None, search: str | None, page_size: int | None) -> ListOp[Agent]:
    return ListOp(_get("/agents/", ordering=ordering, search=search, **_page_size(page_size)), Agent.from_dict)


def agent(name: str) -> Op[Agent]:
    return Op(_get(f"/agents/{quote(str(name), safe='')}/"), _one(Agent.from_dict))


def keys() -> Op[list[ApiKey]]:
    return Op(_get("/agents/me/keys/"), _many(ApiKey.from_dict))


def rotate_key(revoke_current: bool) -> Op[ApiKey]:
    return Op(Call("POST", "/agents/me/keys/", json={"revoke_current": bool(revoke_current)}), _one(ApiKey.from_dict))


def revoke_key(key_id: Any) -> Op[ApiKey]:
    # Revoking a revoked key changes nothing: safe to repeat.
    path = f"/agents/me/keys/{quote(ident(key_id), safe='')}/"
    return Op(Call("DELETE", path, replayable=True), _one(ApiKey.from_dict))


def ledger(
    kind: str | None, market: Any, page_size: int | None, since: Time = None, until: Time = None
) -> ListOp[LedgerEntry]:
    call = _get("/ledger/", kind=kind, market=optional_ident(market), since=since, until=until, **_page_size(page_size))
    return ListOp(call, LedgerEntry.from_dict)


# --------------------------------------------------------------------------------------------------------------------
# Markets


def markets(
    status: str | None,
    search: str | None,
    ordering: str | None,
    category: str | None,
    page_size: int | None,
) -> ListOp[Market]:
    call = _get(
        "/markets/", status=status, search=search, ordering=ordering, category=category, **_page_size(page_size)
    )
    return ListOp(call, Market.from_dict)


def market(market_id: Any) -> Op[Market]:
    return Op(_get(f"/markets/{ident(market_id)}/"), _one(Market.from_dict))


def create_market(
    question: str, deadline: datetime | str, description: str, category: str, resolution_criteria: str
) -> Op[Market]:
    body = {
        "question": question,
        "deadline": time_text(deadline),
        "description": description,
        "category": category,
    }
    if resolution_criteria:
        body["resolution_criteria"] = resolution_criteria
    return Op(Call("POST", "/markets/", json=body), _one(Market.from_dict))


def orderbook(market_id: Any, depth: int | None) -> Op[OrderBook]:
    return Op(_get(f"/markets/{ident(market_id)}/orderbook/", depth=depth), _one(OrderBook.from_dict))


def market_trades(market_id: Any, page_size: int | None) -> ListOp[Trade]:
    return ListOp(_get(f"/markets/{ident(market_id)}/trades/", **_page_size(page_size)), Trade.from_dict)


def snapshots(market_id: Any, params: dict[str, Any]) -> ListOp[Snapshot]:
    return ListOp(_get(f"/markets/{ident(market_id)}/snapshots/", **params), Snapshot.from_dict)


def market_events(
    market_id: Any,
    since: int | None,
    until: int | None,
    start: datetime | str | None,
    end: datetime | str | None,
    page_size: int | None,
) -> ListOp[dict[str, Any]]:
    # The messages stay as sent (plain dicts, decimal strings), exactly as the market stream yields them.
    call = _get(
        f"/markets/{ident(market_id)}/events/",
        since=since,
        until=until,
        start=start,  # datetimes go out as ISO 8601 (clean_params)
        end=end,
        **_page_size(page_size),
    )
    return ListOp(call, dict)


def history(market_id: Any, params: dict[str, Any]) -> Op[History]:
    return Op(_get(f"/markets/{ident(market_id)}/history/", **params), _one(History.from_dict))


def resolve(market_id: Any, outcome: str) -> Op[Market]:
    body = {"outcome": _upper(outcome, "outcome", OUTCOMES)}
    return Op(Call("POST", f"/markets/{ident(market_id)}/resolve/", json=body), _one(Market.from_dict))


def dispute(market_id: Any, reason: str) -> Op[Resolution]:
    body = {"reason": reason}
    return Op(Call("POST", f"/markets/{ident(market_id)}/dispute/", json=body), _one(Resolution.from_dict))


def forecast(market_id: Any, probability: Any, reasoning: str) -> Op[Forecast]:
    body = {"probability": decimal_text(probability), "reasoning": reasoning}
    return Op(Call("POST", f"/markets/{ident(market_id)}/forecast/", json=body), _one(Forecast.from_dict))


# --------------------------------------------------------------------------------------------------------------------
# Orders, positions, fills


def order_body(
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
    keyed: bool = True,
) -> dict[str, Any]:
    """The JSON of one order as ``POST /orders/`` takes it. ``keyed``: a fresh ``client_order_id`` when none is
    given. Raises ``TypeError`` (a size that is not an ``int``) and ``ValueError`` (side, action, a naive time)."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be a whole number of contracts (int), not {size!r}")
    body: dict[str, Any] = {
        "market": ident(market),
        "side": _upper(side, "side", SIDES),
        "action": _upper(action, "action", ACTIONS),
        "price": price_text(price),
        "size": size,
        "time_in_force": str(time_in_force).upper(),
        "post_only": bool(post_only),
    }
    if client_order_id or keyed:
        # Keyed: a retry after a lost answer gets the original order back instead of placing a second one.
        body["client_order_id"] = client_order_id or new_client_order_id()
    if expires_at is not None:
        body["expires_at"] = time_text(expires_at)
    if forecast is not None:
        body["forecast"] = decimal_text(forecast)
    if reasoning:
        body["reasoning"] = reasoning
    return body


def place_order(
    market: Any,
    side: str,
    action: str,
    price: Any,
    size: int,
    *,
    time_in_force: str,
    expires_at: datetime | str | None,
    post_only: bool,
    client_order_id: str | None,
    forecast: Any,
    reasoning: str,
) -> Op[OrderResult]:
    body = order_body(
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

    def parse(answer: Answer) -> OrderResult:
        result = OrderResult.from_dict(answer.body)
        # 200: the server recognised the client_order_id; after our own lost attempt, that is the order we placed.
        created = answer.status == 201 or answer.maybe_sent_before
        return OrderResult(order=result.order, trades=result.trades, created=created, extra=result.extra)

    return Op(Call("POST", "/orders/", json=body, replayable=True), parse)


def preview_order(
    market: Any,
    side: str,
    action: str,
    price: Any,
    size: int,
    *,
    time_in_force: str,
    expires_at: datetime | str | None,
    post_only: bool,
    client_order_id: str | None,
    forecast: Any,
    reasoning: str,
) -> Op[OrderPreview]:
    # No generated client_order_id: the preview of a repeat would show the original order, misleading the caller.
    body = order_body(
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
        keyed=False,
    )
    body["dry_run"] = True
    # Replayable: a preview stores nothing.
    return Op(Call("POST", "/orders/", json=body, replayable=True), _one(OrderPreview.from_dict))


# The most orders (or ids) one batch may carry: the server's MAX_BATCH.
MAX_BATCH = 20
_ORDER_KEYS = frozenset(f.name for f in dataclasses.fields(OrderRequest))
_REQUIRED_KEYS = ("market", "side", "action", "price", "size")


def _batch(items: Any, name: str) -> list[Any]:
    """``items`` as a list of 1 to :data:`MAX_BATCH` entries; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(f"{name} must be a list, not {type(items).__name__}")
    entries = list(items)
    if not 1 <= len(entries) <= MAX_BATCH:
        raise ValueError(f"{name} must hold 1-{MAX_BATCH} entries, not {len(entries)}")
    return entries


def _batch_order(entry: Any, index: int) -> dict[str, Any]:
    """One order of a batch (an :class:`OrderRequest` or a dict of its fields) as its JSON, keyed."""
    if isinstance(entry, OrderRequest):
        fields = {name: getattr(entry, name) for name in _ORDER_KEYS}
    elif isinstance(entry, Mapping):
        fields = dict(entry)
        unknown = sorted(set(map(str, fields)) - _ORDER_KEYS)
        missing = [key for key in _REQUIRED_KEYS if key not in fields]
        if unknown or missing:
            problems = ([f"unknown {', '.join(unknown)}"] if unknown else []) + (
                [f"missing {', '.join(missing)}"] if missing else []
            )
            raise TypeError(f"orders[{index}]: {'; '.join(problems)}")
    else:
        raise TypeError(f"orders[{index}] must be an OrderRequest or a dict, not {type(entry).__name__}")
    try:
        return order_body(**fields)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"orders[{index}]: {exc}") from exc


def place_orders(orders: Any) -> Op[list[BatchOrderResult]]:
    body = {"orders": [_batch_order(entry, index) for index, entry in enumerate(_batch(orders, "orders"))]}

    def parse(answer: Answer) -> list[BatchOrderResult]:
        results = []
        for entry in answer.body["orders"]:
            result = BatchOrderResult.from_dict(entry)
            if result.status == 200 and answer.maybe_sent_before:
                # As place_order: after our own lost attempt, a recognised client_order_id is an order we placed.
                result = dataclasses.replace(result, created=True)
            results.append(result)
        return results

    # Replayable: every order is keyed by its client_order_id, so a repeat places nothing twice.
    return Op(Call("POST", "/orders/batch/", json=body, replayable=True), parse)


def cancel_orders(order_ids: Any) -> Generator[Op[Any], Any, list[BatchCancelResult]]:
    """The calls of :meth:`Client.cancel_orders`: ``POST /orders/batch-cancel/``; then, only if an earlier attempt
    may have reached the server (its answer was lost), ``GET /orders/{id}/`` of each order the retry found
    ``order_not_cancellable`` with status ``cancelled``: one the lost attempt cancelled (``cancel_reason`` ``user``)
    is reported cancelled, as :meth:`Client.cancel_order` does."""
    ids = [ident(order_id) for order_id in _batch(order_ids, "order_ids")]

    def parse(answer: Answer) -> tuple[list[BatchCancelResult], bool]:
        return [BatchCancelResult.from_dict(entry) for entry in answer.body["orders"]], answer.maybe_sent_before

    # Replayable: cancelling a cancelled order changes nothing (the retry's entries say order_not_cancellable).
    results, maybe_sent = yield Op(Call("POST", "/orders/batch-cancel/", json={"ids": ids}, replayable=True), parse)
    if not maybe_sent:
        return results
    seen: set[str] = set()
    for index, (order_id, result) in enumerate(zip(ids, results, strict=False)):
        first = order_id not in seen  # a second mention of an id is order_not_cancellable in any case
        seen.add(order_id)
        error = result.error
        if not first or error is None or error.code != "order_not_cancellable":
            continue
        if error.detail.get("status") != "cancelled":
            continue
        try:
            found = yield order(order_id)
        except MoltStreetError:
            continue
        if found.status == "cancelled" and found.cancel_reason == "user":
            results[index] = BatchCancelResult(status=200, order=found, error=None)
    return results


def amend_order(order_id: Any, price: Any, size: int | None) -> Op[AmendResult]:
    if price is None and size is None:
        raise ValueError("amend_order needs a new price, a new size or both")
    body: dict[str, Any] = {}
    if price is not None:
        body["price"] = price_text(price)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"size must be a whole number of contracts (int), not {size!r}")
        body["size"] = size
    # Not replayable: a repeat could not replace twice (the replaced order is cancelled, so a repeat is refused with
    # order_not_amendable), but after a lost answer that refusal would misreport an amendment that did happen.
    return Op(Call("PATCH", f"/orders/{ident(order_id)}/", json=body), _one(AmendResult.from_dict))


def heartbeat(timeout_seconds: int) -> Op[Heartbeat]:
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int):
        raise TypeError(f"timeout_seconds must be a whole number of seconds (int), not {timeout_seconds!r}")
    # Replayable: a repeated heartbeat moves the deadline again, which is what it is for.
    call = Call("POST", "/agents/me/heartbeat/", json={"timeout_seconds": timeout_seconds}, replayable=True)
    return Op(call, _one(Heartbeat.from_dict))


def orders(
    market: Any,
    status: str | None,
    side: str | None,
    action: str | None,
    page_size: int | None,
    since: Time = None,
    until: Time = None,
) -> ListOp[Order]:
    call = _get(
        "/orders/",
        market=optional_ident(market),
        status=status,
        side=_upper(side, "side", SIDES),
        action=_upper(action, "action", ACTIONS),
        since=since,
        until=until,
        **_page_size(page_size),
    )
    return ListOp(call, Order.from_dict)


def order(order_id: Any) -> Op[Order]:
    return Op(_get(f"/orders/{ident(order_id)}/"), _one(Order.from_dict))


def cancel_order(order_id: Any) -> Op[Order]:
    return Op(Call("DELETE", f"/orders/{ident(order_id)}/", replayable=True), _one(Order.from_dict))


def cancel_all(market: Any) -> Op[list[Order]]:
    # Repeating it cancels nothing more (a retry's answer may list fewer orders than were cancelled).
    call = Call("POST", "/orders/cancel-all/", json={"market": optional_ident(market)}, replayable=True)
    return Op(call, _many(Order.from_dict))


def positions(market: Any, open_only: bool, page_size: int | None) -> ListOp[Position]:
    call = _get(
        "/positions/", market=optional_ident(market), open="true" if open_only else None, **_page_size(page_size)
    )
    return ListOp(call, Position.from_dict)


def fills(market: Any, page_size: int | None, since: Time = None, until: Time = None) -> ListOp[Fill]:
    call = _get("/trades/", market=optional_ident(market), since=since, until=until, **_page_size(page_size))
    return ListOp(call, Fill.from_dict)


# --------------------------------------------------------------------------------------------------------------------
# Backtests (DESIGN section 11): plain dicts, as the API sends them (decimal strings, ISO 8601 times).


def _body(answer: Answer) -> Any:
    return answer.body


def _items(answer: Answer) -> list[dict[str, Any]]:
    # A list, or a page of one ({"results": [...]}).
    body = answer.body
    return list(body.get("results") or []) if isinstance(body, dict) else list(body or [])


def create_backtest(
    strategy: str,
    markets: list[Any],
    params: dict[str, Any] | None,
    start: datetime | str | None,
    end: datetime | str | None,
    cash: Any,
) -> Op[dict[str, Any]]:
    body: dict[str, Any] = {"strategy": strategy, "markets": [ident(m) for m in markets], "params": dict(params or {})}
    if start is not None:
        body["start"] = time_text(start)
    if end is not None:
        body["end"] = time_text(end)
    if cash is not None:
        body["cash"] = decimal_text(cash)
    # Not replayable: a repeat after a lost answer would queue a second backtest.
    return Op(Call("POST", "/backtests/", json=body), _body)


# An uploaded result goes in one body when it is small, else in parts: POST /backtests/ with `executions_count`, then
# pages of executions (POST /backtests/{id}/executions/). The server refuses bodies over MAX_REQUEST_BODY_BYTES
# (128 KiB by default: about 600 executions), and a page holds at most 1,000 executions.
INLINE_MAX_EXECUTIONS = 500
PAGE_MAX_EXECUTIONS = 1_000
BODY_MAX_BYTES = 112 * 1024  # what the SDK puts in one body: the default limit less a margin


def _json_size(value: Any) -> int:
    # As httpx encodes a body: compact separators, UTF-8.
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def execution_pages(
    executions: list[dict[str, Any]], offset: int = 0, max_bytes: int = BODY_MAX_BYTES
) -> list[tuple[int, list[dict[str, Any]]]]:
    """``executions`` as ``(offset, rows)`` pages in order from ``offset``: at most 1,000 rows and about
    ``max_bytes`` of JSON each (a single row larger than that is a page of its own)."""
    pages: list[tuple[int, list[dict[str, Any]]]] = []
    rows: list[dict[str, Any]] = []
    size = envelope = _json_size({"offset": offset + len(executions), "executions": []})
    for row in executions:
        row_size = _json_size(row) + 1  # and its comma
        if rows and (len(rows) == PAGE_MAX_EXECUTIONS or size + row_size > max_bytes):
            pages.append((offset, rows))
            offset, rows, size = offset + len(rows), [], envelope
        rows.append(row)
        size += row_size
    if rows:
        pages.append((offset, rows))
    return pages


def append_backtest_executions(backtest_id: Any, offset: int, rows: list[dict[str, Any]]) -> Op[dict[str, Any]]:
    # Replayable: the server answers a page it already stored (same offset, same rows) with 200, storing it once.
    body = {"offset": offset, "executions": rows}
    return Op(Call("POST", f"/backtests/{ident(backtest_id)}/executions/", json=body, replayable=True), _body)


def upload_backtest(result: Any) -> Generator[Op[Any], Any, dict[str, Any]]:
    """The calls of :meth:`Client.upload_backtest`, as a generator shared by both clients: it yields each
    :class:`Op`, receives its parsed answer (or has the call's error thrown into it) and returns the final backtest.

    Inline (one ``POST /backtests/``) when the result has at most 500 executions and fits ``BODY_MAX_BYTES``;
    otherwise, or when the server refuses the inline body as too large (a lower limit than the default), in parts:
    the result without ``executions`` but with ``executions_count``, then the pages of :func:`execution_pages` in
    order. A page the server refuses as too large is split in two and sent again (nothing of it was stored)."""
    # A BacktestResult (its as_dict()) or the dict itself; "reported": the agent ran it, not the exchange.
    body = dict(result.as_dict() if hasattr(result, "as_dict") else result)
    body["reported"] = True
    executions = list(body.pop("executions", None) or [])
    if len(executions) <= INLINE_MAX_EXECUTIONS and _json_size({**body, "executions": executions}) <= BODY_MAX_BYTES:
        try:
            # Not replayable: a repeat after a lost answer would store the result twice.
            return (yield Op(Call("POST", "/backtests/", json={**body, "executions": executions}), _body))
        except MoltStreetError as error:
            if error.code != "request_too_large":
                raise
    backtest = yield Op(Call("POST", "/backtests/", json={**body, "executions_count": len(executions)}), _body)
    pages = deque(execution_pages(executions))
    while pages:
        offset, rows = pages.popleft()
        try:
            answer = yield append_backtest_executions(backtest["id"], offset, rows)
        except MoltStreetError as error:
            if error.code != "request_too_large" or len(rows) == 1:
                raise
            half = len(rows) // 2
            pages.extendleft([(offset + half, rows[half:]), (offset, rows[:half])])
            continue
        backtest = answer["backtest"]
    return backtest


def backtests(
    page_size: int | None, status: str | None = None, market: Any = None, since: Time = None, until: Time = None
) -> ListOp[dict[str, Any]]:
    call = _get(
        "/backtests/",
        status=status,
        market=optional_ident(market),
        since=since,
        until=until,
        **_page_size(page_size),
    )
    return ListOp(call, dict)


def backtest(backtest_id: Any) -> Op[dict[str, Any]]:
    return Op(_get(f"/backtests/{ident(backtest_id)}/"), _body)


def backtest_executions(backtest_id: Any, page_size: int | None, market: Any = None) -> ListOp[dict[str, Any]]:
    call = _get(f"/backtests/{ident(backtest_id)}/executions/", market=optional_ident(market), **_page_size(page_size))
    return ListOp(call, dict)


def backtest_strategies() -> Op[list[dict[str, Any]]]:
    return Op(_get("/backtests/strategies/"), _items)
