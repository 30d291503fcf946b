"""The SDK served by the exchange itself at ``/simple/`` (moltstreet/package_index.py): the PEP 503 pages, the
builder of the wheel, and -- the point of it all -- an agent with nothing but the server's address installing the SDK
into a brand-new virtual environment, trading through it and running its MCP server (with pip, and with uvx).

The wheel is built once per session by the very builder ``make run`` and the Dockerfile call.
"""

# ruff: noqa: S603  (every subprocess here runs pip, uv, a fresh venv's python or this repository's own builder)
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from moltstreet.package_index import CLIENT_DIR, PROJECT, build_client_wheel, source_digest

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The SDK's wheel, built once for the session into a directory of its own."""
    return build_client_wheel(tmp_path_factory.mktemp("client-wheel"))


@pytest.fixture
def served_wheel(settings, built_wheel) -> Path:
    """The built wheel, served: ``CLIENT_WHEEL_DIR`` points at its directory for this test."""
    settings.CLIENT_WHEEL_DIR = built_wheel.parent
    return built_wheel


class Anchors(HTMLParser):
    """The anchors of a page, each as its attributes; and its ``<meta>`` tags by name."""

    def __init__(self, html: str):
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []
        self.meta: dict[str | None, str | None] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.anchors.append(dict(attrs))
        elif tag == "meta":
            self.meta[dict(attrs).get("name")] = dict(attrs).get("content")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# The pages


def test_the_root_page_lists_the_sdk(client, served_wheel):
    response = client.get("/simple/", HTTP_ACCEPT=BROWSER_ACCEPT)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    page = Anchors(response.content.decode())
    assert page.anchors == [{"href": "moltstreet-client/"}]
    assert page.meta["pypi:repository-version"] == "1.0"  # PEP 629
    # A page like any other: the security headers apply, and it names what it varies on.
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert response["Vary"] == "Accept"


def test_the_project_page_links_the_wheel_with_its_hash_and_python_requirement(client, served_wheel):
    response = client.get("/simple/moltstreet-client/")

    assert response.status_code == 200
    html = response.content.decode()
    (anchor,) = Anchors(html).anchors
    url, _, fragment = anchor["href"].partition("#")
    assert fragment == f"sha256={sha256_of(served_wheel)}"
    assert anchor["data-requires-python"] == ">=3.11"
    assert 'data-requires-python="&gt;=3.11"' in html, "the attribute is escaped, as PEP 503 asks"
    assert urlsplit(url).path.endswith("/" + served_wheel.name)

    download = client.get(urljoin("http://testserver/simple/moltstreet-client/", url))
    assert download.status_code == 200
    body = b"".join(download.streaming_content)
    assert body == served_wheel.read_bytes()
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"] == f'attachment; filename="{served_wheel.name}"'
    assert download["ETag"] == f'"{sha256_of(served_wheel)}"'


def test_a_client_that_asks_for_json_gets_the_same_lists_as_json(client, served_wheel):
    root = client.get("/simple/", HTTP_ACCEPT=PIP_ACCEPT)
    assert root["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    assert root.json() == {"meta": {"api-version": "1.0"}, "projects": [{"name": PROJECT}]}

    page = client.get("/simple/moltstreet-client/", HTTP_ACCEPT=PIP_ACCEPT)
    assert page["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    assert page.json() == {
        "meta": {"api-version": "1.0"},
        "name": PROJECT,
        "files": [
            {
                "filename": served_wheel.name,
                "url": f"/simple/moltstreet-client/{served_wheel.name}",
                "hashes": {"sha256": sha256_of(served_wheel)},
                "requires-python": ">=3.11",
            }
        ],
    }
    # Asking for the HTML flavour by its PEP 691 name gets it under that name.
    html = client.get("/simple/", HTTP_ACCEPT="application/vnd.pypi.simple.v1+html")
    assert html["Content-Type"] == "application/vnd.pypi.simple.v1+html; charset=utf-8"


@pytest.mark.parametrize(
    "spelling", ["MoltStreet_Client", "moltstreet.client", "MOLTSTREET--client", "moltstreet_client"]
)
def test_another_spelling_of_the_sdks_name_is_redirected_to_the_normalized_url(client, served_wheel, spelling):
    response = client.get(f"/simple/{spelling}/")

    assert response.status_code == 301
    assert response["Location"] == "/simple/moltstreet-client/"


@pytest.mark.parametrize(
    ("name", "upstream_page"),
    [("httpx", "httpx"), ("websockets", "websockets"), ("mcp", "mcp"), ("Typing_Extensions", "typing-extensions")],
)
def test_every_other_project_is_redirected_to_the_upstream_index(client, served_wheel, name, upstream_page):
    response = client.get(f"/simple/{name}/", HTTP_ACCEPT=PIP_ACCEPT)

    assert response.status_code == 302
    assert response["Location"] == f"https://pypi.org/simple/{upstream_page}/"


def test_the_upstream_index_is_a_setting(client, settings):
    settings.PACKAGE_INDEX_UPSTREAM = "https://mirror.example/pypi/simple"

    assert client.get("/simple/mcp/")["Location"] == "https://mirror.example/pypi/simple/mcp/"


def test_without_a_built_wheel_the_project_page_says_how_to_build_it(client, settings, tmp_path):
    settings.CLIENT_WHEEL_DIR = tmp_path / "never-built"

    assert client.get("/simple/").status_code == 200
    for url in ("/simple/moltstreet-client/", "/simple/moltstreet-client/moltstreet_client-0.1.0-py3-none-any.whl"):
        response = client.get(url)
        assert response.status_code == 404, url
        error = response.json()["error"]
        assert error["code"] == "not_found"
        assert "python manage.py build_client_wheel" in error["message"]
        assert error["detail"] == {"project": PROJECT}


def test_files_and_names_the_index_does_not_hold_are_not_found(client, served_wheel):
    for url in (
        "/simple/moltstreet-client/moltstreet_client-9.9.9-py3-none-any.whl",
        "/simple/httpx/httpx-0.28.1-py3-none-any.whl",
        "/simple/-bad-/",
        "/simple/a%3Fb/",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "not_found", url
    # A file name with a slash in it matches no route at all: no way out of the wheel directory.
    assert client.get("/simple/moltstreet-client/..%2F..%2Fmoltstreet%2Fsettings.py").status_code == 404


def test_the_index_is_read_only_and_outside_the_apis_authentication(client, served_wheel):
    assert client.post("/simple/").status_code == 405
    assert client.post("/simple/moltstreet-client/").status_code == 405
    assert client.head("/simple/moltstreet-client/").status_code == 200
    # A wrong key does not matter here: the index is as public as /health/.
    assert client.get("/simple/moltstreet-client/", HTTP_AUTHORIZATION="Bearer ms_" + "0" * 43).status_code == 200


# --------------------------------------------------------------------------------------------------------------------
# The builder


def test_the_builder_rebuilds_only_when_the_sources_change_and_writes_nothing_into_them(tmp_path, built_wheel):
    source = tmp_path / "client"
    shutil.copytree(CLIENT_DIR, source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path / "wheels"
    before = sorted(p.relative_to(source) for p in source.rglob("*"))

    first = build_client_wheel(out, source=source)
    stamp = first.stat().st_mtime_ns
    assert build_client_wheel(out, source=source) == first and first.stat().st_mtime_ns == stamp, "unchanged: kept"

    (source / "moltstreet_client" / "_added.py").write_text("ADDED = True\n")
    second = build_client_wheel(out, source=source)
    assert second.name == first.name and sha256_of(second) != sha256_of(built_wheel)
    assert sorted(p.name for p in out.glob("*.whl")) == [first.name], "one wheel at a time"
    assert (out / "source.sha256").read_text().strip() == source_digest(source)
    after = sorted(p.relative_to(source) for p in source.rglob("*"))
    assert after == sorted([*before, Path("moltstreet_client/_added.py")]), "no build/ or egg-info in the sources"


# --------------------------------------------------------------------------------------------------------------------
# End to end: nothing but the server's address


SDK_SCRIPT = """
import json, sys
import moltstreet_client
from moltstreet_client import Client

url, market_id, name = sys.argv[1:4]
with Client(url, trust_env=False) as client:
    agent = client.register(name, "installed from the exchange's own package index")
    placed = client.place_order(market_id, "YES", "BUY", "0.40", 5)
print(json.dumps({"module": moltstreet_client.__file__, "api_key": client.api_key, "order": placed.order.id}))
"""


def _fresh_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would let a child see the checkout or this venv (PYTHONPATH,
    VIRTUAL_ENV, Django's settings), and with no proxy between it and 127.0.0.1. The machine's own pip
    configuration stays: it is what an agent's pip would read."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PIP_INDEX_URL"}
    }
    env["NO_PROXY"] = env["no_proxy"] = ",".join(filter(None, ["127.0.0.1,localhost", env.get("NO_PROXY")]))
    return {**env, **extra}


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=_fresh_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _mcp_place_order(command: str, args: list[str], url: str, api_key: str, market_id: str, cwd: Path) -> dict:
    """Start an MCP server over stdio as an MCP client would (``command args`` with ``MOLTSTREET_URL`` and
    ``MOLTSTREET_API_KEY``), call its ``place_order`` tool and return the order it placed."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    # The user's environment, as an MCP client passes it on (uv needs its certificates and proxies to reach PyPI).
    env = _fresh_env(MOLTSTREET_URL=url, MOLTSTREET_API_KEY=api_key, UV_PYTHON_DOWNLOADS="never")
    params = StdioServerParameters(command=command, args=args, env=env, cwd=str(cwd))

    async def session() -> dict:
        # uvx installs the SDK before the server answers: a generous first wait.
        async with Client(params, read_timeout_seconds=90) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "place_order" in tools, tools
            result = await client.call_tool(
                "place_order", {"market_id": market_id, "side": "YES", "action": "BUY", "price": "0.41", "size": 3}
            )
            assert not result.is_error, result
            content = result.structured_content
            payload = content.get("result", content) if content is not None else json.loads(result.content[0].text)
            return payload["order"]

    return asyncio.run(session())


@pytest.mark.django_db(transaction=True)
def test_an_agent_installs_the_sdk_from_the_server_alone_and_trades_with_it(
    live_server, settings, served_wheel, market, audit_clean, tmp_path, caplog
):
    from trading.models import Order

    caplog.set_level(logging.INFO, logger="moltstreet.access")
    index = f"{live_server.url}/simple/"
    wheel_path = f"/simple/moltstreet-client/{served_wheel.name}"
    home = tmp_path / "agent"  # no checkout here, and nothing on the path
    home.mkdir()

    def downloads() -> int:
        """How many times the wheel was served so far (the access log's lines)."""
        return sum(r.getMessage().startswith(f"GET {wheel_path} 200") for r in caplog.records)

    # pip: a brand-new virtual environment, one --index-url, nothing else.
    venv = home / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], home, timeout=60)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--index-url", index, f"{PROJECT}[mcp]"], home, timeout=150)
    assert downloads() == 1, "pip took the wheel from this server"

    sdk = _run([str(python), "-c", SDK_SCRIPT, live_server.url, str(market.id), "pip-installed-agent"], home, 60)
    result = json.loads(sdk.stdout)
    assert Path(result["module"]).is_relative_to(venv), f"the SDK came from the fresh venv: {result['module']}"
    order = Order.objects.get(id=result["order"])
    assert (order.agent.name, order.side, order.action, str(order.price), order.size, order.status) == (
        "pip-installed-agent",
        "YES",
        "BUY",
        "0.40",
        5,
        "open",
    )

    # The MCP server that came with the [mcp] extra, started by an MCP client over stdio.
    mcp_script = venv / "bin" / "moltstreet-mcp"
    via_pip = _mcp_place_order(str(mcp_script), [], live_server.url, result["api_key"], str(market.id), home)
    assert Order.objects.get(id=via_pip["id"]).agent == order.agent

    # uvx, exactly as the MCP client configuration this server serves (/skill/examples/mcp.json) starts it; uv
    # resolves the dependencies through the redirects.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{live_server.url}/skill/examples/mcp.json", timeout=30) as response:
        config = json.load(response)["mcpServers"]["moltstreet"]
    assert config["env"]["MOLTSTREET_URL"] == live_server.url
    uvx = Path(sys.executable).with_name(config["command"])
    if not uvx.exists():
        pytest.fail(f"uv is not installed in {uvx.parent}: pip install -r requirements.txt (it lists uv)")
    uvx_args = config["args"]
    assert uvx_args == ["--index-url", index, "--from", f"{PROJECT}[mcp]", "moltstreet-mcp"]
    via_uvx = _mcp_place_order(str(uvx), uvx_args, live_server.url, result["api_key"], str(market.id), home)
    assert Order.objects.get(id=via_uvx["id"]).agent == order.agent
    assert downloads() > 1, "uvx took the wheel from this server too"

    assert Order.objects.filter(agent=order.agent).count() == 3
    audit_clean()
