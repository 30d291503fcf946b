"""The exchange serves its own Python SDK: a package index at ``/simple/`` holding the wheel of ``client/``.

An agent needs nothing but the server's address::

    pip install --index-url http://HOST/simple/ moltstreet-client
    uvx --index-url http://HOST/simple/ --from "moltstreet-client[mcp]" moltstreet-mcp

The index speaks the "simple repository API" that pip and uv read:

* PEP 503: ``GET /simple/`` lists the projects, ``GET /simple/<project>/`` the project's files, one anchor each with
  a ``#sha256=<hex>`` fragment; project names are compared normalized (``MoltStreet_Client`` is ``moltstreet-client``,
  and an unnormalized URL is redirected to the normalized one).
* PEP 503 ``data-requires-python``: the wheel's own ``Requires-Python`` (``&gt;=3.11`` once escaped), so an
  older interpreter skips it instead of failing to install it.
* PEP 629: the pages carry ``<meta name="pypi:repository-version" content="1.0">``.
* PEP 691: a client that prefers ``application/vnd.pypi.simple.v1+json`` (pip and uv do) gets the same lists as
  JSON; everyone else (browsers, curl, older clients) gets HTML.

This index holds one project. Any other name (``httpx``, ``websockets``, ``mcp``, ...) is answered with a redirect to
the same page of ``PACKAGE_INDEX_UPSTREAM`` (PyPI by default), so one ``--index-url`` resolves the SDK here and its
dependencies from the usual index. ``--extra-index-url`` is deliberately not what the guide asks for: with two
indexes pip takes the highest version found on either, so anyone could publish a ``moltstreet-client`` on PyPI and
have it installed instead (dependency confusion). Here the SDK's name is answered by this server only.

The wheel is built from ``client/`` by :func:`build_client_wheel` (``manage.py build_client_wheel``, run by
``make run`` and at the Docker image's build) into ``CLIENT_WHEEL_DIR``: never a wheel kept in git. Until it has
been built, the project's pages answer 404 in the one JSON error shape, saying which command builds it.
"""

from __future__ import annotations

import email.parser
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponsePermanentRedirect,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.views.decorators.http import require_safe

from moltstreet.errors import error_body

PROJECT = "moltstreet-client"
CLIENT_DIR = Path(__file__).resolve().parent.parent / "client"
BUILD_COMMAND = "python manage.py build_client_wheel"

# What goes into the wheel, and so into the digest that tells whether the built wheel is still the sources' (the
# tests, caches and build leftovers of an editable install are not part of it).
_IGNORED = ("__pycache__", "*.pyc", "build", "dist", "*.egg-info", "tests", ".pytest_cache", ".mypy_cache")
_SOURCE_STAMP = "source.sha256"

# PEP 691 content types: JSON for the clients that ask for it first, HTML (either name) for everyone else.
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"
API_VERSION = "1.0"


class WheelBuildError(RuntimeError):
    """Building the SDK's wheel failed; the message holds the build's own output."""


# --------------------------------------------------------------------------------------------------------------------
# Names and files


# A valid project name (PEP 508, the core metadata's ``Name``): letters, digits, and ``-_.`` inside.
_VALID_NAME = re.compile(r"[A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9]", re.IGNORECASE)


def normalize(name: str) -> str:
    """A project name as PEP 503 compares it: runs of ``-``, ``_`` and ``.`` become one ``-``, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wheel:
    """One wheel file served at ``/simple/moltstreet-client/<filename>``: its path, its SHA-256 (hex) and its
    ``Requires-Python`` (``None`` when the wheel states none)."""

    path: Path
    filename: str
    sha256: str
    requires_python: str | None


@lru_cache(maxsize=16)
def _described(path: Path, mtime_ns: int, size: int) -> Wheel:
    """The wheel at ``path``, read once per version of the file (the arguments after ``path`` key the cache)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    requires_python = None
    with zipfile.ZipFile(path) as archive:
        metadata = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if metadata is not None:
            headers = email.parser.BytesHeaderParser().parsebytes(archive.read(metadata))
            requires_python = headers.get("Requires-Python")
    return Wheel(path, path.name, digest.hexdigest(), requires_python)


def wheel_dir() -> Path:
    """``CLIENT_WHEEL_DIR``: where the built wheel lies (git-ignored)."""
    return Path(settings.CLIENT_WHEEL_DIR)


def served_wheels(directory: Path | None = None) -> list[Wheel]:
    """The SDK's wheels in ``directory`` (default ``CLIENT_WHEEL_DIR``), by file name; empty when none was built."""
    directory = directory or wheel_dir()
    wheels = []
    for candidate in sorted(directory.glob("moltstreet_client-*.whl")):
        try:
            stat = candidate.stat()
            wheels.append(_described(candidate, stat.st_mtime_ns, stat.st_size))
        except (OSError, zipfile.BadZipFile):
            continue  # replaced or removed while being read: the next request sees the new file
    return wheels


# --------------------------------------------------------------------------------------------------------------------
# The builder


def source_digest(source: Path = CLIENT_DIR) -> str:
    """SHA-256 (hex) of the files a wheel of ``source`` is built from: their relative paths and contents."""
    digest = hashlib.sha256()
    ignore = shutil.ignore_patterns(*_IGNORED)
    for root, dirs, files in os.walk(source):
        left_out = ignore(root, [*dirs, *files])
        dirs[:] = sorted(d for d in dirs if d not in left_out)
        for name in sorted(f for f in files if f not in left_out):
            file = Path(root, name)
            digest.update(file.relative_to(source).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One builder at a time in ``directory`` (``make run`` and a test session may share it)."""
    with (directory / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_client_wheel(out_dir: Path | None = None, *, force: bool = False, source: Path = CLIENT_DIR) -> Path:
    """Build the wheel of the SDK (``client/``) into ``out_dir`` (default ``CLIENT_WHEEL_DIR``, created if missing)
    and return its path. The wheel then replaces any other ``moltstreet_client-*.whl`` there.

    Skipped, returning the wheel already there, when it was built from the same sources (:func:`source_digest`)
    unless ``force``. The build runs offline with the current interpreter's own setuptools (``pip wheel --no-deps
    --no-build-isolation --no-index``) on a copy of the sources, so nothing is written into ``client/``.

    Raises :class:`WheelBuildError` with pip's output when the build fails.
    """
    out_dir = Path(out_dir or wheel_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):
        digest = source_digest(source)
        stamp = out_dir / _SOURCE_STAMP
        current = served_wheels(out_dir)
        if not force and len(current) == 1 and stamp.exists() and stamp.read_text().strip() == digest:
            return current[0].path
        with tempfile.TemporaryDirectory(prefix="moltstreet-wheel-") as scratch:
            copy = Path(scratch, "client")
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns(*_IGNORED))
            built_dir = Path(scratch, "dist")
            command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
            command += ["--quiet", "--wheel-dir", str(built_dir), str(copy)]
            # No user or site pip configuration may add an index, a constraint or a cache to this offline build.
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
            env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
            done = subprocess.run(  # noqa: S603  (our own fixed command line)
                command, capture_output=True, text=True, env=env, cwd=scratch, check=False
            )
            built = sorted(built_dir.glob("moltstreet_client-*.whl"))
            if done.returncode != 0 or len(built) != 1:
                raise WheelBuildError(
                    f"Building the wheel of {source} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
                )
            target = out_dir / built[0].name
            # Copied next to its place, then renamed over it: a request never reads half a wheel.
            partial = out_dir / f".{built[0].name}.partial"
            shutil.copyfile(built[0], partial)
            os.replace(partial, target)
        for old in out_dir.glob("moltstreet_client-*.whl"):
            if old != target:
                old.unlink(missing_ok=True)
        stamp.write_text(digest + "\n")
        return target


# --------------------------------------------------------------------------------------------------------------------
# The views


def _page(request: HttpRequest, template: str, context: dict, data: dict) -> HttpResponse:
    """The page as JSON (PEP 691) or HTML (PEP 503), by the request's Accept header: JSON only for a client that
    ranks it first, HTML when there is no Accept header or it accepts anything; revalidated on each use."""
    chosen = request.get_preferred_type(["text/html", HTML_TYPE, JSON_TYPE]) or "text/html"
    if chosen == JSON_TYPE:
        response: HttpResponse = JsonResponse({"meta": {"api-version": API_VERSION}, **data}, content_type=JSON_TYPE)
    else:
        html = render_to_string(template, {"api_version": API_VERSION, **context})
        response = HttpResponse(html, content_type=f"{chosen}; charset=utf-8")
    patch_vary_headers(response, ["Accept"])
    # The SDK changes whenever the server is updated: clients ask again rather than trust a stored copy.
    patch_cache_control(response, no_cache=True)
    return response


def _not_built() -> JsonResponse:
    return JsonResponse(
        error_body(
            "not_found",
            f"The {PROJECT} wheel has not been built on this server: run `{BUILD_COMMAND}` (make run and the "
            "Docker image do).",
            {"project": PROJECT},
        ),
        status=404,
    )


def _upstream(name: str) -> HttpResponseRedirect:
    """A temporary redirect to ``name``'s page on ``PACKAGE_INDEX_UPSTREAM``."""
    return HttpResponseRedirect(settings.PACKAGE_INDEX_UPSTREAM.rstrip("/") + f"/{name}/")


@require_safe
def index_view(request: HttpRequest) -> HttpResponse:
    """``GET /simple/``: the projects this index holds (PEP 503 root page; PEP 691 ``projects`` as JSON)."""
    return _page(request, "package_index/index.html", {"projects": [PROJECT]}, {"projects": [{"name": PROJECT}]})


@require_safe
def project_view(request: HttpRequest, name: str) -> HttpResponseBase:
    """``GET /simple/<name>/``: the SDK's wheels, each linked as ``<filename>#sha256=<hex>`` with its
    ``data-requires-python`` (PEP 503, PEP 691 ``files``). Another project's name is redirected (302) to the
    upstream index; an unnormalized spelling of the SDK's (301) to ``/simple/moltstreet-client/``; 404 in the JSON
    error shape while no wheel was built, or for a name that is no project name (PEP 508)."""
    if not _VALID_NAME.fullmatch(name):
        return JsonResponse(
            error_body("not_found", f"{name!r} is not a project name.", {"path": request.path}), status=404
        )
    normalized = normalize(name)
    if normalized != PROJECT:
        return _upstream(normalized)
    if name != normalized:
        return HttpResponsePermanentRedirect(reverse("package-index-project", args=[normalized]))
    wheels = served_wheels()
    if not wheels:
        return _not_built()
    links = [(reverse("package-index-file", args=[PROJECT, wheel.filename]), wheel) for wheel in wheels]
    files = [
        {
            "filename": wheel.filename,
            "url": url,
            "hashes": {"sha256": wheel.sha256},
            **({"requires-python": wheel.requires_python} if wheel.requires_python else {}),
        }
        for url, wheel in links
    ]
    return _page(
        request, "package_index/project.html", {"project": PROJECT, "links": links}, {"name": PROJECT, "files": files}
    )


@require_safe
def file_view(request: HttpRequest, name: str, filename: str) -> HttpResponseBase:
    """``GET /simple/moltstreet-client/<filename>``: the wheel itself (``application/octet-stream``, as an
    attachment, with its SHA-256 as ETag). 404 in the JSON error shape for a file this index does not hold."""
    wheels = served_wheels() if name == PROJECT else []
    wheel = next((w for w in wheels if w.filename == filename), None)
    if wheel is None:
        if name == PROJECT and not wheels:
            return _not_built()
        return JsonResponse(
            error_body("not_found", f"This index holds no file {name}/{filename}.", {"path": request.path}),
            status=404,
        )
    try:
        handle = wheel.path.open("rb")
    except FileNotFoundError:  # replaced by a new build since it was listed
        return _not_built()
    response = FileResponse(
        handle, as_attachment=True, filename=wheel.filename, content_type="application/octet-stream"
    )
    response["ETag"] = f'"{wheel.sha256}"'
    patch_cache_control(response, no_cache=True)
    return response


urlpatterns = [
    path("simple/", index_view, name="package-index"),
    path("simple/<str:name>/", project_view, name="package-index-project"),
    path("simple/<str:name>/<str:filename>", file_view, name="package-index-file"),
]
