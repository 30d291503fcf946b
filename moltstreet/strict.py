"""Nothing an agent sends is silently ignored: an unknown query parameter or body field is a 400 that names it.

An agent that misspells a filter (``?market_id=`` for ``?market=``) or a field (``"postonly": true``) must learn so at
once, not act on a list that was never filtered or an order it thought was a test. Two mechanisms, one message:

- **Query parameters** (:class:`StrictQueryMixin`, the base of every viewset of the agent API): an operation takes
  exactly the query parameters its OpenAPI operation declares. They are read from drf-spectacular's own operation of
  the request's route and method (:func:`declared_query_parameters`, once per route and method), so the schema and
  the check cannot disagree: filters, ordering, search and pagination where the schema has them, and the parameters
  a custom action declares with ``extend_schema(parameters=...)`` (``depth``, ``interval``, ``start``, ``end``, ...).
  An operation that declares no request body (``GET``, ``DELETE``) refuses body fields too.
- **Body fields** (:class:`StrictSerializer`, the base of every input serializer; orders are checked by their own
  validator, ``trading.order_input``): a field the serializer does not declare as writable.

Both answer ``400 invalid_request`` with ``detail`` mapping each unknown name to what is known
(:func:`unknown_names`), and a hint where the name is a near miss (``market_id`` → ``use market``).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from drf_spectacular.generators import EndpointEnumerator, SchemaGenerator
from drf_spectacular.settings import spectacular_settings
from rest_framework import serializers

from moltstreet.errors import InvalidRequest

# Names agents bring from other APIs (Kalshi and Polymarket page with `limit` and `cursor`/`offset`), and the name
# that means the same here; offered only where the operation takes it.
ALIASES = {"limit": "page_size", "per_page": "page_size", "offset": "cursor", "page": "cursor"}
# A key in a URL ends up in logs and histories; the API reads it only from the header (the feeds refuse it too).
KEY_NAMES = {"api_key", "apikey", "key", "token", "access_token"}
KEY_HINT = "send the key as the header Authorization: Bearer <api_key>"


def _hint(name: str, known: Collection[str]) -> str | None:
    """What to send instead of ``name``: ``use <the known name it most likely meant>`` (the same without ``_id``,
    ``market_id`` → ``market``; in lower case; its :data:`ALIASES` entry), or where an API key goes; ``None``."""
    if name.lower() in KEY_NAMES:
        return KEY_HINT
    for candidate in (name.removesuffix("_id"), name.lower(), ALIASES.get(name.lower())):
        if candidate and candidate != name and candidate in known:
            return f"use {candidate}"
    return None


def unknown_names(what: str, names: Iterable[str], known: Iterable[str]) -> InvalidRequest | None:
    """The ``400 invalid_request`` error for the ``names`` (query parameters or body fields, as ``what`` says) that
    are not ``known``, or ``None`` when all are known.

    The message names them (``Unknown query parameter: market_id (use market).``); ``detail`` maps each one to the
    known names (``{"market_id": ["Unknown query parameter; use market. Known: kind, market, ..."]}``)."""
    known = list(dict.fromkeys(known))
    # Names are echoed, so a made-up one is cut to a readable length.
    unknown = [name[:100] for name in dict.fromkeys(names) if name not in known]
    if not unknown:
        return None
    takes = f"Known: {', '.join(known)}." if known else f"This operation takes no {what}s."
    detail: dict[str, list[str]] = {}
    labels = []
    for name in unknown:
        hint = _hint(name, known)
        labels.append(f"{name} ({hint})" if hint else name)
        detail[name] = [f"Unknown {what}; {hint}. {takes}" if hint else f"Unknown {what}. {takes}"]
    plural = "s" if len(unknown) > 1 else ""
    return InvalidRequest(f"Unknown {what}{plural}: {', '.join(labels)}.", detail=detail)


def refuse_unknown(what: str, names: Iterable[str], known: Iterable[str]) -> None:
    """Raise :func:`unknown_names`' error if any of ``names`` is not ``known``."""
    error = unknown_names(what, names, known)
    if error is not None:
        raise error


# --------------------------------------------------------------------------------------------------------------------
# Query parameters (and bodies where none is declared)

# (route callback, method) -> (the query parameters its operation declares, whether it declares a request body)
_DECLARED: dict[tuple[Any, str], tuple[frozenset[str], bool]] = {}
# drf-spectacular builds operations with class-level state it fills on first use (its extensions import their target
# classes lazily, and two threads doing so at once fail with an AttributeError): one build at a time per process.
_BUILDING = threading.Lock()


def declared_query_parameters(request) -> tuple[frozenset[str], bool]:
    """The query parameter names the OpenAPI operation of ``request``'s route and method declares, and whether it
    declares a request body: drf-spectacular's own operation (what ``/api/schema/`` serves), built once per route
    and method, one build at a time (drf-spectacular is not thread-safe on first use: concurrent first orders of a
    fresh worker got 500s). ``HEAD`` is answered as ``GET``."""
    method = "GET" if request.method == "HEAD" else request.method
    match = request.resolver_match
    key = (match.func, method)
    declared = _DECLARED.get(key)
    if declared is not None:
        return declared
    with _BUILDING:
        declared = _DECLARED.get(key)
        if declared is not None:  # built by the thread this one waited for
            return declared
        generator = SchemaGenerator()
        view = generator.create_view(match.func, method)
        path = EndpointEnumerator().get_path_from_regex(match.route)
        view.request = spectacular_settings.GET_MOCK_REQUEST(method, path, view, None)
        operation = view.schema.get_operation(path, "", "^/api/", method, generator.registry) or {}
        names = frozenset(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")
        declared = _DECLARED[key] = (names, "requestBody" in operation)
    return declared


def _has_body(request) -> bool:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) > 0
    except ValueError:
        return False


class StrictQueryMixin:
    """For viewsets of the agent API: after authentication, permissions and rate limits, refuse (400
    ``invalid_request``) a query parameter the route's OpenAPI operation does not declare, and body fields sent to
    an operation that declares no body (``DELETE /orders/{id}/`` with ``{"reason": ...}``)."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # type: ignore[misc]  # a mixin of APIView
        if getattr(self, "action", None) in (None, "metadata"):  # a method not served (405 follows), or OPTIONS
            return
        known, takes_body = declared_query_parameters(request)
        if request.query_params:
            refuse_unknown("query parameter", request.query_params.keys(), sorted(known))
        if not takes_body and _has_body(request):
            data = request.data
            if isinstance(data, Mapping):
                refuse_unknown("field", data.keys(), ())
            elif data not in (None, [], ""):
                raise InvalidRequest("This operation takes no request body.", detail={"body": ["Send none."]})


# --------------------------------------------------------------------------------------------------------------------
# Body fields


# The base of every input serializer (a comment, not a docstring: drf-spectacular would show a docstring as the
# description of each request body). It refuses a body with a field it does not declare as writable: ``is_valid`` is
# false with ``errors`` naming it, before any field is checked, and ``is_valid(raise_exception=True)`` raises the 400
# ``invalid_request`` of :func:`unknown_names`. The schema says so too (``additionalProperties: false``,
# ``moltstreet.schema``). For request bodies; not for nesting.
class StrictSerializer(serializers.Serializer):
    def known_fields(self) -> list[str]:
        """The body fields this request takes: the writable fields (a subclass may add fields its view reads)."""
        return [name for name, field in self.fields.items() if not field.read_only]

    def is_valid(self, *, raise_exception: bool = False) -> bool:
        data = getattr(self, "initial_data", None)
        error = unknown_names("field", data.keys(), self.known_fields()) if isinstance(data, Mapping) else None
        if error is None:
            return super().is_valid(raise_exception=raise_exception)
        if raise_exception:
            raise error
        self._validated_data: Any = {}
        self._errors: Any = error.detail
        return False


__all__ = [
    "ALIASES",
    "StrictQueryMixin",
    "StrictSerializer",
    "declared_query_parameters",
    "refuse_unknown",
    "unknown_names",
]
