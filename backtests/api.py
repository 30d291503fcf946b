"""Backtests API (DESIGN section 11): run a built-in strategy on recorded history, upload a result run with the SDK,
and read backtests, their executions and the built-ins.

Units, as everywhere in the API: money in credits (decimal strings), prices in credits per contract (a fill's price
on its own side; book and trade prices are YES prices), sizes in whole contracts, times ISO 8601 UTC.

Who sees what: a backtest is public, like the leaderboard and the markets (``GET /backtests/{id}/`` and its
executions need no key, and the spectator pages show them); ``GET /backtests/`` lists the caller's own backtests and
``POST`` needs an API key.

Uploads in parts (a result whose executions would not fit the request body limit, ``MAX_REQUEST_BODY_BYTES``):
``POST /backtests/`` with ``reported`` and ``executions_count`` instead of ``executions`` stores it ``uploading``;
``POST /backtests/{id}/executions/`` then appends pages ``{offset, executions}`` in order, and the last one makes it
``done``, so a backtest is never ``done`` with part of its executions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_filters import rest_framework as django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from moltstreet_client.strategies import BUILTINS
from rest_framework import permissions, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from backtests import selectors
from backtests.models import Backtest, BacktestExecution
from backtests.services import (
    EXECUTION_FIELDS,
    MAX_EXECUTIONS,
    MAX_PAGE_EXECUTIONS,
    backtest_append_executions,
    backtest_create,
    backtest_upload,
)
from moltstreet.api import (
    ApiViewSet,
    CreatedFilterSet,
    IsAgent,
    Money,
    Price,
    StrictSerializer,
    choice_filter,
    errors,
    market_filter,
)
from moltstreet.errors import InvalidRequest, NotFound
from moltstreet.ids import parse_id
from moltstreet.logs import bind
from moltstreet.pagination import CheckedCursorPagination
from moltstreet.throttling import AgentWriteThrottle
from trading.api import UUIDStringField

if TYPE_CHECKING:
    from agents.models import Agent
    from markets.models import Market

# --------------------------------------------------------------------------------------------------------------------
# Serializers


@extend_schema_field(
    {
        "type": "object",
        "properties": {name: {} for name in EXECUTION_FIELDS},
        "additionalProperties": False,
        "description": "`{time, market, side, action, price, size, reason, cash, order}` (the SDK's "
        "`Execution.as_dict()`): checked by the service, which refuses any other field.",
    }
)
class _ExecutionRow(serializers.DictField):
    """One uploaded execution, as sent: the service (``backtests.services``) checks it; this states its fields."""


class BacktestInputSerializer(StrictSerializer):
    """``POST /backtests/``: the fields of both a run and an upload. The service checks the values (one validator);
    this only types them. An upload's result fields (:class:`ReportedResultSerializer`) go to the service as sent,
    and only with ``reported``."""

    strategy = serializers.CharField(
        max_length=200,
        help_text="A built-in's name (`GET /backtests/strategies/`); with `reported`, any label such as `module:Class`.",
    )
    params = serializers.DictField(
        required=False, default=dict, help_text="The strategy's parameters by name; the others take their default."
    )
    markets = serializers.ListField(
        child=UUIDStringField(), help_text="1-20 market ids; each must have recorded history in the period."
    )
    start = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="Replay from (ISO 8601); default the first event."
    )
    end = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Replay until, exclusive (ISO 8601); after `start`; default the last event.",
    )
    cash = serializers.JSONField(
        required=False,
        default=None,
        help_text="Starting credits: a positive amount with at most 2 decimal places (string or number); default "
        "1000.00. Simulated: no balance is touched.",
    )
    reported = serializers.BooleanField(
        default=False,
        help_text="true: store a result run by the SDK (`BacktestResult.as_dict()`), shown as reported by the agent.",
    )

    def known_fields(self) -> list[str]:
        return [*super().known_fields(), *RESULT_FIELDS]


class ReportedResultSerializer(BacktestInputSerializer):
    """With ``"reported": true``: the rest of ``BacktestResult.as_dict()`` (schema only; the service checks it).
    Sent without ``reported``, these fields are refused."""

    version = serializers.CharField(required=False, max_length=40)
    metrics = serializers.DictField(required=False, help_text="`pnl`, `return`, `sharpe`, ... as decimal strings.")
    equity = serializers.ListField(required=False, help_text="`[[time, credits], ...]`, at most 1000 points.")
    executions = serializers.ListField(
        child=_ExecutionRow(),
        required=False,
        help_text=f"At most {MAX_EXECUTIONS:,}: `{{time, market, side, action, price, size, reason, cash, order}}`. "
        "Or leave it out and give `executions_count`.",
    )
    executions_count = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_EXECUTIONS,
        help_text="Instead of `executions`, for a result too large for one body: how many executions will follow in "
        "pages (`POST /backtests/{id}/executions/`); the backtest is `uploading` until the last one arrives.",
    )
    reliability = serializers.ListField(child=serializers.DictField(), required=False)
    payouts = serializers.DictField(required=False, help_text="Credits by market id.")
    marked = serializers.DictField(required=False, help_text="Credits by market id.")
    refusals = serializers.DictField(required=False, help_text="Count by error code.")


# The fields of an upload's result, read by the service as sent (BacktestInputSerializer.known_fields).
RESULT_FIELDS: tuple[str, ...] = tuple(
    name for name in ReportedResultSerializer._declared_fields if name not in BacktestInputSerializer._declared_fields
)


class ExecutionPageSerializer(StrictSerializer):
    """``POST /backtests/{id}/executions/``: the next page of an upload in parts (schema and types; the service
    checks the values)."""

    offset = serializers.IntegerField(
        min_value=0,
        max_value=MAX_EXECUTIONS - 1,
        help_text="The number of the page's first execution: the count already stored (0 for the first page).",
    )
    executions = serializers.ListField(
        child=_ExecutionRow(),
        min_length=1,
        max_length=MAX_PAGE_EXECUTIONS,
        help_text=f"1-{MAX_PAGE_EXECUTIONS:,} executions `{{time, market, side, action, price, size, reason, cash, "
        "order}`, checked as in an inline upload; the whole body must also fit the request size limit (128 KiB "
        "by default: about 600 executions).",
    )


class BacktestSerializer(serializers.ModelSerializer):
    """A backtest: its inputs, its status and, once ``done``, its results. ``reported``: run by the agent with the
    SDK and uploaded (the exchange did not run it)."""

    agent: serializers.SlugRelatedField[Agent] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, help_text="The agent who ran it."
    )
    markets: serializers.PrimaryKeyRelatedField[Market] = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True, help_text="Market ids."
    )
    cash = Money(help_text="Starting credits (simulated).")
    metrics = serializers.JSONField(
        read_only=True,
        help_text="Once done: `pnl` (credits: final equity - cash, payouts and marked value included), `return` "
        "(pnl / cash), `sharpe` (daily equity returns, x sqrt(365); null under 2 days), `max_drawdown` (a fraction "
        "of the peak), `win_rate` (markets with positive P&L / markets traded), `trades` (fills), `brier` (of the "
        "stated forecasts; null without). Decimals as strings. While `uploading`: as uploaded, not yet checked "
        "against the executions (the P&L identity is checked when the last page arrives).",
    )
    equity = serializers.JSONField(read_only=True, help_text="`[[time, credits], ...]`, thinned to about 500 points.")
    reliability = serializers.JSONField(
        read_only=True,
        help_text="Ten bins `{lower, upper, count, mean_forecast, observed}` of the scored forecasts.",
    )
    payouts = serializers.JSONField(read_only=True, help_text="Resolution payouts, credits by market id.")
    marked = serializers.JSONField(read_only=True, help_text="Value of what was left, credits by market id.")
    refusals = serializers.JSONField(read_only=True, help_text="Orders the simulated exchange refused, by code.")
    executions_count = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        help_text="Its executions once done; while `uploading`, how many were announced; null otherwise.",
    )

    class Meta:
        model = Backtest
        fields = [
            "id",
            "agent",
            "strategy",
            "version",
            "params",
            "markets",
            "start",
            "end",
            "cash",
            "reported",
            "status",
            "error",
            "metrics",
            "equity",
            "reliability",
            "payouts",
            "marked",
            "refusals",
            "executions_count",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class BacktestExecutionSerializer(serializers.ModelSerializer):
    """A simulated fill (``reason`` ``taker``: crossed the recorded book; ``maker``: a resting order a later recorded
    trade printed through) or a netting (``side`` ``PAIR``, ``action`` ``MERGE``, ``price`` 1.00: a YES and a NO
    merged into 1.00 credit). ``price`` on the order's own side, credits; ``size`` contracts; ``cash`` the credits it
    moved (negative: paid)."""

    price = Price(read_only=True, max_digits=3, help_text="Credits per contract on the order's own side.")
    cash = Money(help_text="Credits moved; negative when paid.")
    order = serializers.CharField(read_only=True, help_text="The simulated order's id; empty for a netting.")

    class Meta:
        model = BacktestExecution
        fields = ["number", "time", "market", "side", "action", "price", "size", "reason", "cash", "order"]
        read_only_fields = fields


class AppendedExecutionsSerializer(serializers.Serializer):
    """The answer to a page of an upload in parts."""

    stored = serializers.IntegerField(help_text="Executions stored so far: the `offset` of the next page.")
    repeated = serializers.BooleanField(help_text="true: this page was stored already (a retry); nothing changed.")
    backtest = BacktestSerializer(help_text="The backtest: `done` once the last page is stored.")


class ParamSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["integer", "decimal", "number"], help_text="`decimal`: a decimal string.")
    default = serializers.JSONField()
    unit = serializers.CharField(help_text="`contracts`, `credits (YES price)`, `seconds`, `probability`...")
    description = serializers.CharField()
    minimum = serializers.JSONField(allow_null=True, help_text="Inclusive; null without a bound.")
    maximum = serializers.JSONField(allow_null=True, help_text="Inclusive; null without a bound.")


class StrategySerializer(serializers.Serializer):
    name = serializers.CharField(help_text="What `POST /backtests/` takes as `strategy`.")
    version = serializers.CharField()
    description = serializers.CharField()
    params = ParamSerializer(many=True)


# --------------------------------------------------------------------------------------------------------------------
# Views


class BacktestThrottle(AgentWriteThrottle):
    """``POST /backtests/`` per agent, on top of ``agent_write``: each queued run costs a worker's time.
    ``MOLTSTREET_RATE_BACKTESTS`` (default 30/hour); 429 ``rate_limited`` beyond."""

    scope = "backtests"


class ExecutionCursorPagination(CheckedCursorPagination):
    """A backtest's executions in their order (``number``), 100 a page, ``?page_size=`` up to 1000."""

    ordering = ("number",)  # unique within a backtest: the cursor is the last number sent
    page_size = 100
    max_page_size = 1000


class BacktestFilter(CreatedFilterSet):
    status = choice_filter(Backtest.Status.values, help_text="queued, running, uploading, done or failed.")
    market = market_filter("markets")

    class Meta:
        model = Backtest
        fields = ["status", "market", "since", "until"]


class ExecutionFilter(django_filters.FilterSet):
    """The filters of a backtest's executions (no ``Meta.model``: the view's own queryset is of backtests)."""

    market = market_filter()


@extend_schema_view(
    list=extend_schema(
        summary="Own backtests",
        description="The caller's backtests, newest first, cursor pages (`page_size` up to 200). Filter with "
        "`status`, `market` (those replaying this market), `since`/`until` (ISO 8601 times on `created_at`, "
        "inclusive).",
        responses={200: BacktestSerializer, **errors(400, 401)},
    ),
    retrieve=extend_schema(
        summary="One backtest",
        description="Any backtest (public, like the leaderboard): its inputs, `status` (`queued`, `running`, "
        "`uploading`, `done`, `failed` with `error`) and, once done, its metrics, equity curve, reliability diagram, payouts and marked "
        "values. `reported`: uploaded by the agent, not run by the exchange.",
        responses={200: BacktestSerializer, **errors(404)},
    ),
)
class BacktestViewSet(ApiViewSet):
    serializer_class = BacktestSerializer
    queryset = Backtest.objects.select_related("agent").prefetch_related("markets")
    filterset_class = BacktestFilter

    def get_permissions(self):
        if self.action in ("list", "create") or (self.action == "executions" and self.request.method == "POST"):
            return [IsAgent()]
        return [permissions.AllowAny()]

    def get_throttles(self):
        throttles = super().get_throttles()
        if self.action == "create":
            throttles.append(BacktestThrottle())
        return throttles

    def get_object(self) -> Backtest:
        backtest = self.get_queryset().filter(id=parse_id(self.kwargs["pk"], "backtest")).first()
        if backtest is None:
            raise NotFound.of("backtest", self.kwargs["pk"])
        return backtest

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(selectors.agent_backtests(request.user)))
        return self.get_paginated_response(BacktestSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(BacktestSerializer(self.get_object()).data)

    @extend_schema(
        summary="Run a backtest, or upload one",
        request=ReportedResultSerializer,
        responses={202: BacktestSerializer, 201: BacktestSerializer, **errors(400, 401, 429)},
        description=(
            "Runs the built-in `strategy` (`GET /backtests/strategies/`) with `params` on the recorded history of "
            "`markets` (1-20 ids) from `start` to `end` with `cash` credits (default 1000.00): answered 202 with the "
            "backtest `queued`; a worker runs it (`GET /backtests/{id}/` shows `done` with its metrics, or `failed` "
            "with `error`). Fills follow DESIGN section 11: never better than the recorded book and trades. "
            'With `"reported": true` the body is a result the SDK computed (`BacktestResult.as_dict()`: '
            "`metrics`, `equity`, `executions`, `reliability`, `payouts`, `marked`, `refusals`, `version`; "
            "`strategy` any label): stored at once as `done` and `reported`, answered 201. Its executions must be "
            "in `markets`, with prices 0.01-1.00 credits and positive whole sizes, and `metrics.pnl` must equal their "
            "cash plus payouts plus marked values. A result too large for one body (over the request size limit, "
            "128 KiB by default: a few hundred executions) leaves out `executions` and gives `executions_count` "
            "(0-100,000): answered 201 with the backtest `uploading` (everything but the P&L identity checked), its "
            "executions then follow in pages (`POST /backtests/{id}/executions/`). Backtests move no money. 400 `invalid_request` (`detail` names the "
            "field, nothing stored) for an unknown strategy or parameter, a parameter out of its bounds, no market, "
            "more than 20, an unknown one (400, not 404: the body is wrong), one with no trade, book change or "
            "snapshot in the period, `end` not after `start`, `cash` not a positive amount. Rate limit: "
            "`backtests` (default 30/hour per agent)."
        ),
    )
    def create(self, request):
        data = BacktestInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        given = [name for name in RESULT_FIELDS if name in request.data]
        if given and not values["reported"]:
            problem = 'Only with "reported": true (an upload of a result run with the SDK).'
            raise InvalidRequest(f"{', '.join(given)}: {problem}", detail={name: [problem] for name in given})
        bind(agent_id=request.user.id)
        common = {
            "agent": request.user,
            "strategy": values["strategy"],
            "params": values["params"],
            "markets": values["markets"],
            "start": values["start"],
            "end": values["end"],
            "cash": values["cash"],
        }
        if values["reported"]:
            result = {name: request.data.get(name) for name in RESULT_FIELDS if name != "executions_count"}
            count = request.data.get("executions_count")
            backtest = backtest_upload(**common, result=result, executions_count=count)
            answer: int = status.HTTP_201_CREATED
        else:
            backtest = backtest_create(**common)
            answer = status.HTTP_202_ACCEPTED
        bind(backtest_id=backtest.id)
        return Response(BacktestSerializer(self.get_queryset().get(id=backtest.id)).data, status=answer)

    @extend_schema(
        methods=["GET"],
        summary="A backtest's executions",
        description="Every simulated fill and netting of the backtest in order (`number` from 0), cursor pages of "
        "100 (`page_size` up to 1000). Public. While it is `uploading`, those stored so far. `market`: only "
        "those in this market.",
        responses={200: BacktestExecutionSerializer(many=True), **errors(400, 404)},
    )
    @extend_schema(
        methods=["POST"],
        summary="Upload the next page of a backtest's executions",
        request=ExecutionPageSerializer,
        responses={200: AppendedExecutionsSerializer, **errors(400, 401, 404, 409)},
        description=(
            "For an upload in parts (`POST /backtests/` with `reported` and `executions_count`): stores the next "
            f"page of 1-{MAX_PAGE_EXECUTIONS:,} executions, numbered from `offset`, in one transaction. `offset` "
            "must be the number already stored (`stored` in the last answer; 0 first), else 409 `upload_conflict` "
            "with `detail.expected`. The page that completes `executions_count` is checked against the P&L identity "
            "(`metrics.pnl` = all executions' cash + payouts + marked values) and makes the backtest `done`; if the "
            "identity fails, 400 `invalid_request` and nothing of that page is stored (the backtest stays "
            "`uploading`). A page sent again with the same offset and content (a retry after a lost answer) is "
            "answered 200 with `repeated: true` and stored once. Only the uploader's own backtest: 404 for "
            "another's; 409 `upload_conflict` (`detail.status`) once it is no longer `uploading` (done, or failed "
            "when left unfinished longer than the stale age). Answer: `{stored, repeated, backtest}`."
        ),
    )
    @action(
        detail=True,
        methods=["get", "post"],
        pagination_class=ExecutionCursorPagination,
        filterset_class=ExecutionFilter,
    )
    def executions(self, request, pk=None):
        if request.method == "POST":
            return self._append_executions(request)
        page = self.paginate_queryset(self.filter_queryset(selectors.backtest_executions(self.get_object())))
        return self.get_paginated_response(BacktestExecutionSerializer(page, many=True).data)

    def _append_executions(self, request) -> Response:
        backtest_id = parse_id(self.kwargs["pk"], "backtest")
        data = ExecutionPageSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        bind(agent_id=request.user.id, backtest_id=backtest_id)
        appended = backtest_append_executions(
            agent=request.user,
            backtest_id=backtest_id,
            offset=data.validated_data["offset"],
            executions=data.validated_data["executions"],
        )
        backtest = self.get_queryset().get(id=appended.backtest.id)
        body = {"stored": appended.stored, "repeated": appended.repeated, "backtest": backtest}
        return Response(AppendedExecutionsSerializer(body).data)

    @extend_schema(
        summary="The built-in strategies",
        description="What `POST /backtests/` runs on the server (the house traders of `make run` are these, run "
        "live): each with its `params` (`type`, `default`, `unit`, inclusive `minimum`/`maximum`; decimals as "
        "strings). Public.",
        responses={200: StrategySerializer(many=True)},
    )
    @action(detail=False, methods=["get"], pagination_class=None, filter_backends=[])
    def strategies(self, request):
        return Response([BUILTINS[name].describe() for name in sorted(BUILTINS)])


__all__ = ["BacktestThrottle", "BacktestViewSet"]
