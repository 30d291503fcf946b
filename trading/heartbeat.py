"""The dead-man's switch: an agent that stops sending heartbeats has its resting orders cancelled, so a crashed
trader leaves no stale quotes behind (Polymarket's and Kalshi's cancel-on-disconnect, for agents).

``POST /agents/me/heartbeat/ {"timeout_seconds": N}`` (:func:`heartbeat_arm`) arms the switch with a deadline N
seconds (5-300) away; every heartbeat moves the deadline; ``0`` disarms it. Once the deadline passes, the agent's
orders are refused (``heartbeat_expired``) and the scheduler (``run_scheduler``, every
``HEARTBEAT_CHECK_INTERVAL`` seconds) fires the switch (:func:`heartbeats_expire_due`): every resting order of the
agent is cancelled with reason ``heartbeat_expired``, a ``heartbeat`` message on its private feed says so, and the
switch is disarmed. A heartbeat that arrives after the deadline, before the scheduler, fires it first, then arms it
again. A private websocket opened with ``cancel_on_disconnect=true`` cancels the same way when it closes
(:func:`orders_cancel_on_disconnect`, reason ``disconnected``).

Locks follow DESIGN section 6: every market where the agent has resting orders, ascending, then the agent.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from agents.models import Agent, AgentEvent
from agents.services import AgentFeed
from moltstreet.db import service_transaction
from moltstreet.errors import InvalidRequest, ServiceBusy
from trading import book_store
from trading.models import Order
from trading.orders import order_cancel_all

logger = logging.getLogger(__name__)

# Times as the API renders them ("...Z"), so the feed's and the REST answers' match as text.
_TIME = serializers.DateTimeField()

# The timeouts an agent may arm the switch with, in seconds; 0 disarms it.
TIMEOUT_MIN = 5
TIMEOUT_MAX = 300
# How often an expiry re-reads the agent's markets before giving up for this pass, when orders keep arriving in
# markets it had not locked (only possible before the deadline: after it, the agent's orders are refused).
_ATTEMPTS = 3


class _Late(Exception):
    """The switch passed its deadline before this transaction held the agent (arming), or was not due (firing)."""


@dataclass(frozen=True)
class Heartbeat:
    """The switch as a heartbeat left it: ``timeout_seconds`` and ``deadline`` (``None`` when disarmed), and how
    many resting orders a late heartbeat's expiry ``cancelled`` first."""

    timeout_seconds: int | None
    deadline: datetime | None
    cancelled: int = 0


def parse_timeout(value: Any) -> int:
    """``timeout_seconds``: a whole number of seconds, 0 (disarm) or from :data:`TIMEOUT_MIN` to
    :data:`TIMEOUT_MAX`. Raises :class:`InvalidRequest` (``detail.timeout_seconds``) otherwise."""
    problem = f"timeout_seconds must be 0 (disarm) or a whole number from {TIMEOUT_MIN} to {TIMEOUT_MAX}."
    if type(value) is not int or not (value == 0 or TIMEOUT_MIN <= value <= TIMEOUT_MAX):
        raise InvalidRequest(problem, detail={"timeout_seconds": [problem]})
    return value


def heartbeat_arm(*, agent: Agent, timeout_seconds: Any) -> Heartbeat:
    """Arm the agent's dead-man's switch for ``timeout_seconds`` (5-300) from now, or disarm it (0).

    If the switch had already passed its deadline, it fires first (its resting orders are cancelled, reason
    ``heartbeat_expired``): a late heartbeat does not save them. Returns the :class:`Heartbeat`. Raises
    :class:`InvalidRequest` for another timeout, :class:`ServiceBusy` on a lock timeout.
    """
    timeout = parse_timeout(timeout_seconds)
    cancelled = 0
    for _attempt in range(_ATTEMPTS):
        now = timezone.now()
        current = Agent.objects.filter(id=agent.id).values_list("heartbeat_deadline", flat=True).first()
        if current is not None and current <= now:
            cancelled += len(heartbeat_expire(agent_id=agent.id, now=now) or [])
        try:
            return _arm(agent.id, timeout, cancelled)
        except _Late:  # the deadline passed between the look and the lock: fire it, then arm
            continue
    raise ServiceBusy("The heartbeat kept racing its own deadline; retry.", detail={"reason": "heartbeat_race"})


@service_transaction
def _arm(agent_id: uuid.UUID, timeout: int, cancelled: int) -> Heartbeat:
    # Only the agent's row: no market is locked after it in this transaction (DESIGN section 6).
    agent = Agent.objects.select_for_update().only("id", "heartbeat_timeout", "heartbeat_deadline").get(id=agent_id)
    now = timezone.now()
    if agent.heartbeat_deadline is not None and agent.heartbeat_deadline <= now:
        # It passed its deadline since the check above (a heartbeat late by a hair): the switch fires anyway.
        raise _Late()
    agent.heartbeat_timeout = timeout or None
    agent.heartbeat_deadline = now + timedelta(seconds=timeout) if timeout else None
    agent.save(update_fields=["heartbeat_timeout", "heartbeat_deadline"])
    return Heartbeat(timeout_seconds=agent.heartbeat_timeout, deadline=agent.heartbeat_deadline, cancelled=cancelled)


def heartbeats_expire_due(now: datetime | None = None) -> int:
    """Fire every switch whose deadline has passed (the scheduler calls this every ``HEARTBEAT_CHECK_INTERVAL``
    seconds); returns how many fired. An agent whose expiry fails is logged and left for the next pass."""
    now = now or timezone.now()
    due = Agent.objects.filter(heartbeat_deadline__lte=now).values_list("id", flat=True)
    fired = 0
    for agent_id in list(due):
        try:
            if heartbeat_expire(agent_id=agent_id, now=now) is not None:
                fired += 1
        except Exception:
            logger.exception("heartbeat expiry of agent %s failed; retrying next pass", agent_id)
    return fired


def heartbeat_expire(*, agent_id: uuid.UUID, now: datetime) -> list[Order] | None:
    """Fire the agent's switch if its deadline is at or before ``now``: cancel every resting order of the agent
    (reason ``heartbeat_expired``), send a ``heartbeat`` message (``event`` ``expired``) on its private feed and
    disarm the switch, in one transaction. Returns the cancelled orders, or ``None`` when the switch was not due
    (a heartbeat came first, or another expiry fired it)."""
    return _cancel_all(agent_id, now=now, reason=Order.CancelReason.HEARTBEAT_EXPIRED)


def orders_cancel_on_disconnect(*, agent_id: uuid.UUID | str) -> list[Order]:
    """Cancel every resting order of the agent (reason ``disconnected``) and send a ``heartbeat`` message (``event``
    ``disconnected``) on its private feed: its private websocket, opened with ``cancel_on_disconnect=true``, closed.
    The switch, if armed, stays armed. Returns the cancelled orders."""
    return _cancel_all(uuid.UUID(str(agent_id)), now=None, reason=Order.CancelReason.DISCONNECTED) or []


def _cancel_all(agent_id: uuid.UUID, *, now: datetime | None, reason: str) -> list[Order] | None:
    for _attempt in range(_ATTEMPTS):
        try:
            return _cancel_all_once(agent_id, now=now, reason=reason)
        except _MarketsMoved:
            continue
        except _Late:
            return None
    logger.warning("agent %s kept placing orders in new markets; its %s waits for the next pass", agent_id, reason)
    return None


class _MarketsMoved(Exception):
    """The agent got resting orders in a market the transaction had not locked: start again."""


@service_transaction
def _cancel_all_once(agent_id: uuid.UUID, *, now: datetime | None, reason: str) -> list[Order] | None:
    # Every market with the agent's resting orders locked ascending, then the agent (DESIGN section 6), as any
    # cancel-all; then, holding the agent, whether the switch is due at all (if not, all of it rolls back) and
    # whether an order that committed meanwhile rests in a market the cancel-all had not locked.
    cancelled = order_cancel_all(agent=Agent.objects.only("id").get(id=agent_id), reason=reason)
    agent = Agent.objects.select_for_update().get(id=agent_id)
    if now is not None and (agent.heartbeat_deadline is None or agent.heartbeat_deadline > now):
        raise _Late()  # not due: a heartbeat moved the deadline, or another expiry fired the switch
    if book_store.resting_markets(agent_id):
        raise _MarketsMoved()
    if now is None and not cancelled:
        return cancelled  # a feed closed with nothing resting: nothing to say
    deadline = agent.heartbeat_deadline
    fields = ["feed_seq"]
    if reason == Order.CancelReason.HEARTBEAT_EXPIRED:
        agent.heartbeat_timeout = agent.heartbeat_deadline = None
        fields += ["heartbeat_timeout", "heartbeat_deadline"]
    feed = AgentFeed()
    event = "expired" if reason == Order.CancelReason.HEARTBEAT_EXPIRED else "disconnected"
    feed.add(
        agent,
        AgentEvent.Kind.HEARTBEAT,
        {
            "event": event,
            "deadline": _TIME.to_representation(deadline) if deadline is not None and now is not None else None,
            "cancelled": [str(order.id) for order in cancelled],
        },
    )
    agent.save(update_fields=fields)
    AgentEvent.objects.bulk_create(feed.events)
    feed.publish_on_commit()
    logger.info("agent %s: %s, %d resting order(s) cancelled", agent_id, reason, len(cancelled))
    return cancelled


__all__ = [
    "TIMEOUT_MAX",
    "TIMEOUT_MIN",
    "Heartbeat",
    "heartbeat_arm",
    "heartbeat_expire",
    "heartbeats_expire_due",
    "orders_cancel_on_disconnect",
    "parse_timeout",
]
