"""Source clients: Kalshi, Polymarket and Manifold (DESIGN section 10; markets/sources/base.py).

``client_for("kalshi")`` builds the client of a source from the settings' base URLs; the rest of base.py's names
(``SourceMarket``, ``BadEntry``, ``SourceError``, the parsing helpers, ...) are exported from here too.
"""

from markets.sources.base import (
    CLOSED,
    KALSHI,
    MANIFOLD,
    OPEN,
    POLYMARKET,
    PROBABILITY_PLACES,
    SETTLED,
    SOURCE_NAMES,
    SOURCES,
    BadEntry,
    RetryableStatus,
    SourceClient,
    SourceError,
    SourceHTTP,
    SourceMarket,
    amount,
    epoch_ms,
    iso_time,
    probability,
)
from markets.sources.kalshi import KalshiClient
from markets.sources.manifold import ManifoldClient
from markets.sources.polymarket import PolymarketClient

CLIENTS: dict[str, type[KalshiClient | PolymarketClient | ManifoldClient]] = {
    KALSHI: KalshiClient,
    POLYMARKET: PolymarketClient,
    MANIFOLD: ManifoldClient,
}


def client_for(source: str) -> SourceClient:
    """A new client of ``source`` (``kalshi``, ``polymarket`` or ``manifold``) on the settings' base URLs.

    The caller closes it (``client.close()``, or ``with client_for(...) as client``). Raises ``ValueError`` for an
    unknown source.
    """
    try:
        cls = CLIENTS[source]
    except (KeyError, TypeError):
        raise ValueError(f"unknown source {source!r}: one of {', '.join(SOURCES)}") from None
    return cls()


__all__ = [
    "CLIENTS",
    "CLOSED",
    "KALSHI",
    "MANIFOLD",
    "OPEN",
    "POLYMARKET",
    "PROBABILITY_PLACES",
    "SETTLED",
    "SOURCES",
    "SOURCE_NAMES",
    "BadEntry",
    "KalshiClient",
    "ManifoldClient",
    "PolymarketClient",
    "RetryableStatus",
    "SourceClient",
    "SourceError",
    "SourceHTTP",
    "SourceMarket",
    "amount",
    "client_for",
    "epoch_ms",
    "iso_time",
    "probability",
]
