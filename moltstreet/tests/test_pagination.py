"""One cursor pagination (moltstreet/pagination.py): every list pages with ``CheckedCursorPagination``, by its own
ordering and page sizes, with the same ``cursor`` and ``page_size`` query parameters."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from markets.models import MarketEvent
from moltstreet.pagination import CheckedCursorPagination, CreatedCursorPagination

CREATED = (("-created_at", "-id"), 50, 200)
# Each list of the API: (ordering, default page size, largest page size); ``?ordering=`` overrides the ordering of
# lists that have an ordering filter (agents, markets).
LISTS = {
    "/api/v1/agents/": (("-reputation",), 50, 200),
    "/api/v1/backtests/": CREATED,
    "/api/v1/backtests/{id}/executions/": (("number",), 100, 1000),
    "/api/v1/ledger/": (("-id",), 50, 200),
    "/api/v1/markets/": CREATED,
    "/api/v1/markets/{id}/events/": (("seq",), 1000, 5000),
    "/api/v1/markets/{id}/snapshots/": (("taken_at", "id"), 100, 1000),
    "/api/v1/markets/{id}/trades/": (("-seq",), 50, 200),
    "/api/v1/orders/": CREATED,
    "/api/v1/positions/": (("-id",), 50, 200),
    "/api/v1/trades/": CREATED,
}


def _paginated_lists() -> dict[str, type]:
    """``{path: pagination class}`` of every GET endpoint of the API whose schema takes a ``cursor``."""
    generator = SchemaGenerator()
    schema = generator.get_schema(request=None, public=True)
    found = {}
    for path, _regex, method, callback in generator.endpoints:
        path = path.replace("{pk}", "{id}")  # as the schema names it
        parameters = schema["paths"].get(path, {}).get("get", {}).get("parameters", [])
        if method == "GET" and any(p["name"] == "cursor" for p in parameters):
            found[path] = callback.initkwargs.get("pagination_class", callback.cls.pagination_class)
    return found


def test_every_list_pages_with_the_one_cursor_pagination_by_its_own_ordering(db):
    lists = _paginated_lists()

    assert set(lists) == set(LISTS)
    for path, pagination in lists.items():
        assert issubclass(pagination, CheckedCursorPagination), path
        assert pagination.page_size_query_param == "page_size", path
        ordering = (pagination.ordering,) if isinstance(pagination.ordering, str) else tuple(pagination.ordering)
        assert (ordering, pagination.page_size, pagination.max_page_size) == LISTS[path], path


def test_a_forged_cursor_position_is_a_missing_page_not_a_server_error(db):
    # "p=abc" where the ordering field is an integer (seq): base64 of "p=abc".
    request = Request(APIRequestFactory().get("/", {"cursor": "cD1hYmM="}))
    pagination = type("BySeq", (CheckedCursorPagination,), {"ordering": ("seq",)})()

    with pytest.raises(NotFound):
        pagination.paginate_queryset(MarketEvent.objects.all(), request)


def test_the_default_pagination_is_newest_first():
    assert CreatedCursorPagination.ordering == ("-created_at", "-id")
    assert (CreatedCursorPagination.page_size, CreatedCursorPagination.max_page_size) == (50, 200)
