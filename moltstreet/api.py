"""Shared pieces of the agent API: the base viewset, permissions, decimal fields, list filters and schema helpers."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from django.conf import settings
from django_filters import rest_framework as django_filters
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import filters, permissions, serializers, viewsets

from moltstreet.errors import InvalidRequest, error_body
from moltstreet.pagination import IdCursorPagination
from moltstreet.strict import StrictQueryMixin, StrictSerializer


class ApiViewSet(StrictQueryMixin, viewsets.GenericViewSet):
    """The base of every viewset of the agent API: it refuses a query parameter its OpenAPI operation does not
    declare (``moltstreet.strict``)."""


class IsAgent(permissions.IsAuthenticated):
    """The request carries a valid API key (``Authorization: Bearer <api_key>``)."""


class ErrorBody(serializers.Serializer):
    """The ``error`` object of the one error shape (also each failed entry's ``error`` in a batch's answer)."""

    code = serializers.CharField()
    message = serializers.CharField()
    detail = serializers.DictField()


ErrorSerializer = inline_serializer(name="Error", fields={"error": ErrorBody()})


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
    """``OrderingFilter`` that breaks ties by ``id`` and refuses a field it cannot order by. Cursor pages over equal
    values (reputation 0.00, volume 0) need a total order: without one the database may return ties in another order
    for each page, repeating some rows and skipping others. DRF drops an unknown field and orders by the default
    instead; here ``?ordering=price`` is a 400 ``invalid_request`` listing the fields."""

    def remove_invalid_fields(self, queryset, fields, view, request):
        valid = [item[0] for item in self.get_valid_fields(queryset, view, {"request": request})]
        wrong = [field for field in fields if field.removeprefix("-") not in valid]
        if wrong:
            problem = f"ordering takes {', '.join(valid)}, each with - for descending, separated by commas."
            raise InvalidRequest(f"Cannot order by {wrong[0][:40]!r}: {problem}", detail={"ordering": [problem]})
        return fields

    def get_schema_operation_parameters(self, view):
        """``ordering`` with the fields it takes: a pattern of them, so that the schema refuses what the API does."""
        fields = "|".join(getattr(view, "ordering_fields", None) or ())
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if fields:
                parameter["description"] = (
                    f"Order by {', '.join(view.ordering_fields)} (`-` for descending); several separated by commas."
                )
                parameter["schema"] = {"type": "string", "pattern": f"^-?({fields})(,-?({fields}))*$"}
        return parameters

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
                # splits them): stricter than the server, which also counts a quoted phrase as one term. Python's
                # whitespace also has U+001C-U+001F and U+0085, which a JSON Schema `\s` lacks: named here.
                most = limits["SEARCH_MAX_TERMS"] - 1
                sep = "\\s\\u001c-\\u001f\\u0085,"
                parameter["schema"] = {
                    "type": "string",
                    "maxLength": limits["SEARCH_MAX_LENGTH"],
                    "pattern": f"^[{sep}]*(?:[^{sep}\\u0000]+[{sep}]+){{0,{most}}}[^{sep}\\u0000]*[{sep}]*$",
                }
        return parameters


# --------------------------------------------------------------------------------------------------------------------
# Filters of the lists (django-filter): the same names everywhere. `market` where the rows belong to a market,
# `status` where they have one, `since`/`until` (times on created_at) on the agent's own time-ordered lists.


def choice_filter(values: Iterable[str], *, help_text: str, **kwargs) -> django_filters.ChoiceFilter:
    """A ``ChoiceFilter`` over ``values`` (spelled exactly so) whose refusal lists them: ``Must be one of YES, NO
    (exactly so spelled); got yes.``"""
    values = list(values)
    message = f"Must be one of {', '.join(values)} (exactly so spelled); got %(value)s."
    return django_filters.ChoiceFilter(
        choices=[(value, value) for value in values],
        help_text=help_text,
        error_messages={"invalid_choice": message},
        **kwargs,
    )


def market_filter(field_name: str = "market") -> django_filters.UUIDFilter:
    """``?market=<id>``: only the rows of that market (an id that names no market: none)."""
    return django_filters.UUIDFilter(field_name=field_name, help_text="Only those in this market (its id).")


class CreatedFilterSet(django_filters.FilterSet):
    """``?since=`` and ``?until=``: ISO 8601 times (UTC without a zone), both inclusive, on ``created_at``: the base
    of the filters of the agent's own time-ordered lists (orders, fills, ledger, backtests)."""

    since = django_filters.IsoDateTimeFilter(
        field_name="created_at",
        lookup_expr="gte",
        help_text="Only those created at or after this time (ISO 8601, inclusive).",
    )
    until = django_filters.IsoDateTimeFilter(
        field_name="created_at",
        lookup_expr="lte",
        help_text="Only those created at or before this time (ISO 8601, inclusive).",
    )


__all__ = [
    "ApiViewSet",
    "BoundedSearchFilter",
    "CreatedFilterSet",
    "ErrorBody",
    "ErrorSerializer",
    "IdCursorPagination",
    "IsAgent",
    "Money",
    "Price",
    "StableOrderingFilter",
    "StrictSerializer",
    "choice_filter",
    "error_body",
    "errors",
    "market_filter",
]
