"""Writes of the backtests app (DESIGN section 11): queue a built-in strategy's backtest, run it, store a reported one.

The engine is the SDK's (:func:`moltstreet_client.backtest.run_backtest`, its built-ins
:data:`moltstreet_client.strategies.BUILTINS`, its metrics): the server only reads the history from the database
(:func:`backtests.selectors.market_history`) and stores what the engine gives. Nothing here moves money: a backtest's
credits are simulated and no balance, position, order or ledger row is touched.

Errors: every refusal is :class:`moltstreet.errors.InvalidRequest` (400 ``invalid_request``) with ``detail`` naming the
field, raised before anything is stored; a page of an upload in parts can also meet :class:`~moltstreet.errors.NotFound`
(not the caller's backtest) and :class:`~moltstreet.errors.UploadConflict` (409: wrong offset, or not uploading).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, overload

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone
from moltstreet_client import metrics as sdk_metrics
from moltstreet_client.backtest import MAX_MARKETS, BacktestResult, parse_cash, parse_time, run_backtest
from moltstreet_client.strategies import BUILTINS
from moltstreet_client.strategy import Strategy, StrategyError

from agents.models import Agent
from backtests.models import Backtest, BacktestExecution
from backtests.selectors import market_history, markets_without_history
from markets.models import Market
from moltstreet.errors import InvalidRequest, NotFound, UploadConflict
from moltstreet.money import CENT, ONE, ZERO

logger = logging.getLogger(__name__)

# Limits of an uploaded (reported) result. The request body limit (MAX_REQUEST_BODY_BYTES) usually binds first.
MAX_EXECUTIONS = 100_000
MAX_PAGE_EXECUTIONS = 1_000  # a page of an upload in parts (POST /backtests/{id}/executions/)
MAX_EQUITY_POINTS = 1_000  # the SDK thins a curve to about 500
MAX_RELIABILITY_BINS = 100
MAX_REFUSAL_CODES = 100
MAX_JSON_BYTES = 64 * 1024  # each stored JSON field (params, metrics, reliability, ...) as compact JSON
MAX_ERROR_LENGTH = 500
MAX_MONEY = Decimal("99999999999999.99")  # MONEY: 16 digits, 2 places
EXECUTION_SIDES = ("YES", "NO", "PAIR")
EXECUTION_ACTIONS = ("BUY", "SELL", "MERGE")
EXECUTION_REASONS = ("taker", "maker", "netting")
# The fields of an uploaded execution (the SDK's Execution.as_dict()); any other is refused.
EXECUTION_FIELDS = ("time", "market", "side", "action", "price", "size", "reason", "cash", "order")
_WRITE_BATCH = 5000


def _failed(error: str) -> dict[str, Any]:
    """The fields of a failed backtest: ``error`` (cut to ``MAX_ERROR_LENGTH``) and no results at all."""
    return {
        "status": Backtest.Status.FAILED,
        "error": error[:MAX_ERROR_LENGTH],
        "metrics": {},
        "equity": [],
        "reliability": [],
        "payouts": {},
        "marked": {},
        "refusals": {},
        "executions_count": None,
        "finished_at": timezone.now(),
    }


# --------------------------------------------------------------------------------------------------------------------
# Validation shared by both paths


def _invalid(exc: StrategyError) -> InvalidRequest:
    """The SDK's refusal in the API's error shape (its ``detail`` already names the field)."""
    return InvalidRequest(exc.message, detail=exc.detail)


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def builtin(name: Any) -> type[Strategy]:
    """The built-in strategy called ``name``; raises :class:`InvalidRequest` for any other. The server runs only the
    built-ins: a ``module:Class`` would import code named by the caller."""
    if isinstance(name, str) and name in BUILTINS:
        return BUILTINS[name]
    raise InvalidRequest(
        f"Unknown strategy {name!r}: the server runs the built-ins {', '.join(sorted(BUILTINS))}. Run your own "
        "strategy with the SDK (moltstreet-backtest) and upload its result with reported: true.",
        detail={"strategy": name if isinstance(name, str) else str(name), "builtins": sorted(BUILTINS)},
    )


def _markets(ids: Sequence[Any]) -> list[Market]:
    """The markets of ``ids`` (UUIDs), in id order; 1 to ``MAX_MARKETS`` distinct known markets, else
    :class:`InvalidRequest` (an unknown market is a 400 too: the body is what is wrong, not the URL)."""
    if not ids:
        raise InvalidRequest("A backtest needs at least one market.", detail={"markets": []})
    if len(ids) > MAX_MARKETS:
        raise InvalidRequest(
            f"A backtest takes at most {MAX_MARKETS} markets.", detail={"markets": len(ids), "max": MAX_MARKETS}
        )
    keys = [str(market_id) for market_id in ids]
    if len(set(keys)) != len(keys):
        raise InvalidRequest("A market is listed twice.", detail={"markets": keys})
    found = {str(market.id): market for market in Market.objects.filter(id__in=ids)}
    unknown = [key for key in keys if key not in found]
    if unknown:
        raise InvalidRequest("No such market.", detail={"markets": unknown})
    return [found[key] for key in sorted(found)]


def _period(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise InvalidRequest("end must be after start.", detail={"start": start.isoformat(), "end": end.isoformat()})


def _cash(value: Any) -> Decimal:
    try:
        return parse_cash(value)
    except StrategyError as exc:
        raise _invalid(exc) from None


# --------------------------------------------------------------------------------------------------------------------
# A built-in strategy, run by the worker


@transaction.atomic
def backtest_create(
    *,
    agent: Agent,
    strategy: str,
    params: Mapping[str, Any] | None,
    markets: Sequence[uuid.UUID | str],
    start: datetime | None = None,
    end: datetime | None = None,
    cash: Any = None,
) -> Backtest:
    """Queue a backtest of the built-in ``strategy`` with ``params`` on ``markets`` (1-20 ids) over ``[start, end)``
    with ``cash`` credits (default 1000.00), for the worker (``backtests.tasks.run_backtest_task``).

    The task is enqueued in the same transaction as the row: with the database task backend the two commit together,
    so a ``queued`` backtest always has its task (with the immediate backend it runs here, before this returns).
    Stores the parameters as parsed, defaults included. Raises :class:`InvalidRequest` (nothing stored) for an
    unknown strategy, an unknown or out-of-range parameter, no market, more than 20, an unknown or repeated one, a
    market with no trade, book change or snapshot recorded in the period, ``end`` not after ``start``, and a cash
    amount that is not a positive number of credits."""
    from backtests.tasks import run_backtest_task  # the task module imports this one

    cls = builtin(strategy)
    try:
        parsed = cls.parse_params(params)
    except StrategyError as exc:
        raise _invalid(exc) from None
    amount = _cash(Decimal("1000.00") if cash is None else cash)
    _period(start, end)
    rows = _markets(markets)
    empty = markets_without_history([market.id for market in rows], start=start, end=end)
    if empty:
        raise InvalidRequest(
            "No trade, book change or source snapshot is recorded in the period for "
            + ("this market." if len(empty) == 1 else "these markets."),
            detail={"markets": empty},
        )
    backtest = Backtest.objects.create(
        agent=agent,
        strategy=cls.label(),
        version=cls.version,
        params={key: _jsonable(value) for key, value in parsed.items()},
        start=start,
        end=end,
        cash=amount,
    )
    backtest.markets.set(rows)
    run_backtest_task.enqueue(backtest_id=str(backtest.id))
    return backtest


def backtest_run(*, backtest_id: uuid.UUID | str) -> Backtest | None:
    """Run a queued backtest (the worker's task): mark it ``running`` (``started_at``), build each market's history
    from the database, run the SDK's engine with the built-in and its parameters, then write the results and every
    execution with status ``done`` in one transaction. Any exception of the run or of that write: ``failed`` with a
    short ``error`` and no execution.

    Runs again cleanly: a backtest left ``running`` by a worker that died is taken again (its executions, if any,
    deleted in the transaction that writes the new ones); ``started_at`` is the attempt's claim, so when two attempts
    overlap only the latest writes. Returns the backtest, or ``None`` when there is nothing to run (unknown, already
    done or failed, or reported)."""
    claim = timezone.now()
    runnable = Backtest.objects.filter(
        id=backtest_id, reported=False, status__in=(Backtest.Status.QUEUED, Backtest.Status.RUNNING)
    )
    # Compare-and-set: only a queued or running (abandoned) backtest is taken, and the claim time marks the attempt.
    if not runnable.update(status=Backtest.Status.RUNNING, started_at=claim, finished_at=None, error=""):
        return None
    backtest = Backtest.objects.get(id=backtest_id)
    try:
        strategy = builtin(backtest.strategy)(**backtest.params)
        histories = [market_history(market, end=backtest.end) for market in backtest.markets.order_by("id")]
        result = run_backtest(strategy, histories, cash=backtest.cash, start=backtest.start, end=backtest.end)
        _write_done(backtest, claim, result)
    except Exception as exc:
        logger.exception("backtest %s failed", backtest_id)
        _write_failed(backtest, claim, exc)
    backtest.refresh_from_db()
    return backtest


def _locked_attempt(backtest: Backtest, claim: datetime) -> bool:
    """Lock the backtest row and say whether this attempt still owns it. The lock makes the check and the write one
    step against an overlapping attempt, whose claim would have replaced ``started_at``."""
    current = Backtest.objects.select_for_update(of=("self",)).filter(id=backtest.id).values("status", "started_at")
    row = next(iter(current), None)
    return row is not None and row["status"] == Backtest.Status.RUNNING and row["started_at"] == claim


def _write_done(backtest: Backtest, claim: datetime, result: BacktestResult) -> None:
    data = result.as_dict(executions=False)
    market_ids = {str(market.id): market.id for market in backtest.markets.all()}
    with transaction.atomic():
        if not _locked_attempt(backtest, claim):
            return
        BacktestExecution.objects.filter(backtest=backtest).delete()  # a dead attempt's, if it left any
        BacktestExecution.objects.bulk_create(
            (
                BacktestExecution(
                    backtest=backtest,
                    number=number,
                    time=execution.time,
                    market_id=market_ids[execution.market],
                    side=execution.side,
                    action=execution.action,
                    price=execution.price,
                    size=execution.size,
                    reason=execution.reason,
                    cash=execution.cash,
                    order=execution.order or "",
                )
                for number, execution in enumerate(result.executions)
            ),
            batch_size=_WRITE_BATCH,
        )
        Backtest.objects.filter(id=backtest.id).update(
            status=Backtest.Status.DONE,
            version=data["version"][:40],
            metrics=data["metrics"],
            equity=data["equity"],
            reliability=data["reliability"],
            payouts=data["payouts"],
            marked=data["marked"],
            refusals=data["refusals"],
            executions_count=len(result.executions),
            error="",
            finished_at=timezone.now(),
        )


def _write_failed(backtest: Backtest, claim: datetime, exc: Exception) -> None:
    message = exc.message if isinstance(exc, (StrategyError, InvalidRequest)) else f"{type(exc).__name__}: {exc}"
    with transaction.atomic():
        if not _locked_attempt(backtest, claim):
            return
        BacktestExecution.objects.filter(backtest=backtest).delete()
        Backtest.objects.filter(id=backtest.id).update(**_failed(message))


def backtest_requeue_stale(*, older_than: timedelta | None = None) -> list[str]:
    """Queue again the backtests a dead worker left behind: ``running`` with ``started_at`` more than ``older_than``
    ago (default ``MOLTSTREET["BACKTEST_STALE_SECONDS"]``), and ``queued`` for that long without a task waiting to
    run. ``manage.py run_worker`` calls it when it starts. Returns their ids."""
    from django_tasks_db.models import DBTaskResult

    from backtests.tasks import run_backtest_task

    if older_than is None:
        older_than = timedelta(seconds=settings.MOLTSTREET["BACKTEST_STALE_SECONDS"])
    cutoff = timezone.now() - older_than
    stale = Backtest.objects.filter(reported=False, status=Backtest.Status.RUNNING, started_at__lt=cutoff)
    waiting = Backtest.objects.filter(reported=False, status=Backtest.Status.QUEUED, created_at__lt=cutoff)
    ids = [str(backtest_id) for backtest_id in stale.values_list("id", flat=True)]
    for backtest_id in waiting.values_list("id", flat=True):
        pending = DBTaskResult.objects.ready().filter(
            task_path=run_backtest_task.module_path, args_kwargs__kwargs__backtest_id=str(backtest_id)
        )
        if not pending.exists():
            ids.append(str(backtest_id))
    for stale_id in ids:
        run_backtest_task.enqueue(backtest_id=stale_id)
    return ids


# --------------------------------------------------------------------------------------------------------------------
# A result the agent ran with the SDK and uploads


def _json_capped(field: str, value: Any) -> Any:
    if len(json.dumps(value, separators=(",", ":"))) > MAX_JSON_BYTES:
        raise InvalidRequest(f"{field} is too large (at most {MAX_JSON_BYTES} bytes of JSON).", detail={field: "…"})
    return value


@overload
def _decimal(field: str, value: Any, *, places: int | None = None, allow_none: Literal[False] = False) -> Decimal: ...
@overload
def _decimal(field: str, value: Any, *, places: int | None = None, allow_none: bool) -> Decimal | None: ...
def _decimal(field: str, value: Any, *, places: int | None = None, allow_none: bool = False) -> Decimal | None:
    """A finite decimal from a string or a number (never a boolean), with at most ``places`` decimal places."""
    if value is None and allow_none:
        return None
    bad = InvalidRequest(f"{field} must be a decimal number.", detail={field: _jsonable(value)})
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise bad from None
    if not number.is_finite() or len(str(value)) > 40:
        raise bad
    if places is not None and number != number.quantize(Decimal(1).scaleb(-places)):
        raise InvalidRequest(f"{field} must have at most {places} decimal places.", detail={field: str(value)})
    return number


def _money(field: str, value: Any) -> Decimal:
    amount = _decimal(field, value, places=2)
    if abs(amount) > MAX_MONEY:
        raise InvalidRequest(f"{field} is out of range.", detail={field: str(value)})
    return amount.quantize(CENT)


def _time(field: str, value: Any) -> datetime:
    try:
        parsed = parse_time(value) if isinstance(value, str) and value else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise InvalidRequest(f"{field} must be an ISO 8601 time.", detail={field: _jsonable(value)})
    return parsed


def _mapping(field: str, value: Any, default: Any) -> Any:
    if value is None:
        return default
    if not isinstance(value, type(default)):
        kind = "an object" if isinstance(default, dict) else "a list"
        raise InvalidRequest(f"{field} must be {kind}.", detail={field: type(value).__name__})
    return value


def _by_market(field: str, value: Any, markets: set[str]) -> dict[str, str]:
    """``{market id: credits}`` for markets of the backtest (payouts, marked)."""
    out = {}
    for market, amount in _mapping(field, value, {}).items():
        if market not in markets:
            raise InvalidRequest(f"{field} names a market not in markets.", detail={field: market})
        out[market] = str(_money(f"{field}.{market}", amount))
    return out


def _executions(
    value: Any, markets: dict[str, Market], *, first: int = 0, limit: int | None = None
) -> list[BacktestExecution]:
    """The executions of a request body (at most ``limit``, default ``MAX_EXECUTIONS``), checked and numbered from
    ``first``; an error names the row by its index in the body (``executions[3].price``)."""
    limit = MAX_EXECUTIONS if limit is None else limit
    rows = _mapping("executions", value, [])
    if len(rows) > limit:
        raise InvalidRequest(f"At most {limit:,} executions.", detail={"executions": len(rows), "max": limit})
    out = []
    for index, row in enumerate(rows):
        at = f"executions[{index}]"
        if not isinstance(row, dict):
            raise InvalidRequest(f"{at} must be an object.", detail={at: type(row).__name__})
        unknown = [name for name in row if name not in EXECUTION_FIELDS]
        if unknown:
            raise InvalidRequest(
                f"{at} has an unknown field: {', '.join(map(str, unknown))}.",
                detail={f"{at}.{name}": [f"Unknown field. Known: {', '.join(EXECUTION_FIELDS)}."] for name in unknown},
            )
        market_id = row.get("market")
        market = markets.get(market_id) if isinstance(market_id, str) else None
        if market is None:
            raise InvalidRequest(
                f"{at}.market is not in markets.", detail={f"{at}.market": _jsonable(row.get("market"))}
            )
        for name, choices in (("side", EXECUTION_SIDES), ("action", EXECUTION_ACTIONS), ("reason", EXECUTION_REASONS)):
            if row.get(name) not in choices:
                raise InvalidRequest(
                    f"{at}.{name} must be one of {', '.join(choices)}.",
                    detail={f"{at}.{name}": _jsonable(row.get(name))},
                )
        price = _decimal(f"{at}.price", row.get("price"), places=2)
        if not CENT <= price <= ONE:
            raise InvalidRequest(f"{at}.price must be from 0.01 to 1.00 (credits).", detail={f"{at}.price": str(price)})
        size = row.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 2**31 - 1:
            raise InvalidRequest(
                f"{at}.size must be a positive whole number of contracts.", detail={f"{at}.size": size}
            )
        order = row.get("order")
        if order is not None and not (isinstance(order, str) and len(order) <= 64):
            raise InvalidRequest(f"{at}.order must be a string of at most 64 characters.", detail={f"{at}.order": "…"})
        out.append(
            BacktestExecution(
                number=first + index,
                time=_time(f"{at}.time", row.get("time")),
                market=market,
                side=row["side"],
                action=row["action"],
                price=price.quantize(CENT),
                size=size,
                reason=row["reason"],
                cash=_money(f"{at}.cash", row.get("cash")),
                order=order or "",
            )
        )
    return out


def _uploaded_metrics(value: Any) -> dict[str, Any]:
    metrics = _mapping("metrics", value, {})
    unknown = sorted(set(metrics) - set(sdk_metrics.METRICS))
    if unknown:
        raise InvalidRequest(
            f"Unknown metric {unknown[0]!r}; metrics are {', '.join(sdk_metrics.METRICS)}.", detail={"metrics": unknown}
        )
    out: dict[str, Any] = {}
    for name, raw in metrics.items():
        if name == "trades":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise InvalidRequest("metrics.trades must be a whole number from 0.", detail={"metrics.trades": raw})
            out[name] = raw
        else:
            number = _decimal(f"metrics.{name}", raw, allow_none=True)
            out[name] = None if number is None else str(raw).strip()
    return out


def _check_identity(
    backtest_metrics: Mapping[str, Any], flows: Decimal, payouts: Mapping[str, str], marked: Mapping[str, str]
) -> None:
    """The P&L identity of an uploaded result: ``metrics.pnl``, when given, equals the executions' cash ``flows``
    plus payouts plus marked values, to the cent; else :class:`InvalidRequest`."""
    if backtest_metrics.get("pnl") is None:
        return
    total = flows + sum((Decimal(v) for v in [*payouts.values(), *marked.values()]), ZERO)
    if Decimal(backtest_metrics["pnl"]) != total:
        raise InvalidRequest(
            "metrics.pnl must equal the executions' cash plus payouts plus marked values, to the cent.",
            detail={"metrics.pnl": backtest_metrics["pnl"], "identity": str(total)},
        )


def _executions_count(value: Any, executions: Any) -> int | None:
    """The ``executions_count`` of an upload in parts (0-100,000), or ``None`` when the executions come inline."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EXECUTIONS:
        raise InvalidRequest(
            f"executions_count must be a whole number from 0 to {MAX_EXECUTIONS:,}.",
            detail={"executions_count": _jsonable(value)},
        )
    if executions is not None:
        raise InvalidRequest(
            "Send executions inline or announce executions_count and send them in pages, not both.",
            detail={"executions_count": value},
        )
    return value


@transaction.atomic
def backtest_upload(
    *,
    agent: Agent,
    strategy: Any,
    markets: Sequence[uuid.UUID | str],
    result: Mapping[str, Any],
    params: Any = None,
    start: datetime | None = None,
    end: datetime | None = None,
    cash: Any = None,
    executions_count: Any = None,
) -> Backtest:
    """Store a backtest the agent ran with the SDK (``BacktestResult.as_dict()``), ``reported`` (the exchange did
    not run it and does not vouch for it). ``result`` holds ``version``, ``metrics``, ``equity`` (``[[time,
    credits], ...]``), ``executions``, ``reliability``, ``payouts``, ``marked``, ``refusals``.

    With the executions inline: stored ``done`` at once. With ``executions_count`` (0-100,000) instead, for a result
    whose executions do not fit one request body: stored ``uploading``, and its executions follow in pages
    (:func:`backtest_append_executions`), the last of which makes it ``done`` (0 announced: ``done`` at once).

    Checked: ``strategy`` a label of 1-200 characters; the markets as for a run (1-20 known, distinct); ``end``
    after ``start``; ``cash`` positive credits; executions (at most 100,000) in those markets with a side, action
    and reason of the engine's, a price of 0.01-1.00 credits on the cent, a positive whole size and cents of cash;
    payouts and marked values of those markets; metrics among the seven, and ``pnl``, when given, equal to the
    executions' cash plus payouts plus marked values, to the cent (the P&L identity; for an upload in parts, checked
    when its last page arrives); each JSON field at most 64 KiB; not both ``executions`` and ``executions_count``.
    Raises :class:`InvalidRequest` (nothing stored) otherwise."""
    if not isinstance(strategy, str) or not 0 < len(strategy.strip()) <= 200:
        raise InvalidRequest(
            "strategy must be a label of 1 to 200 characters.", detail={"strategy": _jsonable(strategy)}
        )
    version = result.get("version") or ""
    if not isinstance(version, str) or len(version) > 40:
        raise InvalidRequest("version must be a string of at most 40 characters.", detail={"version": "…"})
    params = _json_capped("params", _mapping("params", params, {}))
    amount = _cash(Decimal("1000.00") if cash is None else cash)
    _period(start, end)
    rows = _markets(markets)
    by_id = {str(market.id): market for market in rows}
    announced = _executions_count(executions_count, result.get("executions"))
    executions = _executions(result.get("executions"), by_id)
    payouts = _by_market("payouts", result.get("payouts"), set(by_id))
    marked = _by_market("marked", result.get("marked"), set(by_id))
    metrics = _json_capped("metrics", _uploaded_metrics(result.get("metrics")))
    in_parts = bool(announced)  # 0 announced: nothing will follow, so it is complete now
    if not in_parts:
        _check_identity(metrics, sum((row.cash for row in executions), ZERO), payouts, marked)
    equity = _mapping("equity", result.get("equity"), [])
    if len(equity) > MAX_EQUITY_POINTS:
        raise InvalidRequest(
            f"At most {MAX_EQUITY_POINTS} equity points.", detail={"equity": len(equity), "max": MAX_EQUITY_POINTS}
        )
    curve = []
    for index, point in enumerate(equity):
        if not (isinstance(point, list) and len(point) == 2):
            raise InvalidRequest("equity points must be [time, credits].", detail={f"equity[{index}]": "…"})
        when = _time(f"equity[{index}][0]", point[0])
        curve.append([when.isoformat().replace("+00:00", "Z"), str(_decimal(f"equity[{index}][1]", point[1]))])
    reliability = _json_capped("reliability", _mapping("reliability", result.get("reliability"), []))
    if len(reliability) > MAX_RELIABILITY_BINS:
        raise InvalidRequest("Too many reliability bins.", detail={"reliability": len(reliability)})
    refusals = _mapping("refusals", result.get("refusals"), {})
    if len(refusals) > MAX_REFUSAL_CODES or any(
        not isinstance(code, str) or len(code) > 64 or isinstance(n, bool) or not isinstance(n, int) or n < 0
        for code, n in refusals.items()
    ):
        raise InvalidRequest("refusals must map error codes to counts.", detail={"refusals": "…"})
    now = timezone.now()
    backtest = Backtest.objects.create(
        agent=agent,
        strategy=strategy.strip(),
        version=version,
        params=params,
        start=start,
        end=end,
        cash=amount,
        reported=True,
        status=Backtest.Status.UPLOADING if in_parts else Backtest.Status.DONE,
        metrics=metrics,
        equity=_json_capped("equity", curve),
        reliability=reliability,
        payouts=payouts,
        marked=marked,
        refusals=refusals,
        executions_count=announced if in_parts else len(executions),
        started_at=now,
        finished_at=None if in_parts else now,
    )
    backtest.markets.set(rows)
    for row in executions:
        row.backtest = backtest
    BacktestExecution.objects.bulk_create(executions, batch_size=_WRITE_BATCH)
    return backtest


@dataclass(frozen=True)
class AppendedExecutions:
    """What :func:`backtest_append_executions` did: the backtest after the page, how many of its executions are
    stored (the offset of the next page), and whether the page had been stored already (a retry)."""

    backtest: Backtest
    stored: int
    repeated: bool


def _stored_count(backtest: Backtest) -> int:
    # Pages are stored in order from 0, so the next number is the count: one step down the (backtest, number) index.
    last = BacktestExecution.objects.filter(backtest=backtest).aggregate(last=Max("number"))["last"]
    return 0 if last is None else last + 1


_COMPARED = ("number", "time", "market_id", "side", "action", "price", "size", "reason", "cash", "order")


def _already_stored(backtest: Backtest, rows: list[BacktestExecution]) -> bool:
    """Whether ``rows`` (numbered) are exactly the executions stored under their numbers."""
    numbers = [row.number for row in rows]
    stored = list(
        BacktestExecution.objects.filter(backtest=backtest, number__in=numbers)
        .order_by("number")
        .values_list(*_COMPARED)
    )
    return stored == [tuple(getattr(row, name) for name in _COMPARED) for row in rows]


@transaction.atomic
def backtest_append_executions(
    *, agent: Agent, backtest_id: uuid.UUID, offset: Any, executions: Any
) -> AppendedExecutions:
    """Store the next page of the executions of ``agent``'s upload in parts (``backtest_upload`` with
    ``executions_count``): ``executions`` (1-1,000, each checked as an inline upload's) numbered from ``offset``,
    which must be the number already stored. When the page completes the ``executions_count`` announced, the P&L
    identity is checked on all of them and the backtest becomes ``done`` (``finished_at``) in the same transaction:
    a backtest is never ``done`` with part of its executions.

    Idempotent for retries: a page whose rows are all stored already under the same numbers with the same content
    (its answer was lost) changes nothing and is answered as stored (``repeated``), even once the upload is done.

    Raises :class:`NotFound` for a backtest that is not ``agent``'s; :class:`InvalidRequest` for a bad page (an
    offset that is not a whole number from 0, no execution or more than 1,000, a bad execution, a page that goes past
    ``executions_count``) and for a last page that breaks the P&L identity (nothing of it stored: the backtest stays
    ``uploading``); :class:`UploadConflict` (409) for an offset other than the number stored (``detail.expected``)
    or a backtest that is not ``uploading`` (``detail.status``). Each error stores nothing."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < MAX_EXECUTIONS:
        raise InvalidRequest(
            f"offset must be a whole number from 0 to {MAX_EXECUTIONS - 1:,}.", detail={"offset": _jsonable(offset)}
        )
    if not isinstance(executions, list) or not executions:
        raise InvalidRequest("A page holds at least one execution.", detail={"executions": "…"})
    # Lock the backtest row (the only lock taken here): pages of one upload are stored one at a time, so the offset
    # check, the insert and the final status change are one step, and the stale sweep
    # (backtest_fail_stale_uploads) cannot fail the upload between them.
    backtest = Backtest.objects.select_for_update(of=("self",)).filter(id=backtest_id, agent=agent).first()
    if backtest is None:
        raise NotFound.of("backtest of yours", backtest_id, key="backtest")
    markets = {str(market.id): market for market in backtest.markets.all()}
    rows = _executions(executions, markets, first=offset, limit=MAX_PAGE_EXECUTIONS)
    stored = _stored_count(backtest)
    if (
        backtest.reported
        and backtest.status in (Backtest.Status.UPLOADING, Backtest.Status.DONE)
        and offset + len(rows) <= stored
        and _already_stored(backtest, rows)
    ):
        return AppendedExecutions(backtest=backtest, stored=stored, repeated=True)
    if backtest.status != Backtest.Status.UPLOADING:
        raise UploadConflict(
            f"This backtest is {backtest.status}, not uploading: it takes no more executions.",
            detail={"status": backtest.status, "expected": None},
        )
    if offset != stored:
        raise UploadConflict(
            f"{stored:,} executions are stored: the next page starts at offset {stored}.",
            detail={"status": backtest.status, "offset": offset, "expected": stored},
        )
    total = backtest.executions_count or 0
    if offset + len(rows) > total:
        raise InvalidRequest(
            f"The page goes past the {total:,} executions announced (executions_count).",
            detail={"executions": len(rows), "offset": offset, "executions_count": total},
        )
    for row in rows:
        row.backtest = backtest
    BacktestExecution.objects.bulk_create(rows, batch_size=_WRITE_BATCH)
    stored = offset + len(rows)
    if stored == total:
        flows = BacktestExecution.objects.filter(backtest=backtest).aggregate(cash=Sum("cash"))["cash"] or ZERO
        _check_identity(backtest.metrics, flows, backtest.payouts, backtest.marked)  # raises: the page rolls back
        backtest.status, backtest.finished_at = Backtest.Status.DONE, timezone.now()
        backtest.save(update_fields=["status", "finished_at"])
    return AppendedExecutions(backtest=backtest, stored=stored, repeated=False)


def backtest_fail_stale_uploads(*, older_than: timedelta | None = None) -> list[str]:
    """Mark ``failed`` ("upload not finished") the uploads in parts still ``uploading`` more than ``older_than``
    after they were created (default ``MOLTSTREET["BACKTEST_STALE_SECONDS"]``), deleting the executions they got:
    a failed backtest has no results, and nothing disappears without a trace. ``manage.py run_worker`` calls it when
    it starts. Returns their ids."""
    if older_than is None:
        older_than = timedelta(seconds=settings.MOLTSTREET["BACKTEST_STALE_SECONDS"])
    cutoff = timezone.now() - older_than
    stale = Backtest.objects.filter(status=Backtest.Status.UPLOADING, created_at__lt=cutoff)
    failed = []
    for backtest_id, announced in stale.values_list("id", "executions_count"):
        with transaction.atomic():
            # Lock the row, then re-check: a last page may have made it done since the list was read.
            backtest = (
                Backtest.objects.select_for_update(of=("self",))
                .filter(id=backtest_id, status=Backtest.Status.UPLOADING)
                .first()
            )
            if backtest is None:
                continue
            received = _stored_count(backtest)
            BacktestExecution.objects.filter(backtest=backtest).delete()
            # As a failed run (_write_failed): the error, and no results (its metrics were never checked).
            Backtest.objects.filter(id=backtest_id).update(
                **_failed(
                    f"upload not finished: {received:,} of {announced or 0:,} executions received within "
                    f"{older_than.total_seconds():,.0f} seconds"
                )
            )
        failed.append(str(backtest_id))
    return failed


__all__ = [
    "MAX_EXECUTIONS",
    "MAX_PAGE_EXECUTIONS",
    "AppendedExecutions",
    "backtest_append_executions",
    "backtest_create",
    "backtest_fail_stale_uploads",
    "backtest_requeue_stale",
    "backtest_run",
    "backtest_upload",
    "builtin",
]
