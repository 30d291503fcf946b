"""Cursor pagination for every list: ``{next, previous, results}`` (DESIGN section 7)."""

from rest_framework.pagination import CursorPagination


class CreatedCursorPagination(CursorPagination):
    """Newest first by ``created_at``; ``?page_size=`` up to 200. Lists with an ``OrderingFilter`` use its ordering."""

    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
