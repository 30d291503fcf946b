"""Every route of /api/v1/ answers errors in the one shape (DESIGN section 7), and the OpenAPI schema and docs are served.

``ROUTES`` lists every method and path of the agent API; a test checks it against the URL conf, so a new endpoint
without an entry here fails the suite. Every test in the API suites uses :func:`testsupport.api.api_client`, which
checks the error shape of every 4xx/5xx response it receives.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions

from agents.services import api_key_create
from backtests.models import Backtest, BacktestExecution
from backtests.services import backtest_upload
from moltstreet import errors
from moltstreet.api import ApiViewSet
from moltstreet.urls import router
from testsupport.api import API, api_client, assert_error, assert_error_shape, unchanged

pytestmark = pytest.mark.django_db

UNKNOWN = "00000000-0000-0000-0000-000000000000"

# (method, path under /api/v1/, who may call it). Placeholders: {market}, {order}, {name}, {key}.
ROUTES = [
    ("POST", "/agents/", "anyone"),
    ("GET", "/agents/", "anyone"),
    ("GET", "/agents/me/", "agent"),
    ("POST", "/agents/me/heartbeat/", "agent"),
    ("GET", "/agents/me/keys/", "agent"),
    ("POST", "/agents/me/keys/", "agent"),
    ("DELETE", "/agents/me/keys/{key}/", "agent"),
    ("GET", "/agents/{name}/", "anyone"),
    ("POST", "/markets/", "agent"),
    ("GET", "/markets/", "anyone"),
    ("GET", "/markets/{market}/", "anyone"),
    ("GET", "/markets/{market}/orderbook/", "anyone"),
    ("GET", "/markets/{market}/trades/", "anyone"),
    ("GET", "/markets/{market}/history/", "anyone"),
    ("GET", "/markets/{market}/snapshots/", "anyone"),
    ("GET", "/markets/{market}/events/", "anyone"),
    ("POST", "/markets/{market}/resolve/", "oracle"),
    ("POST", "/markets/{market}/dispute/", "agent"),
    ("POST", "/markets/{market}/forecast/", "agent"),
    ("POST", "/orders/", "agent"),
    ("GET", "/orders/", "agent"),
    ("GET", "/orders/{order}/", "agent"),
    ("PATCH", "/orders/{order}/", "agent"),
    ("DELETE", "/orders/{order}/", "agent"),
    ("POST", "/orders/cancel-all/", "agent"),
    ("POST", "/orders/batch/", "agent"),
    ("POST", "/orders/batch-cancel/", "agent"),
    ("GET", "/positions/", "agent"),
    ("GET", "/trades/", "agent"),
    ("GET", "/ledger/", "agent"),
    ("POST", "/backtests/", "agent"),
    ("GET", "/backtests/", "agent"),
    ("GET", "/backtests/strategies/", "anyone"),
    ("GET", "/backtests/{backtest}/", "anyone"),
    ("GET", "/backtests/{backtest}/executions/", "anyone"),
    ("POST", "/backtests/{backtest}/executions/", "agent"),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]

# A valid body per POST route (and per "METHOD path" where methods of one path take different bodies), so that the
# error a test provokes is the one it means to.
VALID_BODIES = {
    "/agents/": lambda ctx: {"name": "newcomer"},
    "/agents/me/heartbeat/": lambda ctx: {"timeout_seconds": 30},
    "/agents/me/keys/": lambda ctx: {"revoke_current": True},
    "/markets/": lambda ctx: {"question": "Will it work?", "deadline": "2030-01-01T00:00:00Z"},
    "/markets/{market}/resolve/": lambda ctx: {"outcome": "YES"},
    "/markets/{market}/dispute/": lambda ctx: {"reason": "The proposed outcome is wrong."},
    "/markets/{market}/forecast/": lambda ctx: {"probability": "0.5"},
    "/orders/": lambda ctx: {"market": ctx["market"], "side": "YES", "action": "BUY", "price": "0.50", "size": 1},
    "/orders/cancel-all/": lambda ctx: {},
    "PATCH /orders/{order}/": lambda ctx: {"size": 4},
    "/orders/batch/": lambda ctx: {
        "orders": [{"market": ctx["market"], "side": "YES", "action": "BUY", "price": "0.50", "size": 1}]
    },
    "/orders/batch-cancel/": lambda ctx: {"ids": [ctx["order"]]},
    "/backtests/": lambda ctx: {"strategy": "market_maker", "markets": [ctx["market"]]},
    "/backtests/{backtest}/executions/": lambda ctx: {
        "offset": 0,
        "executions": [
            {
                "time": "2026-01-01T00:00:00Z",
                "market": ctx["market"],
                "side": "YES",
                "action": "BUY",
                "price": "0.50",
                "size": 1,
                "reason": "taker",
                "cash": "-0.50",
            }
        ],
    },
}


def _body(method: str, path: str, ctx: dict) -> dict | None:
    """The valid body of ``method`` ``path`` (:data:`VALID_BODIES`), or ``None``."""
    make = VALID_BODIES.get(f"{method} {path}") or VALID_BODIES.get(path)
    return make(ctx) if make is not None else None


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _url(path: str, **values: str) -> str:
    return API + path.format(**values)


def _call(client, method: str, url: str, body=None):
    if method == "GET":
        return client.get(url)
    if method == "DELETE" and body is None:
        return client.delete(url)
    return client.generic(method, url, json.dumps(body if body is not None else {}), content_type="application/json")


@pytest.fixture
def ctx(make_agent, market):
    """An oracle agent with a resting order in an open market: something for every wrong request to damage."""
    oracle = make_agent("oracle-agent", oracle=True)
    response = api_client(oracle).post(
        f"{API}/orders/", {"market": str(market.id), "side": "YES", "action": "BUY", "price": "0.40", "size": 5}
    )
    assert response.status_code == 201
    second_key, _ = api_key_create(agent=oracle)
    backtest = backtest_upload(agent=oracle, strategy="mine:Strategy", markets=[market.id], result={})
    return {
        "backtest": str(backtest.id),
        "agent": oracle,
        "market": str(market.id),
        "order": response.json()["order"]["id"],
        "name": oracle.name,
        "key": str(second_key.id),
    }


# --------------------------------------------------------------------------------------------------------------------
# The route table is complete


def test_the_route_table_lists_every_endpoint_of_the_api():
    served = set()
    for pattern in router.urls:
        regex = pattern.pattern.regex.pattern
        if "(?P<format>" in regex:
            continue
        # The router makes the trailing slash optional ("/?"); the table writes it.
        path = "/" + re.sub(r"\(\?P<\w+>[^)]*\)", "{}", regex).lstrip("^").rstrip("$").replace("/?", "/")
        # DRF adds HEAD to a viewset's actions once it has served a GET: HEAD comes with every GET.
        for method in set(pattern.callback.actions) - {"head", "options"}:
            served.add((method.upper(), path))
    assert served == {(method, _shape(path)) for method, path, _ in ROUTES}


# --------------------------------------------------------------------------------------------------------------------
# Every route: errors in the one shape, and nothing changed


@pytest.mark.parametrize(("method", "path", "who"), ROUTES, ids=ROUTE_IDS)
def test_every_route_refuses_a_wrong_key(method, path, who, ctx, audit_clean):
    url = _url(path, **ctx)
    body = _body(method, path, ctx)
    with unchanged(audit_clean):
        assert_error(_call(api_client(key="ms_" + "0" * 43), method, url, body), 401, "invalid_api_key")
        assert_error(_call(api_client(authorization="Token abc"), method, url, body), 401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path", "who"), [r for r in ROUTES if r[2] != "anyone"], ids=str)
def test_every_agent_route_asks_for_a_key(method, path, who, ctx, audit_clean):
    body = _body(method, path, ctx)
    with unchanged(audit_clean):
        response = _call(api_client(), method, _url(path, **ctx), body)
        assert_error(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "who"), [r for r in ROUTES if "{" in r[1]], ids=str)
@pytest.mark.parametrize("missing", [UNKNOWN, "not-a-uuid", "0"])
def test_every_route_with_an_id_answers_404_for_an_unknown_one(method, path, who, missing, ctx, audit_clean):
    values = {**ctx, "market": missing, "order": missing, "key": missing, "backtest": missing}
    values["name"] = "no-such-agent-" + missing
    body = _body(method, path, ctx)
    with unchanged(audit_clean):
        error = assert_error(_call(api_client(ctx["agent"]), method, _url(path, **values), body), 404, "not_found")
    # The refusal names what is missing (``No market with id 0000....``), in the message and in ``detail``.
    named = values["name"] if "{name}" in path else missing
    assert error["message"].startswith("No ") and named in error["message"], error
    assert list(error["detail"].values()) == [named], error


@pytest.mark.parametrize(("method", "path", "who"), ROUTES, ids=ROUTE_IDS)
def test_every_route_refuses_a_method_it_does_not_serve(method, path, who, ctx, audit_clean):
    served = {m for m, p, _ in ROUTES if p == path}
    with unchanged(audit_clean):
        for other in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - served):
            response = _call(api_client(ctx["agent"]), other, _url(path, **ctx), {})
            assert_error(response, 405, "method_not_allowed")


@pytest.mark.parametrize(("method", "path", "who"), [r for r in ROUTES if r[0] == "POST"], ids=str)
@pytest.mark.parametrize("raw", ['{"unterminated": ', "{'single': 'quotes'}", "\x00"], ids=["cut", "quotes", "nul"])
def test_every_post_route_refuses_malformed_json(method, path, who, raw, ctx, audit_clean):
    with unchanged(audit_clean):
        response = api_client(ctx["agent"]).post(_url(path, **ctx), raw, content_type="application/json")
        assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(("method", "path", "who"), [r for r in ROUTES if r[0] == "POST"], ids=str)
def test_every_post_route_refuses_a_body_that_is_not_json(method, path, who, ctx, audit_clean):
    with unchanged(audit_clean):
        response = api_client(ctx["agent"]).post(_url(path, **ctx), "a=1", content_type="text/plain")
        assert_error(response, 415, "unsupported_media_type")


# Cursor-paginated lists (an agent's few keys come in one list, without pages).
LIST_ROUTES = [
    (m, p, w)
    for m, p, w in ROUTES
    if m == "GET"
    and p.endswith(("s/", "ledger/"))
    and "{" not in p
    and p not in ("/agents/me/keys/", "/backtests/strategies/")
]
LIST_ROUTES.append(("GET", "/markets/{market}/trades/", "anyone"))


@pytest.mark.parametrize(("method", "path", "who"), LIST_ROUTES, ids=str)
@pytest.mark.parametrize("forged", ["p=abc", "p=NaN", "r=1&p=x", "o=1&p=one", "p=2026-13-45"])
def test_every_list_refuses_a_forged_cursor(method, path, who, forged, ctx, audit_clean):
    # A cursor is opaque but decodable: one made up or mangled by a client must be refused, not break the query.
    cursor = base64.b64encode(forged.encode()).decode()
    with unchanged(audit_clean):
        response = api_client(ctx["agent"]).get(_url(path, **ctx) + f"?cursor={cursor}")
        assert_error(response, 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# Nothing an agent sends is silently ignored (moltstreet/strict.py)


def test_every_viewset_of_the_api_refuses_what_its_schema_does_not_declare():
    for prefix, viewset, _basename in router.registry:
        assert issubclass(viewset, ApiViewSet), (prefix, viewset)


@pytest.mark.parametrize(("method", "path", "who"), ROUTES, ids=ROUTE_IDS)
def test_every_route_refuses_an_unknown_query_parameter_naming_it(method, path, who, ctx, audit_clean):
    body = _body(method, path, ctx)
    backtests = (Backtest.objects.count(), BacktestExecution.objects.count())
    with unchanged(audit_clean):
        response = _call(api_client(ctx["agent"]), method, _url(path, **ctx) + "?made_up=1&market_id=x", body)
        error = assert_error(response, 400, "invalid_request")
    assert (Backtest.objects.count(), BacktestExecution.objects.count()) == backtests
    assert error["message"].startswith("Unknown query parameters: made_up, market_id"), error
    assert set(error["detail"]) == {"made_up", "market_id"}
    assert all(problem[0].startswith("Unknown query parameter") for problem in error["detail"].values())


def _schema_operation(path: str, method: str) -> dict:
    schema = json.loads(api_client().get("/api/schema/?format=json").content)
    operations = {_shape(p.removeprefix(API)): ops for p, ops in schema["paths"].items()}
    return operations[_shape(path)][method.lower()]


def _example(parameter: dict, ctx: dict) -> str:
    """A value of the query parameter's type: its first enum value, an id, a time, a number, or a word."""
    schema = parameter.get("schema", {})
    if schema.get("enum"):
        return str(schema["enum"][0])
    if schema.get("format") == "uuid":
        return ctx["market"]
    if schema.get("format") == "date-time":
        return "2026-01-01T00:00:00Z"
    if schema.get("type") == "integer":
        return str(schema.get("minimum", 1))
    return "word"


@pytest.mark.parametrize(("method", "path", "who"), [r for r in ROUTES if r[0] == "GET"], ids=str)
def test_every_get_route_takes_each_query_parameter_its_schema_declares(method, path, who, ctx, audit_clean):
    """What the schema declares is never refused as unknown (a value of the wrong kind may still be a 400)."""
    parameters = [p for p in _schema_operation(path, method).get("parameters", []) if p["in"] == "query"]
    client = api_client(ctx["agent"])
    queries = [f"{p['name']}={_example(p, ctx)}" for p in parameters]
    with unchanged(audit_clean):
        for query in [*queries, "&".join(queries)]:
            response = client.get(_url(path, **ctx) + "?" + query)
            if response.status_code >= 400:
                assert not assert_error_shape(response)["message"].startswith("Unknown query"), (query, response)
    # ... and a made-up one is refused, whatever the others.
    response = client.get(_url(path, **ctx) + "?" + "&".join([*queries, "made_up=1"]))
    assert assert_error(response, 400, "invalid_request")["detail"].keys() == {"made_up"}


@pytest.mark.parametrize(("method", "path", "who"), [r for r in ROUTES if r[0] in ("POST", "PATCH", "DELETE")], ids=str)
def test_every_write_refuses_an_unknown_body_field_naming_it_and_changes_nothing(method, path, who, ctx, audit_clean):
    body = {**(_body(method, path, ctx) or {}), "made_up": True}
    backtests = (Backtest.objects.count(), BacktestExecution.objects.count())
    with unchanged(audit_clean):
        error = assert_error(_call(api_client(ctx["agent"]), method, _url(path, **ctx), body), 400, "invalid_request")
    assert (Backtest.objects.count(), BacktestExecution.objects.count()) == backtests
    assert error["message"] == "Unknown field: made_up.", error
    assert list(error["detail"]) == ["made_up"]


def test_a_misspelt_field_is_refused_with_the_name_to_use(ctx, audit_clean):
    body = VALID_BODIES["/orders/"](ctx)
    body["market_id"] = body.pop("market")
    with unchanged(audit_clean):
        error = assert_error(api_client(ctx["agent"]).post(f"{API}/orders/", body), 400, "invalid_request")
    assert error["message"] == "Unknown field: market_id (use market)."
    known = error["detail"]["market_id"][0]
    assert known.startswith("Unknown field; use market. Known: market, ") and "side, action, price, size" in known


@pytest.mark.parametrize("authorization", [None, "Token abc"])
def test_an_id_with_a_dot_is_not_found_whatever_the_key(authorization, ctx, audit_clean):
    # "0.5" reads as id 0 with a format suffix "5"; DRF's content negotiation 404s before the key is read, so naming
    # the missing order must not read the request's user (a malformed key there was a 500).
    with unchanged(audit_clean):
        for method in ("GET", "DELETE"):
            response = _call(api_client(authorization=authorization), method, f"{API}/orders/0.5/")
            assert_error(response, 404, "not_found")


def test_a_key_in_the_url_is_refused_with_where_it_goes(ctx, audit_clean):
    # Without a header the request is anonymous: a public list would answer as if the key had been read.
    error = assert_error(api_client().get(f"{API}/markets/?api_key={ctx['agent'].api_key}"), 400, "invalid_request")
    assert "Authorization: Bearer" in error["message"]
    assert ctx["agent"].api_key not in json.dumps(error)


def test_every_request_body_in_the_schema_refuses_unknown_fields(db):
    schema = json.loads(api_client().get("/api/schema/?format=json").content)
    components = schema["components"]["schemas"]
    bodies = [
        (method, path, operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1])
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if isinstance(operation, dict) and "requestBody" in operation
    ]
    assert len(bodies) == len([r for r in ROUTES if r[0] in ("POST", "PATCH")])
    for method, path, name in bodies:
        assert components[name]["additionalProperties"] is False, (method, path, name)


# --------------------------------------------------------------------------------------------------------------------
# Unknown endpoints, server errors, busy database


@pytest.mark.parametrize(
    "url", ["/api/v1/nope/", "/api/v1/nope", "/api/v1/", "/api/v2/markets/", "/api/v1/markets/{market}/bogus/"]
)
def test_an_unknown_api_endpoint_answers_404_in_the_error_shape(url, ctx, audit_clean):
    with unchanged(audit_clean):
        for client in (api_client(), api_client(ctx["agent"])):
            assert_error(client.get(url.format(**ctx)), 404, "not_found")
            assert_error(client.post(url.format(**ctx), {}), 404, "not_found")


@pytest.mark.parametrize(("method", "path", "who"), [r for r in ROUTES if r[0] == "POST"], ids=str)
def test_every_post_route_refuses_a_body_over_the_size_limit(method, path, who, ctx, settings, audit_clean):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({**(_body(method, path, ctx) or {}), "reasoning": "x" * limit})
    with unchanged(audit_clean):
        response = api_client(ctx["agent"]).post(_url(path, **ctx), body, content_type="application/json")
        assert_error(response, 413, "request_too_large")
        assert response.json()["error"]["detail"] == {"max_bytes": limit}


def test_the_checking_client_catches_an_error_in_another_shape(db):
    # Outside /api/ Django's own HTML 404 page is served: the client must refuse it, or its checks prove nothing.
    with pytest.raises(AssertionError):
        api_client().get("/definitely-not-a-page/")


def test_an_unexpected_exception_becomes_a_500_in_the_error_shape(ctx, monkeypatch, audit_clean):
    def explode(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("trading.api.order_place", explode)
    client = api_client(ctx["agent"])
    client.raise_request_exception = False
    with unchanged(audit_clean):
        response = client.post(f"{API}/orders/", VALID_BODIES["/orders/"](ctx))
        error = assert_error(response, 500, "internal_error")
    assert "boom" not in error["message"]


@pytest.mark.parametrize(
    "exc", [errors.ServiceBusy(), OperationalError("lock timeout")], ids=["service_busy", "operational_error"]
)
def test_a_busy_database_becomes_a_503_with_retry_after(exc, ctx, monkeypatch, audit_clean):
    def busy(**kwargs):
        raise exc

    monkeypatch.setattr("trading.api.order_place", busy)
    with unchanged(audit_clean):
        response = api_client(ctx["agent"]).post(f"{API}/orders/", VALID_BODIES["/orders/"](ctx))
        assert_error(response, 503, "service_busy")
    assert int(response["Retry-After"]) >= 1


# --------------------------------------------------------------------------------------------------------------------
# The exception handler itself


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


class _Rendered:
    """Just enough of a response for :func:`assert_error_shape`."""

    def __init__(self, response):
        self.status_code = response.status_code
        self._headers = {"Content-Type": "application/json"}
        self._data = json.loads(json.dumps(response.data))

    def __getitem__(self, name):
        return self._headers[name]

    def json(self):
        return self._data


@pytest.mark.parametrize("cls", sorted(_all_subclasses(errors.MoltStreetError), key=lambda c: c.__name__), ids=str)
def test_every_domain_error_renders_in_the_one_shape(cls):
    response = errors.api_exception_handler(cls(detail={"price": "0.5"}), {})
    assert 400 <= response.status_code < 600
    error = assert_error_shape(_Rendered(response))
    assert error["code"] == cls.code
    assert error["detail"] == {"price": "0.5"}
    assert (response.get("Retry-After") is not None) == (cls.retry_after is not None)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (drf_exceptions.ValidationError({"size": ["bad"]}), 400, "invalid_request"),
        (drf_exceptions.ValidationError(["bad"]), 400, "invalid_request"),
        (drf_exceptions.ParseError(), 400, "malformed_json"),
        (drf_exceptions.NotAuthenticated(), 401, "not_authenticated"),
        (drf_exceptions.AuthenticationFailed(), 401, "invalid_api_key"),
        (drf_exceptions.PermissionDenied(), 403, "permission_denied"),
        (drf_exceptions.NotFound(), 404, "not_found"),
        (drf_exceptions.MethodNotAllowed("PUT"), 405, "method_not_allowed"),
        (drf_exceptions.NotAcceptable(), 406, "not_acceptable"),
        (drf_exceptions.UnsupportedMediaType("text/plain"), 415, "unsupported_media_type"),
        (drf_exceptions.Throttled(wait=2.5), 429, "rate_limited"),
        (Http404(), 404, "not_found"),
        (DjangoPermissionDenied(), 403, "permission_denied"),
        (OperationalError(), 503, "service_busy"),
        (InterfaceError("connection already closed"), 503, "service_busy"),
    ],
    ids=lambda value: value if isinstance(value, (int, str)) else type(value).__name__,
)
def test_framework_errors_render_in_the_one_shape(exc, status, code):
    response = errors.api_exception_handler(exc, {})
    assert response.status_code == status
    assert assert_error_shape(_Rendered(response))["code"] == code
    if status == 429:
        assert response["Retry-After"] == "3"


def test_validation_errors_keep_their_field_details():
    response = errors.api_exception_handler(drf_exceptions.ValidationError({"size": ["too big"]}), {})
    assert response.data["error"]["detail"] == {"size": ["too big"]}
    assert "size" in response.data["error"]["message"]


def test_an_unknown_exception_is_left_to_the_500_handler():
    assert errors.api_exception_handler(RuntimeError("boom"), {}) is None


# --------------------------------------------------------------------------------------------------------------------
# OpenAPI schema and docs


def _schema_operations(schema: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), _shape(path.removeprefix(API)))
        for path, operations in schema["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }


def test_the_openapi_schema_is_served_as_yaml_and_documents_every_route(db):
    response = api_client().get("/api/schema/")

    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"]
    assert _schema_operations(schema) == {(method, _shape(path)) for method, path, _ in ROUTES}
    security = schema["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= next(iter(security.values())).items()
    error = schema["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error"}


def test_the_openapi_schema_is_served_as_json(db):
    response = api_client().get("/api/schema/?format=json")

    assert response.status_code == 200
    assert "json" in response["Content-Type"]
    schema = json.loads(response.content)
    assert _schema_operations(schema) == {(method, _shape(path)) for method, path, _ in ROUTES}
    order_input = schema["components"]["schemas"]["OrderInputRequest"]
    assert {"market", "side", "action", "price", "size"} <= set(order_input["required"])


@pytest.mark.parametrize(
    ("path", "default", "maximum"),
    [
        ("/markets/", 50, 200),
        ("/backtests/{id}/executions/", 100, 1000),
        ("/markets/{id}/events/", 1000, 5000),
        ("/markets/{id}/snapshots/", 100, 1000),
    ],
)
def test_each_lists_page_size_is_described_from_its_own_pagination(path, default, maximum, db):
    schema = json.loads(api_client().get("/api/schema/?format=json").content)

    (page_size,) = [p for p in schema["paths"][API + path]["get"]["parameters"] if p["name"] == "page_size"]
    assert page_size["description"].startswith(f"Results per page, 1-{maximum} (default {default}).")
    assert page_size["schema"] == {"type": "integer", "minimum": 1}


def test_the_api_docs_page_is_served_from_this_server_alone(db):
    client = api_client()
    response = client.get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "swagger" in page.lower()
    # swagger-ui from the package (drf-spectacular-sidecar), not a CDN at @latest; its start-up script a file too.
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(src.startswith("/") for src in sources), sources
    assert all(client.get(src).status_code == 200 for src in sources if "static" in src)
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200 and "/api/schema/" in script.content.decode()
