"""Errors raised by the SDK.

Every error the API answers with, ``{"error": {"code", "message", "detail"}}``, is raised as a
:class:`MoltStreetError`, more precisely as the subclass generated for its ``code`` from :data:`ERROR_TABLE`
(``insufficient_balance`` -> :class:`InsufficientBalance`, ``not_found`` -> :class:`NotFound`, ...). Each of those
also subclasses the class of its HTTP status (:class:`InvalidInputError` for 400, :class:`ConflictError` for 409,
...), so ``except ConflictError`` catches every state conflict. A code the SDK does not know (a newer server) is raised
as the class of its status, or as :class:`MoltStreetError` itself.

A request that never got an answer (connection refused, timeouts, a dropped connection) after the retries the
client allows is raised as :class:`TransportError`, which is not a :class:`MoltStreetError`: the server said nothing.
"""

from __future__ import annotations

from typing import Any


class MoltStreetError(Exception):
    """An error answer of the API.

    Attributes: ``code`` (the stable machine-readable ``error.code``, e.g. ``"insufficient_balance"``), ``message``
    (human text), ``detail`` (a dict, e.g. ``{"required": "55.00", "available": "10.00"}`` or, for
    ``invalid_request``, the fields at fault mapped to their problems), ``status`` (the HTTP status; ``None`` for
    errors of a live feed), ``retry_after`` (seconds from the ``Retry-After`` header as a float, else ``None``).
    ``retryable`` says whether the same request may succeed later as it is (429, 500, 503).
    """

    code: str = "error"
    http_status: int | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        detail: dict[str, Any] | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or type(self).code
        self.message = message
        self.detail = detail if detail is not None else {}
        self.status = status if status is not None else type(self).http_status
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        return f"{self.code}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status!r}, "
            f"detail={self.detail!r}, retry_after={self.retry_after!r})"
        )


class TransportError(Exception):
    """No answer from the server: the connection failed, timed out or dropped, on every attempt allowed.

    ``cause`` is the last underlying exception (an ``httpx.TransportError`` or ``OSError``), ``attempts`` how many
    times the request was tried, ``method`` and ``url`` what was asked. For a non-idempotent request (a POST without
    ``client_order_id``) that timed out, the server may or may not have carried it out: check before repeating it.
    """

    def __init__(
        self, message: str, *, cause: BaseException | None = None, attempts: int = 1, method: str = "", url: str = ""
    ):
        super().__init__(message)
        self.cause = cause
        self.attempts = attempts
        self.method = method
        self.url = url


# ---------------------------------------------------------------------------------------------------------------------
# Classes by HTTP status: what a code the SDK does not know is raised as.


class ClientError(MoltStreetError):
    """A 4xx answer: the request was refused and nothing was changed."""


class InvalidInputError(ClientError):
    """400: bad input (validation, prices, sizes, balance or position too low for the order)."""

    http_status = 400


class AuthenticationError(ClientError):
    """401: no API key, or an unknown, malformed or revoked one."""

    http_status = 401


class ForbiddenError(ClientError):
    """403: authenticated, but not allowed (suspended agent, not an oracle)."""

    http_status = 403


class NotFoundError(ClientError):
    """404: no such resource (or another agent's order), or a bad pagination cursor."""

    http_status = 404


class ConflictError(ClientError):
    """409: the request conflicts with the current state (market closed, order no longer resting, ...)."""

    http_status = 409


class ServerError(MoltStreetError):
    """A 5xx answer."""

    http_status = 500


_STATUS_CLASSES: dict[int, type[MoltStreetError]] = {
    400: InvalidInputError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
}


def _status_class(status: int | None) -> type[MoltStreetError]:
    if status is None:
        return MoltStreetError
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if 400 <= status < 500:
        return ClientError
    if status >= 500:
        return ServerError
    return MoltStreetError


# ---------------------------------------------------------------------------------------------------------------------
# One class per error code, generated from this table: (code, HTTP status, retryable). The codes are the server's
# `moltstreet.docs.ERROR_CODES` (its agent guide's error table); client/tests/test_errors.py checks they agree. The
# catch-all code "error" has no class of its own: it is raised as the class of its status.

ERROR_TABLE: tuple[tuple[str, int, bool], ...] = (
    ("invalid_request", 400, False),
    ("invalid_price", 400, False),
    ("invalid_size", 400, False),
    ("malformed_json", 400, False),
    ("bad_request", 400, False),
    ("market_exists", 400, False),
    ("insufficient_balance", 400, False),
    ("insufficient_position", 400, False),
    ("not_authenticated", 401, False),
    ("invalid_api_key", 401, False),
    ("permission_denied", 403, False),
    ("agent_suspended", 403, False),
    ("not_oracle", 403, False),
    ("not_found", 404, False),
    ("method_not_allowed", 405, False),
    ("not_acceptable", 406, False),
    ("name_taken", 409, False),
    ("market_closed", 409, False),
    ("market_already_resolved", 409, False),
    ("market_not_closed", 409, True),
    ("resolution_pending", 409, False),
    ("conflict_of_interest", 409, False),
    ("not_disputable", 409, False),
    ("already_disputed", 409, False),
    ("order_not_cancellable", 409, False),
    ("order_not_amendable", 409, False),
    ("heartbeat_expired", 409, False),
    ("post_only_would_cross", 409, False),
    ("client_order_id_conflict", 409, False),
    ("open_order_limit", 409, False),
    ("position_limit", 409, False),
    ("reserved_limit", 409, False),
    ("last_api_key", 409, False),
    ("upload_conflict", 409, False),
    ("request_too_large", 413, False),
    ("unsupported_media_type", 415, False),
    ("rate_limited", 429, True),
    ("internal_error", 500, True),
    ("service_busy", 503, True),
)


def class_name(code: str) -> str:
    """The class name of an error code: ``insufficient_balance`` -> ``InsufficientBalance``."""
    return "".join(part.capitalize() for part in code.split("_"))


def _make_class(code: str, status: int, retryable: bool) -> type[MoltStreetError]:
    base = _status_class(status)
    return type(
        class_name(code),
        (base,),
        {
            "__doc__": f"API error ``{code}`` (HTTP {status}).",
            "__module__": __name__,
            "code": code,
            "http_status": status,
            "retryable": retryable,
        },
    )


#: error code -> its exception class
ERRORS_BY_CODE: dict[str, type[MoltStreetError]] = {
    code: _make_class(code, status, retryable) for code, status, retryable in ERROR_TABLE
}
globals().update({cls.__name__: cls for cls in ERRORS_BY_CODE.values()})

#: the generated class names, exported by the package
ERROR_CLASS_NAMES: tuple[str, ...] = tuple(cls.__name__ for cls in ERRORS_BY_CODE.values())


def error_class(code: str | None, status: int | None = None) -> type[MoltStreetError]:
    """The class raised for ``code`` (and, for an unknown code, ``status``)."""
    if code and code in ERRORS_BY_CODE:
        return ERRORS_BY_CODE[code]
    return _status_class(status)


def error_from_body(
    status: int | None, body: Any, *, retry_after: float | None = None, fallback_message: str = ""
) -> MoltStreetError:
    """The exception for an error answer: ``body`` is the decoded JSON (``{"error": {...}}``) or anything else (a
    proxy's HTML page), in which case the class follows ``status`` alone."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = error.get("code") if isinstance(error.get("code"), str) else None
    message = error.get("message") if isinstance(error.get("message"), str) else None
    detail = error.get("detail") if isinstance(error.get("detail"), dict) else {}
    cls = error_class(code, status)
    return cls(
        message or fallback_message or f"HTTP {status}",
        code=code or (cls.code if cls is not MoltStreetError else "error"),
        detail=detail,
        status=status,
        retry_after=retry_after,
    )


__all__ = [
    "ERRORS_BY_CODE",
    "ERROR_CLASS_NAMES",
    "ERROR_TABLE",
    "AuthenticationError",
    "ClientError",
    "ConflictError",
    "ForbiddenError",
    "InvalidInputError",
    "MoltStreetError",
    "NotFoundError",
    "ServerError",
    "TransportError",
    "class_name",
    "error_class",
    "error_from_body",
    *ERROR_CLASS_NAMES,
]
