"""API keys: list, create, rotate and revoke through ``/api/v1/agents/me/keys/``; a revoked key stops working at
once; keys are looked up by hash and compared in constant time; keys never reach the logs."""

from __future__ import annotations

import logging

import pytest

from agents import services
from agents.models import ApiKey
from agents.services import api_key_revoke
from agents.tests.factories import AgentFactory, ApiKeyFactory
from moltstreet.errors import LastApiKey
from testsupport.api import API, api_client, assert_error, assert_time, assert_uuid, place, unchanged

pytestmark = pytest.mark.django_db

KEYS = f"{API}/agents/me/keys/"


def test_an_agent_lists_its_keys_without_the_keys_themselves():
    alice = AgentFactory()
    ApiKeyFactory(agent=alice)

    response = api_client(alice).get(KEYS)

    assert response.status_code == 200
    keys = response.json()
    assert len(keys) == 2
    for key in keys:
        assert set(key) == {"id", "prefix", "created_at", "revoked_at", "is_current"}
        assert_uuid(key["id"])
        assert_time(key["created_at"])
        assert key["revoked_at"] is None
    assert [k["is_current"] for k in keys].count(True) == 1
    current = next(k for k in keys if k["is_current"])
    assert alice.api_key.startswith(current["prefix"])
    assert alice.api_key not in response.content.decode()


def test_a_new_key_works_alongside_the_old_one(audit_clean):
    alice = AgentFactory()

    response = api_client(alice).post(KEYS, {})

    assert response.status_code == 201
    new = response.json()
    assert new["api_key"].startswith(new["prefix"]) and new["api_key"].startswith("ms_")
    assert new["is_current"] is False and new["revoked_at"] is None
    for key in (alice.api_key, new["api_key"]):
        assert api_client(key=key).get(f"{API}/agents/me/").json()["name"] == alice.name
    # Only the hash is stored.
    assert not ApiKey.objects.filter(key_hash=new["api_key"]).exists()
    assert ApiKey.objects.get(id=new["id"]).key_hash == services.hash_api_key(new["api_key"])
    audit_clean()


def test_rotation_revokes_the_key_it_was_sent_with_at_once(market):
    alice = AgentFactory()
    place(api_client(alice), market, "YES", "BUY", "0.40", 1)

    response = api_client(alice).post(KEYS, {"revoke_current": True})

    assert response.status_code == 201
    new_key = response.json()["api_key"]
    assert response.json()["is_current"] is True, "the new key replaces the one the request was sent with"
    # The very next request with the old key is refused; the new one sees the same agent and its orders.
    assert_error(api_client(alice).get(f"{API}/orders/"), 401, "invalid_api_key")
    assert_error(api_client(alice).post(KEYS, {}), 401, "invalid_api_key")
    orders = api_client(key=new_key).get(f"{API}/orders/").json()["results"]
    assert len(orders) == 1
    states = {k["prefix"]: k["revoked_at"] for k in api_client(key=new_key).get(KEYS).json()}
    assert states[alice.api_key[:10]] is not None and states[new_key[:10]] is None


def test_a_revoked_key_stops_working_at_once():
    alice = AgentFactory()
    second = api_client(alice).post(KEYS, {}).json()
    client = api_client(key=second["api_key"])
    assert client.get(f"{API}/agents/me/").status_code == 200

    response = api_client(alice).delete(f"{KEYS}{second['id']}/")

    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    assert_error(client.get(f"{API}/agents/me/"), 401, "invalid_api_key")
    assert api_client(alice).get(f"{API}/agents/me/").status_code == 200
    # Revoking again changes nothing and says so the same way.
    again = api_client(alice).delete(f"{KEYS}{second['id']}/")
    assert again.status_code == 200 and again.json()["revoked_at"] == response.json()["revoked_at"]


def test_an_agent_may_revoke_the_key_it_is_using_when_it_has_another():
    alice = AgentFactory()
    other = api_client(alice).post(KEYS, {}).json()
    current = ApiKey.objects.get(agent=alice, prefix=alice.api_key[:10])

    response = api_client(alice).delete(f"{KEYS}{current.id}/")

    assert response.status_code == 200 and response.json()["is_current"] is True
    assert_error(api_client(alice).get(f"{API}/agents/me/"), 401, "invalid_api_key")
    assert api_client(key=other["api_key"]).get(f"{API}/agents/me/").status_code == 200


def test_the_last_active_key_cannot_be_revoked_by_its_agent(audit_clean):
    alice = AgentFactory()
    only = ApiKey.objects.get(agent=alice)

    with unchanged(audit_clean):
        error = assert_error(api_client(alice).delete(f"{KEYS}{only.id}/"), 409, "last_api_key")
    assert error["detail"] == {"key": str(only.id)}
    assert api_client(alice).get(f"{API}/agents/me/").status_code == 200
    # An operator may (to lock a compromised agent out), through the same service.
    api_key_revoke(agent=alice, key_id=only.id, allow_last=True)
    assert_error(api_client(alice).get(f"{API}/agents/me/"), 401, "invalid_api_key")


def test_concurrent_revocations_cannot_revoke_every_key():
    # The service locks all of the agent's keys before deciding, so the second of two revocations sees the first.
    alice = AgentFactory()
    second = ApiKeyFactory(agent=alice)
    first = ApiKey.objects.exclude(id=second.id).get(agent=alice)
    api_key_revoke(agent=alice, key_id=first.id)
    with pytest.raises(LastApiKey):
        api_key_revoke(agent=alice, key_id=second.id)


def test_no_agent_can_list_or_revoke_another_agents_keys(audit_clean):
    alice, mallory = AgentFactory(), AgentFactory()
    alices_key = ApiKey.objects.get(agent=alice)
    ApiKeyFactory(agent=alice)

    with unchanged(audit_clean):
        listed = api_client(mallory).get(KEYS).json()
        assert {k["id"] for k in listed} == {str(k.id) for k in ApiKey.objects.filter(agent=mallory)}
        assert_error(api_client(mallory).delete(f"{KEYS}{alices_key.id}/"), 404, "not_found")
        for bogus in ("not-a-uuid", "0", "%00"):
            assert_error(api_client(mallory).delete(f"{KEYS}{bogus}/"), 404, "not_found")
    assert api_client(alice).get(f"{API}/agents/me/").status_code == 200


def test_rotation_refuses_a_malformed_body_and_changes_nothing(audit_clean):
    alice = AgentFactory()
    with unchanged(audit_clean):
        assert_error(api_client(alice).post(KEYS, {"revoke_current": "perhaps"}), 400, "invalid_request")
        assert_error(api_client(alice).post(KEYS, [1, 2]), 400, "invalid_request")


@pytest.mark.parametrize("mangle", [lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), lambda k: k + "x", str.upper])
def test_a_key_that_differs_in_any_way_is_refused(mangle):
    alice = AgentFactory()
    assert_error(api_client(key=mangle(alice.api_key)).get(f"{API}/agents/me/"), 401, "invalid_api_key")


def test_keys_are_compared_by_hash_in_constant_time(monkeypatch):
    # The lookup never compares the raw key: the database is searched by SHA-256, and the found hash is compared
    # again with hmac.compare_digest (constant time).
    alice = AgentFactory()
    compared = []
    real = services.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(services.hmac, "compare_digest", spy)
    assert services.agent_for_api_key(alice.api_key) == alice
    assert compared == [(services.hash_api_key(alice.api_key),) * 2]


def test_keys_never_reach_the_logs(market, caplog):
    """Every log record written while keys are registered, used, refused, rotated and revoked, at DEBUG and above,
    including Django's request logger for the 4xx answers: none contains a key."""
    caplog.set_level(logging.DEBUG)
    anonymous = api_client()
    registered = anonymous.post(f"{API}/agents/", {"name": "key-logger-check"}).json()
    keys = [registered["api_key"]]
    client = api_client(key=keys[0])
    place(client, market, "YES", "BUY", "0.40", 1)
    keys.append(client.post(KEYS, {}).json()["api_key"])
    rotated = api_client(key=keys[1]).post(KEYS, {"revoke_current": True}).json()
    keys.append(rotated["api_key"])
    api_client(key=keys[1]).get(f"{API}/orders/")  # revoked: 401
    api_client(key=keys[2] + "x").get(f"{API}/orders/")  # unknown: 401
    api_client(authorization=f"Token {keys[2]}").get(f"{API}/orders/")  # malformed header: 401
    api_client(key=keys[2]).get(f"{API}/orders/{market.id}/")  # 404

    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {getattr(r, 'request', '')!r}" for r in caplog.records)
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for key in keys:
        assert key not in text
        assert key[10:] not in text  # not even the part after the public prefix


@pytest.mark.multiprocess
@pytest.mark.django_db(transaction=True)
def test_the_server_log_never_shows_a_key():
    """A real daphne process, as `make run` serves it (its access log on): keys sent in headers and in a websocket's
    `?api_key=` query (which the feed refuses), valid, revoked and unknown, never appear in what the server writes."""
    from testsupport.e2e import api, daphne_servers, http_json, open_feed, register_agent

    with daphne_servers(1) as (server,):
        alice = register_agent(server.url, "log-check")
        key = alice["api_key"]
        second = api(server.url, "POST", "/agents/me/keys/", {"revoke_current": True}, api_key=key, expect=201)
        http_json("GET", f"{server.url}{API}/agents/me/", api_key=key)  # revoked now: 401
        http_json("GET", f"{server.url}{API}/agents/me/?api_key={key}")  # a key in a URL, where it should not be
        with open_feed(server, f"/ws/agent/?api_key={second['api_key']}") as feed:  # refused, with the reason
            assert feed.recv()["code"] == "api_key_in_url"
        with open_feed(server, "/ws/agent/", headers={"Authorization": f"Bearer {second['api_key']}"}) as feed:
            feed.send({"type": "ping"})
            feed.until(lambda m: m.get("type") == "pong", "pong")
        log = server.output(tail=10**7)

    assert "GET /api/v1/agents/me/?api_key=[redacted] 401" in log, f"no access log, so no proof:\n{log[-2000:]}"
    for secret in (key, second["api_key"]):
        assert secret[10:] not in log, f"a key reached the server log:\n{log[-3000:]}"
