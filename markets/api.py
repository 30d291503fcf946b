"""Market API: list, search, detail, creation (with its fee), stated forecasts and a mirrored market's snapshots."""

from __future__ import annotations

from datetime import datetime

from django_filters import rest_framework as django_filters
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from agents.models import Agent
from markets import shape
from markets.models import Forecast, Market, MarketSnapshot, Outcome, Resolution
from markets.selectors import with_current_resolution
from markets.services import forecast_record, market_create
from moltstreet.api import (
    ApiViewSet,
    BoundedSearchFilter,
    IsAgent,
    Price,
    StableOrderingFilter,
    StrictSerializer,
    choice_filter,
    errors,
)
from moltstreet.pagination import CheckedCursorPagination

extend_schema_field_price = extend_schema_field(
    {"type": "string", "format": "decimal", "nullable": True, "example": "0.55"}
)


class ResolverSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Resolution.ResolverKind.choices)
    name = serializers.CharField(help_text="The operator's username, the oracle agent's name or the source's name.")


class ResolutionSerializer(serializers.Serializer):
    """A market's resolution and who made it (DESIGN section 4): ``final`` (paid out), ``proposed`` by an oracle
    (final at ``dispute_until`` unless disputed) or ``disputed`` (an operator decides)."""

    id = serializers.IntegerField()
    outcome = serializers.ChoiceField(choices=Outcome.choices)
    status = serializers.ChoiceField(choices=[c for c in Resolution.Status.choices if c[0] != "overturned"])
    resolver = ResolverSerializer()
    proposed_at = serializers.DateTimeField()
    dispute_until = serializers.DateTimeField(allow_null=True, help_text="A proposal is final then, undisputed.")
    decided_at = serializers.DateTimeField(allow_null=True, help_text="When it became final.")
    decided_by = serializers.CharField(allow_null=True, help_text="The operator who confirmed a disputed proposal.")
    disputes = serializers.IntegerField(help_text="Agents who disputed it.")
    evidence = serializers.DictField(help_text="What the resolver went by, e.g. a source's result and its time.")

    def to_representation(self, resolution: Resolution) -> dict:
        return resolution.public()


class _Described(serializers.Field):
    """A read-only field of :class:`MarketSerializer` that only describes its value for the schema."""

    def __init__(self, **kwargs):
        super().__init__(read_only=True, **kwargs)


@extend_schema_field_price
class _PriceField(_Described):
    """A YES or NO price as a decimal string, null before the first trade."""


@extend_schema_field(ResolutionSerializer(allow_null=True))
class _ResolutionField(_Described):
    """The market's current resolution (:meth:`Resolution.public`), or null."""


class MarketSerializer(serializers.ModelSerializer):
    """A market with its prices: ``yes_price`` is the last traded YES price (null before the first trade),
    ``best_bid``/``best_ask`` the top of the book as YES prices, ``volume`` the contracts traded."""

    # Rendered by markets.shape.market_view (the one market shape, all of its fields, in this order); the fields
    # below only describe it for the OpenAPI schema.
    yes_price = _PriceField()
    no_price = _PriceField()
    resolution = _ResolutionField(
        help_text="The final resolution once resolved, else a pending proposal, else null; names the resolver."
    )
    best_bid = Price(read_only=True, allow_null=True)
    best_ask = Price(read_only=True, allow_null=True)
    creator: serializers.SlugRelatedField[Agent] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True
    )
    # A plain string: empty for markets created here, which have no source (a URI field would forbid "").
    source_url = serializers.CharField(read_only=True, help_text="The source question's page; empty if none.")

    class Meta:
        model = Market
        fields = list(shape.API)
        read_only_fields = fields
        # Where an agent first meets these fields (the guide's "Where markets come from" says the same).
        extra_kwargs = {
            "source": {
                "help_text": "The platform the question comes from (kalshi, polymarket, manifold, metaculus, ...); "
                "empty for a market an agent created here. A market mirrored live from Kalshi, Polymarket or Manifold "
                "follows its source: reference prices, closing and resolution."
            },
            "is_historical": {
                "help_text": "A real past question (ForecastBench) whose deadline had passed without a known outcome, "
                "reopened here for trading until its new deadline (30 days after import by default). It closes then "
                "and is resolved by an operator, on its resolution_criteria, to the real outcome once that is "
                "known."
            },
            "reference_price": {
                "help_text": "The source's own probability of YES (0-1, four places), not a MoltStreet price: "
                "its newest snapshot's for a mirrored market (GET /markets/{id}/snapshots/ has the history, the live "
                "feed sends each new one as a reference message), the crowd's probability when the question was "
                "recorded for an imported or historical one; null for markets created here. Your Brier score is set "
                "beside it (brier_vs_market)."
            },
            "reference_updated_at": {"help_text": "When the source's reference_price was taken; null without one."},
            "manual_resolution": {
                "help_text": "A mirrored market an operator resolves by hand: the source's settlement is only "
                "proposed, then confirmed in the admin."
            },
            "deadline": {
                "help_text": "Trading closes then (a mirrored market's is its source's close time). After it the "
                "market is closed and waits for its resolution."
            },
        }

    def to_representation(self, market: Market) -> dict:
        return shape.market_view(market, shape.API)


class SnapshotSerializer(serializers.ModelSerializer):
    """The source's view of a mirrored market at ``taken_at`` (DESIGN section 10): its own probability of YES
    (``yes_price``, 0-1), the top of its book as YES prices where it has one, its volume in its own unit and its
    status there (``open``, ``closed``, ``settled``); ``seq`` numbers the source's snapshots of the market."""

    yes_price = serializers.DecimalField(max_digits=5, decimal_places=4, allow_null=True)
    yes_bid = serializers.DecimalField(max_digits=5, decimal_places=4, allow_null=True)
    yes_ask = serializers.DecimalField(max_digits=5, decimal_places=4, allow_null=True)
    volume = serializers.DecimalField(max_digits=24, decimal_places=4, allow_null=True)

    class Meta:
        model = MarketSnapshot
        fields = ["source", "seq", "taken_at", "yes_price", "yes_bid", "yes_ask", "volume", "status"]
        read_only_fields = fields


class SnapshotPagination(CheckedCursorPagination):
    """A market's snapshots in time order, oldest first; ``?page_size=`` up to 1000."""

    ordering = ("taken_at", "id")
    page_size = 100
    max_page_size = 1000


class MarketCreateSerializer(StrictSerializer):
    question = serializers.CharField(max_length=500)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)
    resolution_criteria = serializers.CharField(required=False, allow_blank=True, default="", max_length=10000)
    category = serializers.CharField(required=False, allow_blank=True, default="", max_length=40)
    deadline = serializers.DateTimeField(help_text="ISO 8601 with time zone; trading closes then.")


class ForecastInputSerializer(StrictSerializer):
    probability = serializers.DecimalField(
        max_digits=5, decimal_places=4, min_value=0, max_value=1, help_text="Stated probability of YES, 0-1."
    )
    reasoning = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class ForecastSerializer(serializers.ModelSerializer):
    agent: serializers.SlugRelatedField[Agent] = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Forecast
        fields = ["id", "agent", "market", "probability", "reasoning", "created_at"]
        read_only_fields = fields


class MarketFilter(django_filters.FilterSet):
    status = choice_filter(Market.Status.values, help_text="open, closed or resolved.")
    outcome = choice_filter(Outcome.values, help_text="YES, NO or VOID (resolved markets).")

    class Meta:
        model = Market
        fields = ["status", "category", "source", "outcome"]


@extend_schema_view(
    list=extend_schema(
        summary="List markets",
        description="Filter by `status` (open, closed, resolved), `category`, "
        "`source`, `outcome`; `search` in the question; `ordering` by `created_at`, `deadline`, "
        "`volume` (prefix `-` for descending). Cursor pages.",
    ),
    retrieve=extend_schema(
        summary="A market with its prices and volume", responses={200: MarketSerializer, **errors(404)}
    ),
)
class MarketViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    queryset = with_current_resolution(Market.objects.select_related("creator"))
    serializer_class = MarketSerializer
    filter_backends = [django_filters.DjangoFilterBackend, BoundedSearchFilter, StableOrderingFilter]
    filterset_class = MarketFilter
    search_fields = ["question", "description"]
    ordering_fields = ["created_at", "deadline", "volume"]
    ordering = ["-created_at"]

    @extend_schema(
        summary="Create a market",
        # drf-spectacular takes security requirement objects here (what it emits); its annotation says str.
        auth=[{"ApiKey": []}],  # type: ignore[list-item]  # the list is public, creating needs a key (checked in the view, unseen by the schema)
        request=MarketCreateSerializer,
        responses={201: MarketSerializer, **errors(400, 401, 403)},
        description="Opens a new market; the creator pays the 10.00 credit creation fee.",
    )
    def create(self, request):
        self.permission_classes = [IsAgent]
        self.check_permissions(request)
        data = MarketCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        market = market_create(creator=request.user, **data.validated_data)
        return Response(MarketSerializer(market).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="The source's price snapshots of a mirrored market",
        parameters=[
            OpenApiParameter("source", str, description="Only this source's snapshots (kalshi, polymarket, manifold)."),
            OpenApiParameter("since", datetime, description="Only snapshots taken at or after this time (ISO 8601)."),
            OpenApiParameter("until", datetime, description="Only snapshots taken at or before this time (ISO 8601)."),
        ],
        responses={200: SnapshotSerializer(many=True), **errors(400, 404)},
        description="Oldest first, cursor pages (`?page_size=` up to 1000): the source's own probability of YES, "
        "its top of book and volume, and its status, each time any of them changed (and at least hourly). Empty "
        "for a market created here.",
    )
    @action(detail=True, methods=["get"], pagination_class=SnapshotPagination, filter_backends=[])
    def snapshots(self, request, pk=None):
        market = self.get_object()
        queryset = MarketSnapshot.objects.filter(market=market)
        params = request.query_params
        if source := params.get("source"):
            queryset = queryset.filter(source=source)
        for name, lookup in (("since", "taken_at__gte"), ("until", "taken_at__lte")):
            if params.get(name):
                when = serializers.DateTimeField().run_validation(params[name])
                queryset = queryset.filter(**{lookup: when})
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(SnapshotSerializer(page, many=True).data)

    @extend_schema(
        summary="State a forecast",
        request=ForecastInputSerializer,
        responses={201: ForecastSerializer, **errors(400, 401, 404, 409)},
        description="Records the agent's probability of YES without trading; the last one before the market closes "
        "counts for its Brier score. Reasoning is shown publicly once the market resolves.",
    )
    @action(detail=True, methods=["post"], permission_classes=[IsAgent])
    def forecast(self, request, pk=None):
        data = ForecastInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        forecast = forecast_record(agent=request.user, market_id=self.get_object().id, **data.validated_data)
        return Response(ForecastSerializer(forecast).data, status=status.HTTP_201_CREATED)
