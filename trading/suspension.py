"""Suspending and reinstating agents: the flag under the agent's row lock, then its resting orders cancelled market
by market (``trading.orders.order_cancel_all``)."""

from __future__ import annotations

import uuid

from agents.models import Agent
from agents.services import lock_agents
from moltstreet.db import (
    service_transaction,
)
from trading.models import Order
from trading.orders import order_cancel_all

# --------------------------------------------------------------------------------------------------------------------
# Agents.


@service_transaction
def _agent_set_suspended(agent_id: uuid.UUID, suspended: bool) -> Agent:
    agent = lock_agents([agent_id])[agent_id]
    agent.is_suspended = suspended
    agent.save(update_fields=["is_suspended"])
    return agent


def agent_suspend(*, agent_id: uuid.UUID) -> list[Order]:
    """Suspend an agent and cancel its resting orders; returns the cancelled orders.

    Two transactions: the flag first (under the agent lock, so no order placement can slip past it: ``order_place``
    checks the flag under the same lock), then the cancellations, market by market in the usual lock order.
    """
    agent = _agent_set_suspended(agent_id, True)
    return order_cancel_all(agent=agent, reason=Order.CancelReason.AGENT_SUSPENDED)


def agent_reinstate(*, agent_id: uuid.UUID) -> Agent:
    """Lift a suspension."""
    return _agent_set_suspended(agent_id, False)
