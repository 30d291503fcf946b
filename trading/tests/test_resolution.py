"""Who resolves a market, and when it pays (DESIGN section 4; trading/resolution.py).

Operators and sources resolve at once; an oracle proposes, and its proposal pays when the dispute window passes
undisputed or an operator decides. The API's side is in test_api.py; here: the services, the scheduler, the admin,
the record of the resolver and the live feed.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent
from markets.models import Market, MarketEvent, Resolution, Resolver
from markets.tests.factories import MarketFactory
from moltstreet.errors import InvalidRequest, MarketAlreadyResolved, NotDisputable
from testsupport.api import operator_resolver
from trading.lifecycle import market_close
from trading.management.commands.run_scheduler import run_pass
from trading.orders import order_place
from trading.realtime import public_messages
from trading.resolution import (
    market_resolve,
    resolution_confirm,
    resolution_dispute,
    resolution_overturn,
    resolution_propose,
    resolutions_finalize_due,
)


def balance(agent: Agent) -> Decimal:
    return Agent.objects.get(id=agent.id).balance


@pytest.fixture
def proposed(make_agent, market):
    """alice bought 4 YES at 0.60 from bob's NO; the market closed; the oracle proposed NO (bob wins 4.00)."""
    alice, bob, oracle = make_agent("alice"), make_agent("bob"), make_agent("oracle", oracle=True)
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.60", size=4, forecast="0.8")
    order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price="0.40", size=4, forecast="0.1")
    market_close(market_id=market.id)
    resolution = resolution_propose(market_id=market.id, outcome="NO", agent=oracle)
    assert (balance(alice), balance(bob)) == (Decimal("997.60"), Decimal("998.40"))
    return {"market": market, "alice": alice, "bob": bob, "oracle": oracle, "resolution": resolution}


def resolved_event(market: Market) -> dict:
    return MarketEvent.objects.get(market=market, kind="market", data__event="resolved").data


def test_an_operator_resolution_is_final_at_once_and_names_the_operator(
    make_agent, market, django_user_model, audit_clean
):
    operator = django_user_model.objects.create_superuser("ops-anna", "", "a-long-operator-password")
    resolved = market_resolve(market_id=market.id, outcome="YES", resolver=Resolver.operator(operator))

    assert (resolved.status, resolved.outcome) == ("resolved", "YES")
    final = Resolution.objects.get(market=market)
    assert (final.status, final.resolver_kind, final.resolver_name, final.resolver_user) == (
        "final",
        "operator",
        "ops-anna",
        operator,
    )
    assert resolved_event(market)["resolution"]["resolver"] == {"kind": "operator", "name": "ops-anna"}
    with pytest.raises(MarketAlreadyResolved):
        market_resolve(market_id=market.id, outcome="NO", resolver=operator_resolver())
    audit_clean()


def test_an_oracle_cannot_skip_the_dispute_window_through_the_operators_service(make_agent, market):
    oracle = make_agent("oracle", oracle=True)
    with pytest.raises(InvalidRequest):
        market_resolve(market_id=market.id, outcome="YES", resolver=Resolver.oracle(oracle))
    assert Market.objects.get(id=market.id).status == "open"


def test_an_undisputed_proposal_pays_once_when_the_scheduler_passes_after_its_window(proposed, audit_clean):
    market, alice, bob = proposed["market"], proposed["alice"], proposed["bob"]
    assert run_pass() is True
    assert Market.objects.get(id=market.id).status == "closed"  # the window is still open

    Resolution.objects.filter(pk=proposed["resolution"].pk).update(dispute_until=timezone.now())
    assert run_pass() is True

    market.refresh_from_db()
    assert (market.status, market.outcome) == ("resolved", "NO")
    assert (balance(alice), balance(bob)) == (Decimal("997.60"), Decimal("1002.40"))
    final = Resolution.objects.get(market=market)
    assert (final.status, final.resolver_name, final.decided_by) == ("final", "oracle", None)
    assert resolutions_finalize_due(now=timezone.now() + timedelta(days=3)) == []
    assert Agent.objects.get(id=alice.id).brier_score == Decimal("0.640000")  # said 0.8, NO happened
    audit_clean()


def test_an_operator_confirms_a_disputed_proposal(proposed, django_user_model, audit_clean):
    market, alice, bob = proposed["market"], proposed["alice"], proposed["bob"]
    resolution_dispute(market_id=market.id, agent=alice, reason="It happened on the 3rd.")
    assert resolutions_finalize_due(now=timezone.now() + timedelta(days=3)) == []
    operator = django_user_model.objects.create_superuser("ops-ben", "", "a-long-operator-password")

    resolution_confirm(resolution_id=proposed["resolution"].pk, user=operator, note="Checked the source: NO.")

    final = Resolution.objects.get(market=market)
    assert (final.status, final.outcome, final.resolver_name, final.decided_by) == ("final", "NO", "oracle", operator)
    assert (balance(alice), balance(bob)) == (Decimal("997.60"), Decimal("1002.40"))
    assert resolved_event(market)["resolution"]["decided_by"] == "ops-ben"
    with pytest.raises(NotDisputable):
        resolution_confirm(resolution_id=proposed["resolution"].pk, user=operator)
    audit_clean()


def test_an_operator_overturns_a_disputed_proposal(proposed, django_user_model, audit_clean):
    market, alice, bob = proposed["market"], proposed["alice"], proposed["bob"]
    resolution_dispute(market_id=market.id, agent=alice, reason="It happened on the 3rd.")
    operator = django_user_model.objects.create_superuser("ops-cleo", "", "a-long-operator-password")
    with pytest.raises(InvalidRequest):  # the proposal's own outcome: that is a confirmation
        resolution_overturn(resolution_id=proposed["resolution"].pk, outcome="NO", user=operator)

    resolution_overturn(resolution_id=proposed["resolution"].pk, outcome="YES", user=operator, note="It did happen.")

    by_status = {r.status: r for r in Resolution.objects.filter(market=market)}
    assert set(by_status) == {"overturned", "final"}
    assert (by_status["overturned"].outcome, by_status["overturned"].decided_by) == ("NO", operator)
    assert (by_status["final"].outcome, by_status["final"].resolver_name) == ("YES", "ops-cleo")
    assert (balance(alice), balance(bob)) == (Decimal("1001.60"), Decimal("998.40"))
    audit_clean()


@pytest.mark.parametrize(("outcome", "kept"), [("NO", "final"), ("YES", "overturned")])
def test_an_operator_resolving_a_market_settles_its_pending_proposal(proposed, outcome, kept, audit_clean):
    market_resolve(market_id=proposed["market"].id, outcome=outcome, resolver=operator_resolver())

    assert Resolution.objects.get(pk=proposed["resolution"].pk).status == kept
    final = Resolution.objects.get(market=proposed["market"], status="final")
    assert final.outcome == outcome
    assert Resolution.objects.filter(market=proposed["market"]).count() == (1 if kept == "final" else 2)
    audit_clean()


def test_a_dispute_after_the_window_or_after_the_decision_is_refused(proposed, audit_clean):
    market, alice = proposed["market"], proposed["alice"]
    Resolution.objects.filter(pk=proposed["resolution"].pk).update(dispute_until=timezone.now())
    with pytest.raises(NotDisputable):
        resolution_dispute(market_id=market.id, agent=alice, reason="Too late.")
    resolutions_finalize_due()
    with pytest.raises(NotDisputable):
        resolution_dispute(market_id=market.id, agent=alice, reason="Much too late.")


def test_the_live_feed_says_who_proposed_who_disputed_and_who_resolved(proposed):
    market, alice = proposed["market"], proposed["alice"]
    resolution_dispute(market_id=market.id, agent=alice, reason="It happened.")
    market_resolve(market_id=market.id, outcome="NO", resolver=operator_resolver())

    events = MarketEvent.objects.filter(market=market, kind="market").order_by("seq")
    messages = [m for m in public_messages(market.id, events) if m.get("resolution")]
    assert [(m["event"], m["resolution"]["status"], m["resolution"]["disputes"]) for m in messages] == [
        ("resolution_proposed", "proposed", 0),
        ("resolution_disputed", "disputed", 1),
        ("resolved", "final", 1),
    ]
    assert messages[-1]["resolution"]["resolver"] == {"kind": "oracle", "name": "oracle"}
    assert messages[-1]["market"]["status"] == "resolved"


# --------------------------------------------------------------------------------------------------------------------
# The admin


def admin_action(client, action: str, objects, **extra):
    url = reverse("admin:markets_resolution_changelist")
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(o.pk) for o in objects], "post": "yes", **extra}
    return client.post(url, data)


def test_operators_confirm_and_overturn_proposals_in_the_admin(admin_client, admin_user, make_agent, audit_clean):
    markets = []
    oracle = make_agent("oracle", oracle=True)
    for n in range(2):
        market = MarketFactory(question=f"Q{n}?")
        market_close(market_id=market.id)
        resolution_propose(market_id=market.id, outcome="YES", agent=oracle)
        markets.append(market)
    first, second = (Resolution.objects.get(market=m) for m in markets)
    listing = admin_client.get(reverse("admin:markets_resolution_changelist") + "?status__exact=proposed")
    assert listing.status_code == 200 and "Q0?" in listing.content.decode()
    page = admin_client.get(reverse("admin:markets_resolution_change", args=[first.pk])).content.decode()
    assert "oracle" in page

    confirmed = admin_action(admin_client, "confirm_proposals", [first])
    assert [str(m) for m in get_messages(confirmed.wsgi_request)] == ["Confirmed 1 resolution."]
    overturned = admin_action(admin_client, "overturn_proposals", [second], outcome="VOID", note="Ambiguous.")
    assert [str(m) for m in get_messages(overturned.wsgi_request)][-1] == "Overturned 1 resolution: resolved VOID."

    assert Market.objects.get(id=markets[0].id).outcome == "YES"
    assert Market.objects.get(id=markets[1].id).outcome == "VOID"
    assert Resolution.objects.get(pk=first.pk).decided_by == admin_user
    assert Resolution.objects.get(market=markets[1], status="final").resolver_name == admin_user.username
    market_page = admin_client.get(reverse("admin:markets_market_change", args=[markets[1].pk])).content.decode()
    assert f"VOID final by operator {admin_user.username}" in market_page
    audit_clean()


def test_the_market_page_says_who_proposed_and_who_resolved(proposed, client):
    market, alice = proposed["market"], proposed["alice"]
    page = client.get(f"/markets/{market.id}/").content.decode()
    assert 'id="resolution-status"' in page and "Proposed NO by oracle" in page and "unless an agent disputes" in page

    resolution_dispute(market_id=market.id, agent=alice, reason="It happened.")
    assert "Disputed by 1 agent: an operator decides" in client.get(f"/markets/{market.id}/").content.decode()

    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())
    page = client.get(f"/markets/{market.id}/").content.decode()
    assert "Resolved by operator test operator." in page
    assert "Proposed NO" not in page
