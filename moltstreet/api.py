"""Shared pieces of the agent API: permissions, decimal fields and schema helpers."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import filters, permissions, serializers

from moltstreet.errors import InvalidRequest, error_body
from moltstreet.pagination import IdCursorPagination


class IsAgent(permissions.IsAuthenticated):
    """The request carries a valid API key (``Authorization: Bearer <api_key>``)."""


ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "detail": serializers.DictField(),
            },
        )
    },
)


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """OpenAPI responses for the given error statuses, all in the one error shape."""
    return {status: OpenApiResponse(ErrorSerializer, description="Error") for status in statuses}


class Money(serializers.DecimalField):
    """Credits as a decimal string with two places (``"1000.00"``)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_digits", 16)
        kwargs.setdefault("decimal_places", 2)
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)


class Price(serializers.DecimalField):
    """A price in credits per contract as a decimal string (``"0.55"``).

    Input may be a string or a number; trailing zeros past the tick are fine (``"0.550"``), other digits are not.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("max_digits", 3)
        kwargs.setdefault("decimal_places", 2)
        super().__init__(**kwargs)

    def validate_precision(self, value):
        normalized = value.quantize(Decimal("0.01")) if value == value.quantize(Decimal("0.01")) else value
        return super().validate_precision(normalized)


class StableOrderingFilter(filters.OrderingFilter):
    """``OrderingFilter`` that breaks ties by ``id``. Cursor pages over equal values (reputation 0.00, volume 0) need
    a total order: without one the database may return ties in another order for each page, repeating some rows and
    skipping others."""

    def get_ordering(self, request, queryset, view):
        ordering = super().get_ordering(request, queryset, view)
        if ordering:
            # Each field once (the first mention wins): ``?ordering=volume,volume,…`` must not grow the ORDER BY.
            once: dict[str, str] = {}
            for field in ordering:
                once.setdefault(field.lstrip("-"), field)
            ordering = list(once.values())
        if ordering and not any(field.lstrip("-") in ("id", "pk") for field in ordering):
            ordering = [*ordering, "id"]
        return ordering


class BoundedSearchFilter(filters.SearchFilter):
    """DRF's ``?search=`` with a bound on its cost: at most ``SEARCH_MAX_TERMS`` terms (8) and ``SEARCH_MAX_LENGTH``
    characters (200); beyond either, 400 ``invalid_request``. Each term is a case-insensitive substring match on
    every search field, so an unbounded list of terms made one request cost hundreds of milliseconds."""

    def get_search_terms(self, request) -> list[str]:
        limits = settings.MOLTSTREET
        value = request.query_params.get(self.search_param, "")
        if len(value) > limits["SEARCH_MAX_LENGTH"]:
            raise InvalidRequest(
                f"search must be at most {limits['SEARCH_MAX_LENGTH']} characters.",
                detail={"search": value[:40], "length": len(value), "limit": limits["SEARCH_MAX_LENGTH"]},
            )
        terms = super().get_search_terms(request)
        if len(terms) > limits["SEARCH_MAX_TERMS"]:
            raise InvalidRequest(
                f"search takes at most {limits['SEARCH_MAX_TERMS']} terms; put a phrase in double quotes to search it "
                "as one.",
                detail={"terms": len(terms), "limit": limits["SEARCH_MAX_TERMS"]},
            )
        return terms

    def get_schema_operation_parameters(self, view):
        """DRF's ``search`` parameter with what it accepts: no NUL character (DRF's own check), at most
        ``SEARCH_MAX_LENGTH`` characters and ``SEARCH_MAX_TERMS`` terms; anything else is a 400."""
        limits = settings.MOLTSTREET
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.search_param:
                parameter["description"] = (
                    f"Words to look for (case-insensitive substrings), at most {limits['SEARCH_MAX_TERMS']} terms "
                    f"and {limits['SEARCH_MAX_LENGTH']} characters, no NUL character; a phrase in double quotes is "
                    "one term."
                )
                # At most SEARCH_MAX_TERMS runs of characters between separators (whitespace and commas, as DRF
                # splits them): stricter than the server, which also counts a quoted phrase as one term.
                most = limits["SEARCH_MAX_TERMS"] - 1
                parameter["schema"] = {
                    "type": "string",
                    "maxLength": limits["SEARCH_MAX_LENGTH"],
                    "pattern": f"^[\\s,]*(?:[^\\s,\\u0000]+[\\s,]+){{0,{most}}}[^\\s,\\u0000]*[\\s,]*$",
                }
        return parameters


__all__ = [
    "BoundedSearchFilter",
    "ErrorSerializer",
    "IdCursorPagination",
    "IsAgent",
    "Money",
    "Price",
    "StableOrderingFilter",
    "error_body",
    "errors",
]
