"""factory-boy factories of the agents app: agents and API keys.

Money comes only from the services (DESIGN section 5, CONVENTIONS "Money and locks"): an :class:`AgentFactory` agent
is registered through ``agent_register`` (the 1000.00 credits ledgered as a ``grant``) and any extra credits come
through ``agent_grant_credits`` (an ``adjustment``), so the audit stays clean after a test built on them. Nothing here
writes ``balance`` or ``locked_balance``; ``build()`` is refused, since an agent not registered has no money trail.
"""

from __future__ import annotations

import ipaddress
import os
from decimal import Decimal
from typing import Any

import factory

from agents.models import Agent, ApiKey
from agents.services import agent_grant_credits, agent_mark_house, agent_register, api_key_create, hash_api_key

# Fields an operator sets on an agent (the admin's form, the suspension action): a factory may set them as a flag.
# The money fields are not among them, and never will be.
OPERATOR_FLAGS = frozenset({"is_oracle", "max_position", "max_reserved"})


class AgentFactory(factory.django.DjangoModelFactory):
    """A registered agent, returned with ``.api_key`` (its raw key) set.

    ``AgentFactory()`` registers ``agent-<pid>-<n>``; ``AgentFactory(name="alice", description=..., address="192.0.2.1")``
    as ``agent_register`` takes them (the address as a string or an ``ipaddress`` object links agents registered from
    one network). ``credits=Decimal("500.00")`` grants that much more (or, negative, removes it) as an operator
    adjustment. The trait ``oracle=True`` sets that operator flag, ``house=True`` marks a house trader through
    ``agent_mark_house``; the other operator flags (``max_position``, ``max_reserved``) may be given. (Suspension has
    its service in ``trading.suspension``; agents imports nothing of trading.)
    Raises what ``agent_register`` raises (``NameTaken`` for a name in use).
    """

    class Meta:
        model = Agent

    # The process id keeps names apart when several processes register against one database (multiprocess tests).
    name = factory.Sequence(lambda n: f"agent-{os.getpid()}-{n}")
    description = ""
    address = None
    credits = None
    is_house = False

    class Params:
        oracle = factory.Trait(is_oracle=True)
        house = factory.Trait(is_house=True)

    @classmethod
    def _build(cls, model_class: type[Agent], *args: Any, **kwargs: Any) -> Agent:
        raise TypeError("An agent is only made registered (AgentFactory() or .create()): its money has a ledger.")

    @classmethod
    def _create(
        cls,
        model_class: type[Agent],
        *,
        name: str,
        description: str = "",
        address: Any = None,
        credits: Decimal | str | None = None,
        is_house: bool = False,
        **flags: Any,
    ) -> Agent:
        unknown = set(flags) - OPERATOR_FLAGS
        if unknown:
            raise TypeError(f"AgentFactory sets only operator flags, not {sorted(unknown)}: money comes from services.")
        if isinstance(address, str):
            address = ipaddress.ip_address(address)
        agent, raw_key = agent_register(name=name, description=description, address=address)
        if credits is not None:
            agent_grant_credits(agent_id=agent.id, amount=Decimal(credits), memo="test credits")
        if is_house:
            agent_mark_house(agent_id=agent.id)
        if flags:
            Agent.objects.filter(id=agent.id).update(**flags)  # as an operator sets them in the admin
        if credits is not None or is_house or flags:
            agent.refresh_from_db()
        agent.api_key = raw_key
        return agent


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """Another API key of an agent (a fresh :class:`AgentFactory` agent unless given), returned with ``.raw_key`` set.

    Issued through ``api_key_create`` (a random key), unless ``raw_key`` names the key: then the row is written as
    ``api_key_create`` writes it (prefix and SHA-256), for tests that need a key known in advance.
    """

    class Meta:
        model = ApiKey

    agent = factory.SubFactory(AgentFactory)
    raw_key = None

    @classmethod
    def _build(cls, model_class: type[ApiKey], *args: Any, **kwargs: Any) -> ApiKey:
        raise TypeError("An API key is only made stored (ApiKeyFactory() or .create()).")

    @classmethod
    def _create(cls, model_class: type[ApiKey], *, agent: Agent, raw_key: str | None = None) -> ApiKey:
        if raw_key is None:
            key, raw_key = api_key_create(agent=agent)
        else:
            key = ApiKey.objects.create(agent=agent, prefix=raw_key[:10], key_hash=hash_api_key(raw_key))
        key.raw_key = raw_key
        return key
