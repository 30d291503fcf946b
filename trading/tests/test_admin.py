"""The operators' admin: every page renders, and every action goes through the services with exact money."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent, ApiKey, LedgerEntry
from agents.services import agent_for_api_key
from markets.models import Market
from markets.tests.factories import FeedFactory, MarketFactory, SnapshotFactory
from moltstreet.errors import AgentSuspended
from testsupport.api import operator_resolver
from trading.lifecycle import market_close
from trading.models import Order, Position, Trade
from trading.orders import order_place
from trading.resolution import market_resolve

APPS = {"agents", "markets", "trading"}


def admin_url(model, view: str = "changelist", *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def run_action(client: Client, model, action: str, objects, *, confirm: bool = False, **extra):
    """POST an action as the changelist does (``index``), or as its confirmation page does (``post=yes``)."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(o.pk) for o in objects], **extra}
    if confirm:
        data["post"] = "yes"
    else:
        data["index"] = "0"
    return client.post(admin_url(model), data)


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def cash(agent: Agent) -> tuple[Decimal, Decimal]:
    agent.refresh_from_db()
    return agent.balance, agent.locked_balance


class FormInputs(HTMLParser):
    """The name/value pairs a browser would submit from the page's change form (inputs, textareas, selects)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        name = attrs.get("name")
        if tag == "input" and name and attrs.get("type") not in ("submit", "checkbox"):
            self.data[name] = attrs.get("value") or ""
        elif tag == "input" and name and attrs.get("type") == "checkbox" and "checked" in attrs:
            self.data[name] = "on"
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = ""
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in attrs:
            self.data[self._select] = attrs.get("value") or ""

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea] += data

    def handle_endtag(self, tag):
        if tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None


def browser_form(response) -> dict[str, str]:
    parser = FormInputs()
    parser.feed(response.content.decode())
    return parser.data


@pytest.fixture
def traded(make_agent, market):
    """Alice bids YES 0.60 x10 with a forecast; Bob buys NO at 0.45 x4 and mints 4 pairs at the maker's 0.60.

    After the fill: Alice paid 2.40 and still rests 6 @ 0.60 (3.60 locked); Bob paid 4 x 0.40 = 1.60.
    """
    alice, bob = make_agent("alice"), make_agent("bob")
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.60", size=10, forecast="0.7")
    order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price="0.45", size=4, forecast="0.3")
    assert cash(alice) == (Decimal("997.60"), Decimal("3.60"))
    assert cash(bob) == (Decimal("998.40"), Decimal("0.00"))
    return market, alice, bob


# ---------------------------------------------------------------------------------------------------------------------
# Pages.


def test_every_admin_page_renders_for_staff(admin_client, traded, make_agent):
    market, alice, bob = traded
    resolved = MarketFactory(creator=alice, question="Already settled?")
    order_place(agent=alice, market_id=resolved.id, side="YES", action="BUY", price="0.50", size=2)
    order_place(agent=bob, market_id=resolved.id, side="NO", action="BUY", price="0.50", size=2)
    market_resolve(market_id=resolved.id, outcome="NO", resolver=operator_resolver())
    # A feed and a source's snapshot of a market (what the poller writes).
    feed = FeedFactory(source="kalshi", query="fed")
    Market.objects.filter(id=market.id).update(feed=feed, source="kalshi", external_id="KXFED-1")
    SnapshotFactory(market=market, source="kalshi", yes_price=Decimal("0.55"))

    for model in admin.site._registry:
        for query in ("", "?q=alice", f"?q={market.id}"):
            response = admin_client.get(admin_url(model) + query)
            assert response.status_code == 200, (model, query)
        objects = list(model._default_manager.all()[:20])
        if model._meta.app_label in APPS:
            assert objects, f"no {model.__name__} to show: the test data should cover every registered model"
        for obj in objects:
            response = admin_client.get(admin_url(model, "change", obj.pk))
            assert response.status_code == 200, (model, obj.pk)


def changelist_queries(client, model) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(admin_url(model)).status_code == 200
    return len(queries)


def test_changelists_make_as_many_queries_for_many_rows_as_for_few(admin_client, traded, make_agent):
    market, *_ = traded
    models = [m for m in admin.site._registry if m._meta.app_label in APPS]
    few = {model: changelist_queries(admin_client, model) for model in models}
    for _ in range(3):
        buyer, seller = make_agent(), make_agent()
        order_place(agent=buyer, market_id=market.id, side="YES", action="BUY", price="0.30", size=2, forecast="0.3")
        order_place(agent=seller, market_id=market.id, side="NO", action="BUY", price="0.70", size=1)
        MarketFactory(creator=buyer, question="One more?")

    many = {model: changelist_queries(admin_client, model) for model in models}

    assert many == few  # no query per row (list_select_related covers every related column)


def test_the_market_page_shows_what_a_resolution_paid(admin_client, traded):
    market, *_ = traded
    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())

    page = admin_client.get(admin_url(Market, "change", market.pk)).content.decode()

    assert "Resolved YES: 1 agent paid 4.00 credits." in page
    assert "alice" in page  # her settled position is listed


def test_the_links_from_a_market_and_an_agent_page_open_filtered_lists(admin_client, traded):
    market, alice, _ = traded
    for model, lookup, pk in (
        (Order, "market__id__exact", market.pk),
        (Position, "market__id__exact", market.pk),
        (Trade, "market__id__exact", market.pk),
        (Order, "agent__id__exact", alice.pk),
        (LedgerEntry, "agent__id__exact", alice.pk),
    ):
        response = admin_client.get(f"{admin_url(model)}?{lookup}={pk}")
        assert response.status_code == 200
        assert response.context["cl"].result_count >= 1


def test_anonymous_visitors_are_sent_to_the_login_page(client, traded):
    for model in admin.site._registry:
        response = client.get(admin_url(model))
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))


def test_services_rows_cannot_be_added_or_deleted_by_hand(admin_client, traded):
    market, alice, _ = traded
    for model in (Market, Agent, Order, Position, LedgerEntry, ApiKey):
        assert admin_client.get(admin_url(model, "add")).status_code == 403
    assert admin_client.post(admin_url(Market, "delete", market.pk), {"post": "yes"}).status_code == 403
    assert admin_client.post(admin_url(Agent, "delete", alice.pk), {"post": "yes"}).status_code == 403


# ---------------------------------------------------------------------------------------------------------------------
# Editing.


@pytest.fixture
def meanwhile(monkeypatch):
    """Run ``action`` after the admin has read the row for a POST and before it saves it.

    That is the window in which another request's commit (a trade, a close) lands while an operator saves a form.
    """

    def install(model_admin_class, action) -> None:
        original = model_admin_class.get_object

        def get_object(self, request, object_id, from_field=None):
            obj = original(self, request, object_id, from_field)
            if request.method == "POST":
                action()
            return obj

        monkeypatch.setattr(model_admin_class, "get_object", get_object)

    return install


def test_editing_a_market_writes_only_its_text_never_its_book_state(
    admin_client, traded, make_agent, meanwhile, audit_clean
):
    market, *_ = traded
    carol = make_agent("carol")
    form = browser_form(admin_client.get(admin_url(Market, "change", market.pk)))
    form.update({"question": "Will the test pass, really?", "seq": "1", "volume": "0", "status": "resolved"})
    meanwhile(
        type(admin.site._registry[Market]),
        lambda: order_place(agent=carol, market_id=market.id, side="NO", action="BUY", price="0.40", size=2),
    )

    response = admin_client.post(admin_url(Market, "change", market.pk), form)

    assert response.status_code == 302
    after = Market.objects.get(pk=market.pk)
    assert after.question == "Will the test pass, really?"
    # Carol's trade (seq, volume and last price moved on) survives the save of the form loaded before it.
    assert (after.status, after.volume, after.last_price) == (Market.Status.OPEN, 6, Decimal("0.60"))
    assert Position.objects.get(market=market, agent=carol).no_shares == 2
    audit_clean()


def test_an_edit_is_refused_when_the_market_closed_meanwhile(admin_client, traded, meanwhile, audit_clean):
    market, *_ = traded
    form = browser_form(admin_client.get(admin_url(Market, "change", market.pk)))
    meanwhile(type(admin.site._registry[Market]), lambda: market_close(market_id=market.id))

    response = admin_client.post(admin_url(Market, "change", market.pk), {**form, "question": "Changed late?"})

    assert response.status_code == 302
    assert messages_of(response) == ["The market was closed or resolved meanwhile; your changes were not saved."]
    after = Market.objects.get(pk=market.pk)
    assert (after.question, after.status) == (market.question, Market.Status.CLOSED)
    audit_clean()


def test_a_deadline_cannot_be_moved_into_the_past(admin_client, market):
    form = browser_form(admin_client.get(admin_url(Market, "change", market.pk)))
    yesterday = timezone.localtime() - timedelta(days=1)
    form.update({"deadline_0": yesterday.strftime("%Y-%m-%d"), "deadline_1": yesterday.strftime("%H:%M:%S")})

    response = admin_client.post(admin_url(Market, "change", market.pk), form)

    assert response.status_code == 200  # the form again, with the error
    assert "use the Close action" in response.content.decode()
    assert Market.objects.get(pk=market.pk).deadline == market.deadline


def test_a_resolved_market_is_view_only(admin_client, traded):
    market, *_ = traded
    market_resolve(market_id=market.id, outcome="NO", resolver=operator_resolver())
    form = browser_form(admin_client.get(admin_url(Market, "change", market.pk)))

    response = admin_client.post(admin_url(Market, "change", market.pk), {**form, "question": "Rewritten history?"})

    assert response.status_code == 403
    assert Market.objects.get(pk=market.pk).question == market.question


def test_editing_an_agent_sets_the_oracle_flag_but_never_its_money(admin_client, traded, meanwhile, audit_clean):
    market, alice, bob = traded
    form = browser_form(admin_client.get(admin_url(Agent, "change", alice.pk)))
    form.update({"is_oracle": "on", "balance": "1000000.00", "reputation": "99.00"})
    # Alice's resting bid fills once more while the operator saves her page.
    meanwhile(
        type(admin.site._registry[Agent]),
        lambda: order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price="0.40", size=1),
    )

    response = admin_client.post(admin_url(Agent, "change", alice.pk), form)

    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.is_oracle is True
    # 997.60 - 0.60 for the fifth YES contract; the reserve of her resting bid shrinks from 3.60 to 3.00.
    assert (alice.balance, alice.locked_balance, alice.reputation) == (
        Decimal("997.00"),
        Decimal("3.00"),
        Decimal("0.00"),
    )
    audit_clean()


# ---------------------------------------------------------------------------------------------------------------------
# Resolving and closing.


def test_it_asks_for_confirmation_before_resolving(admin_client, traded):
    market, alice, _ = traded
    ledger_rows = LedgerEntry.objects.count()

    response = run_action(admin_client, Market, "resolve_yes", [market])

    assert response.status_code == 200
    assert response.templates[0].name == "admin/trading/confirm_action.html"
    page = response.content.decode()
    assert market.question in page
    assert 'name="post" value="yes"' in page
    assert 'name="action" value="resolve_yes"' in page
    assert "csrfmiddlewaretoken" in page
    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN
    assert LedgerEntry.objects.count() == ledger_rows
    assert cash(alice) == (Decimal("997.60"), Decimal("3.60"))


def test_a_confirmed_resolution_pays_the_winners_to_the_cent(admin_client, traded, audit_clean):
    market, alice, bob = traded

    response = run_action(admin_client, Market, "resolve_yes", [market], confirm=True)

    assert response.status_code == 302
    assert messages_of(response) == ["Resolved 1 market YES and paid 4.00 credits in 1 payout."]
    market.refresh_from_db()
    assert (market.status, market.outcome) == (Market.Status.RESOLVED, "YES")
    # Alice held 4 YES bought for 2.40: paid 4.00, and her resting 6 @ 0.60 is cancelled and its 3.60 released.
    assert cash(alice) == (Decimal("1001.60"), Decimal("0.00"))
    assert cash(bob) == (Decimal("998.40"), Decimal("0.00"))
    payout = LedgerEntry.objects.get(market_id=market.id, kind=LedgerEntry.Kind.PAYOUT)
    assert (payout.agent_id, payout.amount, payout.balance_after) == (alice.id, Decimal("4.00"), Decimal("1001.60"))
    assert not LedgerEntry.objects.filter(market_id=market.id, kind=LedgerEntry.Kind.PAYOUT, agent=bob).exists()
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert (alice.reputation, bob.reputation) == (Decimal("1.60"), Decimal("-1.60"))
    assert (alice.brier_score, bob.brier_score) == (Decimal("0.090000"), Decimal("0.490000"))
    assert Order.objects.get(agent=alice, market=market).cancel_reason == Order.CancelReason.MARKET_RESOLVED
    audit_clean()


def test_a_void_resolution_refunds_half_a_credit_per_contract(admin_client, traded, audit_clean):
    market, alice, bob = traded

    run_action(admin_client, Market, "resolve_void", [market], confirm=True)

    assert cash(alice) == (Decimal("999.60"), Decimal("0.00"))
    assert cash(bob) == (Decimal("1000.40"), Decimal("0.00"))
    audit_clean()


def test_resolving_twice_reports_the_error_and_changes_nothing(admin_client, traded, audit_clean):
    market, alice, bob = traded
    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())
    ledger_rows = LedgerEntry.objects.count()
    balances = cash(alice), cash(bob)

    response = run_action(admin_client, Market, "resolve_no", [market], confirm=True)

    assert response.status_code == 302
    assert messages_of(response) == [
        "1 market was not resolved:",
        f"“{market.question}”: The market has already been resolved. [market_already_resolved]",
    ]
    market.refresh_from_db()
    assert market.outcome == "YES"
    assert LedgerEntry.objects.count() == ledger_rows
    assert (cash(alice), cash(bob)) == balances
    audit_clean()


def test_it_resolves_the_rest_of_a_selection_when_one_market_is_already_resolved(admin_client, traded, audit_clean):
    market, _, bob = traded
    other = MarketFactory(creator=bob, question="Another question?")
    market_resolve(market_id=other.id, outcome="VOID", resolver=operator_resolver())

    response = run_action(admin_client, Market, "resolve_no", [market, other], confirm=True)

    assert messages_of(response) == [
        "Resolved 1 market NO and paid 4.00 credits in 1 payout; 1 market was not resolved:",
        "“Another question?”: The market has already been resolved. [market_already_resolved]",
    ]
    assert Market.objects.get(pk=market.pk).outcome == "NO"
    assert Market.objects.get(pk=other.pk).outcome == "VOID"
    # Bob: 998.40 - 10.00 (the second market's fee) + 4.00 for his 4 NO contracts.
    assert cash(bob) == (Decimal("992.40"), Decimal("0.00"))
    audit_clean()


def test_closing_cancels_resting_orders_and_releases_reserves(admin_client, traded, audit_clean):
    market, alice, _ = traded

    confirmation = run_action(admin_client, Market, "close_markets", [market])
    assert confirmation.status_code == 200
    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN

    response = run_action(admin_client, Market, "close_markets", [market], confirm=True)

    assert messages_of(response) == ["Closed 1 market."]
    assert Market.objects.get(pk=market.pk).status == Market.Status.CLOSED
    order = Order.objects.get(agent=alice, market=market)
    assert (order.status, order.cancel_reason) == (Order.Status.CANCELLED, Order.CancelReason.MARKET_CLOSED)
    assert cash(alice) == (Decimal("997.60"), Decimal("0.00"))
    # Contracts stay held until resolution.
    assert Position.objects.get(agent=alice, market=market).yes_shares == 4
    audit_clean()


def test_a_staff_member_without_the_change_permission_cannot_resolve(client, django_user_model, traded):
    market, *_ = traded
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_market"))
    client.force_login(viewer)

    assert client.get(admin_url(Market)).status_code == 200
    response = run_action(client, Market, "resolve_yes", [market], confirm=True)

    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN
    assert not any("Resolved" in m for m in messages_of(response))


def test_an_admin_post_without_a_csrf_token_is_refused(django_user_model, traded):
    market, *_ = traded
    client = Client(enforce_csrf_checks=True)
    client.force_login(django_user_model.objects.create_superuser("op", "op@example.com", "x"))

    response = run_action(client, Market, "resolve_yes", [market], confirm=True)

    assert response.status_code == 403
    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN
    # Our own failure page: Django's has an inline <style>, which the Content-Security-Policy blocks.
    assert b"CSRF verification failed" in response.content and b"<style" not in response.content


# ---------------------------------------------------------------------------------------------------------------------
# Agents.


def test_suspending_cancels_resting_orders_and_stops_trading(admin_client, traded, audit_clean):
    market, alice, _ = traded

    response = run_action(admin_client, Agent, "suspend_agents", [alice])

    assert messages_of(response) == ["Suspended 1 agent and cancelled 1 resting order."]
    alice.refresh_from_db()
    assert alice.is_suspended
    order = Order.objects.get(agent=alice, market=market)
    assert (order.status, order.cancel_reason) == (Order.Status.CANCELLED, Order.CancelReason.AGENT_SUSPENDED)
    assert cash(alice) == (Decimal("997.60"), Decimal("0.00"))
    with pytest.raises(AgentSuspended):
        order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.10", size=1)
    audit_clean()

    run_action(admin_client, Agent, "reinstate_agents", [alice])

    assert order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.10", size=1).created
    audit_clean()


def test_granting_credits_asks_for_an_amount_first(admin_client, traded):
    _, alice, _ = traded
    ledger_rows = LedgerEntry.objects.count()

    response = run_action(admin_client, Agent, "grant_credits", [alice])

    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="amount"' in page and 'name="memo"' in page
    assert LedgerEntry.objects.count() == ledger_rows


def test_granting_credits_writes_an_adjustment_to_the_ledger(admin_client, traded, audit_clean):
    _, alice, bob = traded

    response = run_action(
        admin_client, Agent, "grant_credits", [alice, bob], confirm=True, amount="25.50", memo="compensation"
    )

    assert messages_of(response) == ["Granted 25.50 credits to 2 agents."]
    assert cash(alice) == (Decimal("1023.10"), Decimal("3.60"))
    entry = LedgerEntry.objects.filter(agent=alice).order_by("-id").first()
    assert (entry.kind, entry.amount, entry.balance_after, entry.memo) == (
        LedgerEntry.Kind.ADJUSTMENT,
        Decimal("25.50"),
        Decimal("1023.10"),
        "compensation",
    )
    audit_clean()


def test_removing_credits_beyond_the_available_balance_is_refused(admin_client, traded, audit_clean):
    _, alice, bob = traded
    ledger_rows = LedgerEntry.objects.count()

    # Alice has 997.60 of which 3.60 back her resting bid: removing 995.00 would dip into the reserve.
    response = run_action(admin_client, Agent, "grant_credits", [alice, bob], confirm=True, amount="-995.00")

    assert messages_of(response) == [
        "Removed 995.00 credits from 1 agent; 1 agent unchanged:",
        "“alice”: Available balance is too low for this order. [insufficient_balance]",
    ]
    assert cash(alice) == (Decimal("997.60"), Decimal("3.60"))
    assert cash(bob) == (Decimal("3.40"), Decimal("0.00"))
    assert LedgerEntry.objects.count() == ledger_rows + 1
    audit_clean()


@pytest.mark.parametrize("amount", ["0", "abc", "1.001"])
def test_an_invalid_grant_shows_the_form_again_and_changes_nothing(admin_client, traded, amount):
    _, alice, _ = traded
    ledger_rows = LedgerEntry.objects.count()

    response = run_action(admin_client, Agent, "grant_credits", [alice], confirm=True, amount=amount)

    assert response.status_code == 200
    assert "errornote" in response.content.decode()
    assert LedgerEntry.objects.count() == ledger_rows


def test_revoking_an_api_key_locks_the_agent_out(admin_client, traded):
    _, alice, _ = traded
    key = ApiKey.objects.get(agent=alice)

    response = run_action(admin_client, ApiKey, "revoke_keys", [key])

    assert messages_of(response) == ["Revoked 1 API key."]
    assert agent_for_api_key(alice.api_key) is None


def test_an_unknown_uuid_in_the_search_box_finds_nothing(admin_client, traded):
    response = admin_client.get(f"{admin_url(Order)}?q={uuid.uuid4()}")
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0
