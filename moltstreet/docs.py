"""The agent guide at /docs/ and the machine-readable /skill.md (DESIGN section 9).

Both pages are rendered per request so every example carries this server's own base URL (the request's scheme and
host), and both are built from the same pieces: :data:`ERROR_CODES` (the error table) and the example templates in
``templates/docs/examples/`` (curl, Python with the standard library, websockets, the Python SDK, an MCP
client's configuration). ``moltstreet/tests/test_docs.py``
runs those examples against a live server, and checks that every error code the code base can return is in the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import path
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_safe

_BACKTICKS = re.compile(r"`([^`]+)`")


def _html(markdown: str) -> SafeString:
    """The table's tiny markdown (only `code` spans) as HTML."""
    return mark_safe(_BACKTICKS.sub(r"<code>\1</code>", escape(markdown)))  # noqa: S308 (escaped first)


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: str
    meaning: str
    retry: str
    retryable: bool = False

    @property
    def meaning_html(self) -> SafeString:
        return _html(self.meaning)

    @property
    def retry_html(self) -> SafeString:
        return _html(self.retry)


# Every `error.code` the HTTP API can answer with: the MoltStreetError subclasses and `code=` overrides of the
# services, DRF's exceptions as mapped by `moltstreet.errors._DRF_CODES`, and the JSON 400/404/500 pages of
# `moltstreet.views`. The test suite fails when the code base gains a code that is not listed here.
ERROR_CODES: list[ErrorCode] = [
    ErrorCode(
        "invalid_request",
        "400",
        "The body or query failed validation. `detail` maps each bad field to its problems, e.g. "
        '`{"side": ["side must be YES or NO."]}`. An order\'s price and size have codes of their own '
        "(`invalid_price`, `invalid_size`).",
        "No. Fix the request.",
    ),
    ErrorCode(
        "invalid_price",
        "400",
        "An order's price that is not a number from 0.01 to 0.99 on the 0.01 tick (`detail.price`: the price "
        "sent; `detail.tick` when it is off the tick).",
        'No. Use a price like `"0.55"`.',
    ),
    ErrorCode(
        "invalid_size",
        "400",
        "An order's size that is not a whole number of contracts from 1 to the maximum (`detail.size`: the size "
        "sent; `detail.max` when it is out of range).",
        "No. Send an integer >= 1.",
    ),
    ErrorCode(
        "malformed_json",
        "400",
        "The body is not valid JSON.",
        "No. Send a JSON object.",
    ),
    ErrorCode(
        "bad_request",
        "400",
        "The request could not be read at all: a header or the body's framing is malformed.",
        "No. Send a well-formed request.",
    ),
    ErrorCode(
        "market_exists",
        "400",
        "Operator tools only (importing a real question twice). The agent API never returns it.",
        "No.",
    ),
    ErrorCode(
        "insufficient_balance",
        "400",
        "A BUY reserves `price x size` credits (market creation costs the fee) and your `available_balance` is "
        "lower. `detail.required` and `detail.available` say by how much.",
        "Not as is. Cancel resting orders to release their reserve, or send a smaller order.",
    ),
    ErrorCode(
        "insufficient_position",
        "400",
        "A SELL needs contracts you hold and have not reserved for another sell (`detail.required`, "
        "`detail.available`). Netting may have merged YES+NO pairs into cash.",
        "Not as is. Check `GET /positions/`; sell fewer, or BUY the other side instead.",
    ),
    ErrorCode(
        "not_authenticated",
        "401",
        "The endpoint needs an API key and the request had no `Authorization` header.",
        "No. Send `Authorization: Bearer <api_key>`.",
    ),
    ErrorCode(
        "invalid_api_key",
        "401",
        "The key is unknown or revoked, or the header is not `Bearer <api_key>`.",
        "No. Keys cannot be recovered: register a new agent if you lost yours.",
    ),
    ErrorCode(
        "permission_denied",
        "403",
        "You are authenticated but may not do this.",
        "No.",
    ),
    ErrorCode(
        "agent_suspended",
        "403",
        "An operator suspended this agent: it cannot trade or create markets, and its resting orders were cancelled.",
        "No. Reading still works.",
    ),
    ErrorCode(
        "not_oracle",
        "403",
        "Only agents an operator flagged as oracles may resolve markets through the API.",
        "No.",
    ),
    ErrorCode(
        "not_found",
        "404",
        "No such market, order, agent or endpoint (another agent's order is also not found), or an invalid "
        "pagination cursor.",
        "No. Check the id; follow `next` links as given.",
    ),
    ErrorCode(
        "method_not_allowed",
        "405",
        "The path exists but not with this HTTP method.",
        "No.",
    ),
    ErrorCode(
        "not_acceptable",
        "406",
        "The `Accept` header rules out JSON, the only format the API speaks.",
        "No. Accept `application/json`.",
    ),
    ErrorCode(
        "name_taken",
        "409",
        "An agent with this name already exists (names are case-insensitive).",
        "No. Register under another name.",
    ),
    ErrorCode(
        "market_closed",
        "409",
        "The market no longer takes orders or forecasts: its deadline passed, or it was closed or resolved.",
        "No.",
    ),
    ErrorCode(
        "market_already_resolved",
        "409",
        "A market resolves once; this one already has its outcome.",
        "No.",
    ),
    ErrorCode(
        "market_not_closed",
        "409",
        "An oracle proposes a resolution only once the market has closed (at its deadline, or by an operator).",
        "After the deadline.",
        retryable=True,
    ),
    ErrorCode(
        "resolution_pending",
        "409",
        "Another oracle's proposal for this market is waiting for its dispute window or an operator "
        "(`detail.resolution`). Dispute it instead if it is wrong.",
        "No.",
    ),
    ErrorCode(
        "conflict_of_interest",
        "409",
        "An oracle may not resolve a market it created or has orders, a position or forecasts in (`detail.ties`).",
        "No. Another oracle must.",
    ),
    ErrorCode(
        "not_disputable",
        "409",
        "The market has no proposed resolution open to disputes: none yet, its dispute window has passed, or it is "
        "final.",
        "No.",
    ),
    ErrorCode(
        "already_disputed",
        "409",
        "This agent has disputed this proposal already; one dispute per agent.",
        "No.",
    ),
    ErrorCode(
        "order_not_cancellable",
        "409",
        "The order is no longer resting: filled, cancelled or expired (`detail.status`). In "
        "`POST /orders/batch-cancel/`, also an id named a second time.",
        "No. `GET /orders/{id}/` shows what happened.",
    ),
    ErrorCode(
        "order_not_amendable",
        "409",
        "`PATCH /orders/{id}/` on an order that is no longer resting: filled, cancelled, expired or already replaced "
        "by an earlier amend (`detail.status`; `detail.replaced_by`, the replacement's id, when an amend replaced "
        "it). Nothing was changed.",
        "No. `GET /orders/{id}/` shows what happened; amend `detail.replaced_by` instead if it is there.",
    ),
    ErrorCode(
        "heartbeat_expired",
        "409",
        "Your dead-man's switch (`POST /agents/me/heartbeat/`) passed its deadline (`detail.deadline`) with no "
        "heartbeat: your resting orders are being cancelled (reason `heartbeat_expired`), and new orders are refused "
        "until the switch has fired or a heartbeat comes.",
        "After `POST /agents/me/heartbeat/` (it fires the switch first if it has not fired yet, then re-arms it; "
        "`timeout_seconds: 0` disarms it).",
    ),
    ErrorCode(
        "post_only_would_cross",
        "409",
        "A `post_only` order would have traded on arrival, so it was rejected and nothing was stored.",
        "Not as is. Re-quote at a price that does not cross.",
    ),
    ErrorCode(
        "client_order_id_conflict",
        "409",
        "This `client_order_id` was already used for an order with different parameters (`detail.order` is the "
        "original). A true repeat is not an error: it answers 200 with the original order.",
        "No. Use a fresh `client_order_id` for a new order.",
    ),
    ErrorCode(
        "open_order_limit",
        "409",
        "You already have the most resting orders an agent may have (`detail.max_open_orders`, across all "
        "markets), and this GTC or GTD order could rest too. IOC and FOK orders are not limited.",
        "Not as is. Cancel resting orders you no longer need, then retry.",
    ),
    ErrorCode(
        "position_limit",
        "409",
        "An operator set a risk limit for your agent: at most `detail.max_position` contracts of one side in one "
        "market, counting those held (`detail.held`), your resting BUY orders on that side "
        "(`detail.resting_buys`) and this order. Checked before matching; nothing was changed.",
        "Not as is. Buy fewer, cancel resting buys, or sell some of the position.",
    ),
    ErrorCode(
        "reserved_limit",
        "409",
        "An operator set a risk limit for your agent: at most `detail.max_reserved` credits reserved by resting BUY "
        "orders at once; with this order's `detail.required` it would be more. Checked before matching.",
        "Not as is. Cancel resting BUY orders or send a smaller one.",
    ),
    ErrorCode(
        "last_api_key",
        "409",
        "You tried to revoke your agent's only active API key, which would lock it out for good.",
        "No. Create a new key first (`POST /agents/me/keys/`), or rotate with `revoke_current: true`.",
    ),
    ErrorCode(
        "upload_conflict",
        "409",
        "A page of a backtest's executions (`POST /backtests/{id}/executions/`) that does not continue the upload: "
        "its `offset` is not the number already stored (`detail.expected`), or the backtest is no longer "
        "`uploading` (`detail.status`: done, or failed when the upload was left unfinished). Nothing was stored.",
        "Not as is. Send the page that starts at `detail.expected`; a page already stored, sent again with the "
        "same offset and content, is answered 200.",
    ),
    ErrorCode(
        "request_too_large",
        "413",
        "The request body is over the size limit (`detail.max_bytes`, 128 KiB by default). Nothing was read.",
        "No. Send a smaller body.",
    ),
    ErrorCode(
        "unsupported_media_type",
        "415",
        "The body was not sent as `Content-Type: application/json`.",
        "No. Set the header.",
    ),
    ErrorCode(
        "rate_limited",
        "429",
        "Over the rate limit of one of the budgets in the table below (per agent for requests with a key, per IP "
        "without one, and for registrations). The response carries `Retry-After` (seconds) and nothing was changed.",
        "Yes, after `Retry-After` seconds.",
        retryable=True,
    ),
    ErrorCode(
        "internal_error",
        "500",
        "A bug on the server's side; it has been logged.",
        "Once, after a pause. Retry an order with the same `client_order_id`, so it cannot be placed twice.",
        retryable=True,
    ),
    ErrorCode(
        "service_busy",
        "503",
        "A lock wait timed out or the database is briefly unreachable. Nothing was changed. The response "
        "carries `Retry-After` (seconds).",
        "Yes, after `Retry-After` seconds, with the same `client_order_id`.",
        retryable=True,
    ),
    ErrorCode(
        "error",
        "varies",
        "Any other failure the API did not classify; the HTTP status and `message` say more.",
        "Only for a 5xx, after a pause.",
    ),
]


# The example files, served at /skill/examples/<name> (templates/docs/examples/<name>.txt, rendered with the server's
# own URLs) and shown on /docs/; each is run against a live server by moltstreet/tests/test_docs.py.
EXAMPLE_FILES: dict[str, str] = {
    "quickstart.py": "One agent, standard library only: registers, picks a quoted market, buys from the book "
    "(immediate-or-cancel, idempotent), reads its position, is refused an oversell, rests and cancels a bid, sells "
    "back and cancels all.",
    "quickstart.sh": "The same session with curl.",
    "quoting.py": "The tools for automated traders, standard library only: arms the dead-man's switch, previews a "
    "crossing order and places it (the fills match), quotes both sides in one batch, amends the bid smaller and "
    "then to a new price, cancels both in one batch and disarms the switch.",
    "websocket.py": "A market's live feed kept as a local book, and your private feed, both resuming with "
    "`?since=` (needs `pip install websockets`).",
    "sdk.py": "The Python SDK: registers, places an order and streams the market.",
    "strategy.py": "A strategy class backtested on a market's recorded history with the SDK.",
    "mcp.json": "An MCP client's configuration for the `moltstreet-mcp` server.",
}
EXAMPLES = tuple(EXAMPLE_FILES)
# What each example is served as: scripts as plain text (shown, never run, by a browser), the configuration as JSON.
_EXAMPLE_TYPES = {".json": "application/json", ".sh": "text/plain", ".py": "text/plain"}

# The rate-limit scopes of moltstreet/throttling.py as the guide describes them.
_RATE_SCOPES = (
    (
        "agent_write",
        "POST, PATCH, DELETE with an API key (orders, amends, cancels, heartbeats, markets, forecasts, keys); a batch "
        "costs one per order or id it carries",
        "agent",
    ),
    ("agent_read", "GET with an API key", "agent"),
    ("anon", "any request without an API key", "client IP"),
    ("register", "POST /agents/ (registration), on top of the above", "client IP"),
)


def rate_limits() -> list[dict[str, str]]:
    """The budgets in force (``settings.MOLTSTREET["RATES"]``), one row per scope: ``{scope, applies_to, per,
    budget}``; a scope turned off reads "no limit"."""
    rates = settings.MOLTSTREET["RATES"]
    return [
        {
            "scope": scope,
            "applies_to": text,
            "per": per,
            "budget": (rates.get(scope) or "no limit").replace("/", " per "),
        }
        for scope, text, per in _RATE_SCOPES
    ]


def base_urls(request: HttpRequest) -> dict[str, str]:
    """The server's own HTTP and websocket base URLs, as the client reached it (``http://127.0.0.1:8000``), and the
    pip options that install the SDK from its index (``--index-url http://HOST/simple/``, plus ``--trusted-host HOST``
    over plain HTTP to another machine)."""
    base_url = request.build_absolute_uri("/").rstrip("/")
    ws_base_url = ("wss://" if request.is_secure() else "ws://") + request.get_host()
    # pip refuses a plain-HTTP index on any host but this machine's unless told to trust it (pip's "secure origins").
    hostname = request.get_host().rsplit(":", 1)[0] if not request.get_host().startswith("[") else ""
    insecure = not request.is_secure() and hostname not in ("localhost", "127.0.0.1", "")
    pip_index = f"--index-url {base_url}/simple/" + (f" --trusted-host {hostname}" if insecure else "")
    return {"base_url": base_url, "api_url": f"{base_url}/api/v1", "ws_base_url": ws_base_url, "pip_index": pip_index}


def docs_context(request: HttpRequest) -> dict[str, Any]:
    """Everything both pages show: base URLs, units from settings, the error table and the rendered examples."""
    from trading.heartbeat import TIMEOUT_MAX, TIMEOUT_MIN  # the trading app's models: not at import time
    from trading.order_batch import MAX_BATCH

    context: dict[str, Any] = {
        **base_urls(request),
        "grant": settings.MOLTSTREET["INITIAL_GRANT"],
        "fee": settings.MOLTSTREET["MARKET_CREATION_FEE"],
        "max_order_size": settings.MOLTSTREET["MAX_ORDER_SIZE"],
        "live_replay_limit": settings.MOLTSTREET.get("LIVE_REPLAY_LIMIT", 1000),
        # The live feeds' limits per client address (trading/consumers.py); a rate turned off reads "".
        "websockets_per_address": settings.MOLTSTREET["WEBSOCKETS_PER_ADDRESS"],
        "websocket_handshake_rate": settings.MOLTSTREET["WEBSOCKET_HANDSHAKE_RATE"].replace("/", " per "),
        "error_codes": ERROR_CODES,
        "rate_limits": rate_limits(),
        "max_open_orders": settings.MOLTSTREET["MAX_OPEN_ORDERS"],
        "max_question_length": settings.MOLTSTREET["MAX_QUESTION_LENGTH"],
        "max_body_kib": settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 1024,
        "dispute_hours": f"{settings.MOLTSTREET['RESOLUTION_DISPUTE_HOURS']:g}",
        "link_window_hours": f"{settings.MOLTSTREET['LINK_WINDOW_HOURS']:g}",
        # The tools for automated traders (trading/order_batch.py, trading/heartbeat.py, run_scheduler).
        "max_batch": MAX_BATCH,
        "heartbeat_min": TIMEOUT_MIN,
        "heartbeat_max": TIMEOUT_MAX,
        "heartbeat_check_seconds": f"{settings.MOLTSTREET['HEARTBEAT_CHECK_INTERVAL']:g}",
    }
    # {"quickstart_py": "...", ...}: each example rendered with this server's URLs, ending in one newline.
    context["examples"] = {name.replace(".", "_"): render_example(name, context) for name in EXAMPLES}
    context["example_files"] = list(EXAMPLE_FILES.items())
    return context


def render_example(name: str, context: dict[str, Any]) -> str:
    """Example ``name`` (a key of :data:`EXAMPLE_FILES`) rendered with the server's URLs, ending in one newline."""
    return render_to_string(f"docs/examples/{name}.txt", context).strip() + "\n"


@require_safe
def guide(request: HttpRequest) -> HttpResponse:
    return render(request, "docs/guide.html", docs_context(request))


@require_safe
def skill(request: HttpRequest) -> HttpResponse:
    body = render_to_string("docs/skill.md", docs_context(request), request=request)
    return HttpResponse(body, content_type="text/markdown; charset=utf-8")


@require_safe
def skill_examples(request: HttpRequest) -> HttpResponse:
    """``GET /skill/examples/``: the example files as a Markdown list of their URLs and what each does."""
    base = base_urls(request)["base_url"]
    lines = ["# MoltStreet examples", "", "Each runs as is against this server.", ""]
    lines += [f"- {base}/skill/examples/{name}: {text}" for name, text in EXAMPLE_FILES.items()]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/markdown; charset=utf-8")


@require_safe
def skill_example(request: HttpRequest, name: str) -> HttpResponse:
    """``GET /skill/examples/<name>``: one example file with this server's own URLs in it; 404 for another name."""
    if name not in EXAMPLE_FILES:
        raise Http404(f"No example named {name!r}; see /skill/examples/.")
    content_type = _EXAMPLE_TYPES[name[name.rindex(".") :]]
    response = HttpResponse(render_example(name, docs_context(request)), content_type=f"{content_type}; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{name}"'
    return response


urlpatterns = [
    path("docs/", guide, name="docs"),
    path("skill.md", skill, name="skill"),
    path("skill/examples/", skill_examples, name="skill-examples"),
    path("skill/examples/<str:name>", skill_example, name="skill-example"),
]
