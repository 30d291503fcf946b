"""The operators' admin: markets, agents, orders, trades and positions.

``Market`` and ``Agent`` are registered here, not in ``markets/admin.py`` and ``agents/admin.py``, because their
operator actions (close, resolve, suspend, reinstate) call the trading services and imports only flow
agents <- markets <- trading. Every action calls a service per object and reports with ``message_user``; nothing here
writes balances, positions, orders or market state itself (DESIGN section 1, CONVENTIONS "Only services move money").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import models
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from agents.admin import ReadOnlyModelAdmin
from agents.models import Agent
from agents.services import agent_grant_credits, agents_link, agents_unlink
from markets.models import Feed, Market, Outcome, Resolution, Resolver
from markets.selectors import current_resolution, market_payout_summary
from markets.services import MARKET_EDITABLE_FIELDS as MARKET_EDITABLE
from markets.services import MAX_MARKET_LIFETIME, market_update
from moltstreet.errors import MarketClosed, MoltStreetError
from moltstreet.money import ONE
from trading.lifecycle import market_close
from trading.models import Order, Position, Trade
from trading.poller import feed_pass
from trading.resolution import market_resolve, resolution_confirm, resolution_overturn
from trading.suspension import agent_reinstate, agent_suspend

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django_stubs_ext import WithAnnotations

T = TypeVar("T", bound=models.Model)


class Exposure(TypedDict):
    """What ``markets_with_exposure`` annotates on each market: counts of orders, agents and YES/NO pairs."""

    resting_orders: int
    holders: int
    pairs_outstanding: int


class FeedCounts(TypedDict):
    """What ``FeedAdmin.get_queryset`` annotates on each feed."""

    market_count: int


class ResolutionCounts(TypedDict):
    """What ``ResolutionAdmin.get_queryset`` annotates on each resolution."""

    dispute_count: int


# What an operator reads about markets before closing them, by status (none for an open market).
CLOSE_NOTES: dict[str, str] = {
    Market.Status.CLOSED: "Already closed.",
    Market.Status.RESOLVED: "Already resolved: will be refused.",
}
# What one contract pays, by outcome, for the confirmation page of a resolution.
OUTCOME_PAYS: dict[str, str] = {
    Outcome.YES: "1.00 credit per YES contract",
    Outcome.NO: "1.00 credit per NO contract",
    Outcome.VOID: "0.50 credits per YES and per NO contract",
}


def _operator(request: HttpRequest) -> User:
    """The signed-in operator: the admin site serves only active staff users, never an anonymous one."""
    return cast("User", request.user)


CONFIRM_TEMPLATE = "admin/trading/confirm_action.html"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _run_each(
    objects: Iterable[T], call: Callable[[T], Any]
) -> tuple[list[tuple[T, Any]], list[tuple[T, MoltStreetError]]]:
    """Call a service once per object; a domain error fails that object only, the others still run.

    Each service is its own transaction, so one market's refusal (already resolved, lock timeout) never undoes another's.
    """
    done: list[tuple[T, Any]] = []
    failed: list[tuple[T, MoltStreetError]] = []
    for obj in objects:
        try:
            done.append((obj, call(obj)))
        except MoltStreetError as exc:
            failed.append((obj, exc))
    return done, failed


def _link(obj: models.Model, text: Any = None) -> str:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def _changelist_link(model: type[models.Model], text: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return format_html(
        '<a href="{}?{}">{}</a>',
        reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"),
        query,
        text,
    )


class ServiceActionsMixin:
    """Confirmation pages and result messages shared by the Market and Agent actions."""

    def confirm(
        self,
        request: HttpRequest,
        queryset: Sequence[models.Model],
        *,
        action: str,
        title: str,
        intro: str,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        submit: str,
        form: forms.Form | None = None,
    ) -> TemplateResponse:
        """An intermediate page that lists the objects and POSTs the action back with ``post=yes`` (and CSRF).

        Like Django's delete confirmation, nothing changes until the operator submits this page.
        """
        opts = self.model._meta  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": title,
            "intro": intro,
            "headers": headers,
            "rows": rows,
            "submit_label": submit,
            "form": form,
            "queryset": queryset,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": opts,
            "media": self.media,  # type: ignore[attr-defined]
        }
        request.current_app = self.admin_site.name  # type: ignore[attr-defined]
        return TemplateResponse(request, CONFIRM_TEMPLATE, context)

    def report(
        self, request: HttpRequest, *, done: str, n_done: int, failed: list[tuple[Any, MoltStreetError]], not_done: str
    ) -> None:
        """One summary line, e.g. "Resolved 2 markets YES; 1 market was not resolved:", then one line per failure."""
        if not failed:
            self.message_user(request, f"{done}.", messages.SUCCESS)  # type: ignore[attr-defined]
            return
        summary = f"{done}; {not_done}:" if n_done else f"{not_done}:"
        self.message_user(request, summary, messages.WARNING if n_done else messages.ERROR)  # type: ignore[attr-defined]
        for obj, exc in failed:
            self.message_user(request, f"“{obj}”: {exc.message} [{exc.code}]", messages.ERROR)  # type: ignore[attr-defined]


class UUIDSearchMixin:
    """A whole UUID typed into the search box also finds the object by its id (an index lookup)."""

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)  # type: ignore[misc]
        try:
            pk = uuid.UUID(search_term.strip())
        except ValueError:
            return results, may_have_duplicates
        return results | queryset.filter(pk=pk), may_have_duplicates


# --------------------------------------------------------------------------------------------------------------------
# Markets.

# What an operator may edit on an open market. Everything else is set by services (money, book, lifecycle) or by the
# importers (provenance), and is shown read-only.
MARKET_SOURCE = ("source", "source_url", "external_id", "attribution", "is_historical", "reference_price")
POSITIONS_SHOWN = 50  # on a market's page; the Positions list has them all


def markets_with_exposure(queryset: QuerySet[Market]) -> QuerySet[WithAnnotations[Market, Exposure]]:
    """Annotate resting orders, holders and pairs outstanding: what closing or resolving a market will touch."""
    int_field = models.BigIntegerField()
    resting = (
        Order.objects.filter(market=OuterRef("pk"), status__in=Order.RESTING)
        .order_by()
        .values("market")
        .annotate(n=Count("id"))
        .values("n")
    )
    held = Position.objects.filter(market=OuterRef("pk")).order_by().values("market")
    return queryset.annotate(
        resting_orders=Coalesce(Subquery(resting), Value(0), output_field=int_field),
        pairs_outstanding=Coalesce(
            Subquery(held.annotate(s=Sum("yes_shares")).values("s")), Value(0), output_field=int_field
        ),
        holders=Coalesce(
            Subquery(held.filter(Q(yes_shares__gt=0) | Q(no_shares__gt=0)).annotate(n=Count("id")).values("n")),
            Value(0),
            output_field=int_field,
        ),
    )


class MarketAdminForm(forms.ModelForm):
    """The editable text and deadline of an open market, checked like ``markets.services.market_create`` does."""

    class Meta:
        model = Market
        fields = MARKET_EDITABLE

    def clean_question(self) -> str:
        question = (self.cleaned_data.get("question") or "").strip()
        limit = settings.MOLTSTREET["MAX_QUESTION_LENGTH"]
        if not question:
            raise forms.ValidationError("The question must not be empty.")
        if len(question) > limit:
            raise forms.ValidationError(f"The question must be at most {limit} characters.")
        return question

    def clean_deadline(self):
        deadline = self.cleaned_data.get("deadline")
        # Only a changed deadline is checked: editing the text of a market past its deadline (the scheduler has not
        # closed it yet) must not be refused. To end trading now, operators use the "Close" action instead.
        if deadline is not None and "deadline" in self.changed_data:
            now = timezone.now()
            if deadline <= now:
                raise forms.ValidationError("The deadline must be in the future; use the Close action to close now.")
            if deadline > now + MAX_MARKET_LIFETIME:
                raise forms.ValidationError("The deadline must be within five years.")
        return deadline


@admin.register(Market)
class MarketAdmin(ServiceActionsMixin, UUIDSearchMixin, admin.ModelAdmin):
    form = MarketAdminForm
    list_display = ("question", "status", "outcome", "yes_price", "volume", "deadline", "source")
    list_filter = ("status", "outcome", "source", "manual_resolution", "category")
    search_fields = ("question",)
    date_hierarchy = "deadline"
    actions = ["close_markets", "resolve_yes", "resolve_no", "resolve_void", "keep_for_operators", "let_source_resolve"]

    # -- permissions: money-moving fields and the lifecycle only change through services -------------------------
    def has_add_permission(self, request: HttpRequest) -> bool:
        # Markets are created by agents through markets.services.market_create (which charges the fee and starts the
        # event sequence) or by the importers; a hand-made row would skip both.
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # orders, trades and ledger rows refer to a market for ever

    def has_change_permission(self, request: HttpRequest, obj: Market | None = None) -> bool:
        # A closed or resolved market is settled history: its page is view-only.
        if obj is not None and obj.status != Market.Status.OPEN:
            return False
        return super().has_change_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Market | None = None) -> list[str]:
        fields = [f.name for f in Market._meta.concrete_fields if f.name not in MARKET_EDITABLE]
        return [*fields, "resolution", "exposure", "payout_summary", "positions", "related"]

    def get_fieldsets(self, request: HttpRequest, obj: Market | None = None):
        state = [f.name for f in Market._meta.concrete_fields if f.name not in (*MARKET_EDITABLE, *MARKET_SOURCE)]
        shown = [*state, "resolution", "exposure", "payout_summary", "positions", "related"]
        return [
            (None, {"fields": MARKET_EDITABLE}),
            ("State (set by the exchange)", {"fields": shown}),
            ("Source", {"fields": MARKET_SOURCE, "classes": ("collapse",)}),
        ]

    def save_model(self, request: HttpRequest, obj: Market, form: forms.ModelForm, change: bool) -> None:
        """Write only the edited columns, and only while the market is still open.

        The admin reads the row without a lock, then saves: ``obj.save()`` would write back every column as read, so a
        trade committing in between would lose its ``seq``, ``last_price`` and ``volume``, and a market closed in
        between would reopen. ``market_update`` writes the edited columns under the market lock, refuses them once the
        market is no longer open, and records an ``updated`` market event for the live feed.
        """
        changed = {name: getattr(obj, name) for name in form.changed_data if name in MARKET_EDITABLE}
        if not changed:
            return
        try:
            market_update(market_id=obj.pk, **changed)
        except MarketClosed:
            obj._edit_refused = True  # type: ignore[attr-defined]
            self.message_user(
                request, "The market was closed or resolved meanwhile; your changes were not saved.", messages.ERROR
            )
        except MoltStreetError as exc:
            obj._edit_refused = True  # type: ignore[attr-defined]
            self.message_user(request, f"Your changes were not saved: {exc.message}", messages.ERROR)

    def response_change(self, request: HttpRequest, obj: Market) -> HttpResponse:
        if getattr(obj, "_edit_refused", False):  # skip Django's "changed successfully" message
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)

    # -- computed columns ---------------------------------------------------------------------------------------
    @admin.display(description="Last price (YES)", ordering="last_price")
    def yes_price(self, obj: Market) -> Decimal | None:
        return obj.last_price

    @admin.display(description="Resolution")
    def resolution(self, obj: Market) -> str:
        found = current_resolution(obj) if obj.pk is not None else None
        return _link(found, describe_resolution(found)) if found is not None else "None yet."

    @admin.display(description="Exposure")
    def exposure(self, obj: Market) -> str:
        if obj.pk is None:
            return "—"
        row = markets_with_exposure(Market.objects.filter(pk=obj.pk)).values(
            "resting_orders", "holders", "pairs_outstanding"
        )[0]
        return (
            f"{_plural(row['resting_orders'], 'resting order')}, {_plural(row['holders'], 'holder')}, "
            f"{_plural(row['pairs_outstanding'], 'pair')} outstanding"
        )

    @admin.display(description="Payout")
    def payout_summary(self, obj: Market) -> str:
        if obj.pk is None or obj.status != Market.Status.RESOLVED:
            return "Not resolved yet."
        summary = market_payout_summary(obj.pk)
        return f"Resolved {obj.outcome}: {_plural(summary.agents_paid, 'agent')} paid {summary.total_paid} credits."

    @admin.display(description="Positions")
    def positions(self, obj: Market) -> str:
        # A rendered table, not an inline formset: even a view-only formset goes through the change form's save, and
        # positions change only through the trading services.
        if obj.pk is None:
            return "—"
        shown = list(
            Position.objects.filter(market=obj)
            .select_related("agent")
            .order_by("-yes_shares", "-no_shares", "-realized_pnl", "id")[:POSITIONS_SHOWN]
        )
        if not shown:
            return "None."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((_link(p.agent), p.yes_shares, p.no_shares, p.yes_reserved, p.no_reserved, p.realized_pnl) for p in shown),
        )
        return format_html(
            "<table><thead><tr><th>Agent</th><th>YES</th><th>NO</th><th>YES reserved</th><th>NO reserved</th>"
            "<th>Realized P&amp;L</th></tr></thead><tbody>{}</tbody></table>{}",
            rows,
            f"The first {POSITIONS_SHOWN}; see Positions below for all." if len(shown) == POSITIONS_SHOWN else "",
        )

    @admin.display(description="Activity")
    def related(self, obj: Market) -> str:
        if obj.pk is None:
            return "—"
        return format_html_join(
            " · ",
            "{}",
            (
                (_changelist_link(model, label, market__id__exact=obj.pk),)
                for model, label in ((Order, "Orders"), (Trade, "Trades"), (Position, "Positions"))
            ),
        )

    # -- actions ------------------------------------------------------------------------------------------------
    def _market_rows(
        self, markets: Sequence[WithAnnotations[Market, Exposure]], note: Callable[[Market], str]
    ) -> list[list[Any]]:
        return [
            [
                _link(m, m.question),
                m.get_status_display() + (f" ({m.outcome})" if m.outcome else ""),
                m.deadline,
                m.resting_orders,
                m.holders,
                m.pairs_outstanding * ONE,
                note(m),
            ]
            for m in markets
        ]

    _market_headers = ("Question", "Status", "Deadline", "Resting orders", "Holders", "Payout (credits)", "")

    @admin.action(description="Close selected markets", permissions=["change"])
    def close_markets(self, request: HttpRequest, queryset: QuerySet[Market]) -> TemplateResponse | None:
        markets = list(markets_with_exposure(queryset))
        if request.POST.get("post") != "yes":
            return self.confirm(
                request,
                markets,
                action="close_markets",
                title=f"Close {_plural(len(markets), 'market')}?",
                intro="Closing stops trading at once: every resting order is cancelled and its reserve released. "
                "The markets can then be resolved.",
                headers=self._market_headers,
                rows=self._market_rows(markets, lambda m: CLOSE_NOTES.get(m.status, "")),
                submit=f"Yes, close {_plural(len(markets), 'market')}",
            )
        was_open = {m.pk for m in markets if m.status == Market.Status.OPEN}
        done, failed = _run_each(markets, lambda m: market_close(market_id=m.pk))
        closed = [m for m, _ in done if m.pk in was_open]
        for market in closed:
            self.log_change(request, market, "Closed by an operator.")
        message = f"Closed {_plural(len(closed), 'market')}"
        if len(done) > len(closed):
            already = len(done) - len(closed)
            message += f"; {already} {'was' if already == 1 else 'were'} already closed"
        self.report(request, done=message, n_done=len(done), failed=failed, not_done=f"{len(failed)} not closed")
        return None

    def _resolve(self, request: HttpRequest, queryset: QuerySet[Market], outcome: str) -> TemplateResponse | None:
        markets = list(markets_with_exposure(queryset))
        action = f"resolve_{outcome.lower()}"
        if request.POST.get("post") != "yes":
            pays = OUTCOME_PAYS[outcome]
            return self.confirm(
                request,
                markets,
                action=action,
                title=f"Resolve {_plural(len(markets), 'market')} {outcome}?",
                intro=f"Resolving {outcome} cancels every resting order, pays {pays}, records each holder's "
                "realized P&L and updates reputations and Brier scores, with you as the resolver. A market resolves "
                "only once: this cannot be undone. A pending oracle proposal is confirmed if it says "
                f"{outcome}, overturned if not.",
                headers=self._market_headers,
                rows=self._market_rows(
                    markets,
                    lambda m: (
                        f"Already resolved {m.outcome}: will be refused."
                        if m.status == Market.Status.RESOLVED
                        else _pending_note(m)
                    ),
                ),
                submit=f"Yes, resolve {_plural(len(markets), 'market')} {outcome}",
            )
        resolver = Resolver.operator(request.user)
        done, failed = _run_each(markets, lambda m: market_resolve(market_id=m.pk, outcome=outcome, resolver=resolver))
        paid_agents, paid_total = 0, Decimal("0.00")
        for market, _ in done:
            self.log_change(request, market, f"Resolved {outcome} by an operator.")
            summary = market_payout_summary(market.pk)
            paid_agents += summary.agents_paid
            paid_total += summary.total_paid
        message = f"Resolved {_plural(len(done), 'market')} {outcome}"
        if done:
            message += f" and paid {paid_total} credits in {_plural(paid_agents, 'payout')}"
        self.report(
            request,
            done=message,
            n_done=len(done),
            failed=failed,
            not_done=f"{_plural(len(failed), 'market')} {'was' if len(failed) == 1 else 'were'} not resolved",
        )
        return None

    @admin.action(
        description="Resolve selected mirrored markets by hand (the source's settlement only proposes)",
        permissions=["change"],
    )
    def keep_for_operators(self, request: HttpRequest, queryset: QuerySet[Market]) -> None:
        self._manual_resolution(request, queryset, True)

    @admin.action(
        description="Let the source resolve selected mirrored markets when it settles", permissions=["change"]
    )
    def let_source_resolve(self, request: HttpRequest, queryset: QuerySet[Market]) -> None:
        self._manual_resolution(request, queryset, False)

    def _manual_resolution(self, request: HttpRequest, queryset: QuerySet[Market], manual: bool) -> None:
        # A flag the poller reads before it settles a market: no money, no sequence; on any market not yet resolved.
        markets = list(queryset.exclude(status=Market.Status.RESOLVED))
        Market.objects.filter(pk__in=[m.pk for m in markets]).update(manual_resolution=manual)
        for market in markets:
            self.log_change(request, market, "Manual resolution " + ("on." if manual else "off."))
        what = "resolved by an operator" if manual else "resolved by their source"
        self.message_user(request, f"{_plural(len(markets), 'market')} will be {what}.", messages.SUCCESS)

    @admin.action(description="Resolve selected markets YES", permissions=["change"])
    def resolve_yes(self, request: HttpRequest, queryset: QuerySet[Market]) -> TemplateResponse | None:
        return self._resolve(request, queryset, Outcome.YES)

    @admin.action(description="Resolve selected markets NO", permissions=["change"])
    def resolve_no(self, request: HttpRequest, queryset: QuerySet[Market]) -> TemplateResponse | None:
        return self._resolve(request, queryset, Outcome.NO)

    @admin.action(description="Resolve selected markets VOID (refund 0.50 per contract)", permissions=["change"])
    def resolve_void(self, request: HttpRequest, queryset: QuerySet[Market]) -> TemplateResponse | None:
        return self._resolve(request, queryset, Outcome.VOID)


def _pending_note(market: Market) -> str:
    pending = current_resolution(market)
    if pending is None or not pending.is_pending:
        return ""
    return f"Pending: {describe_resolution(pending)}."


def describe_resolution(resolution: Resolution) -> str:
    """One line for operators: outcome, status, resolver, disputes, e.g. "NO proposed by oracle bob, 2 disputes"."""
    disputes = getattr(resolution, "dispute_count", None)
    if disputes is None:
        disputes = resolution.disputes.count()
    by = f"{resolution.get_resolver_kind_display().lower()} {resolution.resolver_name}"
    text = f"{resolution.outcome} {resolution.get_status_display().lower()} by {by}"
    if resolution.decided_by is not None:
        text += f", decided by {resolution.decided_by.get_username()}"
    if disputes:
        text += f", {_plural(disputes, 'dispute')}"
    return text


# --------------------------------------------------------------------------------------------------------------------
# Feeds: what the poller mirrors from the sources (DESIGN section 10).


@admin.register(Feed)
class FeedAdmin(admin.ModelAdmin):
    list_display = ("__str__", "source", "query", "status", "max_markets", "interval_seconds", "is_active", "markets",
                    "last_run_at", "last_ok_at", "last_error")  # fmt: skip
    list_filter = ("source", "is_active")
    fields = ("source", "query", "status", "max_markets", "interval_seconds", "is_active", "created_at",
              "last_run_at", "last_ok_at", "last_summary", "last_error")  # fmt: skip
    readonly_fields = ("created_at", "last_run_at", "last_ok_at", "last_summary", "last_error")
    actions = ["run_now"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Feed]:
        return super().get_queryset(request).annotate(market_count=Count("markets"))

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # deactivate instead: its markets keep their feed and their history

    @admin.display(description="Markets", ordering="market_count")
    def markets(self, obj: WithAnnotations[Feed, FeedCounts]) -> str:
        return _changelist_link(Market, str(obj.market_count), feed__id__exact=obj.pk)

    @admin.action(description="Run a pass of selected feeds now", permissions=["change"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Feed]) -> None:
        for feed in queryset:
            summary = feed_pass(feed)
            level = messages.WARNING if summary.source_error else messages.SUCCESS
            self.message_user(request, summary.line(feed), level)


# --------------------------------------------------------------------------------------------------------------------
# Resolutions: oracle proposals waiting for their dispute window or an operator.


class OverturnForm(forms.Form):
    outcome = forms.ChoiceField(choices=Outcome.choices, help_text="The outcome you decide; it must differ.")
    note = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea, help_text="Why (shown to operators)."
    )


@admin.register(Resolution)
class ResolutionAdmin(ServiceActionsMixin, ReadOnlyModelAdmin):
    list_display = (
        "market",
        "outcome",
        "status",
        "resolver_kind",
        "resolver_name",
        "created_at",
        "dispute_until",
        "dispute_count",
        "decided_by",
    )
    list_filter = ("status", "resolver_kind", "outcome")
    search_fields = ("market__question", "resolver_name")
    list_select_related = ("market", "decided_by")
    date_hierarchy = "created_at"
    actions = ["confirm_proposals", "overturn_proposals"]
    fields = (
        "market",
        "outcome",
        "status",
        "resolver_kind",
        "resolver_name",
        "resolver_agent",
        "resolver_user",
        "evidence",
        "created_at",
        "dispute_until",
        "decided_at",
        "decided_by",
        "note",
        "dispute_reasons",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Resolution]:
        return super().get_queryset(request).annotate(dispute_count=Count("disputes"))

    def has_decide_permission(self, request: HttpRequest) -> bool:
        # Deciding is the one write here; it needs the change permission of markets, as resolving does.
        return request.user.has_perm("markets.change_market")

    @admin.display(description="Disputes", ordering="dispute_count")
    def dispute_count(self, obj: WithAnnotations[Resolution, ResolutionCounts]) -> int:
        return obj.dispute_count

    @admin.display(description="Disputes, with their reasons")
    def dispute_reasons(self, obj: Resolution) -> str:
        disputes = obj.disputes.select_related("agent")
        return (
            format_html_join(
                mark_safe("<br>"), "{} ({}): {}", ((_link(d.agent), d.created_at, d.reason) for d in disputes)
            )
            or "None."
        )

    _headers = ("Market", "Resolution", "Dispute window ends", "Disputes")

    def _rows(self, resolutions: Sequence[Resolution]) -> list[list[Any]]:
        return [
            [_link(r.market, r.market.question), describe_resolution(r), r.dispute_until, self.dispute_reasons(r)]
            for r in resolutions
        ]

    @admin.action(description="Confirm selected proposals (final now, pays out)", permissions=["decide"])
    def confirm_proposals(self, request: HttpRequest, queryset: QuerySet[Resolution]) -> TemplateResponse | None:
        resolutions = list(queryset.select_related("market"))
        if request.POST.get("post") != "yes":
            return self.confirm(
                request,
                resolutions,
                action="confirm_proposals",
                title=f"Confirm {_plural(len(resolutions), 'proposed resolution')}?",
                intro="Each proposal becomes final with its own outcome, with you as the operator who decided, and "
                "its market pays out at once. Proposals no longer pending are refused.",
                headers=self._headers,
                rows=self._rows(resolutions),
                submit="Yes, confirm",
            )
        done, failed = _run_each(resolutions, lambda r: resolution_confirm(resolution_id=r.pk, user=_operator(request)))
        for resolution, market in done:
            self.log_change(request, resolution, f"Confirmed {resolution.outcome}.")
            self.log_change(request, market, f"Resolved {resolution.outcome}: an oracle's proposal, confirmed.")
        self.report(
            request,
            done=f"Confirmed {_plural(len(done), 'resolution')}",
            n_done=len(done),
            failed=failed,
            not_done=f"{_plural(len(failed), 'resolution')} not confirmed",
        )
        return None

    @admin.action(description="Overturn selected proposals (decide another outcome)", permissions=["decide"])
    def overturn_proposals(self, request: HttpRequest, queryset: QuerySet[Resolution]) -> TemplateResponse | None:
        resolutions = list(queryset.select_related("market"))
        form = OverturnForm(request.POST if request.POST.get("post") == "yes" else None)
        if not form.is_valid():
            return self.confirm(
                request,
                resolutions,
                action="overturn_proposals",
                title=f"Overturn {_plural(len(resolutions), 'proposed resolution')}?",
                intro="Each market resolves to the outcome you choose, with you as its resolver, and pays out at "
                "once; the proposal is kept, marked overturned. A proposal of the same outcome is refused (confirm "
                "it instead).",
                headers=self._headers,
                rows=self._rows(resolutions),
                submit="Overturn",
                form=form,
            )
        outcome, note = form.cleaned_data["outcome"], form.cleaned_data["note"]
        done, failed = _run_each(
            resolutions,
            lambda r: resolution_overturn(resolution_id=r.pk, outcome=outcome, user=_operator(request), note=note),
        )
        for resolution, market in done:
            self.log_change(request, resolution, f"Overturned: resolved {outcome} instead.")
            self.log_change(request, market, f"Resolved {outcome} by an operator, overturning an oracle's proposal.")
        self.report(
            request,
            done=f"Overturned {_plural(len(done), 'resolution')}: resolved {outcome}",
            n_done=len(done),
            failed=failed,
            not_done=f"{_plural(len(failed), 'resolution')} not overturned",
        )
        return None


# --------------------------------------------------------------------------------------------------------------------
# Agents.

LINKED_SHOWN = 20  # linked agents listed on an agent's page


class LinkedFilter(admin.SimpleListFilter):
    """Agents whose trades with linked agents moved their ranks (``linked_pnl`` not zero)."""

    title = "trades with linked agents"
    parameter_name = "linked"

    def lookups(self, request, model_admin):
        return [("yes", "P&L left out of rank"), ("no", "None")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(linked_pnl=0)
        if self.value() == "no":
            return queryset.filter(linked_pnl=0)
        return queryset


# is_oracle is a permission flag, is_house a label (a demo trader of MoltStreet's own) and description is text: neither moves money. Everything else is the services' own.
AGENT_EDITABLE = ("description", "is_oracle", "is_house", "max_position", "max_reserved")


class GrantCreditsForm(forms.Form):
    amount = forms.DecimalField(
        max_digits=16,
        decimal_places=2,
        help_text="Credits for each selected agent; a negative amount removes credits.",
    )
    memo = forms.CharField(
        max_length=200, required=False, help_text="Why; the agent sees it in its ledger as an operator adjustment."
    )

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("The amount must not be zero.")
        return amount


@admin.register(Agent)
class AgentAdmin(ServiceActionsMixin, UUIDSearchMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "balance",
        "locked_balance",
        "reputation",
        "linked_pnl",
        "brier_score",
        "is_oracle",
        "is_suspended",
        "is_house",
        "created_at",
    )
    list_filter = ("is_oracle", "is_suspended", "is_house", LinkedFilter)
    search_fields = ("name", "=registered_from")
    actions = ["suspend_agents", "reinstate_agents", "grant_credits", "link_agents", "unlink_agents"]
    fieldsets = [
        (None, {"fields": ("name", "description", "is_oracle", "is_suspended", "is_house", "created_at", "id")}),
        (
            "Money (changed only by trading and the Grant credits action)",
            {"fields": ("balance", "locked_balance", "available", "reputation", "linked_pnl")},
        ),
        (
            "Linked agents (sock puppets): their trades with each other earn no rank",
            {"fields": ("registered_from", "registration_network", "link_group", "linked_agents")},
        ),
        ("Forecasting", {"fields": ("brier_score", "brier_count", "brier_sum")}),
        ("Risk limits (checked before matching; empty means none)", {"fields": ("max_position", "max_reserved")}),
        (
            "Dead-man's switch (armed by the agent's heartbeats; empty means disarmed)",
            {"fields": ("heartbeat_timeout", "heartbeat_deadline")},
        ),
        ("Activity", {"fields": ("api_keys", "related")}),
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Agents register through agents.services.agent_register, which grants (and ledgers) the starting credits and
        # issues the API key.
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # the ledger, orders and trades refer to an agent for ever; suspend instead

    def get_readonly_fields(self, request: HttpRequest, obj: Agent | None = None) -> list[str]:
        fields = [f.name for f in Agent._meta.concrete_fields if f.name not in AGENT_EDITABLE]
        return [*fields, "available", "api_keys", "related", "linked_agents"]

    @admin.display(description="Linked to")
    def linked_agents(self, obj: Agent) -> str:
        if obj.pk is None or obj.link_group is None:
            return "Nobody."
        others = Agent.objects.filter(link_group=obj.link_group).exclude(pk=obj.pk).order_by("name")[:LINKED_SHOWN]
        listed = format_html_join(", ", "{}", ((_link(a),) for a in others)) or "Nobody."
        trades = _changelist_link(Trade, "their linked trades", linked__exact=1, q=obj.name)
        return format_html("{} · {}", listed, trades)

    def save_model(self, request: HttpRequest, obj: Agent, form: forms.ModelForm, change: bool) -> None:
        # Only the edited columns: the admin reads the row without a lock, and a full save() would write back the
        # balance as read, undoing a trade that committed in between.
        fields = [name for name in form.changed_data if name in AGENT_EDITABLE]
        if fields:
            obj.save(update_fields=fields)

    @admin.display(description="Available balance")
    def available(self, obj: Agent) -> Decimal:
        return obj.available_balance

    @admin.display(description="API keys")
    def api_keys(self, obj: Agent) -> str:
        # Listed, not an inline formset, so saving the agent can never write a key back (e.g. un-revoke it).
        if obj.pk is None:
            return "—"
        keys = obj.api_keys.order_by("-created_at")
        return (
            format_html_join(
                mark_safe("<br>"),
                "{}… created {}{}",
                ((_link(k, k.prefix), k.created_at, f", revoked {k.revoked_at}" if k.revoked_at else "") for k in keys),
            )
            or "None."
        )

    @admin.display(description="Activity")
    def related(self, obj: Agent) -> str:
        if obj.pk is None:
            return "—"
        ledger = format_html(
            '<a href="{}?agent__id__exact={}">Ledger</a>', reverse("admin:agents_ledgerentry_changelist"), obj.pk
        )
        return format_html_join(
            " · ",
            "{}",
            [
                (_changelist_link(Order, "Orders", agent__id__exact=obj.pk),),
                (_changelist_link(Position, "Positions", agent__id__exact=obj.pk),),
                (_changelist_link(Trade, "Trades", q=obj.name),),
                (ledger,),
            ],
        )

    @admin.action(description="Suspend selected agents (cancels their resting orders)", permissions=["change"])
    def suspend_agents(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        done, failed = _run_each(queryset, lambda a: agent_suspend(agent_id=a.pk))
        for agent, _ in done:
            self.log_change(request, agent, "Suspended by an operator.")
        cancelled = sum(len(orders) for _, orders in done)
        self.report(
            request,
            done=f"Suspended {_plural(len(done), 'agent')} and cancelled {_plural(cancelled, 'resting order')}",
            n_done=len(done),
            failed=failed,
            not_done=f"{_plural(len(failed), 'agent')} not suspended",
        )

    @admin.action(description="Reinstate selected agents", permissions=["change"])
    def reinstate_agents(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        done, failed = _run_each(queryset, lambda a: agent_reinstate(agent_id=a.pk))
        for agent, _ in done:
            self.log_change(request, agent, "Reinstated by an operator.")
        self.report(
            request,
            done=f"Reinstated {_plural(len(done), 'agent')}",
            n_done=len(done),
            failed=failed,
            not_done=f"{_plural(len(failed), 'agent')} not reinstated",
        )

    @admin.action(
        description="Link selected agents (one owner: their trades together earn no rank)", permissions=["change"]
    )
    def link_agents(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        agents = list(queryset)
        agents_link(agent_ids=[a.pk for a in agents])
        for agent in agents:
            self.log_change(request, agent, f"Linked with {len(agents) - 1} other agent(s).")
        self.message_user(request, f"Linked {_plural(len(agents), 'agent')}; it applies to their trades from now on.")

    @admin.action(description="Unlink selected agents (each on its own)", permissions=["change"])
    def unlink_agents(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        agents = list(queryset)
        agents_unlink(agent_ids=[a.pk for a in agents])
        for agent in agents:
            self.log_change(request, agent, "Unlinked.")
        self.message_user(request, f"Unlinked {_plural(len(agents), 'agent')}; it applies to their trades from now on.")

    @admin.action(description="Grant credits to selected agents", permissions=["change"])
    def grant_credits(self, request: HttpRequest, queryset: QuerySet[Agent]) -> TemplateResponse | None:
        agents = list(queryset)
        form = GrantCreditsForm(request.POST if request.POST.get("post") == "yes" else None)
        if not form.is_valid():
            return self.confirm(
                request,
                agents,
                action="grant_credits",
                title=f"Grant credits to {_plural(len(agents), 'agent')}",
                intro="Each selected agent receives the amount (or loses it, if negative), ledgered as an operator "
                "adjustment. A removal is refused if it would dip into credits reserved by resting orders.",
                headers=("Agent", "Balance", "Available", "Suspended"),
                rows=[[_link(a), a.balance, a.available_balance, "yes" if a.is_suspended else ""] for a in agents],
                submit="Grant",
                form=form,
            )
        amount, memo = form.cleaned_data["amount"], form.cleaned_data["memo"]
        done, failed = _run_each(agents, lambda a: agent_grant_credits(agent_id=a.pk, amount=amount, memo=memo))
        for agent, _ in done:
            self.log_change(request, agent, f"Granted {amount} credits: {memo or 'operator adjustment'}.")
        verb = f"Granted {amount} credits to" if amount > 0 else f"Removed {-amount} credits from"
        self.report(
            request,
            done=f"{verb} {_plural(len(done), 'agent')}",
            n_done=len(done),
            failed=failed,
            not_done=f"{_plural(len(failed), 'agent')} unchanged",
        )
        return None


# --------------------------------------------------------------------------------------------------------------------
# Orders, trades and positions: written only by the matching engine and the lifecycle services.


@admin.register(Order)
class OrderAdmin(UUIDSearchMixin, ReadOnlyModelAdmin):
    list_display = (
        "created_at",
        "market",
        "agent",
        "action",
        "side",
        "price",
        "size",
        "filled",
        "status",
        "time_in_force",
        "cancel_reason",
    )
    list_filter = ("status", "side", "action", "time_in_force", "cancel_reason", "post_only")
    search_fields = ("agent__name", "market__question", "=client_order_id")
    list_select_related = ("market", "agent")
    date_hierarchy = "created_at"


@admin.register(Trade)
class TradeAdmin(UUIDSearchMixin, ReadOnlyModelAdmin):
    list_display = (
        "seq",
        "created_at",
        "market",
        "price",
        "size",
        "kind",
        "taker_side",
        "maker_agent",
        "taker_agent",
        "linked",
    )
    # "Linked: yes" lists the trades between linked agents (sock puppets), whose P&L earns no rank.
    list_filter = ("linked", "kind", "taker_side")
    search_fields = ("market__question", "maker_agent__name", "taker_agent__name")
    list_select_related = ("market", "maker_agent", "taker_agent")
    date_hierarchy = "created_at"


@admin.register(Position)
class PositionAdmin(ReadOnlyModelAdmin):
    list_display = (
        "agent",
        "market",
        "yes_shares",
        "no_shares",
        "yes_reserved",
        "no_reserved",
        "avg_yes_price",
        "avg_no_price",
        "realized_pnl",
        "updated_at",
    )
    list_filter = ("market__status",)
    search_fields = ("agent__name", "market__question")
    list_select_related = ("agent", "market")

    @admin.display(description="Avg YES price")
    def avg_yes_price(self, obj: Position) -> Decimal | None:
        return (obj.yes_cost / obj.yes_shares).quantize(Decimal("0.0001")) if obj.yes_shares else None

    @admin.display(description="Avg NO price")
    def avg_no_price(self, obj: Position) -> Decimal | None:
        return (obj.no_cost / obj.no_shares).quantize(Decimal("0.0001")) if obj.no_shares else None
