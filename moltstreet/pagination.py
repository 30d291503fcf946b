"""Cursor pagination for every list: ``{next, previous, results}`` (DESIGN section 7)."""

from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination


class CheckedCursorPagination(CursorPagination):
    """``CursorPagination`` that checks a cursor's position against the ordering field before querying with it.

    DRF answers an undecodable cursor with 404 "Invalid cursor" but passes a decodable one's position straight into
    the query, so a forged or mangled cursor (``p=abc`` for an id, ``p=2026`` for a time) failed there as a 500.
    """

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

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
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = page_size_description(self.page_size, self.max_page_size)
                parameter["schema"] = {"type": "integer", "minimum": 1}
        return parameters


def page_size_description(default: int, maximum: int) -> str:
    """What a list's ``page_size`` query parameter does, for the OpenAPI schema."""
    return (
        f"Results per page, 1-{maximum} (default {default}). A value that is not a whole number from 1 up is ignored "
        f"(the default applies); a larger one is capped at {maximum}."
    )


class CreatedCursorPagination(CheckedCursorPagination):
    """Newest first by ``created_at``; ``?page_size=`` up to 200. Lists with an ``OrderingFilter`` use its ordering."""

    ordering = ("-created_at", "-id")  # id breaks ties between rows created in the same microsecond
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
