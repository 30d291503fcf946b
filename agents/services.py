"""Write services of the agents app: registration, API keys, credit grants and the cash ledger.

Every change of an agent's ``balance`` goes through :class:`CashBook`, which writes one ``LedgerEntry`` per movement
(DESIGN invariant 4). Callers hold the agent's row lock (``lock_agents``) before touching money.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent, ApiKey, LedgerEntry
from moltstreet.db import service_transaction
from moltstreet.errors import InsufficientBalance, InvalidRequest, NameTaken, NotFound
from moltstreet.money import ZERO, quantize

API_KEY_PREFIX = "ms_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,39}$")


def hash_api_key(raw_key: str) -> str:
    """SHA-256 hex of a key: what is stored and looked up. Keys are 256-bit random, so no salt or stretching is needed."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def agent_for_api_key(raw_key: str) -> Agent | None:
    """The agent owning an unrevoked key, or ``None``. The lookup is by hash, so timing reveals nothing of the key."""
    if not raw_key.startswith(API_KEY_PREFIX) or len(raw_key) > 100:
        return None
    key = (
        ApiKey.objects.select_related("agent")
        .filter(key_hash=hash_api_key(raw_key), revoked_at__isnull=True)
        .only("agent")
        .first()
    )
    return key.agent if key else None


def lock_agents(ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Agent]:
    """Lock agent rows in ascending id order (DESIGN section 6 lock order) and return them by id.

    Must run inside a transaction, after the market row is locked when a market is involved.
    """
    ordered = sorted(set(ids))
    # Evaluated at once with list(): the rows are locked before any balance is read.
    agents = list(Agent.objects.select_for_update(of=("self",)).filter(id__in=ordered).order_by("id"))
    return {a.id: a for a in agents}


@dataclass
class CashBook:
    """Collects cash movements of locked agents in one transaction, then writes them with their ledger rows.

    ``move`` changes ``agent.balance`` in memory and records a ledger row; ``lock``/``unlock`` change the reserve.
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

    def lock(self, agent: Agent, amount: Decimal) -> None:
        """Reserve ``amount`` credits for a BUY order; raises :class:`InsufficientBalance` beyond the available balance."""
        amount = quantize(amount)
        if amount > agent.available_balance:
            raise InsufficientBalance(
                f"This order needs {amount} credits but only {agent.available_balance} are available.",
                detail={"required": str(amount), "available": str(agent.available_balance)},
            )
        agent.locked_balance += amount
        self.touched[agent.id] = agent

    def unlock(self, agent: Agent, amount: Decimal) -> None:
        amount = quantize(amount)
        agent.locked_balance -= amount
        if agent.locked_balance < ZERO:  # a bookkeeping bug, never a user error
            raise AssertionError(f"locked balance of {agent.name} would go negative")
        self.touched[agent.id] = agent

    def flush(self) -> None:
        if self.touched:
            Agent.objects.bulk_update(self.touched.values(), ["balance", "locked_balance"])
        if self.entries:
            LedgerEntry.objects.bulk_create(self.entries)
        self.entries.clear()
        self.touched.clear()


def _new_key(agent: Agent) -> str:
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    ApiKey.objects.create(agent=agent, prefix=raw[:10], key_hash=hash_api_key(raw))
    return raw


@service_transaction
def agent_register(*, name: str, description: str = "") -> tuple[Agent, str]:
    """Register an agent with the initial grant (1000.00 credits, ledgered as ``grant``) and one API key.

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
    try:
        with transaction.atomic():
            agent = Agent.objects.create(name=name, description=description or "")
    except IntegrityError as exc:
        raise NameTaken(detail={"name": name}) from exc
    book = CashBook()
    book.move(agent, settings.MOLTSTREET["INITIAL_GRANT"], LedgerEntry.Kind.GRANT, memo="initial grant")
    book.flush()
    return agent, _new_key(agent)


@service_transaction
def api_key_create(*, agent: Agent) -> str:
    """Issue an additional API key for ``agent``; returns the raw key (shown once)."""
    return _new_key(agent)


@service_transaction
def api_key_revoke(*, agent: Agent, key_id: uuid.UUID) -> ApiKey:
    """Revoke one of the agent's keys at once. Raises :class:`NotFound` for an unknown or someone else's key."""
    key = ApiKey.objects.select_for_update().filter(id=key_id, agent=agent).first()
    if key is None:
        raise NotFound("No such API key.", detail={"key": str(key_id)})
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


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
