"""Uploads in parts: a reported result whose executions do not fit one request body (MAX_REQUEST_BODY_BYTES) is
created ``uploading`` with ``executions_count``, gets its executions in pages (``POST /backtests/{id}/executions/``)
and becomes ``done`` in the transaction of its last page, never with part of them; the SDK does it for a large result
(inline for a small one), and the worker's start marks an unfinished upload ``failed``."""

from __future__ import annotations

import asyncio
import io
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone
from moltstreet_client import AsyncClient, Client
from moltstreet_client import _api as sdk_api

from backtests.models import Backtest, BacktestExecution
from backtests.tests.factories import BacktestFactory
from testsupport.api import API, api_client, assert_error, unchanged, walk_pages
from trading.tests.factories import new_market

URL = f"{API}/backtests/"
CENT = Decimal("0.01")


def synthetic_result(market, n: int, *, pnl_error: Decimal = Decimal("0.00")) -> dict:
    """A result as ``BacktestResult.as_dict()`` shapes it, with ``n`` executions in ``market`` (buys and sells of
    1-7 contracts at 0.40-0.59), 12.34 credits marked, and ``metrics.pnl`` the P&L identity (plus ``pnl_error``)."""
    market_id = str(market.id)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    executions = []
    for i in range(n):
        buy = i % 2 == 0
        price = Decimal("0.40") + Decimal(i % 20) / 100
        size = 1 + i % 7
        executions.append(
            {
                "time": (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
                "market": market_id,
                "side": "YES",
                "action": "BUY" if buy else "SELL",
                "price": str(price),
                "size": size,
                "reason": "maker" if i % 3 == 0 else "taker",
                "cash": str((-price if buy else price) * size),
                "order": f"bt-{i}",
            }
        )
    flows = sum((Decimal(row["cash"]) for row in executions), Decimal("0.00"))
    marked = Decimal("12.34")
    return {
        "strategy": "tests:Synthetic",
        "version": "1",
        "params": {"n": n},
        "markets": [market_id],
        "start": None,
        "end": None,
        "cash": "1000.00",
        "metrics": {"pnl": str(flows + marked + pnl_error), "trades": n},
        "equity": [["2026-01-01T00:00:00Z", "1000.00"]],
        "reliability": [],
        "payouts": {},
        "marked": {market_id: str(marked)},
        "refusals": {},
        "executions": executions,
    }


def create_upload(agent, result: dict) -> dict:
    """``POST /backtests/`` of ``result`` in parts: without its executions, with their count. Returns the backtest."""
    body = {key: value for key, value in result.items() if key != "executions"}
    response = api_client(agent).post(URL, {**body, "reported": True, "executions_count": len(result["executions"])})
    assert response.status_code == 201, response.content
    return response.json()


def post_page(agent, backtest_id, offset: int, rows: list[dict]):
    return api_client(agent).post(f"{URL}{backtest_id}/executions/", {"offset": offset, "executions": rows})


def stored(backtest_id) -> list[tuple]:
    return list(
        BacktestExecution.objects.filter(backtest_id=backtest_id)
        .order_by("number")
        .values_list("number", "order", "cash")
    )


def expected_rows(result: dict, upto: int | None = None) -> list[tuple]:
    rows = result["executions"][:upto]
    return [(number, row["order"], Decimal(row["cash"])) for number, row in enumerate(rows)]


def status_of(backtest_id) -> str:
    return Backtest.objects.get(id=backtest_id).status


@pytest.fixture
def market(db):
    return new_market(question="Will the upload arrive whole?")


# --------------------------------------------------------------------------------------------------------------------
# The API


@pytest.mark.django_db
def test_an_upload_in_parts_is_uploading_until_its_last_page_then_done_with_all_of_them(
    market, make_agent, audit_clean
):
    agent = make_agent()
    result = synthetic_result(market, 25)
    with unchanged(audit_clean):  # no money moves
        created = create_upload(agent, result)
        assert created["status"] == "uploading" and created["executions_count"] == 25
        assert created["metrics"] == result["metrics"] and created["finished_at"] is None

        first = post_page(agent, created["id"], 0, result["executions"][:10])
        assert first.status_code == 200, first.content
        assert first.json()["stored"] == 10 and first.json()["repeated"] is False
        assert first.json()["backtest"]["status"] == "uploading"
        second = post_page(agent, created["id"], 10, result["executions"][10:20]).json()
        assert second["stored"] == 20 and status_of(created["id"]) == "uploading"

        last = post_page(agent, created["id"], 20, result["executions"][20:])

    assert last.status_code == 200, last.content
    body = last.json()
    assert body["stored"] == 25 and body["repeated"] is False
    assert body["backtest"]["status"] == "done" and body["backtest"]["finished_at"] is not None
    assert body["backtest"]["executions_count"] == 25
    assert stored(created["id"]) == expected_rows(result)
    listed, _ = walk_pages(api_client(), f"{URL}{created['id']}/executions/?page_size=7")
    assert [row["number"] for row in listed] == list(range(25))


@pytest.mark.django_db
def test_a_page_at_the_wrong_offset_is_a_409_naming_the_expected_one_and_stores_nothing(market, make_agent):
    agent = make_agent()
    result = synthetic_result(market, 30)
    created = create_upload(agent, result)
    assert post_page(agent, created["id"], 0, result["executions"][:10]).status_code == 200

    for offset in (0, 5, 11, 20):  # back over stored rows with other content, inside, a gap, further on
        error = assert_error(post_page(agent, created["id"], offset, result["executions"][20:]), 409, "upload_conflict")
        assert error["detail"]["expected"] == 10 and error["detail"]["status"] == "uploading"

    assert stored(created["id"]) == expected_rows(result, 10)
    assert status_of(created["id"]) == "uploading"


@pytest.mark.django_db
def test_a_page_sent_again_is_answered_200_and_stored_once_even_after_the_upload_is_done(market, make_agent):
    agent = make_agent()
    result = synthetic_result(market, 20)
    created = create_upload(agent, result)
    assert post_page(agent, created["id"], 0, result["executions"][:10]).json()["repeated"] is False

    again = post_page(agent, created["id"], 0, result["executions"][:10])
    assert again.status_code == 200 and again.json()["repeated"] is True and again.json()["stored"] == 10
    assert stored(created["id"]) == expected_rows(result, 10)

    assert post_page(agent, created["id"], 10, result["executions"][10:]).json()["backtest"]["status"] == "done"
    # The last page's answer was lost and the SDK sends it again: the same answer, nothing stored twice.
    retry = post_page(agent, created["id"], 10, result["executions"][10:])
    assert retry.status_code == 200, retry.content
    assert retry.json()["repeated"] is True and retry.json()["backtest"]["status"] == "done"
    assert stored(created["id"]) == expected_rows(result)

    # The same offset with other content is no retry.
    changed = [{**row, "size": row["size"] + 1} for row in result["executions"][10:]]
    error = assert_error(post_page(agent, created["id"], 10, changed), 409, "upload_conflict")
    assert error["detail"]["status"] == "done"


@pytest.mark.django_db
def test_a_last_page_that_breaks_the_pnl_identity_is_refused_whole_and_the_upload_stays_uploading(market, make_agent):
    agent = make_agent()
    result = synthetic_result(market, 20, pnl_error=CENT)
    created = create_upload(agent, result)  # the identity needs every execution: not checked yet
    assert post_page(agent, created["id"], 0, result["executions"][:10]).status_code == 200

    error = assert_error(post_page(agent, created["id"], 10, result["executions"][10:]), 400, "invalid_request")

    assert error["detail"]["metrics.pnl"] == result["metrics"]["pnl"]
    assert Decimal(error["detail"]["identity"]) == Decimal(result["metrics"]["pnl"]) - CENT
    assert stored(created["id"]) == expected_rows(result, 10), "nothing of the last page"
    assert status_of(created["id"]) == "uploading"


@pytest.mark.django_db
def test_another_agent_cannot_append_to_an_upload(market, make_agent):
    owner, intruder = make_agent(), make_agent()
    result = synthetic_result(market, 10)
    created = create_upload(owner, result)

    assert_error(post_page(intruder, created["id"], 0, result["executions"]), 404, "not_found")
    assert_error(post_page(None, created["id"], 0, result["executions"]), 401, "not_authenticated")

    assert stored(created["id"]) == [] and status_of(created["id"]) == "uploading"


@pytest.mark.django_db
def test_a_backtest_that_is_not_uploading_takes_no_page(market, make_agent):
    agent = make_agent()
    result = synthetic_result(market, 3)
    inline = api_client(agent).post(URL, {**result, "reported": True}).json()
    assert inline["status"] == "done" and inline["executions_count"] == 3
    run = BacktestFactory(agent=agent, markets=[market], strategy="market_maker", status=Backtest.Status.QUEUED)

    for backtest_id, status in ((inline["id"], "done"), (run.id, "queued")):
        rows = synthetic_result(market, 4)["executions"]
        error = assert_error(post_page(agent, backtest_id, 3 if status == "done" else 0, rows), 409, "upload_conflict")
        assert error["detail"]["status"] == status
    assert BacktestExecution.objects.filter(backtest=run).count() == 0
    assert len(stored(inline["id"])) == 3


PAGE_REFUSALS = {
    "a page past the count announced": (lambda rows: {"offset": 0, "executions": rows + rows[:1]}, "executions_count"),
    "an execution in another market": (
        lambda rows: {"offset": 0, "executions": [{**rows[0], "market": "00000000-0000-0000-0000-000000000000"}]},
        "executions[0].market",
    ),
    "a price off the tick": (
        lambda rows: {"offset": 0, "executions": [rows[0], {**rows[1], "price": "0.555"}]},
        "executions[1].price",
    ),
    "no execution": (lambda rows: {"offset": 0, "executions": []}, "executions"),
    "1,001 executions": (lambda rows: {"offset": 0, "executions": [{}] * 1001}, "executions"),
    "a negative offset": (lambda rows: {"offset": -1, "executions": rows}, "offset"),
    "an offset that is not a number": (lambda rows: {"offset": "first", "executions": rows}, "offset"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", PAGE_REFUSALS, ids=str)
def test_a_bad_page_is_refused_with_the_field_named_and_nothing_stored(case, market, make_agent):
    agent = make_agent()
    result = synthetic_result(market, 5)
    created = create_upload(agent, result)
    change, field = PAGE_REFUSALS[case]

    response = api_client(agent).post(f"{URL}{created['id']}/executions/", change(result["executions"]))

    error = assert_error(response, 400, "invalid_request")
    assert field in str(error["detail"]), error
    assert stored(created["id"]) == [] and status_of(created["id"]) == "uploading"


@pytest.mark.django_db
def test_the_count_is_checked_when_the_upload_is_created(market, make_agent):
    agent = make_agent()
    result = synthetic_result(market, 2)
    body = {**result, "reported": True}

    both = assert_error(api_client(agent).post(URL, {**body, "executions_count": 2}), 400, "invalid_request")
    assert "executions_count" in both["detail"]
    without = {key: value for key, value in body.items() if key != "executions"}
    for bad in (-1, 100_001, "many", True):
        assert_error(api_client(agent).post(URL, {**without, "executions_count": bad}), 400, "invalid_request")
    # Everything but the identity is checked up front.
    assert_error(api_client(agent).post(URL, {**without, "executions_count": 2, "cash": "0"}), 400, "invalid_request")
    assert not Backtest.objects.exists()

    # Nothing to follow: complete at once, so the identity is checked at once.
    empty = {**without, "metrics": {"pnl": "12.34"}, "executions_count": 0}
    assert api_client(agent).post(URL, empty).json()["status"] == "done"
    assert_error(api_client(agent).post(URL, {**empty, "metrics": {"pnl": "1.00"}}), 400, "invalid_request")


# --------------------------------------------------------------------------------------------------------------------
# The worker's sweep and the pages


def run_worker() -> str:
    out = io.StringIO()
    call_command("run_worker", batch=True, reload=False, startup_delay=False, interval=0, verbosity=0, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)  # the worker's own connection must see the rows
def test_an_upload_left_unfinished_is_marked_failed_when_the_worker_starts(
    market, make_agent, settings, signals_restored
):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
    agent = make_agent()
    result = synthetic_result(market, 20)
    abandoned, fresh = create_upload(agent, result), create_upload(agent, result)
    post_page(agent, abandoned["id"], 0, result["executions"][:10])
    stale = settings.MOLTSTREET["BACKTEST_STALE_SECONDS"]
    Backtest.objects.filter(id=abandoned["id"]).update(created_at=timezone.now() - timedelta(seconds=stale + 60))

    out = run_worker()

    assert f"Marked failed 1 unfinished upload(s): {abandoned['id']}" in out
    backtest = Backtest.objects.get(id=abandoned["id"])
    assert backtest.status == Backtest.Status.FAILED and backtest.finished_at is not None
    assert backtest.error.startswith("upload not finished: 10 of 20 executions received")
    assert backtest.metrics == {} and backtest.executions_count is None
    assert stored(abandoned["id"]) == [], "a failed backtest has no results"
    assert status_of(fresh["id"]) == "uploading"
    error = assert_error(post_page(agent, abandoned["id"], 10, result["executions"][10:]), 409, "upload_conflict")
    assert error["detail"]["status"] == "failed"


@pytest.mark.django_db
def test_pages_show_an_upload_in_progress_without_its_metrics(market, make_agent, client):
    agent = make_agent()
    result = synthetic_result(market, 20)
    created = create_upload(agent, result)
    post_page(agent, created["id"], 0, result["executions"][:10])

    page = client.get(f"/backtests/{created['id']}/").content.decode()
    assert "Upload in progress" in page and "10 of 20 executions received" in page
    assert 'id="backtest-metrics"' not in page and '<meta http-equiv="refresh"' in page
    profile = client.get(f"/agents/{agent.name}/").content.decode()
    row = profile[profile.index(f'data-backtest-id="{created["id"]}"') :].split("</tr>")[0]
    assert "upload in progress" in row and "badge-bt-uploading" in row
    assert result["metrics"]["pnl"] not in row


# --------------------------------------------------------------------------------------------------------------------
# The SDK against a running server


class Recording(httpx.HTTPTransport):
    """The network, with each request's method, path and body size noted; ``lose_answer`` drops the answer to the
    first request whose path ends so (the server has acted on it: a read timeout after the send)."""

    def __init__(self, lose_answer: str | None = None) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, int]] = []
        self.lose_answer = lose_answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, len(request.content)))
        response = super().handle_request(request)
        if self.lose_answer and request.url.path.endswith(self.lose_answer):
            self.lose_answer = None
            response.close()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def sdk_client(live_server, agent, transport) -> Client:
    client = Client(live_server.url, agent.api_key, trust_env=False, transport=transport, max_retries=2)
    client._sleep = lambda seconds: None
    return client


@pytest.mark.django_db(transaction=True)
def test_the_sdk_uploads_5000_executions_in_pages_that_fit_the_body_limit(live_server, make_agent, settings):
    agent = make_agent()
    market = new_market(question="Will 5,000 executions fit?")
    result = synthetic_result(market, 5000)
    assert sdk_api._json_size(result) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE, "too large for one body"
    transport = Recording()

    with sdk_client(live_server, agent, transport) as client:
        uploaded = client.upload_backtest(result)

    assert uploaded["status"] == "done" and uploaded["reported"] is True and uploaded["executions_count"] == 5000
    assert uploaded["metrics"] == result["metrics"]
    assert stored(uploaded["id"]) == expected_rows(result)
    flows = sum(BacktestExecution.objects.filter(backtest_id=uploaded["id"]).values_list("cash", flat=True))
    assert Decimal(uploaded["metrics"]["pnl"]) == flows + Decimal(uploaded["marked"][str(market.id)])
    create, *pages = transport.requests
    assert create[:2] == ("POST", "/api/v1/backtests/")
    assert len(pages) >= 5 and all(path.endswith("/executions/") for _, path, _ in pages)
    assert all(size <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE for _, _, size in transport.requests)


@pytest.mark.django_db(transaction=True)
def test_the_sdk_sends_a_page_again_when_its_answer_is_lost_and_it_is_stored_once(live_server, make_agent):
    agent = make_agent()
    market = new_market(question="Will a lost answer be retried?")
    result = synthetic_result(market, 1500)
    transport = Recording(lose_answer="/executions/")

    with sdk_client(live_server, agent, transport) as client:
        uploaded = client.upload_backtest(result)

    assert uploaded["status"] == "done"
    assert stored(uploaded["id"]) == expected_rows(result)
    pages = [request for request in transport.requests if request[1].endswith("/executions/")]
    assert pages[0] == pages[1], "the first page, sent twice"


@pytest.mark.django_db(transaction=True)
def test_the_sdk_uploads_a_small_result_inline_and_falls_back_to_pages_under_a_lower_limit(
    live_server, make_agent, settings
):
    agent = make_agent()
    market = new_market(question="Will a small result go in one body?")
    result = synthetic_result(market, 300)

    inline = Recording()
    with sdk_client(live_server, agent, inline) as client:
        uploaded = client.upload_backtest(result)
    assert [path for _, path, _ in inline.requests] == ["/api/v1/backtests/"]
    assert uploaded["status"] == "done" and stored(uploaded["id"]) == expected_rows(result)

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024  # a server configured tighter than the SDK's page size
    tight = Recording()
    with sdk_client(live_server, agent, tight) as client:
        uploaded = client.upload_backtest(result)
    assert uploaded["status"] == "done" and stored(uploaded["id"]) == expected_rows(result)
    assert tight.requests[0][2] > 16 * 1024, "inline first, refused as too large"
    assert sum(path.endswith("/executions/") for _, path, _ in tight.requests) > 2


@pytest.mark.django_db(transaction=True)
def test_the_async_client_uploads_in_parts_too(live_server, make_agent):
    agent = make_agent()
    market = new_market(question="Will the async client upload in parts?")
    result = synthetic_result(market, 1200)

    async def upload() -> dict:
        async with AsyncClient(live_server.url, agent.api_key, trust_env=False, max_retries=0) as client:
            return await client.upload_backtest(result)

    uploaded = asyncio.run(upload())

    assert uploaded["status"] == "done" and uploaded["executions_count"] == 1200
    assert stored(uploaded["id"]) == expected_rows(result)


@pytest.mark.django_db(transaction=True)
def test_two_identical_pages_at_once_are_stored_once(live_server, make_agent):
    # The row lock of the backtest makes the offset check and the insert one step: the second page waits, then
    # finds its rows stored and is answered as a retry (without the lock both would pass the check and the second
    # insert would break the unique number).
    agent = make_agent()
    market = new_market(question="Will two pages race?")
    result = synthetic_result(market, 400)
    created = create_upload(agent, result)
    barrier = threading.Barrier(2)
    answers: list[dict] = []

    def send() -> None:
        try:
            with Client(live_server.url, agent.api_key, trust_env=False, max_retries=0) as client:
                barrier.wait()
                page = sdk_api.append_backtest_executions(created["id"], 0, result["executions"][:200])
                answers.append(client._do(page))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answer["repeated"] for answer in answers) == [False, True]
    assert all(answer["stored"] == 200 for answer in answers)
    assert stored(created["id"]) == expected_rows(result, 200)
