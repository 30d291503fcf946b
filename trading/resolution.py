"""Resolving markets: who may, when, and the payout (DESIGN section 4).

- An operator (the admin, ``manage.py resolve_market``) and a source's settlement resolve at once:
  :func:`market_resolve`.
- An oracle agent only proposes (:func:`resolution_propose`, ``POST /markets/{id}/resolve/``), on a closed market
  it has no stake in. The proposal becomes final when the dispute window (``RESOLUTION_DISPUTE_HOURS``) passes
  undisputed (:func:`resolutions_finalize_due`, run by the scheduler). Any agent may dispute it with a reason
  (:func:`resolution_dispute`); an operator then confirms it (:func:`resolution_confirm`) or decides another outcome
  (:func:`resolution_overturn`).
- Whatever the path, the payout runs once, in the transaction that makes a resolution final (:func:`_settle`):
  resting orders cancelled, 1.00 per winning contract (VOID: 0.50 per contract on both sides), realized P&L,
  reputation and Brier scores, and a ``resolved`` market event that names the resolver.

Every service takes the market row lock first, then the agents by ascending id (DESIGN section 6).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from agents.models import Agent, LedgerEntry
from markets.models import Forecast, Market, MarketEvent, Outcome, Resolution, ResolutionDispute, Resolver
from markets.services import EventLog, market_payload
from moltstreet.db import service_transaction
from moltstreet.errors import (
    AgentSuspended,
    AlreadyDisputed,
    ConflictOfInterest,
    InvalidRequest,
    MarketAlreadyResolved,
    MarketNotClosed,
    MoltStreetError,
    NotDisputable,
    NotFound,
    NotOracle,
    ResolutionPending,
)
from moltstreet.money import ZERO, quantize
from trading import book_store
from trading.lifecycle import end_all_resting
from trading.market_tx import MarketTx
from trading.models import SETTLEMENT, Order, Position

if TYPE_CHECKING:
    from django.contrib.auth.models import User  # settings.AUTH_USER_MODEL: Resolution.decided_by's model

logger = logging.getLogger(__name__)

MAX_REASON_LENGTH = 2000


def parse_outcome(outcome: Any) -> str:
    """``YES``, ``NO`` or ``VOID`` (any case); raises :class:`InvalidRequest` otherwise."""
    value = str(outcome).upper()
    if value not in Outcome.values:
        raise InvalidRequest("outcome must be YES, NO or VOID.", detail={"outcome": str(outcome)[:20]})
    return value


def pending_resolution(market_id: uuid.UUID) -> Resolution | None:
    """The market's proposed or disputed resolution, if any (read under the market lock by the services)."""
    return Resolution.objects.filter(market_id=market_id, status__in=Resolution.PENDING).first()


# --------------------------------------------------------------------------------------------------------------------
# Final at once: operators and sources.


@service_transaction
def market_resolve(*, market_id: uuid.UUID | str, outcome: str, resolver: Resolver) -> Market:
    """Resolve a market YES, NO or VOID at once and pay out (DESIGN section 4): an operator or a source.

    A pending oracle proposal is settled with it: the same outcome confirms the proposal (it becomes the final
    resolution, ``decided_by`` the operator); another outcome overturns it and this resolver's own resolution is
    final. Cancels every resting order, pays each winning contract 1.00 credit (VOID: 0.50 per YES and per NO
    contract), fixes each holder's realized P&L, adds it to reputation, and scores the last forecasts (YES/NO only).

    Raises :class:`InvalidRequest` for an unknown outcome or an oracle resolver (oracles propose:
    :func:`resolution_propose`), :class:`NotFound` for an unknown market, :class:`MarketAlreadyResolved` when the
    market is resolved already.
    """
    outcome = parse_outcome(outcome)
    if resolver.kind == Resolution.ResolverKind.ORACLE:
        raise InvalidRequest("An oracle proposes a resolution; it is final after the dispute window.")
    market = book_store.lock_market(market_id)
    if market.status == Market.Status.RESOLVED:
        raise MarketAlreadyResolved(detail={"market": str(market.id), "outcome": market.outcome})
    now = timezone.now()
    pending = pending_resolution(market.id)
    if pending is not None and pending.outcome == outcome:
        pending.decided_by = resolver.user
        pending.note = pending.note or f"confirmed by {resolver.kind} {resolver.name}"
        return _settle(market, pending, now)
    if pending is not None:
        _overturn(pending, resolver, now, note=f"overturned: {resolver.kind} {resolver.name} resolved {outcome}")
    resolution = resolver.record(market, outcome, Resolution.Status.FINAL)
    return _settle(market, resolution, now)


def _overturn(pending: Resolution, resolver: Resolver, now: datetime, note: str = "") -> None:
    pending.status = Resolution.Status.OVERTURNED
    pending.decided_at, pending.decided_by = now, resolver.user
    pending.note = pending.note or note
    pending.save(update_fields=["status", "decided_at", "decided_by", "note"])


def _settle(market: Market, resolution: Resolution, now: datetime) -> Market:
    """Make ``resolution`` final and pay out, under the market lock the caller holds (then the agents, ascending)."""
    outcome = resolution.outcome
    forecasts = _last_forecasts(market) if outcome != Outcome.VOID else {}
    holders = set(Position.objects.filter(market=market).values_list("agent_id", flat=True))
    tx = MarketTx(market)
    end_all_resting(
        tx, Order.Status.CANCELLED, Order.CancelReason.MARKET_RESOLVED, extra_agents=holders | set(forecasts)
    )
    yes_pays, no_pays = SETTLEMENT[outcome]
    for agent_id in holders:
        pos = tx.position(agent_id)
        payout = quantize(yes_pays * pos.yes_shares + no_pays * pos.no_shares)
        pos.realized_pnl += payout - pos.yes_cost - pos.no_cost
        pos.yes_shares = pos.no_shares = pos.yes_reserved = pos.no_reserved = 0
        pos.yes_cost = pos.no_cost = ZERO
        agent = tx.agents[agent_id]
        tx.cash.move(
            agent,
            payout,
            LedgerEntry.Kind.PAYOUT,
            market_id=market.id,
            reference=str(market.id),
            memo=f"resolved {outcome}",
        )
        # Trades with linked agents earn no reputation (DESIGN section 4a): what they made, now settled exactly,
        # replaces their open estimate in linked_pnl and stays out of the reputation.
        linked = quantize(pos.linked_worth(outcome))
        agent.linked_pnl += linked - pos.linked_worth()
        agent.reputation += pos.realized_pnl - linked
    o = Decimal(1) if outcome == Outcome.YES else Decimal(0)
    for agent_id, (probability, reference) in forecasts.items():
        agent = tx.agents[agent_id]
        agent.brier_sum += (probability - o) ** 2
        agent.brier_count += 1
        agent.brier_score = (agent.brier_sum / agent.brier_count).quantize(BRIER_PLACES)
        if reference is not None:  # the source's crowd said `reference` when the agent said `probability`
            agent.brier_ref_count += 1
            agent.brier_ref_agent_sum += (probability - o) ** 2
            agent.brier_ref_market_sum += (reference - o) ** 2
            agent.brier_vs_market = brier_vs_market(agent)
    resolution.status, resolution.decided_at = Resolution.Status.FINAL, now
    resolution.save()
    market.status, market.outcome, market.resolved_at = Market.Status.RESOLVED, outcome, now
    market.closed_at = market.closed_at or now
    tx.market_fields.update({"status", "outcome", "resolved_at", "closed_at"})
    tx.log.add(
        MarketEvent.Kind.MARKET,
        {"event": "resolved", "market": market_payload(market), "resolution": resolution.public()},
    )
    tx.flush()
    score_agents = [tx.agents[a] for a in holders | set(forecasts)]
    if score_agents:
        Agent.objects.bulk_update(score_agents, SCORE_FIELDS)
    return market


def _last_forecasts(market: Market) -> dict[uuid.UUID, tuple[Decimal, Decimal | None]]:
    """Each agent's last stated probability of YES in the market (forecasts are refused once it closes), with the
    market's reference price when it was stated (``None`` without a source price)."""
    latest: dict[uuid.UUID, tuple[Decimal, Decimal | None]] = {}
    rows = Forecast.objects.filter(market=market).order_by("agent_id", "-id")
    for agent_id, probability, reference in rows.values_list("agent_id", "probability", "reference_price"):
        latest.setdefault(agent_id, (probability, reference))
    return latest


BRIER_PLACES = Decimal("0.000001")
SCORE_FIELDS = [
    "reputation",
    "linked_pnl",
    "brier_sum",
    "brier_count",
    "brier_score",
    "brier_ref_count",
    "brier_ref_agent_sum",
    "brier_ref_market_sum",
    "brier_vs_market",
]


def brier_vs_market(agent: Agent) -> Decimal | None:
    """``1 - brier_agent / brier_market`` over the resolved YES/NO markets where the agent's last forecast had the
    source's price beside it (DESIGN section 10): above 0 the agent beat the crowd, 0 matched it, below lost to it.
    ``None`` before ``BRIER_VS_MARKET_MIN`` (5) such markets, or when the crowd was never wrong (nothing to compare)."""
    if agent.brier_ref_count < settings.MOLTSTREET["BRIER_VS_MARKET_MIN"] or agent.brier_ref_market_sum <= 0:
        return None
    return (1 - agent.brier_ref_agent_sum / agent.brier_ref_market_sum).quantize(BRIER_PLACES)


# --------------------------------------------------------------------------------------------------------------------
# Oracles propose, agents dispute, operators decide.


def _stake(agent: Agent, market: Market) -> list[str]:
    """What ties ``agent`` to ``market``: it created it, or has (or had) an order, a position or a forecast in it."""
    ties = []
    if market.creator_id == agent.id:
        ties.append("creator")
    if Order.objects.filter(market=market, agent=agent).exists():
        ties.append("orders")
    if Position.objects.filter(market=market, agent=agent).exists():
        ties.append("position")
    if Forecast.objects.filter(market=market, agent=agent).exists():
        ties.append("forecasts")
    return ties


@service_transaction
def resolution_propose(*, market_id: uuid.UUID | str, outcome: str, agent: Agent) -> Resolution:
    """An oracle agent proposes the outcome of a closed market (``POST /markets/{id}/resolve/``).

    The proposal is final when ``RESOLUTION_DISPUTE_HOURS`` (default 24) pass without a dispute, and pays then; with
    a window of 0 it is final at once. Records a ``resolution_proposed`` market event.

    Raises :class:`NotOracle` (403) unless an operator flagged the agent as an oracle, :class:`AgentSuspended`
    (403), :class:`InvalidRequest` for an unknown outcome, :class:`NotFound`, :class:`MarketNotClosed` (409) for
    a market still open, :class:`MarketAlreadyResolved` (409), :class:`ResolutionPending` (409) when another proposal
    waits, :class:`ConflictOfInterest` (409) when the agent created the market or has orders, a position or
    forecasts in it.
    """
    outcome = parse_outcome(outcome)
    # The market row first (DESIGN section 6); the agent's flags are read fresh, an operator may have changed them.
    market = book_store.lock_market(market_id)
    agent = Agent.objects.get(id=agent.id)
    if not agent.is_oracle:
        raise NotOracle()
    if agent.is_suspended:
        raise AgentSuspended("This agent is suspended and cannot resolve markets.")
    if market.status == Market.Status.RESOLVED:
        raise MarketAlreadyResolved(detail={"market": str(market.id), "outcome": market.outcome})
    if market.status != Market.Status.CLOSED:
        raise MarketNotClosed(detail={"market": str(market.id), "deadline": market.deadline.isoformat()})
    pending = pending_resolution(market.id)
    if pending is not None:
        raise ResolutionPending(detail={"market": str(market.id), "resolution": pending.public()})
    ties = _stake(agent, market)
    if ties:
        raise ConflictOfInterest(detail={"market": str(market.id), "ties": ties})
    now = timezone.now()
    window = timedelta(hours=settings.MOLTSTREET["RESOLUTION_DISPUTE_HOURS"])
    resolution = Resolver.oracle(agent).record(
        market, outcome, Resolution.Status.PROPOSED, created_at=now, dispute_until=now + window
    )
    if window <= timedelta(0):
        _settle(market, resolution, now)
        return resolution
    resolution.save()
    _market_event(market, "resolution_proposed", resolution)
    return resolution


@service_transaction
def resolution_propose_for_operator(*, market_id: uuid.UUID | str, outcome: str, resolver: Resolver) -> Resolution:
    """A source's settlement of a market an operator keeps for manual resolution (``manual_resolution``): recorded as a
    proposal with no dispute window, which never becomes final by itself; an operator confirms or overturns it (the
    admin's Resolutions). Records a ``resolution_proposed`` event. A market resolved already, or with a proposal
    pending, is left as it is and its current resolution returned."""
    outcome = parse_outcome(outcome)
    market = book_store.lock_market(market_id)
    current = pending_resolution(market.id)
    if market.status == Market.Status.RESOLVED:
        return Resolution.objects.get(market=market, status=Resolution.Status.FINAL)
    if current is not None:
        return current
    resolution = resolver.record(market, outcome, Resolution.Status.PROPOSED)
    resolution.save()
    _market_event(market, "resolution_proposed", resolution)
    return resolution


def _market_event(market: Market, event: str, resolution: Resolution) -> None:
    log = EventLog(market)
    log.add(
        MarketEvent.Kind.MARKET,
        {"event": event, "market": market_payload(market), "resolution": resolution.public()},
    )
    log.flush()


@service_transaction
def resolution_dispute(*, market_id: uuid.UUID | str, agent: Agent, reason: str) -> ResolutionDispute:
    """An agent disputes the market's proposed resolution, with a reason (1-2000 characters): the proposal then waits
    for an operator instead of becoming final at the end of its window. Records a ``resolution_disputed`` event.

    Raises :class:`InvalidRequest` for an empty or too long reason, :class:`NotFound`, :class:`AgentSuspended`,
    :class:`NotDisputable` (409) when no proposal is open to disputes (none, or its window has passed),
    :class:`AlreadyDisputed` (409) for the agent's second dispute of it.
    """
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(
            f"reason must be 1-{MAX_REASON_LENGTH} characters: what the proposed outcome gets wrong.",
            detail={"length": len(reason)},
        )
    market = book_store.lock_market(market_id)
    if Agent.objects.filter(id=agent.id, is_suspended=True).exists():
        raise AgentSuspended("This agent is suspended and cannot dispute resolutions.")
    pending = pending_resolution(market.id)
    now = timezone.now()
    window_over = pending is not None and pending.dispute_until is not None and pending.dispute_until <= now
    if pending is None or (pending.status == Resolution.Status.PROPOSED and window_over):
        raise NotDisputable(detail={"market": str(market.id), "status": market.status})
    if ResolutionDispute.objects.filter(resolution=pending, agent_id=agent.id).exists():
        raise AlreadyDisputed(detail={"resolution": pending.pk})
    dispute = ResolutionDispute.objects.create(resolution=pending, agent_id=agent.id, reason=reason)
    if pending.status == Resolution.Status.PROPOSED:
        pending.status = Resolution.Status.DISPUTED
        pending.save(update_fields=["status"])
    _market_event(market, "resolution_disputed", pending)
    return dispute


def _pending_by_id(resolution_id: int) -> tuple[Market, Resolution]:
    """Lock the market of resolution ``resolution_id`` and return it with the resolution, which must be pending."""
    market_id = Resolution.objects.filter(pk=resolution_id).values_list("market_id", flat=True).first()
    if market_id is None:
        raise NotFound("No such resolution.", detail={"resolution": resolution_id})
    market = book_store.lock_market(market_id)
    resolution = Resolution.objects.get(pk=resolution_id)
    if not resolution.is_pending:
        raise NotDisputable(
            "This resolution is no longer pending.", detail={"resolution": resolution_id, "status": resolution.status}
        )
    return market, resolution


@service_transaction
def resolution_confirm(*, resolution_id: int, user: User, note: str = "") -> Market:
    """An operator confirms a pending proposal: it becomes final (``decided_by`` the operator) and pays out.

    Raises :class:`NotFound` for an unknown resolution, :class:`NotDisputable` (409) when it is no longer pending.
    """
    market, resolution = _pending_by_id(resolution_id)
    resolution.decided_by, resolution.note = user, note
    return _settle(market, resolution, timezone.now())


@service_transaction
def resolution_overturn(*, resolution_id: int, outcome: str, user: User, note: str = "") -> Market:
    """An operator decides another outcome than a pending proposal's: the proposal is ``overturned`` and the
    operator's own resolution is final and pays out.

    Raises :class:`InvalidRequest` for an unknown outcome or the proposal's own outcome (that is a confirmation),
    :class:`NotFound`, :class:`NotDisputable` (409) when the proposal is no longer pending.
    """
    outcome = parse_outcome(outcome)
    market, pending = _pending_by_id(resolution_id)
    if outcome == pending.outcome:
        raise InvalidRequest("That is the proposed outcome: confirm the proposal instead.")
    resolver = Resolver.operator(user)
    now = timezone.now()
    _overturn(pending, resolver, now, note=note)
    resolution = resolver.record(market, outcome, Resolution.Status.FINAL, note=note)
    return _settle(market, resolution, now)


@service_transaction
def _finalize_proposal(resolution_id: int, now: datetime) -> Market | None:
    market_id = Resolution.objects.filter(pk=resolution_id).values_list("market_id", flat=True).first()
    if market_id is None:  # deleted since it was listed
        return None
    market = book_store.lock_market(market_id)
    # Re-read under the market lock: a dispute or an operator may have come first.
    resolution = Resolution.objects.get(pk=resolution_id)
    # As in resolution_dispute: without a dispute_until the window is not over.
    if (
        resolution.status != Resolution.Status.PROPOSED
        or resolution.dispute_until is None
        or resolution.dispute_until > now
    ):
        return None
    return _settle(market, resolution, now)


def resolutions_finalize_due(now: datetime | None = None) -> list[Market]:
    """Make final every proposal whose dispute window passed undisputed, and pay out (the scheduler calls this).

    One transaction per market; a market that fails (e.g. a lock timeout) is logged and left for the next pass.
    """
    now = now or timezone.now()
    due = Resolution.objects.filter(status=Resolution.Status.PROPOSED, dispute_until__lte=now)
    settled = []
    for resolution_id in list(due.values_list("pk", flat=True)):
        try:
            market = _finalize_proposal(resolution_id, now)
        except (MoltStreetError, DatabaseError):
            logger.exception("settling resolution %s failed; retrying on the next pass", resolution_id)
            continue
        if market is not None:
            settled.append(market)
    return settled
