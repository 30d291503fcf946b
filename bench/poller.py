"""Benchmark 7: a poller pass over 1,000 source markets (bench/README.md).

``trading.poller.feed_pass`` of one feed (open markets, ``max_markets`` 1,000) against a local
``markets.tests.source_server.SourceServer`` (a thread of the measuring process, the settings' base URLs pointed at it
by ``point_settings_at``; the real timeouts and retry settings are put back afterwards: nothing fails here, so they
never wait). The server answers from pages derived from the recorded responses in ``/work/shared/data/sources``:

* Kalshi: ``--markets`` (1,000) deep copies of the two entries of ``kalshi/sdv_markets_page.json``, each with a
  ticker of its own, varied prices (last, bid, ask) and volume, and a close time 30 days ahead (the recording's,
  2026-10-11, may lie in the past by now: the markets would still be mirrored, but not as live ones). Paged by cursor
  as Kalshi pages, 100 a page: what ``KalshiClient`` asks for (``limit=100``, Kalshi's own default), so the pass
  reads 10 pages as it would from Kalshi.
* Polymarket: copies of the five Gamma entries of ``polymarket/drmanhattan_gamma_markets_active.json``, each with an
  id and slug of its own, varied ``outcomePrices``, ``bestBid``/``bestAsk`` (so no CLOB book is read) and volume, an
  end date 30 days ahead; offset paging, 100 a page (``PolymarketClient``'s), and the empty page after the last.
* Manifold: copies of the open binary entries of ``manifold/predictngin_v0_markets_first100.json``, each with an id
  and slug of its own, a varied ``probability`` and volume, a close time 30 days ahead; paged by ``before`` (the last
  id), 500 a page (``ManifoldClient``'s), and the empty page after the last.

Per source, three passes of one feed: (1) the first, which imports every market and stores its first snapshot;
(2) with every price (and volume) changed, which stores a snapshot of each; (3) with nothing changed, which stores
none. Each run is a process of its own (a fresh interpreter, so that one run's freed memory does not hide the next
one's growth), on the one benchmark database; before the measured passes it makes the same three passes over 20
other markets (imports, caches, the HTTP client, the live feed's Redis connection warm). Measured per pass: the wall
and CPU time (the source server's thread included), the queries Django sent, and the extra memory two ways: the peak
of ``tracemalloc`` over the pass less what was traced before it (Python's own allocations), and the process's resident
set: its peak during the pass (VmHWM, reset before it through ``/proc/self/clear_refs``) less VmRSS before it
(everything: Python, psycopg, the C libraries). ``tracemalloc`` slows Python down, so it is measured in runs of its
own (``--memory-runs``); the times and RSS come from runs without it. Printed: the median of ``--runs`` (3) runs of
each, and the time of each run.

Every pass must reach the expected counts (imported, snapshots) or the benchmark fails; it ends with the audit of
DESIGN section 5. ``--profile`` writes pyinstrument's profile of each measured pass of one more run (text) to
``--profile-dir``.

    .venv/bin/python bench/poller.py                           # about 10 minutes
    .venv/bin/python bench/poller.py --sources kalshi --runs 1 --memory-runs 1 --profile
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import harness
from harness import median, say

SOURCES = ("kalshi", "polymarket", "manifold")
PASSES = ("first pass (imports)", "every price changed", "nothing changed")
WARM_MARKETS = 20
RESULT = "RESULT "  # a worker's last line: RESULT <json>
TARGET_SECONDS, TARGET_MB = 10.0, 50.0


# --------------------------------------------------------------------------------------------------------------------
# The source's pages, derived from the recordings


def _cents(n: int) -> Decimal:
    return (Decimal(n) / 100).quantize(Decimal("0.0001"))


def _price(i: int, version: int) -> int:
    """Market ``i``'s YES price in cents at ``version``: 2-97, different at every version."""
    return 2 + (i * 37 + version) % 96


def kalshi_entries(server, n: int, label: str, version: int, close: datetime) -> list[dict]:
    """``n`` Kalshi market entries: the recorded two in turn, deep-copied; changed: ticker (unique), title (numbered),
    close time, last price, bid and ask (one cent either side), volume."""
    recorded = server.load("kalshi/sdv_markets_page.json")["markets"]
    out = []
    for i in range(n):
        entry = copy.deepcopy(recorded[i % len(recorded)])
        price = _price(i, version)
        entry.update(
            ticker=f"{entry['ticker']}-{label}{i:05d}",
            title=f"{entry['title']} (benchmark {label} {i})",
            close_time=(close + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            last_price_dollars=str(_cents(price)),
            yes_bid_dollars=str(_cents(price - 1)),
            yes_ask_dollars=str(_cents(price + 1)),
            no_bid_dollars=str(_cents(99 - price)),
            no_ask_dollars=str(_cents(101 - price)),
            volume_fp=f"{1000 + i * 13 + version * 7}.00",
        )
        out.append(entry)
    return out


def polymarket_entries(server, n: int, label: str, version: int, close: datetime) -> list[dict]:
    """``n`` Gamma market entries: the recorded five in turn, deep-copied; changed: id (unique), slug, question
    (numbered), end date, ``outcomePrices``, ``bestBid``/``bestAsk``, ``volumeNum``."""
    recorded = server.load("polymarket/drmanhattan_gamma_markets_active.json")
    base = int.from_bytes(label.encode(), "big") * 10_000  # a block of ids per run label
    out = []
    for i in range(n):
        entry = copy.deepcopy(recorded[i % len(recorded)])
        price = _price(i, version)
        entry.update(
            id=str(base + i),
            slug=f"{entry['slug']}-bench-{label}-{i}",
            question=f"{entry['question']} (benchmark {label} {i})",
            endDate=(close + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            outcomePrices=json.dumps([str(_cents(price)), str(_cents(100 - price))]),
            bestBid=float(_cents(price - 1)),
            bestAsk=float(_cents(price + 1)),
            volumeNum=1000.5 + i * 13 + version * 7,
        )
        out.append(entry)
    return out


def manifold_entries(server, n: int, label: str, version: int, close: datetime) -> list[dict]:
    """``n`` Manifold LiteMarkets: the recorded open binary ones in turn, deep-copied; changed: id (unique), slug,
    url, question (numbered), close time, ``probability`` (and ``p``), ``volume``."""
    recorded = [
        m
        for m in server.load("manifold/predictngin_v0_markets_first100.json")
        if m.get("outcomeType") == "BINARY" and not m.get("isResolved")
    ]
    out = []
    for i in range(n):
        entry = copy.deepcopy(recorded[i % len(recorded)])
        probability = (_price(i, version) * 100 + i % 100) / 10_000  # four places, as the mirror keeps them
        entry.update(
            id=f"bench{label}{i:05d}",
            slug=f"{entry['slug']}-bench-{label}-{i}",
            url=f"{entry['url']}-bench-{label}-{i}",
            question=f"{entry['question']} (benchmark {label} {i})",
            closeTime=int((close + timedelta(minutes=i)).timestamp() * 1000),
            probability=probability,
            p=probability,
            volume=1000.5 + i * 13 + version * 7,
        )
        out.append(entry)
    return out


ENTRIES = {"kalshi": kalshi_entries, "polymarket": polymarket_entries, "manifold": manifold_entries}


def serve(server, source: str, entries: list[dict]) -> int:
    """Route the listing of ``entries`` as ``source`` pages it (pre-encoded: the server only writes bytes); returns
    the number of pages."""
    from markets.tests.source_server import GAMMA, KALSHI, MANIFOLD, Reply

    server.reset()

    def body(value: Any) -> Reply:
        return Reply(body=json.dumps(value).encode())

    if source == "kalshi":
        size = 100
        pages = [entries[k : k + size] for k in range(0, len(entries), size)]
        for k, page in enumerate(pages):
            cursor = f"bench-cursor-{k + 1}" if k + 1 < len(pages) else ""
            query = {"cursor": f"bench-cursor-{k}"} if k else None
            server.route("GET", KALSHI + "/markets", body({"cursor": cursor, "markets": page}), query=query)
        return len(pages)
    if source == "polymarket":
        size = 100
        offsets = list(range(0, len(entries) + 1, size))  # a full last page is followed by an empty one
        for offset in offsets:
            server.route("GET", GAMMA + "/markets", body(entries[offset : offset + size]), query={"offset": offset})
        return len(offsets)
    size = 500
    starts = list(range(0, len(entries) + 1, size))
    for start in starts:
        query = {"before": entries[start - 1]["id"]} if start else None
        server.route("GET", MANIFOLD + "/v0/markets", body(entries[start : start + size]), query=query)
    return len(starts)


# --------------------------------------------------------------------------------------------------------------------
# Memory


def _status_kb(name: str) -> int:
    match = re.search(rf"^{name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); ``False`` where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(call: Callable[[], Any], *, trace: bool, profile: Path | None) -> tuple[Any, dict[str, Any]]:
    """``call()``'s result and figures: wall and CPU seconds, the queries Django sent, the extra memory (MB) by RSS
    (the peak during the call less the RSS before it; where VmHWM cannot be reset, the growth of the process's
    ``ru_maxrss`` instead, which misses a peak lower than an earlier one) and, with ``trace``, by tracemalloc.
    ``profile``: a file for pyinstrument's profile of the call."""
    import resource
    import tracemalloc

    from django.db import connection

    queries = 0

    def count(execute, sql, params, many, context):
        nonlocal queries
        queries += 1
        return execute(sql, params, many, context)

    gc.collect()
    rss_before = _status_kb("VmRSS")
    exact = _reset_peak_rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    if trace:
        tracemalloc.reset_peak()
        traced_before = tracemalloc.get_traced_memory()[0]
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler()
        profiler.start()
    with connection.execute_wrapper(count):
        started, cpu = time.perf_counter(), time.process_time()
        result = call()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if profiler is not None:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=True, show_all=False))
    if exact:
        rss_peak = _status_kb("VmHWM") - rss_before
    else:
        rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    figures = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "queries": queries,
        "rss_peak_mb": rss_peak / 1024,
        "rss_kept_mb": (_status_kb("VmRSS") - rss_before) / 1024,
    }
    if trace:
        figures["traced_peak_mb"] = (tracemalloc.get_traced_memory()[1] - traced_before) / 2**20
    return result, figures


# --------------------------------------------------------------------------------------------------------------------
# A run (in a worker process)


def run_source(source: str, n: int, label: str, trace: bool, profile_dir: str | None) -> dict[str, Any]:
    """The warm-up, then the three measured passes of one source; per pass its figures."""
    from django.conf import settings
    from django.utils import timezone

    from markets.models import Feed
    from markets.tests.source_server import SourceServer, point_settings_at
    from trading.poller import feed_pass

    close = timezone.now().replace(microsecond=0) + timedelta(days=30)
    real_http = dict(settings.SOURCE_HTTP)
    out: dict[str, Any] = {"passes": []}
    with SourceServer() as server:
        point_settings_at(settings, server.url)
        settings.SOURCE_HTTP = real_http  # the real timeouts and retries, not the tests' fast ones
        for count, run_label in ((WARM_MARKETS, f"w{label}"), (n, label)):
            measured = run_label == label
            versions = [ENTRIES[source](server, count, run_label, v, close) for v in (0, 1)]
            feed = Feed.objects.create(source=source, max_markets=1000, interval_seconds=60)
            expected = [(count, count), (0, count), (0, 0)]  # (imported, snapshots) of each pass
            for number, version in enumerate((0, 1, 1)):
                out["pages"] = serve(server, source, versions[version])
                profile = (
                    Path(profile_dir) / f"poller-{source}-pass{number + 1}.txt" if measured and profile_dir else None
                )
                summary, figures = measure(lambda feed=feed: feed_pass(feed), trace=trace, profile=profile)
                figures["summary"] = {k: v for k, v in summary.__dict__.items() if v and k != "seconds"}
                got = (summary.imported, summary.snapshots)
                if summary.source_error or summary.failed or summary.skipped or got != expected[number]:
                    raise SystemExit(
                        f"{source} pass {number + 1} ({run_label}): imported, snapshots {got}, expected "
                        f"{expected[number]}; {figures['summary']}"
                    )
                if measured:
                    out["passes"].append(figures)
    return out


def worker(args: argparse.Namespace) -> None:
    import tracemalloc

    if args.trace:
        tracemalloc.start()
    harness.setup(fresh=False)
    result = run_source(args.worker, args.markets, args.label, args.trace, args.profile_to)
    print(RESULT + json.dumps(result), flush=True)


def spawn(source: str, markets: int, label: str, *, trace: bool, profile_dir: str | None = None) -> dict[str, Any]:
    """One run in a fresh interpreter; its figures."""
    command = [sys.executable, __file__, "--worker", source, "--markets", str(markets), "--label", label]
    if trace:
        command.append("--trace")
    if profile_dir:
        command += ["--profile-to", profile_dir]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)  # noqa: S603 (ourselves)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the {source} run {label} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1][len(RESULT) :])


# --------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--markets", type=int, default=1000, help="Markets the source lists (default 1,000).")
    parser.add_argument("--runs", type=int, default=3, help="Runs for the times and RSS (medians printed).")
    parser.add_argument("--memory-runs", type=int, default=3, help="Runs with tracemalloc (medians printed).")
    parser.add_argument("--profile", action="store_true", help="One more run under pyinstrument (text profiles).")
    parser.add_argument(
        "--profile-dir", default=tempfile.gettempdir(), help="Where --profile writes (default: TMPDIR)."
    )
    parser.add_argument("--worker", choices=SOURCES, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.markets > 1000:
            raise SystemExit("a feed mirrors at most 1,000 markets")
        return worker(args)
    began = time.perf_counter()

    harness.setup()
    lines = []
    for source in args.sources:
        timed = [spawn(source, args.markets, f"t{r}", trace=False) for r in range(args.runs)]
        traced = [spawn(source, args.markets, f"m{r}", trace=True) for r in range(args.memory_runs)]
        pages = timed[0]["pages"]
        for number, name in enumerate(PASSES):

            def figure(runs: list[dict], key: str, number: int = number) -> float:
                return median([run["passes"][number][key] for run in runs])

            seconds, rss, traced_mb = (
                figure(timed, "seconds"),
                figure(timed, "rss_peak_mb"),
                figure(traced, "traced_peak_mb"),
            )
            summary = timed[0]["passes"][number]["summary"]
            met = "met" if seconds <= TARGET_SECONDS and max(rss, traced_mb) < TARGET_MB else "NOT met"
            lines.append(
                f"poller: {source}, {args.markets:,} markets ({pages} pages), {name}: {seconds:.2f} s "
                f"({figure(timed, 'cpu_seconds'):.2f} s CPU), {figure(timed, 'queries'):,.0f} queries; extra memory "
                f"{traced_mb:.1f} MB traced, {rss:.1f} MB RSS peak ({figure(timed, 'rss_kept_mb'):.1f} MB kept); "
                f"{summary.get('imported', 0)} imported, {summary.get('snapshots', 0)} snapshots (median of "
                f"{args.runs}, tracemalloc of {args.memory_runs}; target <= {TARGET_SECONDS:g} s and < "
                f"{TARGET_MB:g} MB: {met})"
            )
            say(lines[-1])
            say("  per run: " + ", ".join(f"{run['passes'][number]['seconds']:.2f} s" for run in timed))
        if args.profile:
            Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
            spawn(source, args.markets, "p0", trace=False, profile_dir=args.profile_dir)
            say(f"profiles of the {source} passes in {args.profile_dir}/poller-{source}-pass*.txt")

    say(harness.audit_line())
    lines.append(f"poller: whole benchmark took {time.perf_counter() - began:.0f} s")
    say("== poller ==")
    for line in lines:
        say(line)


if __name__ == "__main__":
    main()
