"""Cursor pagination for every list: ``{next, previous, results}`` (DESIGN section 7).

One class, :class:`CheckedCursorPagination`, with the shared query parameters and page sizes; a list's pagination is
a subclass that names its ``ordering`` (and its page sizes where they differ).
"""

from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination

from moltstreet.errors import InvalidRequest


class CheckedCursorPagination(CursorPagination):
    """``CursorPagination`` that checks a cursor's position against the ordering field before querying with it.

    DRF answers an undecodable cursor with 404 "Invalid cursor" but passes a decodable one's position straight into
    the query, so a forged or mangled cursor (``p=abc`` for an id, ``p=2026`` for a time) failed there as a 500.

    Query parameters ``cursor`` and ``page_size`` (1 to ``max_page_size``, default ``page_size``: 50 of 200 unless a
    subclass says otherwise; a larger one is capped, one that is not a whole number from 1 is a 400). Subclasses set ``ordering`` (model field names, ``-`` for descending; the first is the
    cursor's position); a list with an ``OrderingFilter`` pages by the filter's ordering instead.
    """

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def get_page_size(self, request) -> int:
        """``?page_size=``: absent or empty, the default; over ``max_page_size``, capped; else a whole number from 1,
        or 400 ``invalid_request`` (DRF would quietly use the default for ``page_size=abc``)."""
        value = request.query_params.get(self.page_size_query_param, "")
        if value == "":
            return self.page_size
        if not (value.isascii() and value.isdigit()) or not value.strip("0"):
            raise InvalidRequest(
                f"page_size must be a whole number from 1 to {self.max_page_size}.",
                detail={"page_size": [f"A whole number from 1 to {self.max_page_size}; got {value[:40]}."]},
            )
        return min(int(value) if len(value) <= 9 else self.max_page_size, self.max_page_size)

    def decode_cursor(self, request):
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                field = self._model._meta.get_field(self.ordering[0].lstrip("-"))
            except FieldDoesNotExist:  # an annotation: nothing to check it against
                return cursor
            try:
                field.to_python(cursor.position)
            except (DjangoValidationError, ValueError, TypeError) as exc:
                raise NotFound(self.invalid_cursor_message) from exc
        return cursor

    def get_schema_operation_parameters(self, view):
        """DRF's query parameters, with ``page_size`` described from this class's own ``page_size`` and
        ``max_page_size`` (lists differ: 50 of 200 for most, 100 of 1000 for executions, 1000 of 5000 for events)."""
        parameters = super().get_schema_operation_parameters(view)
        default, maximum = self.page_size, self.max_page_size  # None only on DRF's base class: every list sets both
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param and default is not None and maximum is not None:
                parameter["description"] = page_size_description(default, maximum)
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters


def page_size_description(default: int, maximum: int) -> str:
    """What a list's ``page_size`` query parameter does, for the OpenAPI schema."""
    return (
        f"Results per page, 1-{maximum} (default {default}). A larger value is capped at {maximum}; one that is not "
        "a whole number from 1 is refused (400)."
    )


class CreatedCursorPagination(CheckedCursorPagination):
    """Newest first by ``created_at``: the default of every list (``REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"]``)."""

    ordering = ("-created_at", "-id")  # id breaks ties between rows created in the same microsecond


class IdCursorPagination(CheckedCursorPagination):
    """Newest first by insertion id, for rows created in bursts with equal timestamps (ledger, positions)."""

    ordering = ("-id",)
