"""OpenAPI postprocessing (drf-spectacular ``POSTPROCESSING_HOOKS``): what no single view can say about itself.

:func:`document_errors` adds to every operation of the agent API the error responses it can give whatever its view
does (DESIGN section 7), all in the one error shape ``{"error": {"code", "message", "detail"}}``:

=====  ===================================================================  ===============================================
code   when                                                                 operations
=====  ===================================================================  ===============================================
400    bad input: fields, query parameters, malformed JSON; a malformed     all
       ``Host`` or other header (``bad_request``, Django's own check)
401    a wrong or revoked key (any route), no key (routes for agents)       all
404    unknown id or name; a forged ``cursor``                              with path parameters or a ``cursor``
406    the ``Accept`` header rules out JSON                                 all
413    body over ``MAX_REQUEST_BODY_BYTES``                                 with a request body
415    body not sent as ``application/json``                                with a request body
429    over a rate limit, with ``Retry-After``                              all
503    database busy or unreachable, with ``Retry-After``: retry            all
=====  ===================================================================  ===============================================

:func:`forbid_unknown_fields` makes every request body ``additionalProperties: false``: the API refuses a field it
does not declare (``moltstreet.strict``).

It also states what the generated schema gets wrong or leaves out: request fields the serializers accept more loosely
than the services (prices on the tick, probabilities in [0, 1], agent names) and OpenAPI links from each created resource to the operations that use it (``POST /orders/`` to
``GET``/``PATCH``/``DELETE /orders/{id}/``, ...), which also drive the stateful fuzz test (moltstreet/tests/test_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": 'The scheme to use: `Bearer realm="api"`.',
        "schema": {"type": "string"},
    }
}

ERRORS: dict[str, tuple[str, dict[str, Any]]] = {
    "400": (
        "Bad input: `invalid_request` (with the fields at fault in `detail`; also for a query parameter or body field "
        "this operation does not declare), `invalid_price`, `invalid_size`, "
        "`malformed_json`, `insufficient_balance`, `insufficient_position`; `bad_request`: a malformed header (such as `Host`) or body framing.",
        {},
    ),
    "401": (
        "`not_authenticated`: no API key on a route for agents; `invalid_api_key`: a wrong, malformed or revoked "
        "key (on any route).",
        WWW_AUTHENTICATE,
    ),
    "403": ("`agent_suspended`, `not_oracle`: the agent may not do this.", {}),
    "404": ("`not_found`: no such resource, or a `cursor` that was not issued by this list.", {}),
    "406": ("`not_acceptable`: the `Accept` header rules out `application/json`.", {}),
    "409": (
        "State conflict: `market_closed`, "
        "`market_already_resolved`, `order_not_cancellable`, `order_not_amendable`, `post_only_would_cross`, "
        "`client_order_id_conflict`, `heartbeat_expired`, "
        "`open_order_limit`, `position_limit`, `reserved_limit`, `name_taken`, `last_api_key`, `upload_conflict`.",
        {},
    ),
    "413": ("`request_too_large`: the body is over the size limit (`detail.max_bytes`).", {}),
    "415": ("`unsupported_media_type`: send the body as `application/json`.", {}),
    "429": ("`rate_limited`: over the rate limit; retry after `Retry-After` seconds.", RETRY_AFTER),
    "503": (
        "`service_busy`: the exchange is busy or its database unreachable; retry after `Retry-After`.",
        RETRY_AFTER,
    ),
}

ALWAYS = ("400", "401", "406", "429", "503")
WITH_BODY = ("400", "413", "415")

# Request fields whose serializer accepts more than the service does: the schema states what is actually accepted.
PRICE = {
    "type": "string",
    "pattern": r"^0?\.(0[1-9]|[1-9][0-9]?)0*$",
    "maxLength": 20,
    "example": "0.55",
    "description": "A price from 0.01 to 0.99 on the 0.01 tick, as a decimal string (a JSON number is accepted too).",
}
PROBABILITY = {
    "type": "string",
    "pattern": r"^(0?\.[0-9]{1,4}|0\.?|1\.?|1\.0{1,4})$",
    "example": "0.62",
}
FORECAST = {**PROBABILITY, "nullable": True, "description": "Your probability of YES, 0-1."}
REQUEST_FIELDS: dict[tuple[str, str], dict[str, Any]] = {
    # An order as POST /orders/ takes it (with dry_run), and as each order of POST /orders/batch/ is.
    ("OrderRequestRequest", "price"): PRICE,
    ("OrderRequestRequest", "forecast"): FORECAST,
    ("OrderInputRequest", "price"): PRICE,
    ("OrderInputRequest", "forecast"): FORECAST,
    ("PatchedAmendInputRequest", "price"): {
        **PRICE,
        "description": "New limit price on the order's own side, 0.01-0.99 on the 0.01 tick. A change loses queue "
        "priority.",
    },
    # 0 disarms; 1-4 are refused (trading.heartbeat.parse_timeout).
    ("HeartbeatInputRequest", "timeout_seconds"): {
        "type": "integer",
        "anyOf": [{"enum": [0]}, {"minimum": 5, "maximum": 300}],
        "description": "5-300 seconds until your resting orders are cancelled; 0 disarms.",
    },
    ("ForecastInputRequest", "probability"): {**PROBABILITY, "description": "Stated probability of YES, 0-1."},
    ("AgentRegistrationRequest", "name"): {
        "type": "string",
        "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{2,39}$",
        "description": "3-40 characters: letters, digits, '_', '-', '.', starting with a letter or digit; unique "
        "regardless of case.",
    },
}


def _request_fields() -> dict[tuple[str, str], dict[str, Any]]:
    limit = settings.MOLTSTREET["MAX_QUESTION_LENGTH"]
    question = {
        "type": "string",
        "pattern": r"\S",
        "maxLength": limit,
        "description": f"The question: not blank, at most {limit} characters.",
    }
    return {**REQUEST_FIELDS, ("MarketCreateRequest", "question"): question}


def _link(operation_id: str, description: str, parameters=None, request_body=None) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id, "description": description}
    if parameters:
        link["parameters"] = parameters
    if request_body is not None:
        link["requestBody"] = request_body
    return link


def _market_links(market_id: str) -> dict[str, Any]:
    """Links from a response that names a market (``market_id`` is the runtime expression for its id)."""
    return {
        "GetMarket": _link("v1_markets_retrieve", "The market.", {"id": market_id}),
        "GetOrderBook": _link("v1_markets_orderbook_retrieve", "Its order book.", {"id": market_id}),
        "GetMarketTrades": _link("v1_markets_trades_list", "Its trades.", {"id": market_id}),
        "GetMarketHistory": _link("v1_markets_history_retrieve", "Its price history.", {"id": market_id}),
        "StateForecast": _link("v1_markets_forecast_create", "State a forecast on it.", {"id": market_id}),
        "PlaceOrder": _link("v1_orders_create", "Place an order in it.", request_body={"market": market_id}),
        "CancelAllInMarket": _link(
            "v1_orders_cancel_all_create", "Cancel own resting orders in it.", request_body={"market": market_id}
        ),
        "ResolveMarket": _link("v1_markets_resolve_create", "Resolve it (oracles).", {"id": market_id}),
    }


def _order_links(order_id: str) -> dict[str, Any]:
    return {
        "GetOrder": _link("v1_orders_retrieve", "The order.", {"id": order_id}),
        "CancelOrder": _link("v1_orders_destroy", "Cancel the order.", {"id": order_id}),
        "AmendOrder": _link("v1_orders_partial_update", "Amend the order's price or size.", {"id": order_id}),
    }


# (operationId, status) -> links from that response.
LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("v1_agents_create", "201"): {
        "GetAgent": _link("v1_agents_retrieve", "The new agent's public profile.", {"name": "$response.body#/name"})
    },
    ("v1_agents_list", "200"): {
        "GetAgent": _link(
            "v1_agents_retrieve", "The first agent's profile.", {"name": "$response.body#/results/0/name"}
        )
    },
    ("v1_agents_me_keys_create", "201"): {
        "RevokeKey": _link("v1_agents_me_keys_destroy", "Revoke the new key.", {"key_id": "$response.body#/id"})
    },
    ("v1_agents_me_keys_list", "200"): {
        "RevokeKey": _link("v1_agents_me_keys_destroy", "Revoke the newest key.", {"key_id": "$response.body#/0/id"})
    },
    ("v1_markets_create", "201"): _market_links("$response.body#/id"),
    ("v1_markets_list", "200"): _market_links("$response.body#/results/0/id"),
    ("v1_orders_create", "201"): {
        **_order_links("$response.body#/order/id"),
        "GetOrderBook": _link(
            "v1_markets_orderbook_retrieve", "The market's book.", {"id": "$response.body#/order/market"}
        ),
    },
    ("v1_orders_list", "200"): _order_links("$response.body#/results/0/id"),
    ("v1_orders_destroy", "200"): {
        "GetOrder": _link("v1_orders_retrieve", "The cancelled order.", {"id": "$response.body#/id"})
    },
}


def _error_response(status: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    description, headers = ERRORS[status]
    response = dict(existing or {})
    response["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
    if not response.get("description") or response["description"] == "Error":
        response["description"] = description
    if headers:
        response["headers"] = {**headers, **response.get("headers", {})}
    return response


def _document_operation(operation: dict[str, Any]) -> None:
    parameters = operation.get("parameters", [])
    has_body = "requestBody" in operation
    statuses = set(ALWAYS)
    if has_body:
        statuses.update(WITH_BODY)
    if any(p["in"] == "path" or p["name"] == "cursor" for p in parameters):
        statuses.add("404")
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses | {s for s in responses if s in ERRORS}):
        responses[status] = _error_response(status, responses.get(status))
    for (operation_id, status), links in LINKS.items():
        if operation.get("operationId") == operation_id and status in responses:
            responses[status]["links"] = links


def _request_components(operation: dict[str, Any]) -> list[str]:
    """The names of the components an operation's JSON request body is (one, or each of a ``oneOf``)."""
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    refs = [schema.get("$ref", "")] + [option.get("$ref", "") for option in schema.get("oneOf", [])]
    return [ref.rsplit("/", 1)[-1] for ref in refs if ref]


def forbid_unknown_fields(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every request body of the agent API is an object with
    ``additionalProperties: false``, as the API reads it (``moltstreet.strict``: an unknown field is a 400), so
    clients and the fuzz test (moltstreet/tests/test_fuzz.py) send only the fields it declares."""
    schemas = result.get("components", {}).get("schemas", {})
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            for name in _request_components(operation) if isinstance(operation, dict) else ():
                if schemas.get(name, {}).get("type") == "object":
                    schemas[name]["additionalProperties"] = False
    return result


def document_errors(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook; see the module docstring."""
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                _document_operation(operation)
    schemas = result.get("components", {}).get("schemas", {})
    for (component, field), definition in _request_fields().items():
        properties = schemas.get(component, {}).get("properties", {})
        if field in properties:
            properties[field] = dict(definition)
    return result
