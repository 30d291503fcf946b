"""Where a hot market's order costs the server its CPU: the closed loop of ``bench/orders.py --case closed`` (16
agents, one market) against one server process, sampled by py-spy (``--gil``: only the thread holding the GIL, so
what the samples split is the process's Python CPU). Prints the share of samples inside each step of the order path
(inclusive: a step's callees count toward it) and the top functions by own samples.

py-spy is a tool of this benchmark, not of the app: install it beside the venv (``pip install py-spy`` into any
environment) and pass ``--py-spy`` if it is not on PATH. It needs ptrace (root, or ``kernel.yama.ptrace_scope=0``).

    .venv/bin/python bench/profile_orders.py --py-spy /path/to/py-spy [--combining] [--server uvicorn]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

import harness
from harness import say
from orders import combining_env, make_calls

# Steps of the order path, each recognised by a function (file fragment, function name) on the stack.
STEPS = [
    ("outside the steps below: ASGI server, event loop, thread hand-offs", None),
    ("request to view: Django handler, middleware", ("django/core/handlers/base.py", "_get_response")),
    ("authentication (key lookup)", ("rest_framework/request.py", "_authenticate")),
    ("rate limits", ("rest_framework/views.py", "check_throttles")),
    ("strict query and body checks", ("moltstreet/strict.py", "initial")),
    ("order service: place (parse, lock, match, write)", ("trading/orders.py", "place_parsed")),
    ("order service: combined batch", ("trading/order_batch.py", "_place_in_market")),
    ("transaction commit", ("django/db/backends/base/base.py", "commit")),
    ("after commit: feed publish", ("trading/realtime.py", "publish_committed_events")),
    ("response rendering", ("rest_framework/response.py", "rendered_content")),
    ("logging and metrics middleware", ("moltstreet/middleware.py", "__call__")),
    ("database driver (psycopg)", ("psycopg/", "")),
]


def parse_raw(path: Path) -> tuple[int, Counter, Counter]:
    """py-spy's raw output (collapsed stacks ``frame;frame;... count``): total samples, inclusive counts per step,
    own counts per leaf function."""
    total, steps, leaves = 0, Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        inside = False
        for label, match in STEPS:
            if match is None:
                continue
            fragment, function = match
            if any(
                fragment in frame and (not function or f"{function} " in frame or frame.startswith(function))
                for frame in frames
            ):
                steps[label] += n
                inside = True
        if not inside:
            steps[STEPS[0][0]] += n
        leaves[frames[-1]] += n
    return total, steps, leaves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--combining", action="store_true")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second.")
    args = parser.parse_args()

    harness.setup()
    agents = harness.make_agents(16, "bench-profile")
    (market,) = harness.make_markets(1, agents[0], "profile")
    keys = [agent.key for agent in agents]
    load = make_calls([market], 16)
    out = Path(tempfile.mkdtemp(prefix="moltstreet-profile-")) / "orders.txt"
    with harness.running_server(args.server, 1, **combining_env(args)) as server:
        say(f"warm-up: {harness.closed_loop(server.url, keys, load, duration=3).describe()}")
        pid = server.process.pid  # uvicorn --workers 1 serves from the process it was started as
        spy = subprocess.Popen(  # noqa: S603 (a tool the user named)
            [
                args.py_spy,
                "record",
                "--pid",
                str(pid),
                "--gil",
                "--rate",
                str(args.rate),
                "--duration",
                str(int(args.duration)),
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.setdefault(
                "load", harness.closed_loop(server.url, keys, load, duration=args.duration)
            )
        )
        thread.start()
        thread.join()
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace')}")
    say(f"load while sampled: {result['load'].describe()}")
    total, steps, leaves = parse_raw(out)
    say(
        f"== profile of the order path ({args.server} x1, combining {'on' if args.combining else 'off'}; "
        f"{total} samples of the thread holding the GIL) =="
    )
    for label, _ in STEPS:
        say(f"{100 * steps[label] / max(total, 1):5.1f} %  {label}")
    say("top functions by own samples:")
    for frame, n in leaves.most_common(15):
        say(f"{100 * n / max(total, 1):5.1f} %  {frame}")


if __name__ == "__main__":
    main()
