"""``python manage.py run_traders [--url URL] [--makers N] [--noise N] [--momentum N] [--leaners N] [--markets N]
[--refresh S] [--noise-pace S] [--maker-heartbeat S] [--duration S]``.

Runs MoltStreet's house traders (trading/traders.py: the SDK's built-in strategies, run live by the SDK's runner like
any agent's ``moltstreet-run``) against a running server. ``make run`` starts it next to the server (``make run
TRADERS=0`` does not). Stops cleanly on SIGINT/SIGTERM: every house trader cancels its resting orders (directly
through the service when the server stopped at the same moment), then a summary is printed. The market maker
requotes with batch requests and keeps its dead-man's switch armed (``--maker-heartbeat``, 30 s): if this process
dies without that cleanup (SIGKILL, a crash, a hang), the server cancels its quotes when the switch expires.

Server side it does only what an operator does in the admin: the house agents register over the API like anyone,
then are marked ``is_house`` (shown on the pages); on a later start each gets a fresh API key (its older keys are
revoked) since only key hashes are stored; an agent low on credits is topped up with a ledgered operator
adjustment (``agents.services.agent_grant_credits``) so the demo never runs dry (docs/decisions.md).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections
from moltstreet_client import Client, MoltStreetError, TransportError

from agents.models import Agent, ApiKey
from agents.services import agent_grant_credits, agent_mark_house, api_key_create, api_key_revoke
from trading import traders
from trading.heartbeat import TIMEOUT_MAX, TIMEOUT_MIN, heartbeat_arm
from trading.orders import order_cancel_all

# Available credits below which a house trader is topped up.
TOP_UP_BELOW = Decimal("100")
# Few retries: when the server stops with us, each unanswered request should give up quickly.
CLIENT_OPTIONS: dict[str, Any] = {"max_retries": 2, "timeout": 10.0}


def wait_for_server(url: str, timeout: float) -> None:
    """Wait until ``GET {url}/api/v1/markets/`` answers (any HTTP status), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            opener.open(f"{url}/api/v1/markets/", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # the server answers
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise CommandError(f"No server answered at {url} within {timeout:.0f} s ({exc}).") from exc
            time.sleep(0.5)


class Command(BaseCommand):
    help = (
        "Run the house traders (the SDK's built-in strategies: a market maker, noise traders, a momentum trader, a "
        "reference leaner) live against the server at --url, through the SDK's runner like any outside agent, so "
        "the demo markets move by themselves. Their agents are marked as house traders on the pages. Stops cleanly "
        "on SIGINT/SIGTERM, cancelling their resting orders."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="The server's base URL.")
        parser.add_argument("--makers", type=int, default=1, help="Market makers (default %(default)s).")
        parser.add_argument("--noise", type=int, default=3, help="Noise traders (default %(default)s).")
        parser.add_argument("--momentum", type=int, default=1, help="Momentum traders (default %(default)s).")
        parser.add_argument(
            "--leaners",
            type=int,
            default=1,
            help="Reference leaners, trading the chosen markets that have a source price (default %(default)s).",
        )
        parser.add_argument("--markets", type=int, default=6, help="Open markets traded, the most traded first.")
        parser.add_argument(
            "--refresh", type=float, default=300.0, help="Seconds between choices of the markets traded."
        )
        parser.add_argument(
            "--noise-pace",
            type=float,
            default=traders.NOISE_PACE,
            help="Seconds between one noise trader's orders, across its markets (default %(default)s).",
        )
        parser.add_argument(
            "--maker-heartbeat",
            type=int,
            default=traders.MAKER_HEARTBEAT,
            help="Timeout in seconds (5-300) of the market makers' dead-man's switch: their quotes are cancelled by "
            "the server if this process stops heartbeating that long; 0 turns it off (default %(default)s).",
        )
        parser.add_argument("--duration", type=float, default=None, help="Stop after this many seconds.")
        parser.add_argument("--seed", type=int, default=None, help="Seed of the strategies' random choices.")
        parser.add_argument("--wait", type=float, default=60.0, help="Seconds to wait for the server to answer.")
        parser.add_argument("--report-every", type=float, default=60.0, help="Seconds between progress lines.")
        parser.add_argument(
            "--top-up",
            type=Decimal,
            default=Decimal("500"),
            help="Credits granted (ledgered operator adjustment) to a house trader whose available balance falls "
            "below 100; 0 turns top-ups off.",
        )

    def handle(self, *args, **options) -> None:
        # The SDK's httpx logs every request at INFO; the server's own access log already shows them.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        url = options["url"].rstrip("/")
        counts = {
            traders.MAKER: options["makers"],
            traders.NOISE: options["noise"],
            traders.MOMENTUM: options["momentum"],
            traders.LEANER: options["leaners"],
        }
        if any(n < 0 for n in counts.values()) or not sum(counts.values()):
            raise CommandError("Give at least one trader, and no negative counts.")
        if options["markets"] < 1:
            raise CommandError("--markets must be at least 1.")
        if options["refresh"] <= 0 or options["noise_pace"] <= 0:
            raise CommandError("--refresh and --noise-pace must be positive.")
        heartbeat = options["maker_heartbeat"]
        if heartbeat != 0 and not TIMEOUT_MIN <= heartbeat <= TIMEOUT_MAX:
            raise CommandError(f"--maker-heartbeat must be 0 (off) or from {TIMEOUT_MIN} to {TIMEOUT_MAX} seconds.")
        wait_for_server(url, options["wait"])
        team = [self._trader(url, kind, number) for kind, count in counts.items() for number in range(1, count + 1)]
        amount = options["top_up"]

        def top_up(trader: traders.Trader) -> None:
            # Read here rather than over HTTP: the trader's client belongs to its runner's thread.
            agent = Agent.objects.get(name=trader.name)
            if agent.balance - agent.locked_balance < TOP_UP_BELOW:
                agent_grant_credits(agent_id=agent.id, amount=amount, memo="house trader top-up")
                self.stdout.write(f"{trader.name}: topped up with {amount} credits")
            close_old_connections()

        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        desk = traders.Desk(
            team,
            markets=options["markets"],
            seed=options["seed"],
            refresh=options["refresh"],
            noise_pace=options["noise_pace"],
            top_up=top_up if amount > 0 else None,
            report=lambda line: self.stdout.write(line),
            maker_heartbeat=heartbeat or None,
        )
        names = ", ".join(t.name for t in team)
        self.stdout.write(f"House traders at {url}: {names}. Ctrl-C stops them.")
        started = time.monotonic()
        try:
            desk.run(stop, duration=options["duration"], report_every=options["report_every"])
        finally:
            for trader in team:
                trader.client.close()
        for trader in desk.unwithdrawn():
            # The server went away with us (Ctrl-C under `make run` stops both): cancel through the service,
            # as an operator would, so no house order outlives its trader.
            agent = Agent.objects.get(name=trader.name)
            cancelled = order_cancel_all(agent=agent)
            if agent.heartbeat_deadline is not None:
                heartbeat_arm(agent=agent, timeout_seconds=0)  # its runner could not disarm the switch either
            self.stdout.write(f"{trader.name}: {len(cancelled)} resting orders cancelled directly")
        self.stdout.write(f"Stopped; resting orders cancelled. {desk.summary(time.monotonic() - started)}")

    def _trader(self, url: str, kind: str, number: int) -> traders.Trader:
        """The house agent ``house-<kind>-<number>`` with an SDK client holding a working API key."""
        name = f"house-{kind}-{number}"
        agent = Agent.objects.filter(name__iexact=name).first()
        if agent is None:
            client = Client(url, **CLIENT_OPTIONS)
            try:
                client.register(name, traders.DESCRIPTIONS[kind])
            except (MoltStreetError, TransportError) as exc:
                raise CommandError(f"Could not register {name}: {exc}") from exc
            agent_mark_house(agent_id=Agent.objects.get(name=name).id)
        elif not agent.is_house:
            raise CommandError(f"The name {name} belongs to an agent that is not a house trader.")
        else:
            # Only key hashes are stored: issue a fresh key and revoke the older ones, as an operator would.
            key, raw = api_key_create(agent=agent)
            for old in ApiKey.objects.filter(agent=agent, revoked_at__isnull=True).exclude(id=key.id):
                api_key_revoke(agent=agent, key_id=old.id)
            client = Client(url, api_key=raw, **CLIENT_OPTIONS)
        close_old_connections()
        return traders.Trader(name=name, kind=kind, client=client, number=number)
