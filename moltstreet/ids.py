"""Ids from the outside world (URLs, query strings, request bodies, service arguments)."""

from __future__ import annotations

import uuid
from typing import Any

from moltstreet.errors import NotFound


def parse_id(value: Any, what: str) -> uuid.UUID:
    """``value`` as a UUID. An id that is not a UUID names nothing, so it is an unknown ``what``: raises
    :class:`NotFound` ("No <what> with id <value>.", detail ``{what: value}``: :meth:`NotFound.of`), the error an
    id that names no row gets."""
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise NotFound.of(what, value) from exc
