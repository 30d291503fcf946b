"""MoltStreet settings, read from the environment (see `.env.example`).

Defaults embed: SQLite (transaction mode IMMEDIATE) and the in-memory channel layer, so `make run` needs nothing else.
`DATABASE_URL=postgres://...` switches to PostgreSQL (psycopg 3), `REDIS_URL=redis://...` to channels-redis and a
Redis cache. That is production and the test suite's home (DESIGN section 1).
"""

import logging
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import environ

from moltstreet.logs import log_format

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)


def _checked_secret_key(name: str, key: str) -> str:
    """``key`` if it is fit to sign sessions, CSRF tokens and messages: Django's own test (``check --deploy``
    W009): at least 50 characters, at least 5 different ones, not a ``django-insecure-`` key, and none of the
    placeholders this repository ever shipped. Raises ImproperlyConfigured otherwise: a server must never run on a
    key anyone can read (a forged ``messages`` cookie is rendered on the admin's login page)."""
    from django.core.checks.security.base import (
        SECRET_KEY_INSECURE_PREFIX,
        SECRET_KEY_MIN_LENGTH,
        SECRET_KEY_MIN_UNIQUE_CHARACTERS,
    )
    from django.core.exceptions import ImproperlyConfigured

    published = {"moltstreet-insecure-local-development-key-change-me", "change-me-to-a-long-random-string"}
    if (
        len(key) < SECRET_KEY_MIN_LENGTH
        or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
        or key.startswith(SECRET_KEY_INSECURE_PREFIX)
        or key in published
    ):
        raise ImproperlyConfigured(
            f"{name} is missing, published or too weak ({len(key)} characters). With DEBUG off MoltStreet needs "
            f"a random key of at least {SECRET_KEY_MIN_LENGTH} characters: "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'. `make run` writes one to .env."
        )
    return key


# With DEBUG on (a developer's own machine) a missing key falls back to a throwaway one; with DEBUG off the server
# refuses to start without a strong SECRET_KEY (`make run` generates one into .env once). SECRET_KEY_FALLBACKS:
# older keys still accepted while rotating (comma-separated), held to the same test.
SECRET_KEY = env("SECRET_KEY", default="")
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
if DEBUG:
    SECRET_KEY = SECRET_KEY or "django-insecure-debug-only-" + "x" * 40
else:
    SECRET_KEY = _checked_secret_key("SECRET_KEY", SECRET_KEY)
    SECRET_KEY_FALLBACKS = [_checked_secret_key("SECRET_KEY_FALLBACKS", key) for key in SECRET_KEY_FALLBACKS]
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# How many proxies in front of the server append to X-Forwarded-For; 0 trusts only the socket's address, so a client
# cannot pick its own address (and a fresh per-address budget) by sending the header (moltstreet/clients.py).
TRUSTED_PROXIES = env.int("TRUSTED_PROXIES", default=0)

# --- HTTPS (README "Operations": what to set before going live) ---
# Production is served over HTTPS by a proxy in front of the server. These are off by default so that `make run`
# and the test suite work over plain HTTP on loopback; docker-compose.yml and .env.example turn them on, and
# `manage.py check --deploy` is then clean (moltstreet/tests/test_deploy.py).
# SECURE_PROXY_SSL_HEADER=true: the proxy sets X-Forwarded-Proto (https or http) on every request it forwards and
# strips it from clients; only then may the server trust it.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("SECURE_PROXY_SSL_HEADER", False) else None
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# Health checks and the metrics scraper reach a server directly, over plain HTTP inside its own network.
SECURE_REDIRECT_EXEMPT = [r"^health/$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    # swagger-ui served from this package at /api/docs/ rather than a CDN
    "drf_spectacular_sidecar",
    "channels",
    # the admin's login lockout
    "axes",
    # Background tasks (backtests run by `manage.py run_worker`): django-tasks and its database backend (TASKS below)
    "django_tasks",
    "django_tasks_db",
    "agents",
    "markets",
    "trading",
    "backtests",
]

MIDDLEWARE = [
    "moltstreet.middleware.AccessLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below)
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "moltstreet.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "moltstreet.asgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes SQLite's write lock at BEGIN, so two writers queue instead of failing mid-transaction.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"transaction_mode": "IMMEDIATE", "timeout": 20})
elif "postgresql" in DATABASES["default"]["ENGINE"]:
    # Seconds to wait for a connection to PostgreSQL. A server that is down refuses at once; one that is stuck (or a
    # lost network) would hold the request forever. Past this the request is answered 503 service_busy.
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    _pg_options.setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=3))
    # Every lock wait of every session is bounded (DESIGN section 6), set once per connection rather than with a
    # SET LOCAL round trip in every transaction (moltstreet/db.py issues one only if a test changed the setting).
    _pg_options.setdefault("options", f"-c lock_timeout={env.int('MOLTSTREET_LOCK_TIMEOUT_MS', default=3000)}ms")
    # Parameters bound by the server (the extended protocol) rather than quoted into the SQL by psycopg in Python,
    # and statements prepared once per connection after a few uses: both cut the Python time of every query.
    _pg_options.setdefault("server_side_binding", env.bool("DATABASE_SERVER_SIDE_BINDING", default=True))
    _pg_options.setdefault("prepare_threshold", env.int("DATABASE_PREPARE_THRESHOLD", default=5))
    # A pool of open connections per server process (psycopg_pool through Django): opening a PostgreSQL connection
    # costs ~5 ms, more than a whole order. A request waits at most DATABASE_POOL_TIMEOUT seconds for a free
    # connection, then is answered 503 service_busy. Off (DATABASE_POOL=false) or with CONN_MAX_AGE set, Django
    # opens a connection per request (or keeps one per thread).
    # Pool connections are not probed at each checkout (CONN_HEALTH_CHECKS, a round trip per request): one broken
    # by a database restart fails its request with 503 service_busy and the pool replaces it.
    if env.bool("DATABASE_POOL", default=True) and not env.int("CONN_MAX_AGE", default=0):
        _pg_options["pool"] = {
            "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=4),
            "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=20),
            "timeout": env.float("DATABASE_POOL_TIMEOUT", default=3.0),
        }
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = "pool" not in DATABASES["default"].get("OPTIONS", {})

REDIS_URL = env("REDIS_URL", default="")
# The live feed's buffers (docs/realtime.md, "Slow clients"): each subscriber's channel holds at most `capacity`
# messages (one per committed transaction); past that the layer drops new ones for that subscriber only, so publishing
# never waits, and the consumer refills the gap from the stored events. Unread messages expire after `expiry` seconds.
# `group_expiry` must outlive the longest connection (daphne closes websockets after 24 hours by default), or a live
# subscriber would silently fall out of its group.
_channel_layer_options = {"capacity": 1000, "expiry": 60, "group_expiry": 86400}
# With Redis, which channels-redis layer carries the feeds: `redis` (RedisChannelLayer, the default: one Redis entry per
# subscriber for every message, buffers capped as above) or `pubsub` (RedisPubSubChannelLayer: one PUBLISH per group
# and message, each server process subscribed once per group, handing it to its local subscribers; no per-subscriber
# cap or expiry in Redis). docs/performance.md, "Fan-out", compares them.
CHANNEL_LAYER_BACKEND = env.str("CHANNEL_LAYER_BACKEND", default="redis")
_CHANNEL_LAYER_BACKENDS = {
    "redis": "channels_redis.core.RedisChannelLayer",
    # channels-redis's RedisPubSubChannelLayer, with the feeds' failure contract kept (trading/realtime.py)
    "pubsub": "trading.realtime.PubSubChannelLayer",
}
if CHANNEL_LAYER_BACKEND not in _CHANNEL_LAYER_BACKENDS:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"CHANNEL_LAYER_BACKEND must be one of {sorted(_CHANNEL_LAYER_BACKENDS)}")
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": _CHANNEL_LAYER_BACKENDS[CHANNEL_LAYER_BACKEND],
            # redis-py 8 times socket reads out after 5 s by default, the very time channels-redis blocks reading an
            # idle channel (BZPOPMIN, 5 s): every quiet websocket would crash. Reads may take longer than that.
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                **(_channel_layer_options if CHANNEL_LAYER_BACKEND == "redis" else {}),
            },
        },
    }
    # The cache only backs the rate limits, which let a request through when it fails (moltstreet/throttling.py): a
    # Redis that is down or stuck may cost a request at most this many seconds (redis-py's default is 5).
    _cache_timeout = env.float("REDIS_CACHE_TIMEOUT", default=1.0)
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": _cache_timeout, "socket_timeout": _cache_timeout},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": _channel_layer_options}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# The largest request body read (bytes). A bigger one is refused with 413 request_too_large before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=128 * 1024)

# --- Operators' logins (the admin) ---
# django-axes counts failed logins per client address and per username (either one locks: an attacker can neither
# spray one account from many addresses nor many accounts from one); past ADMIN_LOGIN_FAILURE_LIMIT failures the
# login is refused with 429 for ADMIN_LOGIN_COOLOFF_MINUTES, the right password included. `manage.py axes_reset`
# lifts a lockout. Axes goes first among the backends, as its documentation requires.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("ADMIN_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "moltstreet.clients.axes_client_ip"
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The SDK served at /simple/ (moltstreet/package_index.py): the directory `manage.py build_client_wheel` writes the
# wheel of client/ to (git-ignored; `make run` and the Docker image build it), and the index every other project name
# is redirected to, so that `pip install --index-url http://HOST/simple/ moltstreet-client` finds httpx and the rest.
CLIENT_WHEEL_DIR = Path(env("CLIENT_WHEEL_DIR", default="") or BASE_DIR / "dist" / "client")
PACKAGE_INDEX_UPSTREAM = env("PACKAGE_INDEX_UPSTREAM", default="") or "https://pypi.org/simple/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["agents.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["moltstreet.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "moltstreet.pagination.CreatedCursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "moltstreet.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "COERCE_DECIMAL_TO_STRING": True,
    "UNAUTHENTICATED_USER": None,
    # Rate limits (moltstreet/throttling.py); budgets are MOLTSTREET["RATES"] below.
    "DEFAULT_THROTTLE_CLASSES": [
        "moltstreet.throttling.AnonThrottle",
        "moltstreet.throttling.AgentReadThrottle",
        "moltstreet.throttling.AgentWriteThrottle",
    ],
    # The throttles count by moltstreet.clients' address (TRUSTED_PROXIES above); DRF's own reading agrees.
    "NUM_PROXIES": TRUSTED_PROXIES,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "MoltStreet agent API",
    "DESCRIPTION": (
        "Play-money prediction market for AI agents. Prices are YES prices in [0.01, 0.99] with tick 0.01, sizes are "
        "whole contracts, money is credits as decimal strings. Authenticate with `Authorization: Bearer <api_key>`. "
        'Every error is `{"error": {"code", "message", "detail"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # swagger-ui's files from the drf-spectacular-sidecar package, served by this server (no CDN, nothing fetched
    # from another origin), and its start-up script as a file of its own (SpectacularSwaggerSplitView), so the
    # Content-Security-Policy needs no inline script.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The common error responses, request fields stated as the services accept them, and links; request bodies
    # without unknown fields (moltstreet/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "moltstreet.schema.document_errors",
        "moltstreet.schema.forbid_unknown_fields",
    ],
    "ENUM_NAME_OVERRIDES": {
        "SideEnum": "trading.models.Side",
        "ActionEnum": "trading.models.Action",
        "TimeInForceEnum": "trading.models.TimeInForce",
        "OutcomeEnum": "markets.models.Outcome",
        "OrderStatusEnum": "trading.models.Order.Status",
        "MarketStatusEnum": "markets.models.Market.Status",
    },
}

# Every line to stderr, as readable text (LOG_FORMAT=text, the default: `make run`) or one JSON object each
# (LOG_FORMAT=json: production, set by the Dockerfile and docker-compose.yml), with the request id and the ids the
# code bound (moltstreet/logs.py). Anything shaped like an API key is redacted from every line.
LOG_FORMAT = log_format()  # LOG_FORMAT from the environment (or .env): text or json
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "moltstreet.logs.ContextFilter"}},
    "formatters": {"moltstreet": {"()": "moltstreet.logs.formatter", "kind": LOG_FORMAT}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "moltstreet", "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Through the one handler only: Django's default console handler (DEBUG on) would print each line twice.
        "django": {"handlers": [], "propagate": True},
        "django.db.backends": {"level": "INFO"},
        # uvicorn's loggers write through the same handler once Django is set up in a worker. Its access log stays
        # off whatever its options say (it writes query strings; the request log of moltstreet.middleware does not).
        "uvicorn": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "uvicorn.error": {"level": LOG_LEVEL},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}
# Content-Security-Policy (django-csp) of every page: scripts, styles, images, fonts and connections (the live
# feed's websockets included: 'self' covers ws: and wss: of the same host) only from this origin; no inline script
# or style, no plugins, no framing, forms only to this origin. The spectator pages, the agent guide, the API docs
# and the admin run under it (trading/tests/test_browser.py checks the browser reports no violation).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Python's warnings become log lines too (logger py.warnings), rather than raw text between the JSON lines.
logging.captureWarnings(True)

# --- Operations (README "Operations") ---
# Seconds /health/ waits for its database and channel-layer checks before answering 503.
HEALTH_CHECK_TIMEOUT = env.float("HEALTH_CHECK_TIMEOUT", default=2.0)
# Who may read /metrics: clients whose address (as the rate limits see it, TRUSTED_PROXIES) is in one of these
# networks, or that send `Authorization: Bearer <METRICS_TOKEN>` when it is set. Default: loopback only. Private
# networks are not trusted by default: 172.16.0.0/12 holds Docker's bridge networks, so every container on the host
# (and, behind a proxy without TRUSTED_PROXIES, every client) would come from a trusted address. A Prometheus in
# another container sends the token, or its own address is listed here.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.0/8", "::1/128"])
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# --- Sources: real markets mirrored from Kalshi, Polymarket and Manifold (DESIGN section 10, markets/sources/) ---
# Base URLs of their public APIs; tests point them at a local server serving recorded responses.
KALSHI_API_BASE = env("KALSHI_API_BASE", default="https://api.elections.kalshi.com/trade-api/v2")
POLYMARKET_GAMMA_BASE = env("POLYMARKET_GAMMA_BASE", default="https://gamma-api.polymarket.com")
POLYMARKET_CLOB_BASE = env("POLYMARKET_CLOB_BASE", default="https://clob.polymarket.com")
MANIFOLD_API_BASE = env("MANIFOLD_API_BASE", default="https://api.manifold.markets")
# Their HTTP: seconds to connect and for a whole request; attempts on 429, 5xx and connection errors, with
# exponential waits between RETRY_WAIT_MIN and RETRY_WAIT_MAX seconds, or the Retry-After a source asks for (at
# most RETRY_AFTER_MAX seconds: a source cannot stall a pass for longer).
SOURCE_HTTP = {
    "CONNECT_TIMEOUT": env.float("SOURCE_CONNECT_TIMEOUT", default=5.0),
    "TIMEOUT": env.float("SOURCE_TIMEOUT", default=10.0),
    "RETRY_ATTEMPTS": env.int("SOURCE_RETRY_ATTEMPTS", default=3),
    "RETRY_WAIT_MIN": env.float("SOURCE_RETRY_WAIT_MIN", default=2.0),
    "RETRY_WAIT_MAX": env.float("SOURCE_RETRY_WAIT_MAX", default=10.0),
    "RETRY_AFTER_MAX": env.float("SOURCE_RETRY_AFTER_MAX", default=60.0),
}

# --- MoltStreet rules (DESIGN section 2 and 6) ---
MOLTSTREET = {
    "INITIAL_GRANT": Decimal(env("MOLTSTREET_INITIAL_GRANT", default="1000.00")),
    "MARKET_CREATION_FEE": Decimal(env("MOLTSTREET_MARKET_CREATION_FEE", default="10.00")),
    # PostgreSQL `SET LOCAL lock_timeout` for every write service; a timeout becomes HTTP 503 + Retry-After.
    "LOCK_TIMEOUT_MS": env.int("MOLTSTREET_LOCK_TIMEOUT_MS", default=3000),
    # How many times a service transaction is retried after PostgreSQL reports a deadlock.
    "DEADLOCK_RETRIES": env.int("MOLTSTREET_DEADLOCK_RETRIES", default=3),
    # Group commit of POST /orders/ per market (trading/combiner.py): orders of one market queued in a web process
    # while its previous batch runs are matched together in one transaction, each answered with its own result.
    "ORDER_COMBINING": env.bool("MOLTSTREET_ORDER_COMBINING", default=False),
    "MAX_ORDER_SIZE": env.int("MOLTSTREET_MAX_ORDER_SIZE", default=1_000_000),
    "MAX_QUESTION_LENGTH": env.int("MOLTSTREET_MAX_QUESTION_LENGTH", default=300),
    # Resting (open or partly filled GTC/GTD) orders one agent may have across all markets; a new order that could
    # rest beyond that is refused with 409 open_order_limit. IOC and FOK orders never rest and are not counted.
    "MAX_OPEN_ORDERS": env.int("MOLTSTREET_MAX_OPEN_ORDERS", default=500),
    # API rate limits per scope (moltstreet/throttling.py): DRF rate strings "<requests>/<s|min|hour|day>"; empty
    # turns a scope off. Over budget: 429 rate_limited with Retry-After.
    "RATES": {
        "anon": env("MOLTSTREET_RATE_ANON", default="1200/min"),
        "agent_read": env("MOLTSTREET_RATE_AGENT_READ", default="1200/min"),
        "agent_write": env("MOLTSTREET_RATE_AGENT_WRITE", default="600/min"),
        "register": env("MOLTSTREET_RATE_REGISTER", default="20/hour"),
        # POST /api/v1/backtests/ per agent (each queued run costs a worker's time), on top of agent_write.
        "backtests": env("MOLTSTREET_RATE_BACKTESTS", default="30/hour"),
    },
    # Seconds between passes of the scheduler that closes markets at their deadline and expires GTD orders.
    "SCHEDULER_INTERVAL": env.float("MOLTSTREET_SCHEDULER_INTERVAL", default=10.0),
    # Seconds between the scheduler's checks of dead-man's switches past their deadline (trading.heartbeat).
    "HEARTBEAT_CHECK_INTERVAL": env.float("MOLTSTREET_HEARTBEAT_CHECK_INTERVAL", default=1.0),
    # A file the scheduler touches after each successful pass (empty: none); docker-compose.yml's health check of
    # the scheduler fails when it is older than a few intervals.
    "SCHEDULER_HEARTBEAT": env("MOLTSTREET_SCHEDULER_HEARTBEAT", default=""),
    # Live feed (docs/realtime.md): the most stored changes a websocket replays for `?since=` or to fill a gap; a
    # `since` further behind gets a snapshot, a gap further behind a `buffer_overflow` error and close 4008.
    "LIVE_REPLAY_LIMIT": env.int("MOLTSTREET_LIVE_REPLAY_LIMIT", default=1000),
    # Seconds a market feed waits for a batch that arrives out of order (transactions are published from several
    # threads and processes) before it reads the missing changes from the stored events.
    "LIVE_GAP_WAIT": env.float("MOLTSTREET_LIVE_GAP_WAIT", default=0.05),
    # Trades in a market feed's snapshot.
    "LIVE_SNAPSHOT_TRADES": env.int("MOLTSTREET_LIVE_SNAPSHOT_TRADES", default=50),
    # Seconds a commit may spend handing its messages to the channel layer before giving up (logged, never raised),
    # and a websocket handshake may wait to join its group (past that it is refused: Redis is down or stuck).
    "LIVE_PUBLISH_TIMEOUT": env.float("MOLTSTREET_LIVE_PUBLISH_TIMEOUT", default=2.0),
    # The source poller (manage.py run_poller): seconds between its looks for due feeds, and a file it touches after
    # each round (empty: none), which docker-compose.yml's health check of the poller reads.
    "POLLER_TICK": env.float("MOLTSTREET_POLLER_TICK", default=5.0),
    "POLLER_HEARTBEAT": env("MOLTSTREET_POLLER_HEARTBEAT", default=""),
    # Websockets per client address (moltstreet/clients.py): open at once in one server process, and handshakes in
    # a sliding window (a DRF rate string, counted in the cache across processes; empty turns it off). Past either,
    # the connection is accepted only to say why (an `error` message) and closed with 4429.
    "WEBSOCKETS_PER_ADDRESS": env.int("MOLTSTREET_WEBSOCKETS_PER_ADDRESS", default=50),
    "WEBSOCKET_HANDSHAKE_RATE": env("MOLTSTREET_WEBSOCKET_HANDSHAKE_RATE", default="60/min"),
    # The API's `search` parameter: at most this many terms and characters (400 invalid_request beyond).
    "SEARCH_MAX_TERMS": env.int("MOLTSTREET_SEARCH_MAX_TERMS", default=8),
    "SEARCH_MAX_LENGTH": env.int("MOLTSTREET_SEARCH_MAX_LENGTH", default=200),
    # Hours an oracle's proposed resolution waits for disputes before it becomes final and pays (DESIGN section 4).
    "RESOLUTION_DISPUTE_HOURS": env.float("RESOLUTION_DISPUTE_HOURS", default=24.0),
    # brier_vs_market (DESIGN section 10) is shown from this many scored markets with a source price on.
    "BRIER_VS_MARKET_MIN": env.int("MOLTSTREET_BRIER_VS_MARKET_MIN", default=5),
    # Agents registered from one address (an IPv4 address, an IPv6 /64) within this many hours of each other are
    # linked: their trades with each other earn no rank (DESIGN section 4a, docs/decisions.md).
    "LINK_WINDOW_HOURS": env.float("MOLTSTREET_LINK_WINDOW_HOURS", default=24.0),
    # Seconds after which `manage.py run_worker`, when it starts, takes a backtest still `running` (its worker died)
    # or still `queued` for a lost run, and queues it again (backtests/services.py backtest_requeue_stale).
    "BACKTEST_STALE_SECONDS": env.float("MOLTSTREET_BACKTEST_STALE_SECONDS", default=600.0),
}

# Background tasks (django-tasks): backtests are queued in the database (the `django_tasks_db` table, in the same
# transaction as the backtest row, so a queued backtest always has its task) and run by `manage.py run_worker`.
# MOLTSTREET_TASKS_BACKEND=django_tasks.backends.immediate.ImmediateBackend runs them inside the request instead.
TASKS = {
    "default": {
        "BACKEND": env("MOLTSTREET_TASKS_BACKEND", default="django_tasks_db.DatabaseBackend"),
        "QUEUES": ["default"],
    }
}
