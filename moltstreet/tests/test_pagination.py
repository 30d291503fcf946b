"""One cursor pagination (moltstreet/pagination.py): every list pages with ``CheckedCursorPagination``, by its own
ordering and page sizes, with the same ``cursor`` and ``page_size`` query parameters."""

from __future__ import annotations

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from markets.models import MarketEvent
from moltstreet.errors import InvalidRequest
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


@pytest.mark.parametrize(
    ("value", "size"), [(None, 50), ("", 50), ("1", 1), ("007", 7), ("200", 200), ("201", 200), ("9" * 30, 200)]
)
def test_a_page_size_is_the_default_when_absent_and_capped_at_the_largest(value, size):
    query = {} if value is None else {"page_size": value}
    assert CreatedCursorPagination().get_page_size(Request(APIRequestFactory().get("/", query))) == size


@pytest.mark.parametrize("value", ["0", "000", "-1", "abc", "2.5", " 5", "\u00b2", "1e3"])
def test_a_page_size_that_is_not_a_whole_number_from_1_is_refused(value):
    # DRF would quietly use the default page size: the agent must learn that its page_size was not used.
    request = Request(APIRequestFactory().get("/", {"page_size": value}))
    with pytest.raises(InvalidRequest) as caught:
        CreatedCursorPagination().get_page_size(request)
    assert caught.value.detail == {"page_size": [f"A whole number from 1 to 200; got {value}."]}
