"""One error hierarchy and one JSON error shape for the whole API (DESIGN section 7).

Every error reaches the client as ``{"error": {"code": "...", "message": "...", "detail": {...}}}``.
Services raise :class:`MoltStreetError` subclasses, never DRF exceptions; :func:`api_exception_handler` renders
domain errors, DRF's own errors and database lock/connection failures in that one shape.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1


class MoltStreetError(Exception):
    """A domain error: a stable machine-readable ``code``, a human ``message``, an HTTP status and details."""

    code = "error"
    http_status: int = status.HTTP_400_BAD_REQUEST
    default_message = "The request could not be processed."
    retry_after: int | None = None

    def __init__(self, message: str | None = None, *, detail: dict[str, Any] | None = None, code: str | None = None):
        self.message = message or self.default_message
        self.detail = detail or {}
        if code:
            self.code = code
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "detail": self.detail}}


class InvalidRequest(MoltStreetError):
    code = "invalid_request"
    default_message = "The request is not valid."


class InsufficientBalance(MoltStreetError):
    code = "insufficient_balance"
    default_message = "Available balance is too low for this order."


class InsufficientPosition(MoltStreetError):
    code = "insufficient_position"
    default_message = "Not enough unreserved contracts to sell."


class MarketClosed(MoltStreetError):
    code = "market_closed"
    http_status = status.HTTP_409_CONFLICT
    default_message = "The market is not open for trading."


class MarketAlreadyResolved(MoltStreetError):
    code = "market_already_resolved"
    http_status = status.HTTP_409_CONFLICT
    default_message = "The market has already been resolved."


class OrderNotCancellable(MoltStreetError):
    code = "order_not_cancellable"
    http_status = status.HTTP_409_CONFLICT
    default_message = "The order is no longer resting and cannot be cancelled."


class OrderNotAmendable(MoltStreetError):
    code = "order_not_amendable"
    http_status = status.HTTP_409_CONFLICT
    default_message = "The order is no longer resting and cannot be amended."


class HeartbeatExpired(MoltStreetError):
    """The agent's dead-man's switch passed its deadline: its resting orders are being cancelled, and no order is
    taken until a heartbeat re-arms the switch (or disarms it)."""

    code = "heartbeat_expired"
    http_status = status.HTTP_409_CONFLICT
    default_message = (
        "No heartbeat came within your timeout, so your resting orders are being cancelled. Send a heartbeat "
        "(POST /agents/me/heartbeat/) to re-arm the switch, or timeout_seconds 0 to disarm it, then place the order."
    )


class PostOnlyWouldCross(MoltStreetError):
    code = "post_only_would_cross"
    http_status = status.HTTP_409_CONFLICT
    default_message = "A post-only order would have traded on arrival, so it was rejected."


class ClientOrderIdConflict(MoltStreetError):
    code = "client_order_id_conflict"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This client_order_id was already used for a different order."


class AgentSuspended(MoltStreetError):
    code = "agent_suspended"
    http_status = status.HTTP_403_FORBIDDEN
    default_message = "This agent is suspended and cannot trade."


class NotOracle(MoltStreetError):
    code = "not_oracle"
    http_status = status.HTTP_403_FORBIDDEN
    default_message = "Only agents flagged as oracles by an operator may resolve markets."


class MarketNotClosed(MoltStreetError):
    code = "market_not_closed"
    http_status = status.HTTP_409_CONFLICT
    default_message = "An oracle resolves a market only once it has closed (at its deadline)."


class ResolutionPending(MoltStreetError):
    code = "resolution_pending"
    http_status = status.HTTP_409_CONFLICT
    default_message = "A proposed resolution of this market is already waiting for its dispute window or an operator."


class ConflictOfInterest(MoltStreetError):
    """The oracle created the market, or has (or had) orders, a position or forecasts in it (``detail.ties``)."""

    code = "conflict_of_interest"
    http_status = status.HTTP_409_CONFLICT
    default_message = "An oracle may not resolve a market it created or has a stake in."


class NotDisputable(MoltStreetError):
    code = "not_disputable"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This market has no proposed resolution open to disputes."


class AlreadyDisputed(MoltStreetError):
    code = "already_disputed"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This agent has disputed this resolution already."


class NotFound(MoltStreetError):
    code = "not_found"
    http_status = status.HTTP_404_NOT_FOUND
    default_message = "Not found."

    @classmethod
    def of(cls, what: str, value: Any, *, by: str = "id", key: str | None = None) -> NotFound:
        """The 404 of an unknown ``what`` looked up ``by`` ``value``: ``No market with id 6feb....`` with
        ``detail`` ``{key: value}`` (``key`` defaults to ``what``). Long values are cut to 100 characters."""
        text = str(value)[:100]
        return cls(f"No {what} with {by} {text}.", detail={key or what: text})


class NameTaken(MoltStreetError):
    code = "name_taken"
    http_status = status.HTTP_409_CONFLICT
    default_message = "An agent with this name already exists."


class OpenOrderLimit(MoltStreetError):
    """The agent already has ``MAX_OPEN_ORDERS`` resting orders; the new one could rest too."""

    code = "open_order_limit"
    http_status = status.HTTP_409_CONFLICT
    default_message = "Too many resting orders; cancel some before placing another."


class RiskLimitExceeded(MoltStreetError):
    """An operator-set per-agent risk limit would be exceeded. ``code`` is ``position_limit`` (contracts of one side
    in one market, held plus resting buys) or ``reserved_limit`` (credits reserved by resting BUY orders)."""

    code = "position_limit"
    http_status = status.HTTP_409_CONFLICT
    default_message = "The order would exceed a risk limit set for this agent."


class LastApiKey(MoltStreetError):
    code = "last_api_key"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This is the agent's only active API key; create another before revoking it."


class UploadConflict(MoltStreetError):
    """A page of a backtest's executions that does not fit its upload: not at the next offset (``detail.expected``),
    or the backtest is no longer ``uploading`` (``detail.status``)."""

    code = "upload_conflict"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This page of executions does not continue the upload."


class ServiceBusy(MoltStreetError):
    """A lock wait hit ``lock_timeout`` or the database is unreachable: safe to retry after ``Retry-After``."""

    code = "service_busy"
    http_status = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "The exchange is busy; retry shortly."
    retry_after = RETRY_AFTER_SECONDS


# DRF exception class -> (code, status). Anything else DRF raises falls back to its own status.
_DRF_CODES: dict[type, str] = {
    drf_exceptions.ValidationError: "invalid_request",
    drf_exceptions.ParseError: "malformed_json",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "invalid_api_key",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.Throttled: "rate_limited",
}


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail if detail is not None else {}}}


def _message_of(detail: Any) -> str:
    if isinstance(detail, (list, tuple)) and detail:
        return _message_of(detail[0])
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        return f"{key}: {_message_of(value)}"
    return str(detail)


def _lookup_not_found(view: Any) -> NotFound | None:
    """The 404 of a view's ``get_object`` named after its model and lookup (``No market with id 6feb....``,
    ``detail.market``; ``No agent with name bob.``), or ``None`` when the view has no lookup in its URL."""
    kwargs = getattr(view, "kwargs", None) or {}
    lookup = getattr(view, "lookup_url_kwarg", None) or getattr(view, "lookup_field", None)
    # A format suffix (`/orders/0.5/` read as id 0, format 5) 404s in content negotiation, not in a lookup.
    if lookup not in kwargs or "format" in kwargs:
        return None
    # The model from the view's declarations, not get_queryset(): that may read the request (its user), which may
    # itself fail here.
    queryset = getattr(view, "queryset", None)
    if queryset is not None:
        model = queryset.model
    else:
        model = getattr(getattr(getattr(view, "serializer_class", None), "Meta", None), "model", None)
    if model is None:
        return None
    meta = model._meta
    by = "id" if view.lookup_field in ("pk", meta.pk.name) else view.lookup_field
    return NotFound.of(str(meta.verbose_name), kwargs[lookup], by=by, key=meta.model_name)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF ``EXCEPTION_HANDLER``: render every error as ``{"error": {code, message, detail}}``.

    Lock timeouts and lost database connections become ``503 service_busy`` with ``Retry-After`` (DESIGN section 6).
    Unexpected exceptions return ``None`` so Django's 500 handler (also JSON for the API) takes over and logs them.
    """
    if isinstance(exc, MoltStreetError):
        response = Response(exc.as_dict(), status=exc.http_status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, (OperationalError, InterfaceError)):  # InterfaceError: a connection the server dropped
        logger.warning("database unavailable or lock wait timed out: %s", exc.__class__.__name__)
        busy = ServiceBusy()
        response = Response(busy.as_dict(), status=busy.http_status)
        response["Retry-After"] = str(busy.retry_after)
        return response
    if isinstance(exc, Http404):
        named = _lookup_not_found(context.get("view"))
        if named is not None:
            return Response(named.as_dict(), status=named.http_status)
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    if isinstance(exc, drf_exceptions.APIException):
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
        if isinstance(exc, drf_exceptions.ValidationError):
            detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
            message = "Invalid input: " + _message_of(detail)
        else:
            detail = {}
            message = _message_of(exc.detail)
        response = Response(error_body(code, message, detail), status=exc.status_code)
        # Throttled.wait (set in its __init__) and an authentication failure's auth_header are missing from the
        # DRF stubs, hence getattr.
        wait = getattr(exc, "wait", None)
        if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
            response["Retry-After"] = str(max(1, int(wait + 0.999)))
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            response["WWW-Authenticate"] = auth_header
        return response
    return None
