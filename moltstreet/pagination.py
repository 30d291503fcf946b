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


class CreatedCursorPagination(CheckedCursorPagination):
    """Newest first by ``created_at``; ``?page_size=`` up to 200. Lists with an ``OrderingFilter`` use its ordering."""

    ordering = ("-created_at", "-id")  # id breaks ties between rows created in the same microsecond
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
