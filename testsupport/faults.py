"""Private services for the fault-injection tests (``moltstreet/tests/test_faults.py``): a throwaway PostgreSQL
cluster and a throwaway ``redis-server`` that a test may stop, freeze, kill and restart, and SIGKILL helpers.

The PostgreSQL server and Redis on 127.0.0.1:5432/6379 are shared with other test runs and must never be disturbed,
so a test that takes a service down starts its own:

- :class:`PrivatePostgres`: ``initdb`` from ``/usr/lib/postgresql/<version>/bin`` into a temporary directory, served
  on a free port of 127.0.0.1 with ``fsync=off``. ``initdb`` and ``pg_ctl`` refuse to run as root, so as root (CI)
  they run as the ``postgres`` OS user through ``runuser -u postgres --``, with the directory owned by it.
- :class:`PrivateRedis`: ``redis-server --port <free> --save "" --appendonly no`` (nothing persisted), so a restart
  comes back empty, as a Redis that lost its memory does.

Both are context managers (:func:`private_postgres`, :func:`private_redis`) that remove everything on the way out,
whatever happened. Every wait is bounded: a service that does not come up fails the test with its log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testsupport.e2e import BASE_DIR, DaphneServer, HttpAnswer, free_port, http_request

PG_ROOT = Path("/usr/lib/postgresql")
PG_USER = "postgres"  # the OS user that owns a private cluster when we run as root, and its database superuser


# --------------------------------------------------------------------------------------------------------------------
# Processes


def sigkill(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Kill ``process`` with SIGKILL (no cleanup, no goodbye, as the OOM killer or a power cut would) and reap it;
    nothing happens if it already exited. Fails the test if it is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process {process.pid} survived SIGKILL for {timeout:.0f}s", pytrace=False)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Poll until process ``pid`` is gone; ``True`` if it went within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)  # another process's exit (not our child) gives nothing to wait on
    return not pid_alive(pid)


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-size:] or "(empty)"
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------------------------------
# The server under test


class KillableDaphne(DaphneServer):
    """A :class:`~testsupport.e2e.DaphneServer` that can be killed with SIGKILL and started again, each start
    with its own environment overrides. The logs of every life are kept for :meth:`output` and removed by
    :meth:`stop`."""

    def __init__(self, name: str, env: dict[str, str]):
        super().__init__(name, env)
        self.previous_logs: list[Path] = []

    def start(self, port: int | None = None, *, env: dict[str, str] | None = None) -> None:
        """Start serving on ``port`` (a free one when not given) with ``env`` over the server's environment;
        ``wait_ready`` waits until it answers."""
        if self.log_path is not None:
            self.previous_logs.append(self.log_path)
        base = self.env
        self.env = {**base, **(env or {})}
        try:
            super().start(port)
        finally:
            self.env = base

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server: no shutdown, requests in flight die with their connections and the database rolls
        back their open transactions. The log stays; :meth:`start` serves again."""
        if self.process is not None:
            sigkill(self.process, timeout)

    def output(self, tail: int = 6000) -> str:
        """The end of what the server wrote in all its lives (the latest last)."""
        text = "".join(
            f"--- log of an earlier life ---\n{path.read_text(errors='replace')}"
            for path in self.previous_logs
            if path.exists()
        )
        if self.log_path is not None and self.log_path.exists():
            text += self.log_path.read_text(errors="replace")
        return text[-tail:] or "(no output)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 seconds; removes every log."""
        super().stop()
        for path in self.previous_logs:
            path.unlink(missing_ok=True)
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


@contextmanager
def killable_daphne(name: str, env: dict[str, str], *, timeout: float = 30.0) -> Iterator[KillableDaphne]:
    """A started and answering :class:`KillableDaphne`, stopped on the way out whatever happened."""
    server = KillableDaphne(name, env)
    try:
        server.start()
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the newest PostgreSQL installed under ``/usr/lib/postgresql`` (Debian's layout).
    Fails the test, saying what to install, when there is none."""
    candidates = sorted(
        (path for path in PG_ROOT.glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not candidates:
        pytest.fail(
            f"No PostgreSQL server binaries under {PG_ROOT}/*/bin: apt-get install -y postgresql", pytrace=False
        )
    return candidates[-1]


def _as_postgres_user(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` OS user when we are root (initdb and pg_ctl refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *command]
    return command


class PrivatePostgres:
    """A PostgreSQL cluster of our own in a temporary directory, on a free port of 127.0.0.1.

    :meth:`init` creates it, :meth:`start`/:meth:`stop` run it, :meth:`pause`/:meth:`resume` freeze its postmaster
    (new connections then hang in the listen queue, as with a stuck server), :meth:`destroy` removes it all.
    The superuser is ``postgres`` with ``trust`` authentication on 127.0.0.1 only.
    """

    def __init__(self, name: str = "faults"):
        self.name = name
        self.bin = postgres_bin_dir()
        self.port = 0
        self.root: Path | None = None

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "init() first"
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "init() first"
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """``DATABASE_URL`` of ``database`` on this cluster (over TCP, so a stopped server refuses at once)."""
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(  # noqa: S603  (our own fixed command lines)
                _as_postgres_user(command),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command[0]} did not finish within {timeout:.0f}s:\n{self.log()}", pytrace=False)
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.log()}",
                pytrace=False,
            )
        return result

    def init(self, timeout: float = 60.0) -> None:
        """``initdb`` a new cluster (trust authentication, UTF-8) into a fresh temporary directory."""
        self.root = Path(tempfile.mkdtemp(prefix=f"moltstreet-pg-{self.name}-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, user=PG_USER, group=PG_USER)
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",  # a throwaway cluster: nothing needs to reach the disk
            ],
            timeout,
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (on the port of the previous start, or a free one) and wait until it accepts
        connections. ``fsync`` is off: a crash of the machine would lose it, a crash of the server does not (commits
        are still synchronous, so an acknowledged commit survives ``stop -m immediate``)."""
        self.port = self.port or free_port()
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",  # never the shared server's socket directory
                "-c fsync=off",  # safe against a crash of the server (the OS keeps the files), not of the machine
                # synchronous_commit stays on: off, a crash (stop -m immediate) loses commits already acknowledged
                "-c full_page_writes=off",
                "-c max_connections=100",
            ]
        )
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            timeout + 10,
        )

    def postmaster_pid(self) -> int | None:
        """The postmaster's process id while it runs (from ``postmaster.pid``), else ``None``."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """``pg_ctl stop -m <mode>``: ``fast`` rolls back and disconnects every session, ``immediate`` kills them
        all at once as a crash does (the next start recovers from the WAL). A paused server is resumed first."""
        self.resume()
        if self.postmaster_pid() is None:
            return
        self._run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
            timeout + 10,
        )

    def pause(self) -> None:
        """SIGSTOP the postmaster: open sessions go on, but every new connection hangs (the kernel queues it and
        nobody answers), as with a server stuck on a full disk or a lost network. :meth:`resume` undoes it."""
        pid = self.postmaster_pid()
        assert pid is not None, "the server is not running"
        os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the postmaster after :meth:`pause` (harmless otherwise)."""
        pid = self.postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its ``DATABASE_URL``."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def migrate(self, database_url: str, timeout: float = 120.0) -> None:
        """Run ``manage.py migrate`` against ``database_url``, as a deployment does."""
        env = dict(os.environ, DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="moltstreet.settings")
        try:
            result = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
                cwd=BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"manage.py migrate did not finish within {timeout:.0f}s", pytrace=False)
        if result.returncode != 0:
            pytest.fail(f"manage.py migrate failed:\n{result.stdout}\n{result.stderr}", pytrace=False)

    def log(self) -> str:
        """The end of the server's log, for failure messages."""
        return _tail(self.log_path) if self.root is not None else "(no cluster)"

    def destroy(self) -> None:
        """Stop the server (``immediate``, or SIGKILL if that fails) and delete the cluster's directory."""
        if self.root is None:
            return
        try:
            self.resume()
            pid = self.postmaster_pid()
            if pid is not None:
                subprocess.run(  # noqa: S603
                    _as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"]),
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
                if not wait_gone(pid, 10):
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, 10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


@contextmanager
def private_postgres(name: str = "faults") -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, destroyed on the way out whatever happened."""
    cluster = PrivatePostgres(name)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# --------------------------------------------------------------------------------------------------------------------
# Redis


class PrivateRedis:
    """A ``redis-server`` of our own on a free port of 127.0.0.1 that persists nothing (``--save "" --appendonly
    no``). :meth:`kill` takes it away at once; :meth:`start` brings it back, empty, on the same port."""

    def __init__(self, name: str = "faults"):
        self.name = name
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.root = Path(tempfile.mkdtemp(prefix=f"moltstreet-redis-{name}-"))
        self.log_path = self.root / "redis.log"

    def url(self, db: int = 0) -> str:
        """``REDIS_URL`` of database ``db`` of this server."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 15.0) -> None:
        """Start serving (on the port of the previous start, or a free one) and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server", pytrace=False)
        self.port = self.port or free_port()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603  (our own fixed command line)
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.root),
                    "--daemonize",
                    "no",
                ],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll PING until it answers; fail with the log if the server exits or stays silent."""
        import redis

        assert self.process is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"redis-server exited ({self.process.returncode}):\n{self.log()}", pytrace=False)
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)  # not listening yet: a process starting up gives no event to wait on
        finally:
            client.close()
        pytest.fail(f"redis-server did not answer within {timeout:.0f}s:\n{self.log()}", pytrace=False)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing is answered, as with a Redis stuck on a slow disk
        or behind a lost network. :meth:`resume` undoes it."""
        assert self.process is not None and self.process.poll() is None, "the server is not running"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the server after :meth:`pause` (harmless otherwise)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server: every connection drops, every key is lost."""
        if self.process is not None:
            sigkill(self.process)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``timeout`` seconds."""
        self.resume()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                sigkill(self.process)

    def log(self) -> str:
        """The end of the server's log, for failure messages."""
        return _tail(self.log_path)

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def private_redis(name: str = "faults") -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, stopped and removed on the way out whatever happened."""
    server = PrivateRedis(name)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


__all__ = [
    "HttpAnswer",
    "KillableDaphne",
    "PrivatePostgres",
    "PrivateRedis",
    "http_request",
    "killable_daphne",
    "pid_alive",
    "postgres_bin_dir",
    "private_postgres",
    "private_redis",
    "sigkill",
    "wait_gone",
]
