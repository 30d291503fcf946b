"""Write services of the agents app: registration, API keys, credit grants, the cash ledger and the private feed.

Every change of an agent's ``balance`` goes through :class:`CashBook`, which writes one ``LedgerEntry`` per movement
(DESIGN invariant 4) and one ``balance`` message of the agent's private feed (:class:`AgentFeed`). Callers hold the
agent's row lock (``lock_agents``) before touching money.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.db.models import Field
from django.utils import timezone
from psycopg import sql

from agents.models import Agent, AgentEvent, ApiKey, LedgerEntry
from moltstreet.clients import Address, network_key
from moltstreet.db import lock_name, service_transaction
from moltstreet.errors import InsufficientBalance, InvalidRequest, LastApiKey, NameTaken, NotFound
from moltstreet.money import ZERO, quantize

API_KEY_PREFIX = "ms_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,39}$")


def hash_api_key(raw_key: str) -> str:
    """SHA-256 hex of a key: what is stored and looked up. Keys are 256-bit random, so no salt or stretching is needed."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_lookup(raw_key: str) -> ApiKey | None:
    """The unrevoked :class:`ApiKey` matching ``raw_key`` (its agent joined in), or ``None``.

    Constant time in the secret: the database is searched by the key's SHA-256, so how long the index lookup takes
    depends on the hash, which an attacker cannot steer towards a real key's; the found hash is compared again with
    ``hmac.compare_digest``. A revoked key is never returned, so revocation takes effect on the next request.
    """
    if not isinstance(raw_key, str) or not raw_key.startswith(API_KEY_PREFIX) or len(raw_key) > 100:
        return None
    digest = hash_api_key(raw_key)
    # The key and its agent in one indexed read, a raw query of Django's (every authenticated request makes it; the
    # ORM's query building cost 0.35 ms of it here, docs/decisions.md 100). The agent comes back converted as the ORM
    # converts it; the key is built from its id, hash and prefix, its other fields loaded if ever read.
    found = list(Agent.objects.raw(_key_and_agent_sql(), [digest]))
    if not found:
        return None
    agent = found[0]
    row = {name: vars(agent).pop(f"key_{name}") for name in ("id", "prefix", "hash")}
    if not hmac.compare_digest(row["hash"], digest):
        return None
    key_id = ApiKey._meta.pk.to_python(row["id"])  # a UUID, or its 32 hex characters on SQLite
    key = ApiKey.from_db(
        DEFAULT_DB_ALIAS, ["id", "agent_id", "prefix", "key_hash"], [key_id, agent.id, row["prefix"], row["hash"]]
    )
    key.agent = agent
    return key


@functools.cache
def _key_and_agent_sql() -> str:
    """``SELECT <agent's columns>, <key's id, prefix and hash> FROM <keys> JOIN <agents> WHERE <hash> = %s AND not
    revoked``, composed once from the models' names."""
    keys, agents = ApiKey._meta, Agent._meta

    def key_column(name: str) -> sql.Identifier:
        field = keys.get_field(name)
        assert isinstance(field, Field) and field.column, name  # a concrete field of the key
        return sql.Identifier(keys.db_table, field.column)

    statement = sql.SQL(
        "SELECT {agents}.*, {key_id} AS key_id, {prefix} AS key_prefix, {key_hash} AS key_hash FROM {keys} "
        "JOIN {agents} ON {agent_id} = {key_agent} WHERE {key_hash} = %s AND {revoked} IS NULL LIMIT 1"
    ).format(
        agents=sql.Identifier(agents.db_table),
        keys=sql.Identifier(keys.db_table),
        key_id=key_column("id"),
        prefix=key_column("prefix"),
        key_hash=key_column("key_hash"),
        agent_id=sql.Identifier(agents.db_table, "id"),
        key_agent=key_column("agent"),
        revoked=key_column("revoked_at"),
    )
    return statement.as_string(None)


def agent_for_api_key(raw_key: str) -> Agent | None:
    """The agent owning an unrevoked key, or ``None`` (see :func:`api_key_lookup`)."""
    key = api_key_lookup(raw_key)
    return key.agent if key else None


def lock_agents(ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Agent]:
    """Lock agent rows in ascending id order (DESIGN section 6 lock order) and return them by id.

    Must run inside a transaction, after the market row is locked when a market is involved.
    """
    ordered = sorted(set(ids))
    if not ordered:
        return {}
    # Read and locked in one statement, in id order: the rows are locked before any balance is read.
    return {a.id: a for a in Agent.objects.select_for_update().filter(id__in=ordered).order_by("id")}


# Called after commit with the private feed messages of a transaction that has no market events to carry them
# (``AgentFeed.publish_on_commit``: an operator's adjustment, a registration's grant, a market's creation fee), as
# ``subscriber({agent_id: [message, ...]})``. A trading transaction hands its messages to the market event
# subscribers instead (``markets.services.EVENT_SUBSCRIBERS``), in the same publish. The live feed subscribes
# (trading/apps.py); agents imports nothing of trading.
AGENT_FEED_SUBSCRIBERS: list[Callable[[dict[str, list[dict[str, Any]]]], None]] = []


def balance_fields(agent: Agent) -> dict[str, str]:
    """The agent's ``balance``, ``locked_balance`` and ``available_balance``, in credits as decimal strings, as the
    private feed's ``balance`` and ``snapshot`` messages carry them."""
    return {
        "balance": str(agent.balance),
        "locked_balance": str(agent.locked_balance),
        "available_balance": str(agent.balance - agent.locked_balance),
    }


@dataclass
class AgentFeed:
    """The private feed messages of one transaction (DESIGN section 8), each numbered in its agent's own sequence.

    :meth:`add` takes the agent's next ``seq`` (``Agent.feed_seq`` + 1) in memory and makes the ``AgentEvent`` row;
    the caller holds the agent's row lock, so two transactions never number the same ``seq``, and writes the rows and
    each agent's ``feed_seq`` in its own transaction (``CashBook.flush``; on the order path
    ``trading.book_store.write``). A message is ``{"type", "seq", **data}``; ``data`` holds only JSON values.
    """

    events: list[AgentEvent] = field(default_factory=list)
    agents: dict[uuid.UUID, Agent] = field(default_factory=dict)  # the agents that got a message, by id

    def add(self, agent: Agent, kind: str, data: dict[str, Any]) -> None:
        """Append a message of ``kind`` (``AgentEvent.Kind``) to the locked ``agent``'s feed."""
        agent.feed_seq += 1
        self.agents[agent.id] = agent
        self.events.append(AgentEvent(agent=agent, seq=agent.feed_seq, kind=str(kind), data=data))

    def add_balance(self, agent: Agent, market_id: uuid.UUID | str | None = None) -> None:
        """Append the agent's ``balance`` message: ``market`` (the market whose change moved it, or ``None``) and its
        balance as this transaction leaves it (:func:`balance_fields`)."""
        market = str(market_id) if market_id is not None else None
        self.add(agent, AgentEvent.Kind.BALANCE, {"market": market, **balance_fields(agent)})

    def messages(self) -> dict[str, list[dict[str, Any]]]:
        """The messages as sent, by agent id (a string), each agent's in ``seq`` order."""
        found: dict[str, list[dict[str, Any]]] = {}
        for event in self.events:
            found.setdefault(str(event.agent_id), []).append(event.message())
        return found

    def publish_on_commit(self) -> None:
        """Hand the messages to ``AGENT_FEED_SUBSCRIBERS`` once the transaction commits (nothing if it rolls back)."""
        if not self.events:
            return

        def publish() -> None:
            messages = self.messages()
            for subscriber in AGENT_FEED_SUBSCRIBERS:
                subscriber(messages)

        # robust: a failing subscriber is logged; the committed change must never surface as an error.
        transaction.on_commit(publish, robust=True)


@dataclass
class CashBook:
    """Collects cash movements of locked agents in one transaction, then writes them with their ledger rows.

    ``move`` changes ``agent.balance`` in memory and records a ledger row; ``reserve``/``release`` change the reserve.
    ``flush`` saves each touched agent once and bulk-inserts the ledger rows. Check constraints in the database back
    ``0 <= locked_balance <= balance``; :meth:`move` also refuses a balance that would go negative.
    """

    entries: list[LedgerEntry] = field(default_factory=list)
    touched: dict[uuid.UUID, Agent] = field(default_factory=dict)

    def move(
        self, agent: Agent, amount: Decimal, kind: str, *, market_id=None, reference: str = "", memo: str = ""
    ) -> None:
        amount = quantize(amount)
        if amount == ZERO:
            return
        if agent.balance + amount < agent.locked_balance:
            raise InsufficientBalance(
                detail={"agent": agent.name, "needed": str(-amount), "available": str(agent.available_balance)}
            )
        agent.balance += amount
        self.touched[agent.id] = agent
        self.entries.append(
            LedgerEntry(
                agent=agent,
                kind=kind,
                amount=amount,
                balance_after=agent.balance,
                market_id=market_id,
                reference=str(reference),
                memo=memo,
            )
        )

    def reserve(self, agent: Agent, amount: Decimal) -> None:
        """Reserve ``amount`` credits for a BUY order; raises :class:`InsufficientBalance` beyond the available balance."""
        amount = quantize(amount)
        if amount > agent.available_balance:
            raise InsufficientBalance(
                f"This order needs {amount} credits but only {agent.available_balance} are available.",
                detail={"required": str(amount), "available": str(agent.available_balance)},
            )
        agent.locked_balance += amount
        self.touched[agent.id] = agent

    def release(self, agent: Agent, amount: Decimal) -> None:
        amount = quantize(amount)
        if agent.locked_balance - amount < ZERO:  # a bookkeeping bug, never a user error; the agent is left as it was
            raise AssertionError(f"locked balance of {agent.name} would go negative")
        agent.locked_balance -= amount
        self.touched[agent.id] = agent

    def flush(self) -> None:
        """Save the touched agents' balances and reserves, insert the ledger rows and give each touched agent a
        ``balance`` message (``market``: that of its last ledger row here), published after commit (the order path
        writes all of it with everything else instead: ``trading.book_store.write``)."""
        feed = AgentFeed()
        markets = {entry.agent_id: entry.market_id for entry in self.entries}
        for agent in self.touched.values():
            feed.add_balance(agent, markets.get(agent.id))
        Agent.objects.bulk_update(self.touched.values(), ["balance", "locked_balance", "feed_seq"])
        LedgerEntry.objects.bulk_create(self.entries)
        AgentEvent.objects.bulk_create(feed.events)
        feed.publish_on_commit()
        self.entries.clear()
        self.touched.clear()


def _new_key(agent: Agent) -> tuple[ApiKey, str]:
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return ApiKey.objects.create(agent=agent, prefix=raw[:10], key_hash=hash_api_key(raw)), raw


@service_transaction
def agent_register(*, name: str, description: str = "", address: Address | None = None) -> tuple[Agent, str]:
    """Register an agent with the initial grant (1000.00 credits, ledgered as ``grant``) and one API key.

    ``address`` is the client's (``moltstreet.clients``): an agent registered from the same address (an IPv6 /64)
    as another non-house agent within ``LINK_WINDOW_HOURS`` joins that agent's link group, so trades between them
    earn no rank (DESIGN section 4a); otherwise it starts a group of its own. Without an address, no group.
    Returns ``(agent, api_key)``; the raw key is never stored and cannot be shown again.
    Raises :class:`InvalidRequest` for a malformed name and :class:`NameTaken` for a name in use (case-insensitive).
    """
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise InvalidRequest(
            "name must be 3-40 characters: letters, digits, '_', '-' or '.', starting with a letter or digit.",
            detail={"name": name},
        )
    if Agent.objects.filter(name__iexact=name).exists():
        raise NameTaken(detail={"name": name})
    network = network_key(address) if address is not None else ""
    group = _link_group_for(network) if network else None
    try:
        with transaction.atomic():
            agent = Agent.objects.create(
                name=name,
                description=description or "",
                registered_from=str(address) if address is not None else None,
                registration_network=network,
                link_group=group,
            )
    except IntegrityError as exc:
        raise NameTaken(detail={"name": name}) from exc
    book = CashBook()
    book.move(agent, settings.MOLTSTREET["INITIAL_GRANT"], LedgerEntry.Kind.GRANT, memo="initial grant")
    book.flush()
    return agent, _new_key(agent)[1]


def _link_group_for(network: str) -> uuid.UUID:
    """The link group of a new agent registering from ``network``: that of the latest non-house agent registered from
    it within ``LINK_WINDOW_HOURS``, else a new one. Registrations from one network are serialized (a named lock), so
    two at once cannot both miss each other."""
    lock_name(f"registration:{network}")
    since = timezone.now() - timedelta(hours=settings.MOLTSTREET["LINK_WINDOW_HOURS"])
    found = (
        Agent.objects.filter(registration_network=network, created_at__gte=since, is_house=False)
        .exclude(link_group=None)
        .order_by("-created_at")
        .values_list("link_group", flat=True)
        .first()
    )
    return found or uuid.uuid4()


# The one link group of MoltStreet's own house traders: one owner, linked with each other and with nobody else.
HOUSE_LINK_GROUP = uuid.uuid5(uuid.NAMESPACE_URL, "https://moltstreet.invalid/house-traders")


@service_transaction
def agent_mark_house(*, agent_id: uuid.UUID) -> Agent:
    """Mark an agent as one of MoltStreet's house traders (shown on the pages, ``is_house`` in the API) and put it in
    the house's link group: trades among house traders earn no rank, and an agent later registered from the house
    traders' address is not linked to them. Raises :class:`NotFound` for an unknown agent."""
    agents = lock_agents([agent_id])
    if agent_id not in agents:
        raise NotFound.of("agent", agent_id)
    agent = agents[agent_id]
    agent.is_house, agent.link_group = True, HOUSE_LINK_GROUP
    agent.save(update_fields=["is_house", "link_group"])
    return agent


@service_transaction
def agents_link(*, agent_ids: Iterable[uuid.UUID]) -> uuid.UUID:
    """An operator links agents (e.g. one owner's): they all join the link group of the first that has one, else a
    new group. Takes effect for their trades from now on. Returns the group."""
    agents = lock_agents(agent_ids)
    group = next((a.link_group for a in agents.values() if a.link_group is not None), None) or uuid.uuid4()
    Agent.objects.filter(id__in=list(agents)).update(link_group=group)
    return group


@service_transaction
def agents_unlink(*, agent_ids: Iterable[uuid.UUID]) -> None:
    """An operator unlinks agents (a false positive, e.g. a shared office address): each gets a group of its own.
    Takes effect for their trades from now on; what earlier linked trades were worth stays left out of rank."""
    for agent in lock_agents(agent_ids).values():
        agent.link_group = uuid.uuid4()
        agent.save(update_fields=["link_group"])


@service_transaction
def api_key_create(*, agent: Agent, revoke_key_id: uuid.UUID | None = None) -> tuple[ApiKey, str]:
    """Issue a new API key for ``agent`` and, to rotate, revoke ``revoke_key_id`` in the same transaction.

    Returns ``(key, raw_key)``; the raw key is shown once and only its SHA-256 is stored.
    Raises :class:`NotFound` if ``revoke_key_id`` is not one of the agent's keys.
    """
    key, raw = _new_key(agent)
    if revoke_key_id is not None:
        _revoke(agent, revoke_key_id)
    return key, raw


# Called after commit with the id of each key just revoked: the live feed (trading.realtime) closes the private
# feeds opened with it. agents imports nothing of trading, so trading subscribes here (trading/apps.py).
KEY_REVOKED_SUBSCRIBERS: list[Callable[[uuid.UUID], None]] = []


def _announce_revoked(key_id: uuid.UUID) -> None:
    for subscriber in KEY_REVOKED_SUBSCRIBERS:
        subscriber(key_id)


def _revoke(agent: Agent, key_id, *, allow_last: bool = False) -> ApiKey:
    try:
        parsed: uuid.UUID | None = uuid.UUID(str(key_id))
    except ValueError:
        parsed = None
    # The agent's keys are locked together, so two concurrent revocations cannot both leave it with none.
    keys = {k.id: k for k in ApiKey.objects.select_for_update().filter(agent=agent).order_by("id")}
    key = keys.get(parsed) if parsed is not None else None
    if key is None:
        raise NotFound.of("API key", key_id, key="key")
    if key.revoked_at is None:
        if not allow_last and not any(k.revoked_at is None for k in keys.values() if k.id != key.id):
            raise LastApiKey(detail={"key": str(key.id)})
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        transaction.on_commit(functools.partial(_announce_revoked, key.id))
    return key


@service_transaction
def api_key_revoke(*, agent: Agent, key_id: uuid.UUID | str, allow_last: bool = False) -> ApiKey:
    """Revoke one of the agent's keys; the next request with it gets 401 ``invalid_api_key`` and, once committed, the
    private feeds opened with it are closed (``KEY_REVOKED_SUBSCRIBERS``). Revoking a revoked key changes nothing. Raises :class:`NotFound` for an unknown or another agent's key and :class:`LastApiKey` for the
    agent's only active key (the agent would lock itself out for good) unless ``allow_last`` (operators, who lock a
    compromised agent out on purpose)."""
    return _revoke(agent, key_id, allow_last=allow_last)


@service_transaction
def agent_grant_credits(*, agent_id: uuid.UUID, amount: Decimal, memo: str = "") -> Agent:
    """Operator adjustment: add (or, negative, remove) credits, ledgered as ``adjustment`` (DESIGN invariant 3).

    Raises :class:`InvalidRequest` for zero and :class:`InsufficientBalance` if a removal would dip into the
    agent's reserved or total balance.
    """
    amount = quantize(amount)
    if amount == ZERO:
        raise InvalidRequest("The adjustment must not be zero.")
    agent = lock_agents([agent_id])[agent_id]
    book = CashBook()
    book.move(agent, amount, LedgerEntry.Kind.ADJUSTMENT, memo=memo or "operator adjustment")
    book.flush()
    return agent
