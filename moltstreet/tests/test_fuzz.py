"""Hostile input: the whole agent API fuzzed from its own OpenAPI schema with schemathesis (issue 4).

Every operation of ``/api/schema/`` gets schema-derived requests, valid and invalid (schemathesis' coverage and
fuzzing phases), sent in process to the WSGI app (Django's ``WSGIHandler``) inside the test's transaction, and every
response is checked by all of schemathesis' checks: no 5xx, a documented status, the documented content type, headers
and body (errors in the one shape of DESIGN section 7), valid data accepted, invalid data refused, authentication
enforced. A stateful test follows the schema's links (``POST /orders/`` to ``GET``/``PATCH``/``DELETE /orders/{id}/``,
``POST /markets/`` to its book, trades, forecasts, orders and resolution, ``POST /agents/me/keys/`` to revoking the
key, ...). After each test the audit of DESIGN section 5 must be clean and every balance must equal its ledger.

Requests go out as one of a few identities (an agent with money, positions and resting orders, a counterparty, an
oracle, or no key), chosen from the request itself so that a run is repeatable; ids in paths, queries and bodies that
are valid UUIDs or names are mostly swapped for real ones, so requests reach the code behind the 404.

Deterministic: a fixed seed, derandomized Hypothesis, no example database. ``make test`` runs a bounded number of
examples; ``FUZZ_EXAMPLES`` (examples per operation in the fuzzing phase) and ``FUZZ_STEPS`` (stateful scenarios)
raise it, ``FUZZ_SEED`` changes the seed::

    FUZZ_EXAMPLES=400 FUZZ_STEPS=300 .venv/bin/pytest -p no:warnings moltstreet/tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import zlib
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections, transaction
from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import negated_parameters
from schemathesis.specs.openapi.checks import negative_data_rejection

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
STEPS = int(os.environ.get("FUZZ_STEPS", "25"))
SEED = int(os.environ.get("FUZZ_SEED", "20260401"))

# Rules beyond what JSON Schema can state: a market's deadline must lie in the future (and within five years), a GTD
# order needs a future `expires_at` that other orders must not have, `post_only` excludes IOC and FOK, an amended
# order's new size must exceed its filled contracts. Schema-valid requests to these operations may therefore meet a
# 400, which is no failure of the check "valid data accepted".
ACCEPTED_OR_REFUSED_BY_RULES = ["2xx", "400", "401", "403", "404", "409", "429"]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"deterministic": True, "max-examples": EXAMPLES, "database": "none"},
        "phases": {
            "examples": {"enabled": False},  # the schema carries no examples of whole requests
            # Repeated query parameters: Django reads the last one, as most servers do; nothing to reject.
            "coverage": {"generate-duplicate-query-parameters": False},
            "stateful": {"max-steps": 12},
        },
        "operations": [
            {
                "include-path-regex": r"^/api/v1/(orders|markets)/$",
                "include-method": "POST",
                "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_OR_REFUSED_BY_RULES}},
            },
            {
                # An amend's new size must exceed what the order has filled, and a replacement needs the collateral.
                "include-path-regex": r"^/api/v1/orders/\{id\}/$",
                "include-method": "PATCH",
                "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_OR_REFUSED_BY_RULES}},
            },
        ],
    }
)

# Django's WSGI handler itself, not moltstreet.wsgi's application: that one runs django.setup() again, and so
# reconfigures logging with a handler on the stream pytest captures at collection, which is closed later on.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler(), config=CONFIG)

# Query parameters the API reads more leniently than the schema states: `search`, where a quoted phrase is one term.
# An empty query parameter is no filter at all (django-filter's rule, and the views' too). Anything else the schema
# refuses, the API refuses too: unknown parameters (moltstreet/strict.py), a `page_size` that is not a whole number
# from 1, an `ordering` by a field it does not take.
LENIENT_QUERY = {"search"}

# Responses by operation and status, printed at the end of the module's tests (run with -s to see them).
RESPONSES: Counter[tuple[str, int]] = Counter()


@schema.hook
def after_call(context, case, response):
    RESPONSES[(f"{case.method} {case.path}", response.status_code)] += 1
    if os.environ.get("FUZZ_DEBUG") and case.path == "/api/v1/ledger/":
        meta = case._meta
        print(
            "DBG",
            response.status_code,
            case.headers.get("Authorization", "-")[:20],
            meta.phase.name if meta else None,
            getattr(meta.phase.data, "scenario", None) if meta else None,
            getattr(meta.phase.data, "description", None) if meta else None,
            case.query,
            file=sys.stderr,
        )


@pytest.fixture(scope="module", autouse=True)
def _report_responses():
    RESPONSES.clear()
    started = time.monotonic()
    yield
    by_status = Counter()
    for (_, status), count in RESPONSES.items():
        by_status[status] += count
    lines = [
        f"fuzz: {sum(RESPONSES.values())} responses in {time.monotonic() - started:.0f} s, by status {dict(sorted(by_status.items()))}"
    ]
    operations = sorted({operation for operation, _ in RESPONSES})
    for operation in operations:
        statuses = {status: count for (op, status), count in sorted(RESPONSES.items()) if op == operation}
        lines.append(f"  {operation}: {statuses}")
    print("\n" + "\n".join(lines), file=sys.stderr)


# The world the requests act in, set up for each test by the `world` fixture (the auth provider below reads it).
WORLD: dict | None = None


def _pick(case, salt: str, choices: list):
    """One of ``choices``, chosen from the request's content: the same request always makes the same choice."""
    raw = json.dumps(
        [case.method, case.path, case.path_parameters, case.query, repr(case.body), salt], default=str, sort_keys=True
    )
    return choices[zlib.crc32(raw.encode()) % len(choices)]


# Each identity's key is fixed, because schemathesis builds the coverage phase's requests (with their Authorization
# header) when pytest collects the tests, before any agent exists; the `world` fixture gives the agents these keys.
IDENTITIES = ["trader", "trader", "trader", "other", "oracle", None]  # None: no key
KEYS = {name: f"ms_fuzz-{name}-" + "k" * 32 for name in ("trader", "other", "oracle")}
# Set to one identity to make every request as that one (the stateful test).
CALLER: str | None = None


@schema.auth(refresh_interval=None, retry_on=[])
class Identities:
    """``Authorization: Bearer <key>`` of one of the world's agents, or none."""

    def get(self, case, context):
        name = CALLER or _pick(case, "who", IDENTITIES)
        return KEYS[name] if name else None

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def restore_keys() -> None:
    """Un-revoke the identities' keys: an earlier request may have revoked the key a later one is sent with
    (``DELETE /agents/me/keys/{id}/``, rotation), which would leave the rest of the run without that identity."""
    from agents.models import ApiKey
    from agents.services import hash_api_key

    ApiKey.objects.filter(key_hash__in=[hash_api_key(k) for k in KEYS.values()], revoked_at__isnull=False).update(
        revoked_at=None
    )


def _is_uuid(value) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _caller(case):
    """The agent whose key the request carries, if any."""
    header = (case.headers or {}).get("Authorization", "")
    for name, key in KEYS.items():
        if header == f"Bearer {key}":
            return WORLD["agents"][name]
    return None


def aim_at_real_resources(case) -> None:
    """Swap most generated ids that are valid UUIDs (or names) for ids of real markets, orders, keys and agents.

    Only values that are valid already are swapped, so a case meant to be invalid stays invalid; containers are
    replaced, not changed in place, so schemathesis re-checks what the request now is."""
    from agents.models import ApiKey
    from trading.models import Order

    markets = WORLD["markets"]
    caller = _caller(case)
    path = case.operation.path
    params = dict(case.path_parameters or {})
    if "id" in params and _is_uuid(params["id"]) and _pick(case, "real-id", [True, True, False]):
        if path.startswith("/api/v1/markets/"):
            params["id"] = _pick(case, "market", markets)
        elif path.startswith("/api/v1/orders/"):
            orders = Order.objects.filter(agent=caller) if caller else Order.objects.all()
            ids = [str(i) for i in orders.order_by("-created_at").values_list("id", flat=True)[:20]]
            params["id"] = _pick(case, "order", ids or WORLD["orders"])
        elif path.startswith("/api/v1/backtests/"):
            params["id"] = _pick(case, "backtest", WORLD["backtests"])
    if "key_id" in params and _is_uuid(params["key_id"]) and caller and _pick(case, "real-key", [True, False]):
        keys = [str(i) for i in ApiKey.objects.filter(agent=caller).order_by("created_at").values_list("id", flat=True)]
        params["key_id"] = _pick(case, "key", keys)
    if "name" in params and _pick(case, "real-name", [True, True, False]):
        params["name"] = _pick(case, "agent", [a.name for a in WORLD["agents"].values()])
    if params != case.path_parameters:
        case.path_parameters = params

    query = dict(case.query or {})
    if _is_uuid(query.get("market")) and _pick(case, "real-query", [True, False]):
        query["market"] = _pick(case, "query-market", markets)
    if query != (case.query or {}):
        case.query = query

    body = case.body
    if isinstance(body, dict) and _is_uuid(body.get("market")) and _pick(case, "real-body", [True, True, False]):
        case.body = {**body, "market": _pick(case, "body-market", markets)}


def _as_drf_reads_it(value, definition: dict):
    """``value`` as DRF's fields read it for a property of this schema: a JSON number is taken as its text by a text
    field, a numeric string as the number by an integer field, 0/1 and "true"/"false" (and kin) by a boolean field."""
    kind = definition.get("type")
    if kind == "string" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind == "integer" and isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if kind == "boolean" and not isinstance(value, bool):
        for truth, spellings in (
            (True, {"true", "t", "yes", "y", "on", "1"}),
            (False, {"false", "f", "no", "n", "off", "0"}),
        ):
            if (isinstance(value, str) and value.lower() in spellings) or (type(value) is int and value == int(truth)):
                return truth
    return value


def _valid_as_read(case) -> bool:
    """Whether the request's JSON body is schema-valid once read the way DRF reads it (see :func:`_as_drf_reads_it`)."""
    body = case.body
    if not isinstance(body, dict) or case.media_type != "application/json":
        return False
    request_body = case.operation.definition.raw.get("requestBody", {})
    ref = request_body.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    component = schema.raw_schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    properties = component.get("properties", {})
    read = {name: _as_drf_reads_it(value, properties.get(name, {})) for name, value in body.items()}
    if read == body:
        return False
    validator_cls = case.operation.schema.adapter.jsonschema_validator_cls
    return case._validate_component(ParameterLocation.BODY, read, validator_cls)


# A batch refuses an order (or id) that is not valid in that order's own entry of its 200 answer, with the entry's
# status and error, and goes on with the others: only a request that is not an object holding 1-20 entries is a 400.
BATCH_ENTRIES = {
    "/api/v1/orders/batch/": ("orders", "OrderInputRequest"),
    "/api/v1/orders/batch-cancel/": ("ids", None),
}


def _refused_entry_by_entry(case, response) -> bool:
    """Whether ``response`` is a batch's 200 to a request that is valid but for some of its entries, and each entry
    that is not valid as the API reads it (:func:`_as_drf_reads_it`) was refused in its own entry of the answer."""
    from trading.order_batch import MAX_BATCH

    key, component = BATCH_ENTRIES.get(case.operation.path, (None, None))
    body = case.body
    if key is None or case.method.upper() != "POST" or response.status_code != 200:
        return False
    if not isinstance(body, dict) or set(body) != {key}:
        return False
    entries = body[key]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_BATCH:
        return False
    properties = schema.raw_schema["components"]["schemas"][component]["properties"] if component else {}
    validator_cls = case.operation.schema.adapter.jsonschema_validator_cls
    for entry, answer in zip(entries, response.json()["orders"], strict=True):
        if component and isinstance(entry, dict):
            entry = {n: _as_drf_reads_it(v, properties.get(n, {})) for n, v in entry.items()}
        valid = case._validate_component(ParameterLocation.BODY, {key: [entry]}, validator_cls)
        if not valid and answer["error"] is None:
            return False
    return True


def negative_data_rejection_where_promised(ctx, response, case):
    """schemathesis' ``negative_data_rejection``, except where the API reads input leniently by design: a
    :data:`LENIENT_QUERY` parameter, an empty query parameter (no filter), JSON values DRF converts to the
    declared type (:func:`_as_drf_reads_it`), and a batch's invalid entries, refused one by one
    (:func:`_refused_entry_by_entry`)."""
    negated = list(negated_parameters(case.meta))
    query = case.query or {}
    # Sent empty: "" itself, or an empty object or array, which go out as `name=`.
    empty = {name for name, value in query.items() if value in ("", None) or value == {} or value == []}
    if negated and all(
        loc == ParameterLocation.QUERY and (name in LENIENT_QUERY or name in empty) for name, loc in negated
    ):
        return None
    if 200 <= response.status_code < 300 and (_valid_as_read(case) or _refused_entry_by_entry(case, response)):
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = {"excluded_checks": [negative_data_rejection], "additional_checks": [negative_data_rejection_where_promised]}


# --------------------------------------------------------------------------------------------------------------------
# The world


@pytest.fixture
def in_process_wsgi():
    """Requests through the WSGI handler must not close the connection that holds the test's transaction when they
    end (Django's test client does the same)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def assert_books_balance():
    """The audit of DESIGN section 5 is clean, and, spelled out, every agent's balance is the sum of its ledger."""
    from agents.models import Agent, LedgerEntry
    from trading.audit import run_audit

    report = run_audit()
    assert report.ok, report.render()
    sums = dict(LedgerEntry.objects.values_list("agent_id").annotate(total=Sum("amount")))
    for agent_id, balance in Agent.objects.values_list("id", "balance"):
        assert balance == sums.get(agent_id, Decimal("0")), (agent_id, balance, sums.get(agent_id))


@pytest.fixture
def world(db, make_agent, in_process_wsgi):
    """Three agents (a trader with positions and resting orders, a counterparty, an oracle), open markets with a
    book and trades, and a resolved one. Checks the books after the test."""
    global WORLD
    from agents.tests.factories import ApiKeyFactory
    from backtests.services import backtest_upload
    from markets.tests.factories import ForecastFactory, MarketFactory
    from testsupport.api import operator_resolver
    from trading.lifecycle import market_close
    from trading.orders import order_place
    from trading.resolution import market_resolve

    trader, other = make_agent("fuzz-trader"), make_agent("fuzz-other")
    oracle = make_agent("fuzz-oracle", oracle=True)
    deadline = timezone.now() + timedelta(days=30)
    markets = [
        MarketFactory(creator=creator, question=f"Will fuzz market {i} hold?", deadline=deadline)
        for i, creator in enumerate([trader, other, trader, other])
    ]
    orders = []
    for market in markets[:2]:
        order_place(agent=trader, market_id=market.id, side="YES", action="BUY", price="0.60", size=20)
        order_place(agent=other, market_id=market.id, side="NO", action="BUY", price="0.40", size=20)
        orders.append(order_place(agent=trader, market_id=market.id, side="YES", action="BUY", price="0.30", size=5))
        orders.append(order_place(agent=trader, market_id=market.id, side="YES", action="SELL", price="0.90", size=5))
        orders.append(order_place(agent=other, market_id=market.id, side="NO", action="BUY", price="0.20", size=5))
    ForecastFactory(agent=trader, market=markets[1], probability="0.7")
    resolved = markets[3]
    order_place(agent=trader, market_id=resolved.id, side="YES", action="BUY", price="0.50", size=4)
    order_place(agent=other, market_id=resolved.id, side="NO", action="BUY", price="0.50", size=4)
    market_resolve(market_id=resolved.id, outcome="YES", resolver=operator_resolver())
    # A closed market nobody has a stake in: the oracle may propose its outcome there, and agents dispute that.
    closed = MarketFactory(creator=other, question="Will the fuzzed market close?", deadline=deadline)
    market_close(market_id=closed.id)
    markets.append(closed)

    agents = {"trader": trader, "other": other, "oracle": oracle}
    for name, agent in agents.items():
        ApiKeyFactory(agent=agent, raw_key=KEYS[name])  # a key known in advance, for the fuzzer's requests
    # Backtests: the trader's upload in parts, waiting for its executions, and a finished one.
    backtests = [
        backtest_upload(agent=trader, strategy="fuzz:Strategy", markets=[markets[0].id], result={}, **extra)
        for extra in ({"executions_count": 50}, {})
    ]
    WORLD = {
        "agents": agents,
        "markets": [str(m.id) for m in markets],
        "orders": [str(placed.order.id) for placed in orders],
        "backtests": [str(b.id) for b in backtests],
    }
    assert_books_balance()
    yield WORLD
    WORLD = None
    assert_books_balance()


# --------------------------------------------------------------------------------------------------------------------
# Every operation on its own


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_its_schema_says(case, world):
    restore_keys()
    aim_at_real_resources(case)
    case.call_and_validate(**CHECKS)


# --------------------------------------------------------------------------------------------------------------------
# Sequences along the schema's links


class LinkedCalls(schema.as_state_machine()):
    """Ids come from earlier responses along the links here, so they are left as they are.

    Each scenario starts from the same world: it runs in a savepoint that is rolled back after the books are checked,
    so a scenario's responses depend only on its own requests. Otherwise Hypothesis, replaying a scenario to shrink
    it, would meet other responses (and other enabled links) than the first time and report a flaky strategy.
    """

    def setup(self):
        self.savepoint = transaction.savepoint()

    def teardown(self):
        try:
            assert_books_balance()
        finally:
            transaction.savepoint_rollback(self.savepoint)

    def before_call(self, case):
        restore_keys()

    def validate_response(self, response, case, additional_checks=None, **kwargs):
        case.validate_response(
            response,
            excluded_checks=CHECKS["excluded_checks"],
            additional_checks=[*CHECKS["additional_checks"], *(additional_checks or [])],
            transport_kwargs=kwargs or None,
            recorder=self.recorder,
        )


def test_sequences_of_calls_along_the_schema_links_answer_as_the_schema_says(world):
    # One agent makes every call, so what one step creates (a key, an order) is its own in the next; it is an oracle
    # too, so that sequences can end in a resolution.
    from testsupport.api import make_oracle

    global CALLER
    make_oracle(world["agents"]["trader"])
    CALLER = "trader"
    try:
        LinkedCalls.run(
            settings=settings(
                max_examples=STEPS,
                stateful_step_count=12,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
        )
    finally:
        CALLER = None


# --------------------------------------------------------------------------------------------------------------------
# Hostile input the schema cannot describe (the security review, issue 11): never a 5xx, always the one error shape

HOSTILE = [
    ("GET", "/markets/{market}/orderbook/?depth=²", None, 400),  # str.isdigit() says yes, int() says no
    ("GET", "/markets/{market}/orderbook/?depth=" + "9" * 5000, None, 400),  # past int()'s digit limit
    ("POST", "/orders/", "[" * 100_000, 400),  # deeper than Python's JSON parser can go
    ("POST", "/markets/", "{" * 50_000, 400),
    ("POST", "/markets/{market}/forecast/", '{"probability": ' + "[" * 100_000, 400),
    ("GET", "/markets/?search=" + "%20".join(f"w{n}" for n in range(2000)), None, 400),
    ("GET", "/markets/?search=" + "x" * 5000, None, 400),
    ("GET", "/agents/?search=" + "%20".join("a" * 9), None, 400),
    ("GET", "/markets/?ordering=" + ",".join(["-volume"] * 2000), None, 200),  # each field once: a cheap query
    ("GET", "/markets/{market}/history/?interval=1d&start=%C2%B2", None, 400),
    ("GET", "/markets/{market}/history/?interval=" + "1d" * 1000, None, 400),
    ("POST", "/markets/{market}/dispute/", json.dumps({"reason": "x" * 3000}), 400),
    ("POST", "/markets/{market}/dispute/", json.dumps({"reason": ["a"]}), 400),
    ("POST", "/markets/{market}/resolve/", json.dumps({"outcome": "YES" * 1000}), 403),  # not an oracle
    # A page of the trader's upload in parts: values no number or time parser should choke on.
    (
        "POST",
        "/backtests/{backtest}/executions/",
        json.dumps(
            {
                "offset": 0,
                "executions": [
                    {"time": "²", "market": "{market}", "side": "YES", "action": "BUY", "reason": "taker"},
                    {"price": "1e999999", "size": 10**40, "cash": "NaN", "time": "9" * 5000},
                ],
            }
        ),
        400,
    ),
    ("POST", "/backtests/{backtest}/executions/", json.dumps({"offset": "9" * 5000, "executions": [{}]}), 400),
    ("POST", "/backtests/{backtest}/executions/", json.dumps({"offset": 0, "executions": [{}] * 1001}), 400),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), HOSTILE, ids=[f"{m} {p[:60]}" for m, p, _, _ in HOSTILE])
def test_hostile_input_is_answered_without_a_5xx_in_the_error_shape(method, path, body, status, world):
    from testsupport.api import api_client

    client = api_client(key=KEYS["trader"])  # it checks the one error shape of every 4xx itself
    url = "/api/v1" + path.format(market=world["markets"][-1], backtest=world["backtests"][0])
    if body is None:
        response = client.generic(method, url)
    else:
        response = client.generic(method, url, body, content_type="application/json")
    assert response.status_code == status, (response.status_code, response.content[:300])
    RESPONSES[(f"hostile {method} {path[:40]}", response.status_code)] += 1
