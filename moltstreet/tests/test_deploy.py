"""The deployment files: docker-compose.yml, the Dockerfile and .env.example.

No Docker engine runs here, so the image's own commands are run outside a container instead: the Dockerfile's CMD
(uvicorn workers) and the compose file's ``command:``s and health checks, read from the files (a change there changes
what is tested), on the test database and the tests' Redis. When a compose CLI is installed (``docker compose`` or
``docker-compose``) it validates the file too; without one, the file is checked against the parts of the compose
specification it uses.
"""

# ruff: noqa: S603  (every subprocess here runs this repository's own commands or a compose CLI)
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from moltstreet import serving
from testsupport.e2e import http_request, server_env

BASE_DIR = Path(__file__).resolve().parents[2]
COMPOSE = BASE_DIR / "docker-compose.yml"
DOCKERFILE = BASE_DIR / "Dockerfile"
ENV_EXAMPLE = BASE_DIR / ".env.example"
APP_SERVICES = ("migrate", "web", "scheduler", "poller", "worker")
DEADLINE = 50.0  # seconds the whole served-commands test may take
STOP_GRACE = 15.0  # seconds a stopped command may take: docker-compose.yml's stop_grace_period of the web service


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_cmd() -> list[str]:
    """The image's command: the last CMD, in exec (JSON) form; with an ENTRYPOINT in front, if any."""
    found = {name: args for name, args in dockerfile_instructions() if name in ("CMD", "ENTRYPOINT")}
    cmd = json.loads(found["CMD"])
    return [*json.loads(found["ENTRYPOINT"]), *cmd] if "ENTRYPOINT" in found else cmd


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in dockerfile_instructions():
        if name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def env_example_names() -> set[str]:
    """Every variable ``.env.example`` sets or shows commented out (``NAME=`` or ``# NAME=``)."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))


def healthcheck_command(service: str) -> list[str]:
    """A service's health check as an argv: ``CMD`` as is, ``CMD-SHELL`` through ``sh -c``."""
    test = compose()["services"][service]["healthcheck"]["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *argv = test
    assert kind in ("CMD", "CMD-SHELL"), test
    return argv if kind == "CMD" else ["sh", "-c", " ".join(argv)]


# --------------------------------------------------------------------------------------------------------------------
# The files


def test_the_compose_file_runs_the_whole_stack_with_a_health_check_on_every_service():
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", *APP_SERVICES}
    assert re.fullmatch(r"postgres:1[56](\..*)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7(\..*)?", services["redis"]["image"])
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
    assert "pg_isready" in " ".join(healthcheck_command("postgres"))
    assert "redis-cli ping" in " ".join(healthcheck_command("redis"))
    assert "/health/" in " ".join(healthcheck_command("web"))
    assert "MOLTSTREET_SCHEDULER_HEARTBEAT" in " ".join(healthcheck_command("scheduler"))
    assert "MOLTSTREET_POLLER_HEARTBEAT" in " ".join(healthcheck_command("poller"))
    assert services["poller"]["command"][2] == "run_poller" and services["poller"]["deploy"]["replicas"] == 1
    assert services["worker"]["command"][2] == "run_worker"
    assert healthcheck_command("worker")[-2:] == ["run_worker", "--check"]

    for name in APP_SERVICES:
        service = services[name]
        assert service["build"] == ".", name  # the image of this repository's Dockerfile
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"], name
        assert env["REDIS_URL"].startswith("redis://redis:6379"), name
        assert env["LOG_FORMAT"] == "json", name
        assert env["SECRET_KEY"].startswith("${SECRET_KEY:?"), "production must set its own SECRET_KEY"
    assert "command" not in services["web"], "the web server runs the image's own command"
    assert services["scheduler"]["command"][-1] == "run_scheduler"
    assert services["scheduler"]["environment"]["MOLTSTREET_SCHEDULER_HEARTBEAT"]
    assert services["migrate"]["command"][-2:] == ["migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "scheduler", "poller", "worker"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
    # Several workers: their metrics are summed from files in a directory emptied at each start.
    assert services["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"] in services["web"]["tmpfs"]


def test_every_setting_and_compose_variable_is_in_env_example():
    settings_source = (BASE_DIR / "moltstreet" / "settings.py").read_text()
    read = set(re.findall(r"\benv(?:\.[a-z]+)?\(\s*\"([A-Z][A-Z0-9_]*)\"", settings_source))
    assert {"DATABASE_URL", "REDIS_URL", "METRICS_ALLOWED_IPS", "HEALTH_CHECK_TIMEOUT"} <= read, "the scan works"
    # Read outside settings.py: the log format and metrics directory (before Django), the operator account, the image.
    read |= {"LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR", "MOLTSTREET_ADMIN_USER", "MOLTSTREET_ADMIN_PASSWORD"}
    read |= set(dockerfile_env()) - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR"}
    read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    assert read - env_example_names() == set(), ".env.example misses these"


def compose_environment(service: str = "web") -> dict[str, str]:
    """A service's environment as compose resolves it from an empty shell: each ``${NAME:-default}`` its default,
    ``SECRET_KEY`` (which has none) a fresh strong key."""
    resolved = {}
    for name, value in compose()["services"][service]["environment"].items():
        resolved[name] = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))
    resolved["SECRET_KEY"] = secrets.token_urlsafe(50)
    return resolved


def run_check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_is_clean_with_the_production_settings_of_the_compose_file():
    production = compose_environment()
    assert production["DEBUG"] == "false"
    checked = run_check_deploy(production)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "System check identified no issues" in checked.stdout, checked.stdout

    # The check itself sees what production must set: served over plain HTTP, it warns (W008, W012, W016, W004).
    plain = {
        **production,
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "SECURE_HSTS_SECONDS": "0",
    }
    warned = run_check_deploy(plain)
    assert warned.returncode != 0
    assert {"security.W004", "security.W008", "security.W012", "security.W016"} <= set(
        re.findall(r"security\.W\d+", warned.stdout + warned.stderr)
    )


def test_the_server_refuses_to_start_with_debug_off_on_a_missing_published_or_short_secret_key():
    production = compose_environment()
    for key in ("", "moltstreet-insecure-local-development-key-change-me", "change-me-to-a-long-random-string",
                "short-key", "a" * 60, "django-insecure-" + secrets.token_urlsafe(50)):  # fmt: skip
        refused = run_check_deploy({**production, "SECRET_KEY": key})
        assert refused.returncode != 0, key
        assert "ImproperlyConfigured" in refused.stderr and "SECRET_KEY" in refused.stderr, refused.stderr[-500:]
    # A weak key among the fallbacks is refused as well.
    refused = run_check_deploy({**production, "SECRET_KEY_FALLBACKS": "old-short-key"})
    assert "SECRET_KEY_FALLBACKS" in refused.stderr
    # With DEBUG on (a developer's machine) a missing key is allowed.
    assert run_check_deploy({**production, "SECRET_KEY": "", "DEBUG": "true"}).stderr.count("ImproperlyConfigured") == 0


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=20).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+")
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "depends_on", "healthcheck", "ports",
    "volumes", "tmpfs", "restart", "networks", "expose", "user", "working_dir", "labels", "deploy", "stop_grace_period",
}  # fmt: skip


def test_docker_compose_accepts_the_file(tmp_path):
    cli = _compose_cli()
    if cli is not None:
        env = {**os.environ, "SECRET_KEY": "compose-config-check"}
        checked = subprocess.run(
            [*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
        )
        assert checked.returncode == 0, checked.stderr
        resolved = yaml.safe_load(checked.stdout)["services"]
        assert resolved["web"]["environment"]["SECRET_KEY"] == "compose-config-check"
        assert "redis://redis:6379" in resolved["scheduler"]["environment"]["REDIS_URL"]
        # Without SECRET_KEY the file refuses to start anything.
        env.pop("SECRET_KEY")
        refused = subprocess.run(
            [*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, env=env
        )
        assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr + refused.stdout
        return
    # No compose CLI on this machine: the parts of the compose specification the file uses, checked by hand.
    document = compose()
    assert set(document) <= {"services", "volumes", "networks", "configs", "secrets", "name"} | {
        key for key in document if key.startswith("x-")
    }
    for name, service in document["services"].items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in document["services"], (name, dependency)
            assert condition["condition"] in ("service_started", "service_healthy", "service_completed_successfully")
        check = service["healthcheck"]
        assert set(check) <= {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
        for key in ("interval", "timeout", "start_period"):
            assert key not in check or DURATION.fullmatch(check[key]), (name, key, check.get(key))
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in (document.get("volumes") or {}), (name, volume)


# --------------------------------------------------------------------------------------------------------------------
# The image's commands, served


def _command_env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    """The image's ENV under the test's environment (database, Redis), the virtualenv's tools first on PATH (as
    the image's ``python`` and ``uvicorn`` are)."""
    env = {**dockerfile_env(), **base, **overrides}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def _compose_argv(service: str) -> list[str]:
    command = compose()["services"][service]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


class Process:
    """A command of the image run from the repository root, its output in a file; stopped with SIGTERM, and
    SIGKILLed (so failing the test: exit code -9) if it has not exited within docker-compose.yml's grace period."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.log_path = name, log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def _wait_for(predicate, what: str, deadline: float, processes: list[Process]) -> None:
    while time.monotonic() < deadline:
        if predicate():
            return
        for process in processes:
            if process.process.poll() is not None:
                pytest.fail(
                    f"{process.name} exited ({process.process.returncode}) before {what}:\n{process.output()[-4000:]}"
                )
        time.sleep(0.2)  # a process starting up gives no event to wait on
    logs = "\n".join(f"--- {p.name}:\n{p.output()[-3000:]}" for p in processes)
    pytest.fail(f"no {what} within the test's time:\n{logs}")


@pytest.mark.django_db(transaction=True)
def test_the_images_commands_serve_health_and_metrics_outside_a_container(tmp_path):
    started = time.monotonic()
    deadline = started + DEADLINE
    port = serving.free_port()
    metrics_dir, heartbeat = tmp_path / "prometheus", tmp_path / "scheduler.heartbeat"
    poller_heartbeat = tmp_path / "poller.heartbeat"
    env = _command_env(
        server_env(),
        WEB_HOST="127.0.0.1",
        WEB_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        MOLTSTREET_SCHEDULER_HEARTBEAT=str(heartbeat),
        MOLTSTREET_SCHEDULER_INTERVAL="1",
        MOLTSTREET_POLLER_HEARTBEAT=str(poller_heartbeat),
        MOLTSTREET_POLLER_TICK="1",
        # No internet here: the sources are a closed port, refused at once (the poller logs it and goes on).
        KALSHI_API_BASE="http://127.0.0.1:9/trade-api/v2",
        POLYMARKET_GAMMA_BASE="http://127.0.0.1:9",
        POLYMARKET_CLOB_BASE="http://127.0.0.1:9",
        MANIFOLD_API_BASE="http://127.0.0.1:9",
        SOURCE_RETRY_WAIT_MIN="0.01",
        SOURCE_RETRY_WAIT_MAX="0.02",
        LOG_FORMAT="json",
    )
    assert env["WEB_WORKERS"] == "2", "the image serves several workers"
    # The web server's SIGTERM grace is bounded (uvicorn otherwise waits for its tasks without end) within compose's.
    graceful = re.search(r"--timeout-graceful-shutdown (\d+)", " ".join(dockerfile_cmd()))
    assert graceful and int(graceful[1]) < STOP_GRACE, dockerfile_cmd()
    assert compose()["services"]["web"]["stop_grace_period"] == f"{STOP_GRACE:.0f}s"

    migrate = subprocess.run(
        _compose_argv("migrate"), cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=40
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    web = Process("web", dockerfile_cmd(), env, tmp_path)
    scheduler = Process("scheduler", _compose_argv("scheduler"), env, tmp_path)
    poller_argv = [arg.replace("${SOURCES:-kalshi,polymarket,manifold}", "kalshi") for arg in _compose_argv("poller")]
    poller = Process("poller", poller_argv, env, tmp_path)
    processes = [web, scheduler, poller]
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                return http_request("GET", f"{base}/health/", timeout=3).status == 200
            except OSError:
                return False

        _wait_for(healthy, "a 200 from /health/", deadline, processes)
        answer = http_request("GET", f"{base}/health/", timeout=5)
        assert answer.body["checks"]["database"]["status"] == "ok"
        assert answer.body["checks"]["channel_layer"] == {**answer.body["checks"]["channel_layer"], "backend": "redis"}
        assert len(answer.headers["x-request-id"]) == 32

        # The private feed with its key in the URL is refused, and uvicorn logs the handshake with the key redacted;
        # with the key in its header it is served.
        agent = http_request("POST", f"{base}{serving.API}/agents/", {"name": "deploy-check"}, timeout=5).body
        from websockets.sync.client import connect

        with connect(
            f"ws://127.0.0.1:{port}/ws/agent/?api_key={agent['api_key']}", proxy=None, open_timeout=10
        ) as refused:
            assert json.loads(refused.recv(timeout=10))["code"] == "api_key_in_url"
        with connect(
            f"ws://127.0.0.1:{port}/ws/agent/",
            additional_headers={"Authorization": f"Bearer {agent['api_key']}"},
            proxy=None,
            open_timeout=10,
        ) as feed:
            assert json.loads(feed.recv(timeout=10))["type"] == "snapshot"
            feed.send(json.dumps({"type": "ping"}))
            assert json.loads(feed.recv(timeout=10)) == {"type": "pong"}
            metrics = http_request("GET", f"{base}/metrics", timeout=5)
        assert metrics.status == 200, metrics.body
        assert 'moltstreet_http_requests_total{method="GET",route="health",status="200"}' in metrics.body
        assert re.search(r'moltstreet_websocket_connections\{feed="agent"\} 1\.0', metrics.body), metrics.body
        assert any(metrics_dir.glob("*.db")), "the workers write their metrics to PROMETHEUS_MULTIPROC_DIR"

        # The compose health checks of the web server and the scheduler, as Docker would run them.
        _wait_for(heartbeat.exists, "the scheduler's heartbeat", deadline, processes)
        _wait_for(poller_heartbeat.exists, "the poller's heartbeat", deadline, processes)
        for service in ("web", "scheduler", "poller"):
            argv = [sys.executable if arg == "python" else arg for arg in healthcheck_command(service)]
            check = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
            assert check.returncode == 0, (service, check.stdout, check.stderr)
        _infrastructure_checks_where_their_tools_exist(env)
    finally:
        codes = {process.name: process.stop() for process in processes}
    assert codes == {"web": 0, "scheduler": 0, "poller": 0}, {p.name: p.output()[-3000:] for p in processes}

    # Every line the web server wrote is one JSON object, uvicorn's own included, and no key is in any.
    output = web.output()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert {"timestamp", "level", "logger", "message", "request_id"} <= set(lines[0]), lines[0]
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"], "uvicorn's access log is off"
    assert any("WebSocket /ws/agent/?api_key=[redacted]" in line["message"] for line in lines), output
    assert agent["api_key"] not in output
    assert time.monotonic() - started < 60


def _infrastructure_checks_where_their_tools_exist(env: dict[str, str]) -> None:
    """The PostgreSQL and Redis health checks, against the tests' servers, where this machine has the clients."""
    from django.db import connection

    params = connection.settings_dict
    pg_env = {**env, "PGHOST": params.get("HOST") or "127.0.0.1", "PGPORT": str(params.get("PORT") or 5432)}
    for service, tool, check_env in (("postgres", "pg_isready", pg_env), ("redis", "redis-cli", env)):
        if shutil.which(tool) is None:
            continue
        argv = healthcheck_command(service)
        if service == "redis":  # the tests' Redis, wherever REDIS_URL puts it
            from urllib.parse import urlparse

            url = urlparse(env["REDIS_URL"])
            argv = ["sh", "-c", argv[-1].replace("redis-cli", f"redis-cli -h {url.hostname} -p {url.port or 6379}")]
        check = subprocess.run(argv, env=check_env, capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, (service, check.stdout, check.stderr)
