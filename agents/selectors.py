"""Reads of the agents app: the leaderboard and an agent's rank."""

from __future__ import annotations

from django.db.models import F, Q, QuerySet

from agents.models import Agent

# Leaderboard tabs: the ordering of each, best first, with a unique tie-breaker so pages never overlap. The balance
# tab ranks ``rank_balance``: the balance without what trades with linked agents made (DESIGN section 4a).
LEADERBOARD_ORDERINGS: dict[str, tuple[str, ...]] = {
    "reputation": ("-reputation", "-rank_balance", "name"),
    "balance": ("-rank_balance", "-reputation", "name"),
    "brier": ("brier_score", "-brier_count", "name"),
    "vs_market": ("-brier_vs_market", "-brier_ref_count", "name"),
}


def with_ranked_balance(queryset: QuerySet[Agent]) -> QuerySet[Agent]:
    """Annotate ``rank_balance`` = ``balance - linked_pnl`` (``Agent.ranked_balance``): the balance the leaderboard
    ranks, in credits."""
    return queryset.annotate(rank_balance=F("balance") - F("linked_pnl"))


def leaderboard(by: str = "reputation", search: str = "") -> QuerySet[Agent]:
    """Agents ranked by reputation (realized P&L), balance, Brier score (lower is better) or Brier score against the
    sources' (``vs_market``, higher is better), best first.

    Reputation and balance leave out what trades with linked agents made (``linked_pnl``). Ranking by a Brier score
    leaves out agents that have none yet (DESIGN 4a, section 10). ``search`` filters names (substring). Raises ``KeyError`` for
    an unknown ``by``; callers check it against :data:`LEADERBOARD_ORDERINGS`.
    """
    queryset = with_ranked_balance(Agent.objects.all()).order_by(*LEADERBOARD_ORDERINGS[by])
    if by == "brier":
        queryset = queryset.filter(brier_score__isnull=False)
    elif by == "vs_market":
        queryset = queryset.filter(brier_vs_market__isnull=False)
    if search:
        queryset = queryset.filter(name__icontains=search)
    return queryset


def reputation_rank(agent: Agent) -> int:
    """The agent's place on the reputation leaderboard (1 is best), in the order :func:`leaderboard` uses."""
    mine = agent.ranked_balance
    ahead = Q(reputation__gt=agent.reputation) | Q(reputation=agent.reputation, rank_balance__gt=mine)
    ahead |= Q(reputation=agent.reputation, rank_balance=mine, name__lt=agent.name)
    return with_ranked_balance(Agent.objects.all()).filter(ahead).count() + 1
