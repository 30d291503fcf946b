"""The loop of the exchange's long-running commands (``run_scheduler``, ``run_poller``): do some work every few
seconds until SIGINT or SIGTERM, and touch a heartbeat file after each round that succeeded, which docker-compose.yml's
health checks read."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)


def touch_heartbeat(path: str, name: str) -> None:
    """Touch ``path`` (if set): a round just succeeded. A failure is logged, never raised: the work must go on."""
    if not path:
        return
    try:
        Path(path).touch()
    except OSError as exc:
        logger.warning("%s: cannot touch the heartbeat file %s: %s", name, path, exc)


def run_every(name: str, interval: float, work: Callable[[threading.Event], bool], *, heartbeat: str = "") -> None:
    """Call ``work(stop)`` every ``interval`` seconds until SIGINT or SIGTERM, touching ``heartbeat`` after each call
    that returned ``True``. A signal lets the running call finish (its transactions commit) and sets ``stop``, which
    ``work`` may watch to end early; a second signal interrupts at once."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: the operator does not want to wait
            raise KeyboardInterrupt
        logger.info("%s: %s received, stopping after this pass", name, signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    logger.info("%s: started, a pass every %ss", name, interval)
    try:
        while not stop.is_set():
            started = time.monotonic()
            if work(stop):
                touch_heartbeat(heartbeat, name)
            # Rounds start every `interval` seconds; the wait returns at once when a signal arrives.
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        logger.info("%s: interrupted", name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("%s: stopped", name)
