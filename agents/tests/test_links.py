"""Linked agents (DESIGN section 4a): who is linked at registration, and how operators link and unlink."""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from agents import services
from agents.models import Agent
from agents.services import HOUSE_LINK_GROUP, agent_mark_house, agent_register, agents_link, agents_unlink
from testsupport.api import API

pytestmark = pytest.mark.django_db


def register(name: str, address: str | None):
    agent, _key = agent_register(name=name, address=ipaddress.ip_address(address) if address else None)
    return agent


def test_agents_registered_from_one_address_within_the_window_are_linked():
    first, second = register("first", "203.0.113.5"), register("second", "203.0.113.5")
    elsewhere = register("elsewhere", "203.0.113.6")

    assert first.link_group is not None and first.is_linked_to(second)
    assert not first.is_linked_to(elsewhere) and not first.is_linked_to(first)
    assert (second.registered_from, second.registration_network) == ("203.0.113.5", "203.0.113.5")


def test_an_ipv6_client_is_one_address_for_its_whole_64():
    first, second = register("v6-first", "2001:db8:1:2::1"), register("v6-second", "2001:db8:1:2:ffff::9")
    other_net = register("v6-other", "2001:db8:1:3::1")
    assert first.is_linked_to(second) and not first.is_linked_to(other_net)
    assert first.registration_network == "2001:db8:1:2::/64"


def test_a_registration_after_the_window_starts_a_group_of_its_own(settings):
    old = register("old-timer", "198.51.100.4")
    hours = settings.MOLTSTREET["LINK_WINDOW_HOURS"]
    Agent.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(hours=hours, minutes=1))
    assert not register("newcomer", "198.51.100.4").is_linked_to(Agent.objects.get(id=old.id))


def test_without_an_address_an_agent_is_linked_to_nobody():
    assert register("nowhere-a", None).link_group is None
    assert register("nowhere-b", None).link_group is None


def test_house_traders_are_linked_with_each_other_and_nobody_else():
    makers = [register(f"house-x-{n}", "127.0.0.1") for n in range(2)]
    for maker in makers:
        agent_mark_house(agent_id=maker.id)
    visitor = register("visitor", "127.0.0.1")

    houses = list(Agent.objects.filter(is_house=True))
    assert {h.link_group for h in houses} == {HOUSE_LINK_GROUP}
    assert not any(visitor.is_linked_to(h) for h in houses)


def test_the_api_links_agents_registered_from_the_clients_address():
    client = Client(REMOTE_ADDR="192.0.2.44")
    for name in ("api-one", "api-two"):
        assert client.post(f"{API}/agents/", {"name": name}, content_type="application/json").status_code == 201
    one, two = Agent.objects.get(name="api-one"), Agent.objects.get(name="api-two")
    assert one.is_linked_to(two) and one.registered_from == "192.0.2.44"
    shown = client.get(f"{API}/agents/api-one/").json()
    assert "registered_from" not in shown and "link_group" not in shown  # for operators only


def test_operators_link_and_unlink_agents():
    a, b, c = register("op-a", "192.0.2.1"), register("op-b", "192.0.2.2"), register("op-c", "192.0.2.3")
    group = agents_link(agent_ids=[a.id, b.id, c.id])
    assert set(Agent.objects.filter(link_group=group).values_list("name", flat=True)) == {"op-a", "op-b", "op-c"}
    agents_unlink(agent_ids=[b.id])
    b, c = Agent.objects.get(id=b.id), Agent.objects.get(id=c.id)
    assert not b.is_linked_to(c) and c.link_group == group


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("locked", [True, False], ids=["locked", "negative-control-unlocked"])
def test_two_registrations_from_one_address_at_the_same_moment_are_still_linked(locked, monkeypatch):
    # Both registrations look for an earlier agent of their address; the gate holds the first after its look-up for
    # up to a second, so that without the lock the second looks before the first has inserted.
    gate, start = threading.Barrier(2, timeout=1), threading.Barrier(2, timeout=10)
    look_up = services._link_group_for

    def slow_look_up(network: str):
        group = look_up(network)
        # With the lock, the other registration waits for this one to commit, and the gate breaks.
        with contextlib.suppress(threading.BrokenBarrierError):
            gate.wait()
        return group

    monkeypatch.setattr(services, "_link_group_for", slow_look_up)
    if not locked:
        monkeypatch.setattr(services, "lock_name", lambda name: None)
    names = ["race-a", "race-b"]

    def go(name: str) -> None:
        try:
            start.wait()
            register(name, "198.51.100.77")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=go, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    first, second = (Agent.objects.get(name=name) for name in names)
    assert first.is_linked_to(second) is locked
