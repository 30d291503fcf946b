"""Progress lines of long commands (moltstreet/progress.py)."""

from __future__ import annotations

from moltstreet.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_long_run_writes_a_line_every_interval_and_one_at_the_end():
    clock, lines = Clock(), []
    progress = Progress(lines.append, 5_000, interval=2.0, clock=clock)
    for done in range(1, 5_001):
        clock.now = done / 1_000  # 1,000 rows a second: 5 s in all
        progress(done, lambda: "fine")
    assert lines == [
        "2,000/5,000 rows (40%): fine",
        "4,000/5,000 rows (80%): fine",
        "5,000/5,000 rows (100%): fine",
    ]


def test_a_run_shorter_than_the_interval_writes_nothing():
    clock, lines = Clock(), []
    progress = Progress(lines.append, 300, interval=2.0, clock=clock)
    for done in range(1, 301):
        progress(done)
    assert lines == []


def test_count_takes_the_total_with_each_call():
    clock, lines = Clock(), []
    progress = Progress(lines.append, unit="questions", prefix="  ", interval=1.0, clock=clock)
    clock.now = 1.5
    progress.count(1_200, 5_000)
    progress.count(5_000, 5_000)
    progress.count(5_000, 5_000)  # after the end: nothing more
    assert lines == ["  1,200/5,000 questions (24%)", "  5,000/5,000 questions (100%)"]
