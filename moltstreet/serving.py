"""Run the real server as a subprocess: ``daphne -b 127.0.0.1 -p <port> moltstreet.asgi:application``, exactly what
``make run`` serves, with its settings read from the environment.

Used by the soak (``tools/soak.py``, which starts its own servers on the database and Redis of its settings) and by the
end-to-end test harness (:mod:`testsupport.e2e`, which turns :class:`ServerError` into a test failure).
Nothing here imports pytest.

Every wait is bounded: a server that exits or stays silent raises :class:`ServerError` carrying its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

BASE_DIR = Path(__file__).resolve().parent.parent
API = "/api/v1"

# urllib without the environment's proxies: the servers we start listen on 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """A server process exited before serving or did not answer in time; the message carries its output."""


def database_url(alias: str = "default") -> str:
    """``DATABASE_URL`` of the database this process is connected to (under pytest-django, its ``test_…``
    database), so a server process started from here reads and writes the same rows. PostgreSQL or SQLite."""
    from django.db import connections

    params = connections[alias].settings_dict
    if params["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(params['NAME']).resolve()}"
    if "postgresql" not in params["ENGINE"]:
        raise ServerError(f"cannot hand database engine {params['ENGINE']} to a server process")
    user = quote(params.get("USER") or "", safe="")
    password = quote(params.get("PASSWORD") or "", safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = quote(params.get("HOST") or "", safe="")  # a socket directory travels percent-encoded
    port = f":{params['PORT']}" if params.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{quote(params['NAME'], safe='')}"


def server_env(**overrides: str) -> dict[str, str]:
    """The environment of a server process: this process's environment, with ``DATABASE_URL`` and ``REDIS_URL``
    pointing at the database and Redis this process uses, then ``overrides``."""
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="moltstreet.settings",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL or "",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def daphne_command() -> list[str]:
    daphne = Path(sys.executable).with_name("daphne")  # .venv/bin/daphne beside .venv/bin/python
    return [str(daphne)] if daphne.exists() else [sys.executable, "-m", "daphne"]


class DaphneServer:
    """One ``daphne -b 127.0.0.1 -p <port> moltstreet.asgi:application`` subprocess with its output in a log file."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name = name
        self.env = env
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.keep_log = False  # stop() removes the log unless this is set (e.g. to show it after a failure)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        """Start serving on ``port`` (a free one when not given); :meth:`wait_ready` waits until it answers."""
        self.port = port or free_port()
        fd, log_path = tempfile.mkstemp(prefix=f"moltstreet-daphne-{self.name}-", suffix=".log")
        self.log_path = Path(log_path)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603  (our own fixed command line)
                self.command(),
                cwd=BASE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def command(self) -> list[str]:
        """The server's command line: daphne without its access log (``-v 0``: it would write query strings, keys
        included; ``moltstreet.middleware`` logs requests instead), as ``make run`` serves."""
        return [*daphne_command(), "-v", "0", "-b", "127.0.0.1", "-p", str(self.port), "moltstreet.asgi:application"]

    def output(self, tail: int = 6000) -> str:
        """The end of what the server wrote to stdout and stderr."""
        if self.log_path is None or not self.log_path.exists():
            return "(no output)"
        return self.log_path.read_text(errors="replace")[-tail:] or "(no output)"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the server answers HTTP (any status). Raises :class:`ServerError` with its output if it
        exits or stays silent for ``timeout`` seconds."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"daphne {self.name} exited with status {self.process.returncode} before serving:\n{self.output()}"
                )
            try:
                with _opener.open(f"{self.url}{API}/markets/?page_size=1", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answered
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)  # nothing listening yet: a process starting up gives no event to wait on
        raise ServerError(f"daphne {self.name} did not answer HTTP within {timeout:.0f}s:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 seconds; removes the log unless ``keep_log``."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log_path is not None and not self.keep_log:
            self.log_path.unlink(missing_ok=True)


@contextmanager
def running_servers(
    count: int, env: dict[str, str], *, timeout: float = 30.0, server_class: type[DaphneServer] = DaphneServer
) -> Iterator[list[DaphneServer]]:
    """Start ``count`` daphne processes with ``env``, wait until each answers HTTP, and stop them all on the way
    out, whatever happened."""
    servers = [server_class(chr(ord("A") + i), env) for i in range(count)]
    with ExitStack() as stack:
        for server in servers:
            stack.callback(server.stop)
            server.start()
        for server in servers:
            server.wait_ready(timeout)
        yield servers


__all__ = [
    "API",
    "BASE_DIR",
    "DaphneServer",
    "ServerError",
    "daphne_command",
    "database_url",
    "free_port",
    "running_servers",
    "server_env",
]
