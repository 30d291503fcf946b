"""Progress lines of long management commands: ``1,200/5,000 rows (24%)``, a few of them, never one per row.

Commands write them to stderr, so stdout keeps only the results (and the closing summary line) for a script to read.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Call with the number of items done so far; writes ``<done>/<total> <unit> (<pct>%)[: <detail>]`` at most once
    every ``interval`` seconds, and once more when ``done`` reaches ``total``. A run shorter than ``interval`` writes
    nothing: the command's summary says it all.

    ``detail`` (optional) is called only when a line is written, so it may be costly to build.
    """

    def __init__(
        self,
        write: Callable[[str], object],
        total: int = 0,
        *,
        unit: str = "rows",
        interval: float = 2.0,
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.write = write
        self.total = total
        self.unit = unit
        self.interval = interval
        self.prefix = prefix
        self.clock = clock
        self.last = clock()
        self.finished = False
        self.written = 0

    def line(self, done: int, detail: str = "") -> str:
        percent = 100 * done // self.total if self.total else 100
        text = f"{self.prefix}{done:,}/{self.total:,} {self.unit} ({percent}%)"
        return f"{text}: {detail}" if detail else text

    def count(self, done: int, total: int) -> None:
        """:meth:`__call__` for a caller that tells the total each time (``counted(done, total)`` callbacks)."""
        self.total = total
        self(done)

    def __call__(self, done: int, detail: Callable[[], str] | None = None) -> None:
        if self.finished:
            return
        now = self.clock()
        last = done >= self.total
        if last:
            self.finished = True
            if not self.written:
                return
        elif now - self.last < self.interval:
            return
        self.last = now
        self.written += 1
        self.write(self.line(done, detail() if detail else ""))
