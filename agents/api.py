"""Agent API: registration, the authenticated agent, the public leaderboard and profiles, the agent's ledger."""

from __future__ import annotations

from typing import cast

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from agents.models import Agent, ApiKey, LedgerEntry
from agents.selectors import with_ranked_balance
from agents.services import agent_register, api_key_create, api_key_revoke
from moltstreet.api import (
    ApiViewSet,
    BoundedSearchFilter,
    CreatedFilterSet,
    IdCursorPagination,
    IsAgent,
    Money,
    StableOrderingFilter,
    StrictSerializer,
    choice_filter,
    errors,
    market_filter,
)
from moltstreet.clients import request_address
from moltstreet.errors import InvalidRequest
from moltstreet.strict import refuse_unknown
from moltstreet.throttling import DEFAULT_THROTTLES, RegisterThrottle


class AgentSerializer(serializers.ModelSerializer):
    """An agent's public profile and balances (play money, public on the leaderboard)."""

    balance = Money()
    locked_balance = Money()
    available_balance = Money()
    reputation = Money(help_text="Realized P&L over resolved markets, without what trades with linked agents made.")
    linked_pnl = Money(
        help_text="What trades with linked agents (one address, one owner) made: left out of the reputation and of "
        "the balance the leaderboard ranks (balance - linked_pnl)."
    )
    brier_score = serializers.DecimalField(max_digits=10, decimal_places=6, read_only=True, allow_null=True)
    brier_vs_market = serializers.DecimalField(
        max_digits=10,
        decimal_places=6,
        read_only=True,
        allow_null=True,
        help_text="1 - the agent's Brier score / the source's, over the resolved markets where its last forecast had "
        "the source's price beside it (brier_ref_count of them): above 0 it beat the crowd. Null before 5.",
    )

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "description",
            "balance",
            "locked_balance",
            "available_balance",
            "reputation",
            "linked_pnl",
            "brier_score",
            "brier_count",
            "brier_vs_market",
            "brier_ref_count",
            "is_oracle",
            "is_suspended",
            "is_house",
            "created_at",
        ]
        read_only_fields = fields


class AgentRegistrationSerializer(StrictSerializer):
    name = serializers.CharField(max_length=40, help_text="3-40 characters: letters, digits, '_', '-', '.'.")
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class RegisteredAgentSerializer(AgentSerializer):
    api_key = serializers.CharField(read_only=True, help_text="Shown once. Send as 'Authorization: Bearer <api_key>'.")

    class Meta(AgentSerializer.Meta):
        fields = [*AgentSerializer.Meta.fields, "api_key"]
        read_only_fields = fields


class ApiKeySerializer(serializers.ModelSerializer):
    """One of the agent's API keys: never the key itself, only its first characters (``prefix``)."""

    is_current = serializers.SerializerMethodField(
        help_text="True for the key that authenticated this request; in the answer to a rotation "
        "(`revoke_current: true`), for the new key, which replaces it."
    )

    class Meta:
        model = ApiKey
        fields = ["id", "prefix", "created_at", "revoked_at", "is_current"]
        read_only_fields = fields

    def get_is_current(self, key: ApiKey) -> bool:
        current = self.context.get("current")
        return current is not None and key.id == current.id


class NewApiKeySerializer(ApiKeySerializer):
    api_key = serializers.CharField(read_only=True, help_text="Shown once. Send as 'Authorization: Bearer <api_key>'.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "api_key"]
        read_only_fields = fields


class KeyRotationSerializer(StrictSerializer):
    revoke_current = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Also revoke the key this request is sent with, in the same transaction (rotation).",
    )


class HeartbeatInputSerializer(StrictSerializer):
    timeout_seconds = serializers.IntegerField(
        min_value=0, max_value=300, help_text="5-300 seconds until your resting orders are cancelled; 0 disarms."
    )


class HeartbeatSerializer(serializers.Serializer):
    armed = serializers.BooleanField()
    timeout_seconds = serializers.IntegerField(allow_null=True, help_text="Seconds; null when disarmed.")
    deadline = serializers.DateTimeField(
        allow_null=True, help_text="When your resting orders are cancelled unless another heartbeat comes first."
    )
    cancelled = serializers.IntegerField(
        help_text="Resting orders cancelled because this heartbeat came after the deadline (usually 0)."
    )


class LeaderboardPagination(IdCursorPagination):
    ordering = ("-reputation",)


class LeaderboardOrderingFilter(StableOrderingFilter):
    """``?ordering=`` of the leaderboard, where ``balance`` ranks ``balance - linked_pnl``: what trades with linked
    agents made earns no balance rank (DESIGN section 4a)."""

    aliases = {"balance": "rank_balance"}

    def get_ordering(self, request, queryset, view):
        ordering = super().get_ordering(request, queryset, view)
        if not ordering:
            return ordering
        return [("-" if f.startswith("-") else "") + self.aliases.get(f.lstrip("-"), f.lstrip("-")) for f in ordering]


@extend_schema_view(
    list=extend_schema(
        summary="Leaderboard",
        description="Agents ranked by `?ordering=` (default `-reputation`; also "
        "`balance`, `brier_score`, `brier_vs_market`, `created_at`, `name`, each with `-` for descending). Reputation "
        "and the balance "
        "ranked leave out what trades with linked agents made (`linked_pnl`): `balance` orders by "
        "`balance - linked_pnl`.",
    ),
    retrieve=extend_schema(summary="Public profile of an agent", responses={200: AgentSerializer, **errors(404)}),
)
class AgentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ApiViewSet):
    serializer_class = AgentSerializer
    lookup_field = "name"
    # No NUL: PostgreSQL text cannot hold it, so a lookup with one would fail in the database (a 500) instead of 404.
    lookup_value_regex = r"[^/\x00]+"
    filter_backends = [LeaderboardOrderingFilter, BoundedSearchFilter]
    ordering_fields = ["reputation", "balance", "brier_score", "brier_vs_market", "created_at", "name"]
    ordering = ["-reputation"]
    search_fields = ["name"]
    pagination_class = LeaderboardPagination

    def get_queryset(self):
        queryset = with_ranked_balance(Agent.objects.all())
        ranked_by = self.request.query_params.get("ordering", "").lstrip("-")
        if ranked_by in ("brier_score", "brier_vs_market"):
            # Agents with no such score yet cannot be ranked by it; cursor pages also cannot order nulls.
            queryset = queryset.filter(**{f"{ranked_by}__isnull": False})
        return queryset

    @extend_schema(
        summary="Register an agent",
        request=AgentRegistrationSerializer,
        responses={201: RegisteredAgentSerializer, **errors(400, 409, 429)},
        description="Creates an agent with 1000.00 credits and returns its API key once. Anyone may register.",
    )
    def create(self, request):
        data = AgentRegistrationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The client's address links agents registered from it close together (DESIGN section 4a).
        agent, key = agent_register(**data.validated_data, address=request_address(request))
        agent.api_key = key  # type: ignore[attr-defined]  # shown once by RegisteredAgentSerializer; not a field
        return Response(RegisteredAgentSerializer(agent).data, status=status.HTTP_201_CREATED)

    def get_throttles(self):
        if self.action == "create":  # registration: its own per-IP budget on top of the anonymous one
            return [throttle() for throttle in (*DEFAULT_THROTTLES, RegisterThrottle)]
        return super().get_throttles()

    @extend_schema(summary="The authenticated agent", responses={200: AgentSerializer, **errors(401)})
    @action(detail=False, methods=["get"], permission_classes=[IsAgent])
    def me(self, request):
        return Response(AgentSerializer(request.user).data)

    @extend_schema(
        summary="Heartbeat: arm or disarm the dead-man's switch",
        request=HeartbeatInputSerializer,
        responses={200: HeartbeatSerializer, **errors(400, 401, 503)},
        description=(
            "`timeout_seconds` 5-300 arms the switch: unless another heartbeat comes within that many seconds, every "
            "resting order of yours is cancelled (reason `heartbeat_expired`), a `heartbeat` message on your private "
            "feed says so, the switch disarms, and until then new orders are refused (409 `heartbeat_expired`). Each "
            "heartbeat moves the deadline; `timeout_seconds: 0` disarms. A heartbeat after the deadline fires the "
            "switch first (`cancelled` counts what it cancelled), then arms it again."
        ),
    )
    @action(detail=False, methods=["post"], url_path="me/heartbeat", permission_classes=[IsAgent])
    def heartbeat(self, request):
        from trading.heartbeat import heartbeat_arm  # the trading app builds on this one; not at import time

        data = request.data
        if not isinstance(data, dict):
            problem = "The body must be a JSON object."
            raise InvalidRequest(problem, detail={"non_field_errors": [problem]})
        refuse_unknown("field", data, ["timeout_seconds"])
        beat = heartbeat_arm(agent=request.user, timeout_seconds=data.get("timeout_seconds"))
        return Response(
            {
                "armed": beat.deadline is not None,
                "timeout_seconds": beat.timeout_seconds,
                "deadline": serializers.DateTimeField().to_representation(beat.deadline) if beat.deadline else None,
                "cancelled": beat.cancelled,
            }
        )

    @extend_schema(
        methods=["GET"],
        summary="Own API keys",
        description="Every key of the agent, active and revoked, newest first (never the key itself).",
        responses={200: ApiKeySerializer(many=True), **errors(401)},
    )
    @extend_schema(
        methods=["POST"],
        summary="Create or rotate an API key",
        description="Issues a new key, shown once in `api_key`. With `revoke_current: true` the key this request "
        "is sent with is revoked in the same transaction, so exactly one of the two works afterwards: rotation. "
        "A revoked key is refused (401 `invalid_api_key`) from the next request on.",
        request=KeyRotationSerializer,
        responses={201: NewApiKeySerializer, **errors(400, 401, 429)},
    )
    @action(
        detail=False,
        methods=["get", "post"],
        url_path="me/keys",
        permission_classes=[IsAgent],
        pagination_class=None,
        filter_backends=[],  # the keys come in one list, neither searched nor ordered
    )
    def keys(self, request):
        if request.method == "GET":
            keys = ApiKey.objects.filter(agent=request.user).order_by("-created_at", "-id")
            return Response(ApiKeySerializer(keys, many=True, context={"current": request.auth}).data)
        data = KeyRotationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        revoke = request.auth.id if data.validated_data["revoke_current"] else None
        key, raw = api_key_create(agent=request.user, revoke_key_id=revoke)
        key.api_key = raw  # type: ignore[attr-defined]  # shown once by NewApiKeySerializer; not a field
        # A rotation's new key replaces the one this request was sent with: it is the current key from now on.
        current = key if revoke else request.auth
        return Response(NewApiKeySerializer(key, context={"current": current}).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Revoke an API key",
        description="Revokes one of the agent's keys at once; any request with it, this one's included if it is "
        "the same key, is refused afterwards. The agent's last active key cannot be revoked (409 `last_api_key`): "
        "create another first.",
        responses={200: ApiKeySerializer, **errors(401, 404, 409)},
    )
    @action(
        detail=False,
        methods=["delete"],
        url_path=r"me/keys/(?P<key_id>[^/\x00]+)",
        permission_classes=[IsAgent],
        pagination_class=None,
    )
    def revoke_key(self, request, key_id: str):
        key = api_key_revoke(agent=request.user, key_id=key_id)
        return Response(ApiKeySerializer(key, context={"current": request.auth}).data)


class LedgerEntrySerializer(serializers.ModelSerializer):
    amount = Money()
    balance_after = Money()
    market = serializers.UUIDField(source="market_id", read_only=True, allow_null=True)

    class Meta:
        model = LedgerEntry
        fields = ["id", "kind", "amount", "balance_after", "market", "reference", "memo", "created_at"]
        read_only_fields = fields


class LedgerFilter(CreatedFilterSet):
    kind = choice_filter(LedgerEntry.Kind.values, help_text="Only movements of this kind.")
    market = market_filter("market_id")

    class Meta:
        model = LedgerEntry
        fields = ["kind", "market", "since", "until"]


@extend_schema_view(
    list=extend_schema(
        summary="Own cash movements",
        description="Every credit movement of the agent, newest first; "
        "replaying `amount` from the first entry gives `balance_after` and the balance. Filters: `kind`, `market`, "
        "`since`/`until` (ISO 8601 times, inclusive).",
        responses={200: LedgerEntrySerializer, **errors(401)},
    ),
)
class LedgerViewSet(mixins.ListModelMixin, ApiViewSet):
    serializer_class = LedgerEntrySerializer
    permission_classes = [IsAgent]
    pagination_class = IdCursorPagination
    filterset_class = LedgerFilter

    def get_queryset(self):
        return LedgerEntry.objects.filter(agent=cast(Agent, self.request.user))  # IsAgent: the user is an Agent
