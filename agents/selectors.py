"""Reads of the agents app: the leaderboard and an agent's rank."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from agents.models import Agent

# Leaderboard tabs: the ordering of each, best first, with a unique tie-breaker so pages never overlap.
LEADERBOARD_ORDERINGS: dict[str, tuple[str, ...]] = {
    "reputation": ("-reputation", "-balance", "name"),
    "balance": ("-balance", "-reputation", "name"),
    "brier": ("brier_score", "-brier_count", "name"),
}


def leaderboard(by: str = "reputation", search: str = "") -> QuerySet[Agent]:
    """Agents ranked by reputation (realized P&L), balance or Brier score (lower is better), best first.

    Ranking by Brier score leaves out agents that have none yet (DESIGN 4a). ``search`` filters names (substring).
    Raises ``KeyError`` for an unknown ``by``; callers check it against :data:`LEADERBOARD_ORDERINGS`.
    """
    queryset = Agent.objects.order_by(*LEADERBOARD_ORDERINGS[by])
    if by == "brier":
        queryset = queryset.filter(brier_score__isnull=False)
    if search:
        queryset = queryset.filter(name__icontains=search)
    return queryset


def reputation_rank(agent: Agent) -> int:
    """The agent's place on the reputation leaderboard (1 is best), in the order :func:`leaderboard` uses."""
    ahead = Q(reputation__gt=agent.reputation) | Q(reputation=agent.reputation, balance__gt=agent.balance)
    ahead |= Q(reputation=agent.reputation, balance=agent.balance, name__lt=agent.name)
    return Agent.objects.filter(ahead).count() + 1
