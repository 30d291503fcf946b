"""Authorization, for every endpoint of the agent API: what an agent may read and change is its own.

``CHECKS`` maps every route of :data:`moltstreet.tests.test_errors_and_schema.ROUTES` to a check that another agent
(mallory) can neither read nor change alice's private rows through it; a new route without a check fails
:func:`test_every_route_has_an_authorization_check`. The private websocket feed is checked the same way in
``trading/tests/test_consumers.py`` (each agent receives only its own orders, fills and balance), the admin in
``trading/tests/test_admin.py`` (staff login, CSRF, change permission) and below (a logged-in non-staff user).
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.contrib import admin
from django.urls import reverse

from agents.models import Agent, ApiKey
from agents.tests.factories import ApiKeyFactory
from backtests.models import Backtest, BacktestExecution
from backtests.services import backtest_upload
from moltstreet.tests.test_errors_and_schema import ROUTES
from testsupport.api import API, api_client, assert_error, mint, place, unchanged
from trading.models import Order

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_agent, market):
    """alice with a resting order, a fill, a position, ledger rows, two keys and a forecast; mallory with her own."""
    alice, bob, mallory = make_agent("alice"), make_agent("bob"), make_agent("mallory")
    mint(api_client(alice), api_client(bob), market, 3)
    resting = place(api_client(alice), market, "YES", "BUY", "0.20", 2, client_order_id="alice-1")["order"]
    api_client(alice).post(f"{API}/markets/{market.id}/forecast/", {"probability": "0.7", "reasoning": "secret"})
    second_key = ApiKeyFactory(agent=alice)
    place(api_client(mallory), market, "NO", "BUY", "0.10", 1)
    # Backtests are public to read (docs/decisions.md); what is alice's alone is adding to her upload in progress.
    alice_upload = backtest_upload(
        agent=alice, strategy="alice:Secret", markets=[market.id], result={}, executions_count=2
    )
    backtest_upload(agent=mallory, strategy="mallory:Mine", markets=[market.id], result={})
    return {
        "backtest": str(alice_upload.id),
        "alice": alice,
        "mallory": mallory,
        "market": market,
        "order": resting["id"],
        "key": str(second_key.id),
        "alice_ids": {resting["id"], str(second_key.id), *(str(k.id) for k in ApiKey.objects.filter(agent=alice))},
    }


def _text(response) -> str:
    return response.content.decode()


def _hides_alice(world, response):
    """The response succeeded and names none of alice's private rows."""
    assert response.status_code == 200, _text(response)
    text = _text(response)
    for private in world["alice_ids"]:
        assert private not in text, (private, text[:500])
    return json.loads(text)


def _own_list(path: str):
    def check(world, mallory, audit_clean):
        body = _hides_alice(world, mallory.get(f"{API}{path}"))
        rows = body["results"] if isinstance(body, dict) else body
        assert rows, f"mallory's own {path} is empty: the check would prove nothing"

    return check


def _public(path: str):
    def check(world, mallory, audit_clean):
        url = path.format(market=world["market"].id, name="alice", backtest=world["backtest"])
        _hides_alice(world, mallory.get(f"{API}{url}"))

    return check


def check_me(world, mallory, audit_clean):
    assert _hides_alice(world, mallory.get(f"{API}/agents/me/"))["name"] == "mallory"


def check_create_key(world, mallory, audit_clean):
    created = mallory.post(f"{API}/agents/me/keys/", {"revoke_current": False}).json()
    assert ApiKey.objects.get(id=created["id"]).agent.name == "mallory"


def check_revoke_key(world, mallory, audit_clean):
    with unchanged(audit_clean):
        assert_error(mallory.delete(f"{API}/agents/me/keys/{world['key']}/"), 404, "not_found")
    assert api_client(world["alice"]).get(f"{API}/agents/me/").status_code == 200


def check_read_order(world, mallory, audit_clean):
    assert_error(mallory.get(f"{API}/orders/{world['order']}/"), 404, "not_found")


def check_cancel_order(world, mallory, audit_clean):
    with unchanged(audit_clean):
        assert_error(mallory.delete(f"{API}/orders/{world['order']}/"), 404, "not_found")


def check_cancel_all(world, mallory, audit_clean):
    cancelled = mallory.post(f"{API}/orders/cancel-all/", {"market": str(world["market"].id)}).json()
    assert world["order"] not in json.dumps(cancelled)
    assert Order.objects.get(id=world["order"]).status == Order.Status.OPEN


def check_amend_order(world, mallory, audit_clean):
    # Neither in place (a smaller size) nor by replacement (a new price): alice's order is not mallory's to amend.
    with unchanged(audit_clean):
        for body in ({"size": 1}, {"price": "0.25"}):
            assert_error(mallory.patch(f"{API}/orders/{world['order']}/", body), 404, "not_found")
    assert Order.objects.values_list("size", "price", "replaced_by").get(id=world["order"]) == (
        2,
        Decimal("0.20"),
        None,
    )


def check_batch_cancel(world, mallory, audit_clean):
    with unchanged(audit_clean):
        [entry] = mallory.post(f"{API}/orders/batch-cancel/", {"ids": [world["order"]]}).json()["orders"]
    assert (entry["status"], entry["order"], entry["error"]["code"]) == (404, None, "not_found")
    assert Order.objects.get(id=world["order"]).status == Order.Status.OPEN


def check_batch_place(world, mallory, audit_clean):
    # Every order of a batch is the caller's: an entry naming another agent is refused (and only that entry), and
    # alice's client_order_id is no key to her order.
    body = {"market": str(world["market"].id), "side": "NO", "action": "BUY", "price": "0.05", "size": 1}
    naming = {**body, "agent": str(world["alice"].id)}
    answer = mallory.post(f"{API}/orders/batch/", {"orders": [naming, {**body, "client_order_id": "alice-1"}]})
    refused, placed = answer.json()["orders"]
    assert (refused["status"], refused["order"], set(refused["error"]["detail"])) == (400, None, {"agent"})
    assert placed["status"] == 201, placed
    assert Order.objects.get(id=placed["order"]["id"]).agent.name == "mallory"
    assert placed["order"]["id"] != world["order"]


def check_heartbeat(world, mallory, audit_clean):
    # A heartbeat arms the caller's own switch; a body naming another agent is refused.
    with unchanged(audit_clean):
        _refuses_naming_another_agent(
            mallory.post(f"{API}/agents/me/heartbeat/", {"timeout_seconds": 5, "agent": "alice"}), "agent"
        )
    assert mallory.post(f"{API}/agents/me/heartbeat/", {"timeout_seconds": 5}).json()["armed"] is True
    deadlines = dict(Agent.objects.filter(name__in=["alice", "mallory"]).values_list("name", "heartbeat_deadline"))
    assert deadlines["alice"] is None and deadlines["mallory"] is not None


def _refuses_naming_another_agent(response, field: str) -> None:
    """A body that names another agent is refused (400, an unknown field), never obeyed nor silently ignored."""
    assert set(assert_error(response, 400, "invalid_request")["detail"]) == {field}


def check_place_order(world, mallory, audit_clean):
    # An order is always the caller's: a body naming another agent is refused, not obeyed.
    body = {"market": str(world["market"].id), "side": "NO", "action": "BUY", "price": "0.05", "size": 1}
    with unchanged(audit_clean):
        naming = {**body, "agent": str(world["alice"].id), "client_order_id": "alice-1"}
        _refuses_naming_another_agent(mallory.post(f"{API}/orders/", naming), "agent")
    response = mallory.post(f"{API}/orders/", {**body, "client_order_id": "alice-1"})
    assert response.status_code == 201, _text(response)
    assert Order.objects.get(id=response.json()["order"]["id"]).agent.name == "mallory"


def check_create_market(world, mallory, audit_clean):
    body = {"question": "Mallory's question?", "deadline": "2031-01-01T00:00:00Z"}
    with unchanged(audit_clean):
        _refuses_naming_another_agent(mallory.post(f"{API}/markets/", {**body, "creator": "alice"}), "creator")
    assert mallory.post(f"{API}/markets/", body).json()["creator"] == "mallory"
    assert Agent.objects.get(name="alice").balance == world["alice_balance"]


def check_forecast(world, mallory, audit_clean):
    url = f"{API}/markets/{world['market'].id}/forecast/"
    with unchanged(audit_clean):
        _refuses_naming_another_agent(mallory.post(url, {"probability": "0.1", "agent": "alice"}), "agent")
    assert mallory.post(url, {"probability": "0.1"}).json()["agent"] == "mallory"


def check_resolve(world, mallory, audit_clean):
    with unchanged(audit_clean):
        for client in (mallory, api_client(world["alice"])):
            url = f"{API}/markets/{world['market'].id}/resolve/"
            assert_error(client.post(url, {"outcome": "YES"}), 403, "not_oracle")
        assert_error(api_client().post(url, {"outcome": "YES"}), 401, "not_authenticated")


def check_dispute(world, mallory, audit_clean):
    # A dispute is always the caller's own: a body naming another agent is refused (and without a proposal, any is).
    body = {"reason": "Alice says so."}
    with unchanged(audit_clean):
        url = f"{API}/markets/{world['market'].id}/dispute/"
        _refuses_naming_another_agent(mallory.post(url, {**body, "agent": "alice"}), "agent")
        assert_error(mallory.post(url, body), 409, "not_disputable")
        assert_error(api_client().post(f"{API}/markets/{world['market'].id}/dispute/", body), 401, "not_authenticated")


def check_create_backtest(world, mallory, audit_clean):
    # A backtest is always the caller's: a body naming another agent is refused.
    body = {"strategy": "momentum", "markets": [str(world["market"].id)]}
    with unchanged(audit_clean):
        _refuses_naming_another_agent(mallory.post(f"{API}/backtests/", {**body, "agent": "alice"}), "agent")
        assert not Backtest.objects.filter(agent__name="mallory", strategy="momentum").exists()
        response = mallory.post(f"{API}/backtests/", body)
    assert response.status_code == 202, _text(response)
    assert Backtest.objects.get(id=response.json()["id"]).agent.name == "mallory"
    assert_error(api_client().post(f"{API}/backtests/", body), 401, "not_authenticated")


def check_own_backtests(world, mallory, audit_clean):
    # Each backtest is public on its own URL; the list is the caller's own.
    rows = _hides_alice(world, mallory.get(f"{API}/backtests/"))["results"]
    assert [row["strategy"] for row in rows] == ["mallory:Mine"]
    assert world["backtest"] not in json.dumps(rows)


def check_append_executions(world, mallory, audit_clean):
    row = {"time": "2026-01-01T00:00:00Z", "market": str(world["market"].id), "side": "YES", "action": "BUY"}
    body = {"offset": 0, "executions": [{**row, "price": "0.50", "size": 1, "reason": "taker", "cash": "-0.50"}]}
    url = f"{API}/backtests/{world['backtest']}/executions/"
    with unchanged(audit_clean):
        assert_error(mallory.post(url, body), 404, "not_found")
        assert_error(api_client().post(url, body), 401, "not_authenticated")
    assert not BacktestExecution.objects.filter(backtest_id=world["backtest"]).exists()


def check_register(world, mallory, audit_clean):
    # Registering while authenticated makes a new, separate agent; it never touches the caller or anyone else.
    created = mallory.post(f"{API}/agents/", {"name": "mallory-two"}).json()
    assert created["balance"] == "1000.00" and created["name"] == "mallory-two"


CHECKS = {
    ("POST", "/agents/"): check_register,
    ("GET", "/agents/"): _public("/agents/"),
    ("GET", "/agents/me/"): check_me,
    ("GET", "/agents/me/keys/"): _own_list("/agents/me/keys/"),
    ("POST", "/agents/me/keys/"): check_create_key,
    ("DELETE", "/agents/me/keys/{key}/"): check_revoke_key,
    ("GET", "/agents/{name}/"): _public("/agents/{name}/"),
    ("POST", "/markets/"): check_create_market,
    ("GET", "/markets/"): _public("/markets/"),
    ("GET", "/markets/{market}/"): _public("/markets/{market}/"),
    ("GET", "/markets/{market}/orderbook/"): _public("/markets/{market}/orderbook/"),
    ("GET", "/markets/{market}/trades/"): _public("/markets/{market}/trades/"),
    ("GET", "/markets/{market}/history/"): _public("/markets/{market}/history/"),
    ("GET", "/markets/{market}/snapshots/"): _public("/markets/{market}/snapshots/"),
    ("POST", "/markets/{market}/resolve/"): check_resolve,
    ("POST", "/markets/{market}/dispute/"): check_dispute,
    ("POST", "/markets/{market}/forecast/"): check_forecast,
    ("POST", "/orders/"): check_place_order,
    ("GET", "/orders/"): _own_list("/orders/"),
    ("GET", "/orders/{order}/"): check_read_order,
    ("DELETE", "/orders/{order}/"): check_cancel_order,
    ("POST", "/orders/cancel-all/"): check_cancel_all,
    ("PATCH", "/orders/{order}/"): check_amend_order,
    ("POST", "/orders/batch/"): check_batch_place,
    ("POST", "/orders/batch-cancel/"): check_batch_cancel,
    ("POST", "/agents/me/heartbeat/"): check_heartbeat,
    ("GET", "/positions/"): _own_list("/positions/"),
    ("GET", "/trades/"): _own_list("/trades/"),
    ("GET", "/ledger/"): _own_list("/ledger/"),
    ("GET", "/markets/{market}/events/"): _public("/markets/{market}/events/"),
    ("POST", "/backtests/"): check_create_backtest,
    ("GET", "/backtests/"): check_own_backtests,
    ("GET", "/backtests/strategies/"): _public("/backtests/strategies/"),
    ("GET", "/backtests/{backtest}/"): _public("/backtests/{backtest}/"),
    ("GET", "/backtests/{backtest}/executions/"): _public("/backtests/{backtest}/executions/"),
    ("POST", "/backtests/{backtest}/executions/"): check_append_executions,
}


def test_every_route_has_an_authorization_check():
    assert set(CHECKS) == {(method, path) for method, path, _ in ROUTES}


@pytest.mark.parametrize(("method", "path"), list(CHECKS), ids=[f"{m} {p}" for m, p in CHECKS])
def test_no_agent_can_read_or_change_another_agents_rows(method, path, world, audit_clean):
    # alice's bid takes mallory's resting NO bid, so mallory holds a fill and a position too (her own lists are not
    # trivially empty).
    taken = place(api_client(world["alice"]), world["market"], "YES", "BUY", "0.90", 1)
    assert taken["order"]["status"] == "filled"
    world["alice_ids"].add(taken["order"]["id"])
    alice_before = Agent.objects.values_list("balance", "locked_balance").get(name="alice")
    world["alice_balance"] = alice_before[0]

    CHECKS[(method, path)](world, api_client(world["mallory"]), audit_clean)

    assert Agent.objects.values_list("balance", "locked_balance").get(name="alice") == alice_before
    audit_clean()


def test_the_admin_refuses_a_logged_in_user_who_is_not_staff(client, django_user_model, world):
    client.force_login(django_user_model.objects.create_user("visitor", password="x"))
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login")), url
