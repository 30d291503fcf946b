"""Trading API: orders, fills, positions, and a market's book, trades, history and resolution."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, cast

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_filters import rest_framework as django_filters
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from agents.models import Agent
from agents.services import balance_fields
from markets.api import MarketSerializer, ResolutionSerializer, SnapshotSerializer
from markets.models import Market, MarketEvent, Outcome, Resolution
from moltstreet.api import (
    ApiViewSet,
    CreatedFilterSet,
    ErrorBody,
    IdCursorPagination,
    IsAgent,
    Money,
    Price,
    StrictSerializer,
    choice_filter,
    errors,
    market_filter,
)
from moltstreet.errors import InvalidRequest, MoltStreetError, NotOracle
from moltstreet.ids import parse_id
from moltstreet.logs import bind
from moltstreet.money import MAX_PRICE, MIN_PRICE, complement, quantize
from moltstreet.pagination import CheckedCursorPagination
from moltstreet.strict import refuse_unknown
from trading import combiner, selectors
from trading.agent_feed import position_view
from trading.models import Action, Order, Position, Side, TimeInForce, Trade
from trading.order_batch import MAX_BATCH, OrderRequest, order_cancel_batch, order_place_batch
from trading.order_input import CLIENT_ORDER_ID_MAX, FORECAST_PLACES, REASONING_MAX, check_order_fields, parse_flag
from trading.orders import (
    PlaceResult,
    Preview,
    order_amend,
    order_cancel,
    order_cancel_all,
    order_place,
    order_preview,
)
from trading.realtime import public_messages
from trading.resolution import resolution_dispute, resolution_propose

# --------------------------------------------------------------------------------------------------------------------
# Serializers


class UUIDStringField(serializers.UUIDField):
    """A UUID sent as a string. DRF's ``UUIDField`` also turns a JSON integer into a UUID (``7`` becomes
    ``00000000-0000-0000-0000-000000000007``), so a mistyped id would read as an unknown market, or cancel nothing."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


# The body of POST /orders/ as the OpenAPI schema describes it (a docstring would show in the schema). It checks
# nothing at run time: the order service does (trading.order_input.parse_order), by the rules whose bounds stand here
# as its constants; trading/tests/test_api.py checks that both accept the same requests.
class OrderInputSerializer(StrictSerializer):
    market = UUIDStringField()
    side = serializers.ChoiceField(choices=Side.choices, help_text="YES or NO: the contract bought or sold.")
    action = serializers.ChoiceField(choices=Action.choices, help_text="BUY or SELL.")
    price = Price(
        min_value=MIN_PRICE,
        max_value=MAX_PRICE,
        help_text="Limit price of the order's own side, 0.01-0.99 on the 0.01 tick (string or number).",
    )
    size = serializers.IntegerField(
        min_value=1, max_value=settings.MOLTSTREET["MAX_ORDER_SIZE"], help_text="Contracts."
    )
    time_in_force = serializers.ChoiceField(choices=TimeInForce.choices, default=TimeInForce.GTC)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None, help_text="Required for GTD.")
    post_only = serializers.BooleanField(default=False)
    client_order_id = serializers.CharField(
        required=False, allow_null=True, default=None, max_length=CLIENT_ORDER_ID_MAX, min_length=1
    )
    forecast = serializers.DecimalField(
        max_digits=1 + FORECAST_PLACES,
        decimal_places=FORECAST_PLACES,
        min_value=0,
        max_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text="Your probability of YES, 0-1.",
    )
    reasoning = serializers.CharField(required=False, allow_blank=True, default="", max_length=REASONING_MAX)


class OrderRequestSerializer(OrderInputSerializer):
    dry_run = serializers.BooleanField(
        default=False,
        help_text="true: answer what the order would do now (fills, reserve, resulting position and balance, or its "
        "error) and change nothing.",
    )


# The fields of an order request the service reads (all but `market`), and whether a request must have them.
_ORDER_FIELDS = tuple(
    (name, field.required) for name, field in OrderInputSerializer._declared_fields.items() if name != "market"
)


def order_request(data: Any, *, besides: tuple[str, ...] = ()) -> tuple[uuid.UUID, dict[str, Any]]:
    """The market id and the order fields of a ``POST /orders/`` body (or of one order of a batch), for
    :func:`~trading.orders.order_place` to parse: the values as they came (a required field left out is ``None``, an
    optional one is left to the service's default). Checked here: a JSON object, with no field that is not an
    order's (:func:`~trading.order_input.check_order_fields`) or one of ``besides`` (read by the caller), and
    ``market`` a UUID as a string.

    Raises :class:`InvalidRequest` (``invalid_request``) otherwise.
    """
    if not isinstance(data, dict):
        problem = "The body must be a JSON object."
        raise InvalidRequest(problem, detail={"non_field_errors": [problem]})
    check_order_fields(data, besides=("market", *besides))
    market = data.get("market")
    try:
        market_id = uuid.UUID(market) if isinstance(market, str) else None
    except ValueError:
        market_id = None
    if market_id is None:
        problem = "market must be a UUID."
        raise InvalidRequest(problem, detail={"market": [problem]})
    return market_id, {name: data.get(name) for name, required in _ORDER_FIELDS if required or name in data}


# One shared instance of DRF's time field, to render times outside a serializer exactly as the serializers do.
_TIME = serializers.DateTimeField(read_only=True)


def _time(value) -> str | None:
    return _TIME.to_representation(value) if value is not None else None


class PlainRendering(serializers.ModelSerializer):
    """A model serializer that renders its ``Meta.fields`` without building its fields for each instance: DRF builds
    and deep-copies every field of a model serializer per instance, a tenth of an order's time.

    The fields are built once per class, and each renders as in DRF (its ``to_representation`` of the attribute;
    ``None`` stays ``None``), except that the attribute is read directly (a foreign key as its id, as text) and a
    method field calls ``get_<name>`` of the serializer at hand (whose context it may need). A test in
    ``trading/tests/test_api.py`` checks that DRF's own rendering gives the same JSON."""

    _plans: ClassVar[dict[type, tuple[tuple[str, Callable[[Any, Any], Any]], ...]]] = {}

    def to_representation(self, instance: Any) -> dict[str, Any]:
        plan = PlainRendering._plans.get(type(self)) or self._plan()
        return {name: render(self, instance) for name, render in plan}

    @classmethod
    def _plan(cls) -> tuple[tuple[str, Callable[[Any, Any], Any]], ...]:
        model = cls.Meta.model
        plan = tuple((name, _renderer(field, model)) for name, field in cls().fields.items())
        PlainRendering._plans[cls] = plan
        return plan


def _renderer(field: serializers.Field, model: type[models.Model]) -> Callable[[Any, Any], Any]:
    """How :class:`PlainRendering` renders one bound field of a serializer of ``model`` rows: a function of
    (serializer, instance)."""
    if isinstance(field, serializers.SerializerMethodField):
        method = field.method_name
        return lambda serializer, instance: getattr(serializer, method)(instance)
    if isinstance(field, serializers.PrimaryKeyRelatedField):  # the related row's id, without reading the row
        relation = model._meta.get_field(str(field.source))
        assert isinstance(relation, models.ForeignKey), field
        source = relation.attname
        to_representation: Callable[[Any], Any] = str
    else:
        source, to_representation = str(field.source), field.to_representation
        assert "." not in source and source != "*", field  # one attribute of the instance

    def render(_serializer, instance):
        value = getattr(instance, source)
        return None if value is None else to_representation(value)

    return render


class OrderSerializer(PlainRendering):
    """An order. Rendered by a plain function (DRF builds and deep-copies every field of a model serializer per
    instance, a tenth of an order's time); the declared fields stay for the schema, and a test checks that both
    render the same."""

    price = Price(read_only=True)
    remaining = serializers.IntegerField(read_only=True)
    # Blank until the order is cancelled or expires; declared so that the schema allows "" besides the reasons.
    cancel_reason = serializers.ChoiceField(choices=Order.CancelReason.choices, allow_blank=True, read_only=True)

    class Meta:
        model = Order
        fields = [
            "id",
            "market",
            "side",
            "action",
            "price",
            "size",
            "filled",
            "remaining",
            "status",
            "time_in_force",
            "post_only",
            "expires_at",
            "client_order_id",
            "cancel_reason",
            "replaced_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class TradeSerializer(PlainRendering):
    """A public trade: ``price`` is the YES price; ``taker_side`` the queue the taker bid in (YES or NO). Rendered
    by a plain function, as :class:`OrderSerializer` is."""

    price = Price(read_only=True)

    class Meta:
        model = Trade
        fields = ["id", "market", "seq", "price", "size", "taker_side", "created_at"]
        read_only_fields = fields


class FillSerializer(TradeSerializer):
    """One of the agent's own fills: the trade plus its order, side, action, role and the price on its own side."""

    order = serializers.SerializerMethodField()
    side = serializers.SerializerMethodField()
    action = serializers.SerializerMethodField()
    role = serializers.SerializerMethodField()
    fill_price = serializers.SerializerMethodField()

    class Meta(TradeSerializer.Meta):
        fields = [*TradeSerializer.Meta.fields, "order", "side", "action", "role", "fill_price"]
        read_only_fields = fields

    def _own(self, trade: Trade) -> Order:
        return trade.maker_order if trade.maker_agent_id == self.context["request"].user.id else trade.taker_order

    def get_order(self, trade: Trade) -> str:
        return str(self._own(trade).id)

    def get_side(self, trade: Trade) -> str:
        return self._own(trade).side

    def get_action(self, trade: Trade) -> str:
        return self._own(trade).action

    def get_role(self, trade: Trade) -> str:
        return "maker" if trade.maker_agent_id == self.context["request"].user.id else "taker"

    @extend_schema_field({"type": "string", "format": "decimal", "example": "0.45"})
    def get_fill_price(self, trade: Trade) -> str:
        return str(trade.price if self._own(trade).side == Side.YES else complement(trade.price))


class PlacedOrderSerializer(serializers.Serializer):
    order = OrderSerializer()
    trades = TradeSerializer(many=True)


class AmendInputSerializer(StrictSerializer):
    price = Price(
        required=False,
        min_value=MIN_PRICE,
        max_value=MAX_PRICE,
        help_text="New limit price on the order's own side (0.01-0.99 on the tick). A change loses queue priority.",
    )
    size = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=settings.MOLTSTREET["MAX_ORDER_SIZE"],
        help_text="New total size in contracts, filled ones included (more than `filled`). Smaller at the same "
        "price keeps the order's place in the queue; larger loses it.",
    )


class AmendedOrderSerializer(serializers.Serializer):
    order = OrderSerializer(help_text="The order as it now stands: the same one, or its replacement.")
    replaced = OrderSerializer(
        allow_null=True,
        help_text="The order cancelled (reason `amended`) and replaced by `order`; null when amended in place.",
    )
    trades = TradeSerializer(many=True, help_text="What the replacement traded on arrival, as taker.")


class BatchPlaceInputSerializer(StrictSerializer):
    orders = serializers.ListField(
        child=OrderInputSerializer(),
        min_length=1,
        max_length=MAX_BATCH,
        help_text=f"1-{MAX_BATCH} orders, each as `POST /orders/` takes it (no `dry_run`).",
    )


class BatchCancelInputSerializer(StrictSerializer):
    ids = serializers.ListField(
        child=UUIDStringField(), min_length=1, max_length=MAX_BATCH, help_text=f"1-{MAX_BATCH} order ids."
    )


_ENTRY_STATUS_HELP = "The HTTP status this entry would have had as a request of its own (201, 200 or the error's)."
_ENTRY_ERROR_HELP = "The error this entry got, in the one error shape's `error` object; null on success."


class BatchPlacedSerializer(serializers.Serializer):
    status = serializers.IntegerField(help_text=_ENTRY_STATUS_HELP)
    order = OrderSerializer(allow_null=True)
    trades = TradeSerializer(many=True)
    error = ErrorBody(allow_null=True, help_text=_ENTRY_ERROR_HELP)


class BatchPlaceSerializer(serializers.Serializer):
    orders = BatchPlacedSerializer(many=True, help_text="One entry per order sent, in the order sent.")


class BatchCancelledSerializer(serializers.Serializer):
    status = serializers.IntegerField(help_text=_ENTRY_STATUS_HELP)
    order = OrderSerializer(allow_null=True, help_text="The cancelled order; null on error.")
    error = ErrorBody(allow_null=True, help_text=_ENTRY_ERROR_HELP)


class BatchCancelSerializer(serializers.Serializer):
    orders = BatchCancelledSerializer(many=True, help_text="One entry per id sent, in the order sent.")


class PreviewFillSerializer(serializers.Serializer):
    price = Price(help_text="The trade's YES price.")
    fill_price = Price(help_text="The price on the order's own side.")
    size = serializers.IntegerField(help_text="Contracts.")
    taker_side = serializers.ChoiceField(choices=Side.choices, help_text="The queue the order bids in.")


class PreviewPositionSerializer(serializers.Serializer):
    market = serializers.UUIDField()
    yes_shares = serializers.IntegerField()
    no_shares = serializers.IntegerField()
    yes_reserved = serializers.IntegerField()
    no_reserved = serializers.IntegerField()
    avg_yes_price = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)
    avg_no_price = serializers.DecimalField(max_digits=6, decimal_places=4, allow_null=True)
    realized_pnl = Money()


class PreviewOrderSerializer(OrderSerializer):
    """An order as a preview shows it: not stored, so without ``id`` and times (a repeat shows the stored one)."""

    id = serializers.UUIDField(read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True, allow_null=True)
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)


class PreviewSerializer(serializers.Serializer):
    """What an order would do now (``dry_run``), changing nothing."""

    dry_run = serializers.BooleanField(help_text="Always true: nothing was placed.")
    status = serializers.IntegerField(
        help_text="The status the order would get: 201 placed, 200 a repeat of its `client_order_id`, or the error's."
    )
    error = ErrorBody(allow_null=True, help_text="The error it would get, or null.")
    order = PreviewOrderSerializer(
        allow_null=True,
        help_text="The order as it would stand after matching (`id`, `created_at`, `updated_at` null: not created; "
        "a repeat shows the stored original).",
    )
    fills = PreviewFillSerializer(many=True, help_text="The trades it would take, in execution order.")
    self_trade_cancels = serializers.ListField(
        child=serializers.UUIDField(), help_text="Your own resting orders it would cancel (self-trade prevention)."
    )
    reserve = inline_serializer(
        name="PreviewReserve",
        fields={
            "credits": Money(help_text="Credits its resting remainder would keep reserved (a BUY)."),
            "contracts": serializers.IntegerField(help_text="Contracts its resting remainder would reserve (a SELL)."),
        },
        allow_null=True,
    )
    balance = Money(allow_null=True, help_text="Your balance afterwards, in credits.")
    locked_balance = Money(allow_null=True)
    available_balance = Money(allow_null=True)
    position = PreviewPositionSerializer(allow_null=True, help_text="Your position in the market afterwards.")


class PositionSerializer(serializers.ModelSerializer):
    """Contracts held in one market with average cost (credits per contract), realized and marked P&L.

    ``marked_pnl`` values the held contracts at the last YES price (NO at 1 - price) against their cost basis.
    """

    question = serializers.CharField(source="market.question", read_only=True)
    market_status = serializers.CharField(source="market.status", read_only=True)
    avg_yes_price = serializers.SerializerMethodField()
    avg_no_price = serializers.SerializerMethodField()
    realized_pnl = Money()
    marked_pnl = serializers.SerializerMethodField()
    mark_price = serializers.SerializerMethodField()

    class Meta:
        model = Position
        fields = [
            "market",
            "question",
            "market_status",
            "yes_shares",
            "no_shares",
            "yes_reserved",
            "no_reserved",
            "avg_yes_price",
            "avg_no_price",
            "realized_pnl",
            "mark_price",
            "marked_pnl",
            "updated_at",
        ]
        read_only_fields = fields

    @staticmethod
    def _avg(cost: Decimal, shares: int) -> str | None:
        return str((cost / shares).quantize(Decimal("0.0001"))) if shares else None

    @extend_schema_field({"type": "string", "format": "decimal", "nullable": True})
    def get_avg_yes_price(self, pos: Position) -> str | None:
        return self._avg(pos.yes_cost, pos.yes_shares)

    @extend_schema_field({"type": "string", "format": "decimal", "nullable": True})
    def get_avg_no_price(self, pos: Position) -> str | None:
        return self._avg(pos.no_cost, pos.no_shares)

    @extend_schema_field({"type": "string", "format": "decimal", "nullable": True})
    def get_mark_price(self, pos: Position) -> str | None:
        return str(pos.market.last_price) if pos.market.last_price is not None else None

    @extend_schema_field({"type": "string", "format": "decimal", "nullable": True})
    def get_marked_pnl(self, pos: Position) -> str | None:
        mark = pos.market.last_price
        if mark is None:
            return None
        value = mark * pos.yes_shares + complement(mark) * pos.no_shares
        return str(quantize(value - pos.yes_cost - pos.no_cost))


class CancelAllInputSerializer(StrictSerializer):
    market = UUIDStringField(required=False, allow_null=True, default=None)


class ResolveInputSerializer(StrictSerializer):
    outcome = serializers.ChoiceField(choices=Outcome.choices)


class DisputeInputSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=2000, help_text="What the proposed outcome gets wrong, and why.")


class BookLevelSerializer(serializers.Serializer):
    price = Price()
    size = serializers.IntegerField()


class OrderBookSerializer(serializers.Serializer):
    market = serializers.UUIDField()
    seq = serializers.IntegerField()
    yes = BookLevelSerializer(many=True, help_text="YES bids at YES prices, best first.")
    no = BookLevelSerializer(many=True, help_text="NO bids at NO prices, best first.")
    best_bid = Price(allow_null=True)
    best_ask = Price(allow_null=True)


class CandleSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    open = Price()
    high = Price()
    low = Price()
    close = Price()
    volume = serializers.IntegerField()


class HistorySerializer(serializers.Serializer):
    market = serializers.UUIDField()
    interval = serializers.CharField()
    candles = CandleSerializer(many=True)


# The messages of GET /markets/{id}/events/: the live feed's public messages (trading.realtime.public_message,
# docs/realtime.md) plus the event's time. These serializers only describe them in the schema; the view renders
# with public_message itself, so the feed and the history cannot drift apart.

_EVENT_TIME_HELP = "When the event was recorded (ISO 8601, UTC)."


class EventLevelSerializer(BookLevelSerializer):
    side = serializers.ChoiceField(
        choices=Side.choices, help_text="The queue: YES bids at YES prices, NO bids at NO prices (q = YES ask 1 - q)."
    )
    size = serializers.IntegerField(help_text="Contracts now resting at this price, absolute; 0 removes the level.")


class BookEventSerializer(serializers.Serializer):
    """An order change: the book levels it changed, with their new absolute sizes."""

    type = serializers.CharField(help_text="`book`")
    seq = serializers.IntegerField()
    market = serializers.UUIDField()
    levels = EventLevelSerializer(many=True, help_text="Empty when the order did not rest (it traded at once).")
    created_at = serializers.DateTimeField(help_text=_EVENT_TIME_HELP)


class EventTradeSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    seq = serializers.IntegerField()
    price = Price(help_text="YES price in credits.")
    size = serializers.IntegerField(help_text="Contracts.")
    taker_side = serializers.ChoiceField(choices=Side.choices, help_text="The queue the taker bid in.")
    created_at = serializers.DateTimeField()


class TradeEventSerializer(serializers.Serializer):
    """A trade."""

    type = serializers.CharField(help_text="`trade`")
    seq = serializers.IntegerField()
    market = serializers.UUIDField()
    trade = EventTradeSerializer()
    created_at = serializers.DateTimeField(help_text=_EVENT_TIME_HELP)


class EventMarketStateSerializer(serializers.Serializer):
    """The market with the event: ``status``, ``outcome``, ``yes_price``/``no_price`` (last traded), ``volume`` and
    ``deadline`` as recorded then; ``question``, ``best_bid``, ``best_ask`` and ``reference_price`` as they are now
    (``closed`` and ``resolved`` carry a null top of book: they cancel every resting order)."""

    id = serializers.UUIDField()
    question = serializers.CharField()
    status = serializers.ChoiceField(choices=Market.Status.choices)
    outcome = serializers.ChoiceField(choices=Outcome.choices, allow_null=True)
    yes_price = Price(allow_null=True)
    no_price = Price(allow_null=True)
    best_bid = Price(allow_null=True)
    best_ask = Price(allow_null=True)
    volume = serializers.IntegerField(help_text="Contracts traded.")
    deadline = serializers.DateTimeField()
    reference_price = serializers.DecimalField(max_digits=5, decimal_places=4, allow_null=True)


class MarketChangeEventSerializer(serializers.Serializer):
    """A change of the market itself: created, updated, closed, a resolution proposed, disputed or final."""

    type = serializers.CharField(help_text="`market`")
    seq = serializers.IntegerField()
    event = serializers.CharField(
        help_text="`created`, `updated`, `closed`, `resolution_proposed`, `resolution_disputed` or `resolved`."
    )
    market = EventMarketStateSerializer()
    resolution = ResolutionSerializer(required=False, help_text="With the three resolution events only.")
    created_at = serializers.DateTimeField(help_text=_EVENT_TIME_HELP)


class ReferenceEventSerializer(serializers.Serializer):
    """A new snapshot of a mirrored market's source (DESIGN section 10)."""

    type = serializers.CharField(help_text="`reference`")
    seq = serializers.IntegerField()
    market = serializers.UUIDField()
    reference = SnapshotSerializer()
    created_at = serializers.DateTimeField(help_text=_EVENT_TIME_HELP)


MarketEventMessage = PolymorphicProxySerializer(
    component_name="MarketEvent",
    serializers={
        "book": BookEventSerializer,
        "trade": TradeEventSerializer,
        "market": MarketChangeEventSerializer,
        "reference": ReferenceEventSerializer,
    },
    resource_type_field_name="type",
    many=True,
)


# --------------------------------------------------------------------------------------------------------------------
# Views


class OrderFilter(CreatedFilterSet):
    market = market_filter()
    status = choice_filter(
        [*Order.Status.values, "resting"], help_text="`resting`: open or partial.", method="filter_status"
    )
    side = choice_filter(Side.values, help_text="YES or NO.")
    action = choice_filter(Action.values, help_text="BUY or SELL.")

    class Meta:
        model = Order
        fields = ["market", "status", "side", "action", "since", "until"]

    def filter_status(self, queryset, name, value):
        return queryset.filter(status__in=Order.RESTING) if value == "resting" else queryset.filter(status=value)


@extend_schema_view(
    list=extend_schema(
        summary="Own orders",
        description="Newest first. Filter with `market`, `status` (open, partial, filled, cancelled, expired, or "
        "`resting` for open+partial), `side`, `action`, `since`/`until` (ISO 8601 times on `created_at`, inclusive).",
        responses={200: OrderSerializer, **errors(400, 401)},
    ),
    retrieve=extend_schema(summary="One own order", responses={200: OrderSerializer, **errors(401, 404)}),
)
class OrderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    serializer_class = OrderSerializer
    permission_classes = [IsAgent]
    filterset_class = OrderFilter

    def get_queryset(self):
        return Order.objects.filter(agent=cast(Agent, self.request.user))  # IsAgent: the user is an Agent

    def throttle_weight(self, request) -> int:
        """What the request costs of the agent's write budget (``moltstreet.throttling.AgentWriteThrottle``): a
        batch one per order or id it carries (1 to ``MAX_BATCH``), any other request (a refused batch too) 1."""
        key = {"batch": "orders", "batch_cancel": "ids"}.get(getattr(self, "action", None) or "")
        items = request.data.get(key) if key and isinstance(request.data, dict) else None
        # A batch refused as a whole (empty, or over MAX_BATCH) did nothing: it costs one request.
        return len(items) if isinstance(items, list) and 1 <= len(items) <= MAX_BATCH else 1

    @extend_schema(
        summary="Place an order (or preview it with dry_run)",
        request=OrderRequestSerializer,
        responses={
            201: PlacedOrderSerializer,
            200: PolymorphicProxySerializer(
                component_name="PlacedOrPreview",
                serializers=[PlacedOrderSerializer, PreviewSerializer],
                resource_type_field_name=None,
            ),
            **errors(400, 401, 403, 404, 409, 503),
        },
        description=(
            "BUY or SELL YES or NO contracts at a limit price on the order's own side. A BUY reserves price x size "
            "credits; a SELL reserves held contracts. Matching is price-time priority at the resting order's price. "
            "`time_in_force`: GTC (default), GTD (with `expires_at`), IOC, FOK; `post_only` rejects a crossing order. "
            "Returns 201 `{order, trades}`; a repeated `client_order_id` returns the original order with 200. "
            "With `dry_run: true`: 200 with what the order would do now (its fills, the reserve it would keep, your "
            "balance and position afterwards, or the error it would get, with the status it would have), and "
            "nothing is stored: no order, trade, event or sequence number."
        ),
    )
    def create(self, request):
        market_id, fields = order_request(request.data, besides=("dry_run",))
        # The request's log lines (its access line included) carry who placed what where (moltstreet/logs.py).
        bind(agent_id=request.user.id, market_id=market_id)
        if parse_flag("dry_run", request.data.get("dry_run", False)):
            preview = order_preview(agent=request.user, market_id=market_id, **fields)
            return Response(preview_body(preview))
        # The service parses the fields (trading.order_input); its errors are the client's (invalid_price, ...).
        place = combiner.place if combiner.enabled() else order_place  # group commit per market (issue 17)
        result = place(agent=request.user, market_id=market_id, **fields)
        bind(order_id=result.order.id)
        return Response(placed_body(result), status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)

    @extend_schema(
        summary="Amend an order",
        request=AmendInputSerializer,
        responses={200: AmendedOrderSerializer, **errors(400, 401, 403, 404, 409, 503)},
        description=(
            "Change a resting order's `price` and/or `size` (the new total, filled contracts included). A smaller "
            "size at the same price amends it in place and keeps its place in the queue. A new price or a larger "
            "size cancels it (reason `amended`, `replaced_by` set) and places a replacement with the same "
            "`client_order_id` for `size - filled` contracts, behind the orders already at that price, in one "
            "transaction: it may trade at once, and a refusal (such as `post_only_would_cross` or "
            "`insufficient_balance`) leaves the original order untouched. The reserve follows to the cent. "
            "Returns `{order, replaced, trades}`."
        ),
    )
    def partial_update(self, request, pk=None):
        bind(agent_id=request.user.id, order_id=pk)
        data = request.data
        if not isinstance(data, dict):
            problem = "The body must be a JSON object."
            raise InvalidRequest(problem, detail={"non_field_errors": [problem]})
        refuse_unknown("field", data, ["price", "size"])
        result = order_amend(
            agent=request.user, order_id=parse_id(pk, "order"), price=data.get("price"), size=data.get("size")
        )
        bind(market_id=result.order.market_id)
        return Response(
            {
                "order": OrderSerializer(result.order).data,
                "replaced": OrderSerializer(result.replaced).data if result.replaced is not None else None,
                "trades": TradeSerializer(result.trades, many=True).data,
            }
        )

    @extend_schema(
        summary="Place a batch of orders",
        request=BatchPlaceInputSerializer,
        responses={200: BatchPlaceSerializer, **errors(400, 401, 503)},
        description=(
            f"Up to {MAX_BATCH} orders, each as `POST /orders/` takes it. Each succeeds or fails on its own: the "
            "answer lists, in the order sent, each order's `status` (201, 200 for a repeated `client_order_id`, or "
            "its error's), `order` and `trades`, or `error`. The orders of one market are matched in one "
            "transaction, one after the other in the order sent; a retry with the same `client_order_id`s places "
            "nothing twice."
        ),
    )
    @action(detail=False, methods=["post"], url_path="batch", pagination_class=None, filter_backends=[])
    def batch(self, request):
        orders = _batch_items(request.data, "orders")
        bind(agent_id=request.user.id)
        requests: list[OrderRequest | InvalidRequest] = []
        for item in orders:
            try:
                market_id, fields = order_request(item)
            except InvalidRequest as exc:
                requests.append(exc)
            else:
                requests.append(OrderRequest(market_id=market_id, fields=fields))
        placed = iter(
            order_place_batch(agent=request.user, requests=[r for r in requests if isinstance(r, OrderRequest)])
        )
        outcomes = [r if isinstance(r, InvalidRequest) else next(placed) for r in requests]
        return Response({"orders": [_placed_entry(outcome) for outcome in outcomes]})

    @extend_schema(
        summary="Cancel a batch of orders",
        request=BatchCancelInputSerializer,
        responses={200: BatchCancelSerializer, **errors(400, 401, 503)},
        description=(
            f'Cancels up to {MAX_BATCH} of your resting orders by id (`{{"ids": [...]}}`), releasing their '
            "reserves. Each succeeds or fails on its own: the answer lists, in the order sent, each id's `status` "
            "and cancelled `order`, or its `error` (`not_found`, `order_not_cancellable`)."
        ),
    )
    @action(detail=False, methods=["post"], url_path="batch-cancel", pagination_class=None, filter_backends=[])
    def batch_cancel(self, request):
        ids = _batch_items(request.data, "ids")
        bind(agent_id=request.user.id)
        outcomes = order_cancel_batch(agent=request.user, order_ids=ids)
        entries = []
        for outcome in outcomes:
            if isinstance(outcome, MoltStreetError):
                entries.append({"status": outcome.http_status, "order": None, "error": outcome.as_dict()["error"]})
            else:
                entries.append({"status": status.HTTP_200_OK, "order": OrderSerializer(outcome).data, "error": None})
        return Response({"orders": entries})

    @extend_schema(
        summary="Cancel an order",
        responses={200: OrderSerializer, **errors(401, 404, 409, 503)},
        description="Cancels a resting order and releases its reserve.",
    )
    def destroy(self, request, pk=None):
        bind(agent_id=request.user.id, order_id=pk)
        order = order_cancel(agent=request.user, order_id=parse_id(pk, "order"))
        bind(market_id=order.market_id)
        return Response(OrderSerializer(order).data)

    @extend_schema(
        summary="Cancel all resting orders",
        request=CancelAllInputSerializer,
        responses={200: OrderSerializer(many=True), **errors(400, 401, 503)},
        description="Cancels every resting order of the agent, or only those in `market`; returns the cancelled orders.",
    )
    @action(detail=False, methods=["post"], url_path="cancel-all", pagination_class=None, filter_backends=[])
    def cancel_all(self, request):
        data = CancelAllInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        bind(agent_id=request.user.id, market_id=data.validated_data["market"])
        cancelled = order_cancel_all(agent=request.user, market_id=data.validated_data["market"])
        return Response(OrderSerializer(cancelled, many=True).data)


def placed_body(result: PlaceResult) -> dict[str, Any]:
    """``{order, trades}``: a placed order as ``POST /orders/`` answers it."""
    return {"order": OrderSerializer(result.order).data, "trades": TradeSerializer(result.trades, many=True).data}


def _placed_entry(outcome: PlaceResult | MoltStreetError) -> dict[str, Any]:
    """One entry of a batch's answer: ``{status, order, trades, error}``."""
    if isinstance(outcome, MoltStreetError):
        return {"status": outcome.http_status, "order": None, "trades": [], "error": outcome.as_dict()["error"]}
    code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
    return {"status": code, **placed_body(outcome), "error": None}


def _batch_items(data: Any, key: str) -> list[Any]:
    """The list under ``key`` of a batch request's body: a JSON object with that one field, holding 1 to
    ``MAX_BATCH`` items. Raises :class:`InvalidRequest` otherwise (the whole batch is refused; nothing is done)."""
    if not isinstance(data, dict):
        problem = "The body must be a JSON object."
        raise InvalidRequest(problem, detail={"non_field_errors": [problem]})
    refuse_unknown("field", data, [key])
    items = data.get(key)
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        problem = f"{key} must be a list of 1 to {MAX_BATCH} items."
        raise InvalidRequest(problem, detail={key: [problem], "max": MAX_BATCH})
    return items


def preview_body(preview: Preview) -> dict[str, Any]:
    """The answer to ``POST /orders/`` with ``dry_run`` (:class:`PreviewSerializer`)."""
    body: dict[str, Any] = {
        "dry_run": True,
        "status": status.HTTP_201_CREATED if preview.created else status.HTTP_200_OK,
        "error": None,
        "order": None,
        "fills": [],
        "self_trade_cancels": [],
        "reserve": None,
        "balance": None,
        "locked_balance": None,
        "available_balance": None,
        "position": None,
    }
    if preview.error is not None:
        return {**body, "status": preview.error.http_status, "error": preview.error.as_dict()["error"]}
    order = preview.order
    assert order is not None
    rendered = OrderSerializer(order).data
    if preview.created:  # not stored: no id, no times
        rendered.update(id=None, created_at=None, updated_at=None)
    body.update(
        order=rendered,
        fills=[
            {
                "price": str(trade.price),
                "fill_price": str(trade.price if order.side == Side.YES else complement(trade.price)),
                "size": trade.size,
                "taker_side": trade.taker_side,
            }
            for trade in preview.trades
        ],
        self_trade_cancels=[str(o.id) for o in preview.self_trade_cancels],
    )
    if preview.agent is not None and preview.position is not None:
        body.update(
            reserve={"credits": str(preview.reserve_credits), "contracts": preview.reserve_contracts},
            **balance_fields(preview.agent),
            position=position_view(preview.position),
        )
    return body


class FillFilter(CreatedFilterSet):
    market = market_filter()

    class Meta:
        model = Trade
        fields = ["market", "since", "until"]


@extend_schema_view(
    list=extend_schema(
        summary="Own fills",
        description="Newest first. Filter with `market`, `since`/`until` (ISO 8601 times on `created_at`, inclusive).",
        responses={200: FillSerializer, **errors(400, 401)},
    )
)
class FillViewSet(mixins.ListModelMixin, ApiViewSet):
    serializer_class = FillSerializer
    permission_classes = [IsAgent]
    filterset_class = FillFilter

    def get_queryset(self):
        return selectors.agent_fills(cast(Agent, self.request.user))  # IsAgent: the user is an Agent


class PositionFilter(django_filters.FilterSet):
    market = market_filter()
    open = choice_filter(
        ["true", "false"],
        help_text="`true`: only positions holding contracts; `false`: only those holding none.",
        method="filter_open",
    )

    class Meta:
        model = Position
        fields = ["market", "open"]

    def filter_open(self, queryset, name, value):
        flat = Q(yes_shares=0, no_shares=0)
        return queryset.exclude(flat) if value == "true" else queryset.filter(flat)


@extend_schema_view(
    list=extend_schema(
        summary="Own positions",
        description="`?market=` for one market; `?open=true` for those holding contracts (`false`: none).",
        responses={200: PositionSerializer, **errors(400, 401)},
    )
)
class PositionViewSet(mixins.ListModelMixin, ApiViewSet):
    serializer_class = PositionSerializer
    permission_classes = [IsAgent]
    pagination_class = IdCursorPagination
    filterset_class = PositionFilter

    def get_queryset(self):
        return Position.objects.filter(agent=cast(Agent, self.request.user)).select_related("market")


class TradeCursorPagination(CheckedCursorPagination):
    """A market's trades, newest first."""

    ordering = ("-seq",)


class EventCursorPagination(CheckedCursorPagination):
    """A market's events in ``seq`` order, oldest first; ``?page_size=`` up to 5000 (a backtest reads them all)."""

    ordering = ("seq",)  # unique per market: the cursor is the last seq sent
    page_size = 1000
    max_page_size = 5000


_MAX_SEQ = 2**63 - 1  # a BIGINT


def _seq_param(params, name: str) -> int | None:
    """A ``seq`` from the query (``None`` if absent or empty): a whole number from 0, else 400 ``invalid_request``."""
    value = params.get(name)
    if not value:
        return None
    # ASCII digits only (str.isdigit() also accepts "²"), and short enough to be read as a number at once.
    if not (value.isascii() and value.isdigit() and len(value) <= 19 and int(value) <= _MAX_SEQ):
        raise InvalidRequest(f"{name} must be a whole number from 0 (a market seq).", detail={name: value})
    return int(value)


def _time_param(params, name: str) -> datetime | None:
    """An ISO 8601 time from the query (``None`` if absent or empty; without a zone it is UTC), else 400."""
    value = params.get(name)
    if not value:
        return None
    try:
        return _TIME.to_internal_value(value)
    except serializers.ValidationError as exc:
        raise InvalidRequest(f"{name} must be an ISO 8601 time.", detail={name: value}) from exc


class MarketTradingViewSet(ApiViewSet):
    """The trading side of a market: its book, trades, price history and resolution (same ``/markets/{id}/`` URLs)."""

    queryset = Market.objects.all()
    serializer_class = MarketSerializer

    @extend_schema(
        summary="Order book",
        parameters=[
            OpenApiParameter(
                "depth", {"type": "integer", "minimum": 1, "maximum": 999}, description="Levels per side (default all)."
            )
        ],
        responses={200: OrderBookSerializer, **errors(404)},
        description="Aggregated resting size per price, best first: `yes` are YES bids at YES prices, `no` are NO "
        "bids at NO prices (a NO bid at q is a YES ask at 1 - q). `seq` is the market sequence number reflected.",
    )
    @action(detail=True, methods=["get"])
    def orderbook(self, request, pk=None):
        depth = request.query_params.get("depth")
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses; a book has at most 99 levels a side.
        if depth is not None and not (depth.isascii() and depth.isdigit() and len(depth) <= 3 and int(depth) >= 1):
            raise InvalidRequest("depth must be a whole number from 1 to 999.", detail={"depth": depth})
        return Response(selectors.book_levels(self.get_object(), int(depth) if depth else None))

    @extend_schema(
        summary="Trades in a market",
        responses={200: TradeSerializer(many=True), **errors(404)},
        description="Newest first, cursor pages; `price` is the YES price.",
    )
    @action(detail=True, methods=["get"], pagination_class=TradeCursorPagination)
    def trades(self, request, pk=None):
        queryset = Trade.objects.filter(market=self.get_object())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(TradeSerializer(page, many=True).data)

    @extend_schema(
        summary="A market's recorded events, for replays and backtests",
        parameters=[
            OpenApiParameter(
                "since",
                {"type": "integer", "minimum": 0, "maximum": _MAX_SEQ},
                description="Only events after this `seq` (exclusive): the last one you have.",
            ),
            OpenApiParameter(
                "until",
                {"type": "integer", "minimum": 0, "maximum": _MAX_SEQ},
                description="Only events up to this `seq` (inclusive); below `since`, the page is empty.",
            ),
            OpenApiParameter(
                "start", datetime, description="Only events recorded at or after this time (ISO 8601, inclusive)."
            ),
            OpenApiParameter(
                "end",
                datetime,
                description="Only events recorded before this time (ISO 8601, exclusive); at or before `start`, the page is empty.",
            ),
        ],
        responses={200: MarketEventMessage, **errors(400, 404)},
        description=(
            "Every public event of the market in `seq` order (oldest first), as the live feed `/ws/markets/{id}/` "
            "sends it (docs/realtime.md), plus `created_at`, the time it was recorded (ISO 8601, UTC): "
            "`book` (`levels`: `[{side, price, size}]`, each level's new absolute size in contracts, 0 removes it; "
            "`price` is the bid in that side's queue, a NO price for `side` NO), `trade` (`trade.price` the YES price, "
            "`size` in contracts, `taker_side`), `market` (`event` created, updated, closed, resolution_proposed, "
            "resolution_disputed or resolved, with the `market` state incl. `status` and `outcome`, and `resolution` "
            "for the resolution events) and `reference` (a snapshot of a mirrored market's source: `yes_price`, "
            "`yes_bid`, `yes_ask` as 0-1 probabilities). Prices are credits per contract as decimal strings. No "
            "agent or order is named. Sequence numbers are consecutive, so applying the messages in order rebuilds "
            "the book at any `seq`. Filters: `since` < seq <= `until`, `start` <= created_at < `end`. Cursor pages "
            "(`next`), `page_size` default 1000, at most 5000."
        ),
    )
    @action(detail=True, methods=["get"], pagination_class=EventCursorPagination)
    def events(self, request, pk=None):
        """A market's recorded history for replays and backtests: the live feed's public messages of its stored
        events (``trading.realtime.public_message``) with ``created_at``, in ``seq`` order, cursor-paginated by
        ``seq``. Query: ``since``/``until`` (seq, exclusive/inclusive), ``start``/``end`` (ISO 8601 times on
        ``created_at``, inclusive/exclusive), ``page_size`` (1-5000, default 1000). Answers 400 ``invalid_request``
        for a bad value, 404 for an unknown market.

        Each page is one range scan of the ``(market, seq)`` index (``markets_event_unique_seq``), stopped by the
        page's LIMIT; the time filters are checked on the rows it reads (trading/tests/test_events_api.py checks the
        plan)."""
        market = self.get_object()
        params = request.query_params
        since, until = _seq_param(params, "since"), _seq_param(params, "until")
        start, end = _time_param(params, "start"), _time_param(params, "end")
        # A window with nothing in it (until below since, end before start) is an empty page, as for snapshots/.
        events = MarketEvent.objects.filter(market=market)
        if since is not None:
            events = events.filter(seq__gt=since)
        if until is not None:
            events = events.filter(seq__lte=until)
        if start is not None:
            events = events.filter(created_at__gte=start)
        if end is not None:
            events = events.filter(created_at__lt=end)
        page = self.paginate_queryset(events) or []  # always a page: the view has a pagination class
        recorded = {event.seq: _time(event.created_at) for event in page}
        # One read of the market row for the page's `market` messages, however many there are.
        messages = [{**message, "created_at": recorded[message["seq"]]} for message in public_messages(market.id, page)]
        return self.get_paginated_response(messages)

    @extend_schema(
        summary="Price history",
        parameters=[
            OpenApiParameter("interval", str, enum=list(selectors.INTERVALS), description="Candle width (default 1h)."),
            OpenApiParameter("start", datetime, description="ISO 8601 start (optional)."),
            OpenApiParameter("end", datetime, description="ISO 8601 end (optional, default now)."),
        ],
        responses={200: HistorySerializer, **errors(400, 404)},
        description="OHLC candles of the YES price with contracts traded, oldest first, at most 1000.",
    )
    @action(detail=True, methods=["get"])
    def history(self, request, pk=None):
        market = self.get_object()
        times = {
            name: serializers.DateTimeField().to_internal_value(request.query_params[name])
            for name in ("start", "end")
            if request.query_params.get(name)
        }
        interval = request.query_params.get("interval", "1h")
        data = selectors.candles(market, interval, **times)
        return Response({"market": str(market.id), "interval": interval, "candles": data})

    @extend_schema(
        summary="Propose a market's resolution (oracles)",
        request=ResolveInputSerializer,
        responses={202: MarketSerializer, 200: MarketSerializer, **errors(400, 401, 403, 404, 409, 503)},
        description="Only agents an operator flagged as oracles, only on a closed market (409 `market_not_closed`), "
        "never on one the oracle created or has orders, a position or forecasts in (409 `conflict_of_interest`). "
        "The outcome is *proposed*: answered 202 with `resolution.status` `proposed`, it becomes final and pays "
        "(1.00 per winning contract, VOID 0.50 per contract) at `resolution.dispute_until` "
        "(RESOLUTION_DISPUTE_HOURS, default 24) unless an agent disputes it (`POST /markets/{id}/dispute/`), in "
        "which case an operator decides. Answered 200 with the market resolved when the window is 0.",
    )
    @action(detail=True, methods=["post"], permission_classes=[IsAgent])
    def resolve(self, request, pk=None):
        if not request.user.is_oracle:
            raise NotOracle()
        data = ResolveInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        resolution = resolution_propose(
            market_id=self.get_object().id, outcome=data.validated_data["outcome"], agent=request.user
        )
        market = Market.objects.get(id=resolution.market_id)
        final = resolution.status == Resolution.Status.FINAL
        return Response(MarketSerializer(market).data, status=status.HTTP_200_OK if final else status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Dispute a proposed resolution",
        request=DisputeInputSerializer,
        responses={201: ResolutionSerializer, **errors(400, 401, 403, 404, 409, 503)},
        description="Any agent may dispute an oracle's proposed resolution while its dispute window is open, once, "
        "with a `reason` (1-2000 characters): the proposal then does not become final by itself; an operator "
        "confirms it or decides another outcome. 409 `not_disputable` when there is no proposal open to disputes, "
        "`already_disputed` for a second dispute by the same agent.",
    )
    @action(detail=True, methods=["post"], permission_classes=[IsAgent])
    def dispute(self, request, pk=None):
        data = DisputeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        dispute = resolution_dispute(
            market_id=self.get_object().id, agent=request.user, reason=data.validated_data["reason"]
        )
        return Response(ResolutionSerializer(dispute.resolution).data, status=status.HTTP_201_CREATED)
