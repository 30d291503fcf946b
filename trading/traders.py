"""House traders: the SDK's built-in strategies run live, to keep the demo markets alive (``manage.py run_traders``).

Each house trader is an agent running one built-in of :mod:`moltstreet_client.strategies` through the SDK's live
runner (:func:`moltstreet_client.runner.run_live`'s :class:`~moltstreet_client.runner.LiveRunner`): the same class an
agent backtests with ``moltstreet-backtest`` and runs with ``moltstreet-run``, and the same runner (DESIGN section
11). They trade over the HTTP API and the websocket feeds exactly like an outside agent: the same authentication,
rate limits, validation and matching. Nothing here touches the order book or balances directly, so they cannot
break the invariants of DESIGN section 5; the only server-side steps the command takes are the ones an operator
takes in the admin (marking the agents as house traders, issuing them keys, topping up their credits with a
ledgered operator adjustment).

The team (strategies and their parameters are documented in :mod:`moltstreet_client.strategies`):

- ``maker``: :class:`~moltstreet_client.strategies.MarketMaker` (``market_maker``), post-only quotes around the fair
  value, skewed against its inventory (Avellaneda and Stoikov 2008). Each requote is one batch cancel and one batch
  place (``POST /orders/batch-cancel/``, ``POST /orders/batch/``: the runner sends the built-ins' requotes so), and
  its runner keeps the agent's dead-man's switch armed (``MAKER_HEARTBEAT`` seconds, a heartbeat every third of
  that): if the desk dies or stalls, the server cancels its quotes (``heartbeat_expired``) instead of leaving them
  in the book for anyone to pick off. A clean stop withdraws them, then disarms the switch.
- ``noise``: :class:`~moltstreet_client.strategies.NoiseTrader` (``noise``), small random orders (Kyle 1985); its
  ``interval`` grows with the number of markets so each trader keeps about one turn every four seconds in all.
- ``momentum``: :class:`~moltstreet_client.strategies.Momentum` (``momentum``), follows the last trades' trend.
- ``leaner``: :class:`~moltstreet_client.strategies.ReferenceLeaner` (``reference_leaner``), leans toward the
  source's reference price (DESIGN section 10) in the markets that have one, and states it as its forecast.

:class:`Desk` runs them all in one process, in the most traded open markets, re-chosen every ``refresh`` seconds:
each cycle every trader runs a :class:`LiveRunner` in its own thread over one set of shared public feeds
(:class:`~moltstreet_client.runner.MarketFeeds`: one websocket a market, plus one private feed a trader), and
withdraws its resting orders when the cycle ends.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from moltstreet_client import Client, MoltStreetError, TransportError
from moltstreet_client.runner import LiveResult, LiveRunner, MarketFeeds
from moltstreet_client.strategies import BUILTINS
from moltstreet_client.strategy import Strategy

MAKER, NOISE, MOMENTUM, LEANER = "maker", "noise", "momentum", "leaner"
# Each house kind is a built-in strategy of the SDK.
BUILTIN = {MAKER: "market_maker", NOISE: "noise", MOMENTUM: "momentum", LEANER: "reference_leaner"}
DESCRIPTIONS = {
    MAKER: "House market maker run by MoltStreet (the SDK's built-in market_maker): rests post-only bids and asks "
    "around the last price, skewed against its inventory. Not a real participant.",
    NOISE: "House noise trader run by MoltStreet (the SDK's built-in noise): trades small random sizes to keep the "
    "demo markets moving. Not a real participant.",
    MOMENTUM: "House momentum trader run by MoltStreet (the SDK's built-in momentum): buys the side whose price has "
    "been rising. Not a real participant.",
    LEANER: "House reference leaner run by MoltStreet (the SDK's built-in reference_leaner): buys below and sells "
    "above the source's reference price. Not a real participant.",
}
# Seconds between one noise trader's turns, across all its markets (its `interval` is this x the markets).
NOISE_PACE = 4.0
# Seconds between balance checks of the traders (the top-up).
BALANCE_CHECK_EVERY = 60.0
# Timeout of the house market maker's dead-man's switch (seconds, 5-300): its quotes outlive a dead desk this long.
MAKER_HEARTBEAT = 30


def house_params(
    kind: str, number: int, markets: int, seed: int | None, noise_pace: float = NOISE_PACE
) -> dict[str, Any]:
    """The built-in's parameters for house trader ``number`` of ``kind`` trading ``markets`` markets: the
    built-in's defaults, but a noise trader's ``interval`` (``noise_pace`` x markets: about one order every
    ``noise_pace`` seconds in all) and its ``seed`` (``seed`` + number, random without one)."""
    if kind != NOISE:
        return {}
    rng_seed = (seed + number) if seed is not None else random.randrange(2**31 - 1)
    return {"interval": noise_pace * max(1, markets), "seed": rng_seed % (2**31 - 1)}


@dataclass
class Trader:
    """One house agent: its SDK client (with its key), its kind and number, its strategy (kept across cycles, so a
    noise trader's random sequence and a leaner's stated forecasts carry on), and the results of its runs."""

    name: str
    kind: str
    client: Client
    number: int = 1
    strategy: Strategy | None = None
    results: list[LiveResult] = field(default_factory=list)
    withdrawn: bool = True  # its last run's resting orders were cancelled (or it had none)
    error: str = ""

    def make_strategy(self, markets: int, seed: int | None, noise_pace: float = NOISE_PACE) -> Strategy:
        params = house_params(self.kind, self.number, markets, seed, noise_pace)
        if self.strategy is None:
            self.strategy = BUILTINS[BUILTIN[self.kind]](**params)
        elif "interval" in params:  # a new cycle with another number of markets: the same pace in all
            # Strategy.__init__ makes each parameter an attribute, which its class does not declare.
            self.strategy.settings["interval"] = self.strategy.interval = params["interval"]  # type: ignore[attr-defined]
        return self.strategy


class Desk:
    """Runs house traders in cycles until ``stop`` is set or ``duration`` passes.

    Each cycle picks the ``markets`` most traded open markets (deadline at least two minutes away), runs every
    trader's built-in on them live (the leaner only on those with a reference price) for ``refresh`` seconds, then
    stops the runners, which cancel their resting orders. ``top_up(trader)`` is called every
    ``BALANCE_CHECK_EVERY`` seconds for each trader (the command grants credits there, as an operator would, when
    its balance runs low). ``report(line)``: progress lines. Refusals of the exchange are counted by the runners,
    never fatal; a runner whose feed fails for good (the server went away) ends its cycle early.
    ``maker_heartbeat``: the market makers' runners arm the agent's dead-man's switch with this timeout (seconds,
    5-300; ``None``: off) for each cycle, and disarm it when they stop cleanly.
    """

    def __init__(
        self,
        traders: list[Trader],
        *,
        markets: int = 6,
        seed: int | None = None,
        refresh: float = 300.0,
        noise_pace: float = NOISE_PACE,
        top_up: Callable[[Trader], None] | None = None,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        maker_heartbeat: int | None = MAKER_HEARTBEAT,
    ) -> None:
        self.traders = traders
        self.maker_heartbeat = maker_heartbeat
        self.market_count = markets
        self.seed = seed
        self.refresh = refresh
        self.noise_pace = noise_pace
        self.top_up = top_up
        self.report = report or (lambda line: None)
        self.clock = clock
        self.markets: list = []
        self.runners: list[LiveRunner] = []
        self.cycles = 0

    def choose_markets(self) -> list:
        """The most traded open markets (one page of ``GET /markets/``)."""
        client = self.traders[0].client
        soon = datetime.now(UTC) + timedelta(minutes=2)
        listed = client.markets(status="open", ordering="-volume")
        return [m for m in itertools.islice(listed, 50) if m.deadline and m.deadline > soon][: self.market_count]

    def _markets_of(self, trader: Trader) -> list[str]:
        if trader.kind == LEANER:
            return [str(m.id) for m in self.markets if m.reference_price is not None]
        return [str(m.id) for m in self.markets]

    def run(self, stop: threading.Event, *, duration: float | None = None, report_every: float = 30.0) -> None:
        """Cycles until ``stop`` is set or ``duration`` seconds pass; on the way out every trader's runner has
        withdrawn its resting orders, or the trader is in :meth:`unwithdrawn`."""
        started = self.clock()
        end = started + duration if duration is not None else None
        reported = checked = started
        if self.top_up is not None:
            checked = float("-inf")
        while not stop.is_set() and (end is None or self.clock() < end):
            try:
                self.markets = self.choose_markets()
            except (MoltStreetError, TransportError) as exc:
                self.report(f"could not list the markets ({exc}); retrying")
                stop.wait(5.0)
                continue
            if not self.markets:
                self.report("no open market to trade; waiting")
                stop.wait(min(self.refresh, 30.0))
                continue
            cycle_end = self.clock() + self.refresh
            if end is not None:
                cycle_end = min(cycle_end, end)
            cycle = threading.Event()
            threads = self._start_cycle(cycle)
            while not stop.is_set() and self.clock() < cycle_end and any(t.is_alive() for t in threads):
                now = self.clock()
                if now - reported >= report_every:
                    self.report(self.summary(now - started))
                    reported = now
                if self.top_up is not None and now - checked >= BALANCE_CHECK_EVERY:
                    checked = now
                    for trader in self.traders:
                        self.top_up(trader)
                stop.wait(min(0.5, max(0.0, cycle_end - now)))
            cycle.set()
            for thread in threads:
                thread.join()
            self.cycles += 1

    def _reporter(self, name: str) -> Callable[[str], None]:
        """``report`` with each line prefixed by a trader's name."""
        return lambda line: self.report(f"{name}: {line}")

    def _start_cycle(self, cycle: threading.Event) -> list[threading.Thread]:
        feeds = MarketFeeds(self.traders[0].client)
        self.runners = []
        threads = []
        for trader in self.traders:
            markets = self._markets_of(trader)
            if not markets:
                continue
            strategy = trader.make_strategy(len(markets), self.seed, self.noise_pace)
            runner = LiveRunner(
                strategy,
                trader.client,
                markets,
                stop_event=cycle,
                feeds=feeds,
                report=self._reporter(trader.name),
                heartbeat_seconds=self.maker_heartbeat if trader.kind == MAKER else None,
            )
            self.runners.append(runner)
            threads.append(threading.Thread(target=self._run, args=(trader, runner), name=trader.name, daemon=True))
        for thread in threads:
            thread.start()
        closer = threading.Thread(target=self._close_after, args=(threads, feeds), daemon=True)
        closer.start()
        return [*threads, closer]

    @staticmethod
    def _close_after(threads: list[threading.Thread], feeds: MarketFeeds) -> None:
        for thread in threads:
            thread.join()
        feeds.close()

    def _run(self, trader: Trader, runner: LiveRunner) -> None:
        try:
            runner.run()
            trader.error = ""
        except (MoltStreetError, TransportError, OSError, TimeoutError) as exc:
            # The server went away or refused the trader: its cycle ends here (the desk goes on).
            trader.error = str(exc)
            self.report(f"{trader.name}: stopped ({exc})")
        finally:
            trader.results.append(runner.result)
            trader.withdrawn = runner.result.withdrawn is not False

    def unwithdrawn(self) -> list[Trader]:
        """The traders whose last runner could not cancel its resting orders (the server stopped with us)."""
        return [trader for trader in self.traders if not trader.withdrawn]

    def total(self) -> dict[str, Any]:
        """Orders, trades, contracts, cancels and refusals of every run so far (those running included)."""
        results = [r for t in self.traders for r in t.results]
        done = {id(r) for r in results}
        results += [runner.result for runner in self.runners if id(runner.result) not in done]
        refused: dict[str, int] = {}
        for result in results:
            for code, count in result.refusals.items():
                refused[code] = refused.get(code, 0) + count
        return {
            "orders": sum(r.orders for r in results),
            "trades": sum(r.trades for r in results),
            "contracts": sum(r.contracts for r in results),
            "cancels": sum(r.cancels for r in results),
            "forecasts": sum(r.forecasts for r in results),
            "refused": refused,
            "transport_errors": sum(r.transport_errors for r in results),
        }

    def summary(self, elapsed: float) -> str:
        total = self.total()
        refused = ", ".join(f"{code} {n}" for code, n in sorted(total["refused"].items())) or "none"
        return (
            f"{elapsed:.0f} s: {total['orders']} orders, {total['trades']} trades ({total['contracts']} contracts), "
            f"{total['cancels']} cancels, {total['forecasts']} forecasts in {len(self.markets)} markets; "
            f"refused: {refused}; requests without an answer: {total['transport_errors']}"
        )
