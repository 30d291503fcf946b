"""The agent's private feed (``/ws/agent/``, DESIGN section 8; the message contract is docs/realtime.md): its
messages, built once, in the transaction of the change they report, and read back for the consumer.

Writing: :func:`transaction_feed` turns what one :class:`~trading.market_tx.MarketTx` did (its market events, the
orders and trades behind them, the positions it changed, the agents whose cash it moved) into each involved agent's
messages, numbered in the agent's own sequence (:class:`agents.services.AgentFeed`) under the row lock the
transaction holds on it. ``trading.book_store.write`` stores them with everything else, in the same round trip, and
they are published after commit. Per agent and transaction, in this order:

* ``order`` for each change of one of its orders, in market ``seq`` order, with the order as ``GET /orders/{id}/``
  renders it;
* ``fill`` for each trade it took part in (interleaved with its ``order`` messages in market ``seq`` order), the
  fill as ``GET /trades/`` renders it;
* ``position`` for each of its positions the transaction changed (contracts, reserves, cost or realized P&L);
* one ``balance`` last, for every agent that got a message or whose cash moved.

Money that moves outside a market transaction (a registration's grant, a market's creation fee, an operator's
adjustment) gets its ``balance`` message from ``agents.services.CashBook.flush``.

Reading (sync: the consumer calls through ``database_sync_to_async``): :func:`agent_snapshot`, :func:`current_seq`
and :func:`stored_messages`, the private counterparts of ``trading.realtime``'s market reads.
"""

from __future__ import annotations

import decimal
import functools
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from agents.models import Agent, AgentEvent
from agents.services import AgentFeed, balance_fields
from markets.models import MarketEvent
from trading.models import Order, Position

if TYPE_CHECKING:
    from trading.market_tx import MarketTx

Message = dict[str, Any]


# --------------------------------------------------------------------------------------------------------------------
# Shapes: one per concept, the API's own.


def _serializers() -> Any:
    # The API's serializers name the fields of orders and fills for the feed too (one shape per concept). Imported
    # when first needed: trading.api imports the order service, which imports this module.
    from trading import api

    return api


# A value's rendering, or for a method field (attribute None) a function of (serializer, instance).
Converter = Callable[..., Any]
_plans: dict[type, tuple[tuple[str, str | None, Converter], ...]] = {}


def render(serializer: Any, instance: Any) -> dict[str, Any]:
    """``serializer``'s rendering of ``instance`` (a ``trading.api.PlainRendering`` serializer: its fields, in its
    order, each as DRF renders it), with cheaper conversions of the field types the order and fill shapes hold.

    DRF's ``DateTimeField`` looks the current time zone up through asgiref's ``Local`` and ``DecimalField`` copies a
    decimal context for every value: two thirds of an order's rendering, which the feed does for each order and fill
    of a transaction while the market's row is locked. The times here are aware and rendered in the default time
    zone as DRF does outside a request; trading/tests/test_agent_feed.py checks that both renderings agree."""
    plan = _plans.get(type(serializer)) or _plan(type(serializer))
    rendered = {}
    for name, attribute, convert in plan:
        if attribute is None:  # a method field
            rendered[name] = convert(serializer, instance)
        else:
            value = getattr(instance, attribute)
            rendered[name] = None if value is None else convert(value)
    return rendered


def _plan(serializer_class: Any) -> tuple[tuple[str, str | None, Converter], ...]:
    model = serializer_class.Meta.model
    plan: list[tuple[str, str | None, Converter]] = []
    for name, field in serializer_class().fields.items():
        if isinstance(field, serializers.SerializerMethodField):
            method = field.method_name
            plan.append((name, None, lambda serializer, instance, method=method: getattr(serializer, method)(instance)))
        elif isinstance(field, serializers.PrimaryKeyRelatedField):  # the related row's id, not the row
            plan.append((name, model._meta.get_field(str(field.source)).attname, str))
        else:
            plan.append((name, str(field.source), _converter(field)))
    _plans[serializer_class] = tuple(plan)
    return _plans[serializer_class]


def _converter(field: serializers.Field) -> Converter:
    """A cheaper equivalent of ``field.to_representation`` for a non-None value, where there is one."""
    if isinstance(field, serializers.DateTimeField):
        output = getattr(field, "format", api_settings.DATETIME_FORMAT)
        if isinstance(output, str) and output.lower() == ISO_8601 and not hasattr(field, "timezone"):
            zone = timezone.get_default_timezone()  # the current one outside a request that activates another

            def iso(value: datetime) -> str:
                text = value.astimezone(zone).isoformat()
                return text[:-6] + "Z" if text.endswith("+00:00") else text

            return iso
    if isinstance(field, serializers.DecimalField) and _plain_decimal_string(field):
        places = field.decimal_places or 0
        exponent, rounding = Decimal(1).scaleb(-places), field.rounding
        context = decimal.getcontext().copy()
        if field.max_digits is not None:
            context.prec = field.max_digits
        return lambda value: f"{value.quantize(exponent, rounding=rounding, context=context):f}"
    if isinstance(field, serializers.UUIDField) and field.uuid_format == "hex_verbose":
        return str
    return field.to_representation


def _plain_decimal_string(field: serializers.DecimalField) -> bool:
    """Whether DRF renders the field's values as ``quantize(value)`` in plain notation and nothing else."""
    coerce = getattr(field, "coerce_to_string", api_settings.COERCE_DECIMAL_TO_STRING)
    return bool(coerce) and field.decimal_places is not None and not field.localize and not field.normalize_output


def order_view(order: Order) -> dict[str, Any]:
    """An order as the API renders it (``trading.api.OrderSerializer``: ``id, market, side, action, price, size,
    filled, remaining, status, time_in_force, post_only, expires_at, client_order_id, cancel_reason, created_at,
    updated_at``)."""
    return render(_serializer("OrderSerializer"), order)


def fill_view(trade: Any, agent_id: uuid.UUID) -> dict[str, Any]:
    """A trade as one of its parties' fills, as ``GET /trades/`` renders it (``trading.api.FillSerializer``: the
    trade's ``id, market, seq, price (YES), size, taker_side, created_at`` and the party's ``order, side, action,
    role (maker/taker), fill_price`` (the price on its own side)). ``trade`` has its orders attached."""
    request = SimpleNamespace(user=SimpleNamespace(id=agent_id))  # all FillSerializer reads of its request
    return render(_serializers().FillSerializer(context={"request": request}), trade)


@functools.cache
def _serializer(name: str) -> Any:
    return getattr(_serializers(), name)()


def position_view(position: Position) -> dict[str, Any]:
    """A position as the feed sends it: the API's position fields that are the agent's own (``market, yes_shares,
    no_shares, yes_reserved, no_reserved`` in contracts, ``avg_yes_price``/``avg_no_price`` in credits per contract
    or ``None`` with no shares, ``realized_pnl`` in credits), without those of the market (question, mark price)."""
    average = _serializers().PositionSerializer._avg
    return {
        "market": str(position.market_id),
        "yes_shares": position.yes_shares,
        "no_shares": position.no_shares,
        "yes_reserved": position.yes_reserved,
        "no_reserved": position.no_reserved,
        "avg_yes_price": average(position.yes_cost, position.yes_shares),
        "avg_no_price": average(position.no_cost, position.no_shares),
        "realized_pnl": str(position.realized_pnl),
    }


# --------------------------------------------------------------------------------------------------------------------
# Writing: one transaction's messages.


def transaction_feed(tx: MarketTx) -> AgentFeed:
    """Each involved agent's messages for what ``tx`` did (see the module's doc), numbered in its sequence.

    Called by ``trading.book_store.write`` once the transaction's rows have their times (``created_at``,
    ``updated_at``). Every agent with a message is one that ``tx`` locked (its orders, trades, positions and cash
    change only with its row locked); raises ``AssertionError`` otherwise, a bug in the caller.
    """
    market_id = str(tx.market.id)
    orders = {str(o.id): o for o in tx.new_orders}
    orders.update((str(o.id), o) for o in tx.orders.values())
    trades = {str(t.id): t for t in tx.trades}
    bodies: defaultdict[uuid.UUID, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for event in tx.log.events:  # in seq order: the log numbers them as it adds them
        data = event.data
        if event.kind == MarketEvent.Kind.ORDER and "order" in data:
            order = orders[data["order"]["id"]]
            body = {"market": market_id, "market_seq": event.seq, "event": data["event"], "order": order_view(order)}
            bodies[order.agent_id].append((AgentEvent.Kind.ORDER, body))
        elif event.kind == MarketEvent.Kind.TRADE:
            trade = trades[data["trade"]["id"]]
            for agent_id in (trade.maker_agent_id, trade.taker_agent_id):
                body = {"market": market_id, "market_seq": event.seq, "fill": fill_view(trade, agent_id)}
                bodies[agent_id].append((AgentEvent.Kind.FILL, body))
    for agent_id in sorted(tx.changed_positions()):
        body = {"market": market_id, "position": position_view(tx.positions[agent_id])}
        bodies[agent_id].append((AgentEvent.Kind.POSITION, body))
    for agent_id in tx.cash.touched:
        bodies.setdefault(agent_id, [])
    feed = AgentFeed()
    for agent_id in sorted(bodies):
        agent = tx.agents.get(agent_id)
        if agent is None:
            raise AssertionError(f"agent {agent_id} has feed messages but is not locked by the transaction")
        for kind, body in bodies[agent_id]:
            feed.add(agent, kind, body)
        feed.add_balance(agent, market_id)
    return feed


# --------------------------------------------------------------------------------------------------------------------
# Reading for the consumer (sync: call through ``database_sync_to_async``)


def agent_snapshot(agent_id: uuid.UUID | str, reason: str) -> Message | None:
    """A ``snapshot`` message of the agent's private feed: ``seq`` (its ``feed_seq``), ``reason``, ``balance``,
    ``locked_balance``, ``available_balance`` (credits), ``orders`` (its resting orders in every market, newest first,
    as ``order`` messages carry them) and ``positions`` (those holding contracts, as ``position`` messages carry
    them); ``None`` for an unknown agent.

    One read transaction, on PostgreSQL at REPEATABLE READ: every transaction that changes the agent's orders,
    positions or balance numbers its messages in the same commit, so the contents are exactly the state after the
    messages up to ``seq``. (SQLite's transaction already holds its lock.)
    """
    outermost = not connection.in_atomic_block  # the isolation level can only be set by a transaction's first query
    with transaction.atomic():
        if connection.vendor == "postgresql" and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        agent = Agent.objects.filter(id=agent_id).only("id", "balance", "locked_balance", "feed_seq").first()
        if agent is None:
            return None
        orders = list(Order.objects.filter(agent_id=agent_id, status__in=Order.RESTING).order_by("-created_at", "-id"))
        positions = list(
            Position.objects.filter(agent_id=agent_id)
            .filter(Q(yes_shares__gt=0) | Q(no_shares__gt=0))
            .order_by("market_id")
        )
    return {
        "type": "snapshot",
        "seq": agent.feed_seq,
        "reason": reason,
        **balance_fields(agent),
        "orders": [order_view(order) for order in orders],
        "positions": [position_view(position) for position in positions],
    }


def current_seq(agent_id: uuid.UUID | str) -> int | None:
    """The agent's last private feed ``seq``, or ``None`` for an unknown agent."""
    return Agent.objects.filter(id=agent_id).values_list("feed_seq", flat=True).first()


def stored_messages(
    agent_id: uuid.UUID | str, after: int, until: int | None = None, limit: int = 1000
) -> list[Message]:
    """The agent's stored messages ``after < seq <= until`` (``until`` None: to the newest), in order, at most
    ``limit``. Each transaction numbers its messages under the agent's row lock, so the result is consecutive from
    ``after + 1``; callers still check."""
    events = AgentEvent.objects.filter(agent_id=agent_id, seq__gt=after)
    if until is not None:
        events = events.filter(seq__lte=until)
    return [event.message() for event in events.order_by("seq")[:limit]]


__all__ = [
    "agent_snapshot",
    "current_seq",
    "fill_view",
    "order_view",
    "position_view",
    "stored_messages",
    "transaction_feed",
]
