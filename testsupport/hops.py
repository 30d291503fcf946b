"""Counting thread hops: how many times a ``sync_to_async`` call has entered its worker thread.

The tests of the two framework overrides (``moltstreet.asgi.SyncChainASGIHandler``, ``FeedConsumer.dispatch``) use it
to show what each saves: a request or a feed message that crosses into a worker thread once, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import SyncToAsync

_count = [0]


def current_hop() -> int:
    """The number of the latest hop since :func:`install_hop_counter` (0: none yet)."""
    return _count[0]


def install_hop_counter(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count, from 0, every entry of a ``sync_to_async`` call into its worker thread until the test ends; returns
    :func:`current_hop`."""
    real = SyncToAsync.thread_handler

    def counted(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        _count[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "thread_handler", counted)
    _count[0] = 0
    return current_hop
