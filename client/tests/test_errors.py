"""The SDK's error classes: one per code of the server's error table, each carrying code, message, detail, status and
retry_after; unknown codes fall back to the class of their status."""

from __future__ import annotations

import httpx
import moltstreet_client
import pytest
from moltstreet_client import errors
from moltstreet_client._base import error_of, retry_after_seconds


def test_the_error_table_is_the_servers():
    from moltstreet.docs import ERROR_CODES

    server = {entry.code: (entry.status, entry.retryable) for entry in ERROR_CODES if entry.code != "error"}
    sdk = {code: (str(status), retryable) for code, status, retryable in errors.ERROR_TABLE}
    assert sdk == server
    assert "error" in {entry.code for entry in ERROR_CODES}, "the catch-all code maps to the status classes"


@pytest.mark.parametrize(("code", "status", "retryable"), errors.ERROR_TABLE)
def test_each_code_has_its_own_exported_class(code, status, retryable):
    cls = errors.ERRORS_BY_CODE[code]
    assert cls.__name__ == errors.class_name(code)
    assert getattr(moltstreet_client, cls.__name__) is cls
    assert issubclass(cls, moltstreet_client.MoltStreetError)
    assert (cls.code, cls.http_status, cls.retryable) == (code, status, retryable)

    error = errors.error_from_body(
        status, {"error": {"code": code, "message": "words", "detail": {"field": ["bad"]}}}, retry_after=2.0
    )
    assert type(error) is cls
    assert (error.code, error.message, error.detail, error.status, error.retry_after) == (
        code,
        "words",
        {"field": ["bad"]},
        status,
        2.0,
    )
    assert code in str(error)


def test_the_classes_group_by_status():
    assert issubclass(moltstreet_client.NameTaken, moltstreet_client.ConflictError)
    assert issubclass(moltstreet_client.InsufficientBalance, moltstreet_client.InvalidInputError)
    assert issubclass(moltstreet_client.NotFound, moltstreet_client.NotFoundError)
    assert issubclass(moltstreet_client.InvalidApiKey, moltstreet_client.AuthenticationError)
    assert issubclass(moltstreet_client.NotOracle, moltstreet_client.ForbiddenError)
    assert issubclass(moltstreet_client.ServiceBusy, moltstreet_client.ServerError)
    assert issubclass(moltstreet_client.RateLimited, moltstreet_client.ClientError)
    assert not issubclass(moltstreet_client.TransportError, moltstreet_client.MoltStreetError)


def test_an_unknown_code_is_raised_as_the_class_of_its_status():
    error = errors.error_from_body(409, {"error": {"code": "brand_new_conflict", "message": "m", "detail": {}}})
    assert type(error) is moltstreet_client.ConflictError
    assert error.code == "brand_new_conflict"

    error = errors.error_from_body(418, {"error": {"code": "teapot", "message": "m", "detail": {}}})
    assert type(error) is moltstreet_client.ClientError
    error = errors.error_from_body(502, "<html>Bad gateway</html>", fallback_message="Bad Gateway")
    assert type(error) is moltstreet_client.ServerError
    assert (error.code, error.message, error.status) == ("error", "Bad Gateway", 502)
    error = errors.error_from_body(400, {"error": {"code": "error", "message": "other", "detail": {}}})
    assert type(error) is moltstreet_client.InvalidInputError
    assert error.code == "error"


def test_retry_after_is_read_as_float_seconds_or_an_http_date():
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "2"})) == 2.0
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "0.5"})) == 0.5
    assert retry_after_seconds(httpx.Response(503)) is None
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    dated = retry_after_seconds(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert dated == 0.0  # in the past: retry at once

    answer = httpx.Response(
        503,
        headers={"Retry-After": "1"},
        json={"error": {"code": "service_busy", "message": "busy", "detail": {}}},
    )
    error = error_of(answer)
    assert isinstance(error, moltstreet_client.ServiceBusy)
    assert (error.status, error.retry_after, error.retryable) == (503, 1.0, True)
