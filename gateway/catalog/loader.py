"""Build a :class:`Catalog` from the backends in the config.

A backend's OpenAPI document comes from an http(s) URL (fetched with httpx), a file (JSON or
YAML), or a Python entry point ``module:attr`` (an app whose ``openapi()`` returns the
document, e.g. a FastAPI app). When the document was fetched from a URL and the backend has no
``base_url``, the base URL is taken from the document's ``servers`` resolved against that URL
(a FastAPI service's ``/openapi.json`` → the service's origin).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib
import json
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
import yaml

from gateway.catalog.catalog import Catalog, operation_digest
from gateway.catalog.openapi import operations_from_openapi
from gateway.errors import ConfigError
from gateway.models import BackendSettings, Operation
from gateway.values import clean_text

__all__ = ["cache_dir", "cache_read", "cache_write", "fetch_spec", "fetch_spec_sync",
           "load_catalog", "load_catalog_sync"]

_BACKEND_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_FETCH_TIMEOUT_S = 30.0


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _field(backend: BackendSettings) -> str:
    return f"backends.{backend.name}.{'openapi' if backend.openapi else 'app'}"


def _check(backends: Sequence[BackendSettings]) -> None:
    seen: set[str] = set()
    for backend in backends:
        if not _BACKEND_NAME.match(backend.name):
            raise ConfigError(
                f"backend name {backend.name!r} must be a Python identifier in lower case "
                "(it becomes the SDK module name)",
                field=f"backends.{backend.name}",
            )
        if backend.name in seen:
            raise ConfigError(f"duplicate backend {backend.name!r}",
                              field=f"backends.{backend.name}")
        seen.add(backend.name)
        if bool(backend.openapi) == bool(backend.app):
            raise ConfigError(
                f"backend {backend.name!r} needs exactly one of 'openapi' or 'app'",
                field=f"backends.{backend.name}",
            )


def _parse(text: str | bytes, backend: BackendSettings, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"backend {backend.name!r}: {where} is neither JSON nor YAML: "
                              f"{exc}", field=_field(backend)) from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"backend {backend.name!r}: {where} is not an OpenAPI document",
                          field=_field(backend))
    return doc


def _valid_unicode(value: Any) -> Any:
    """``value`` with every unpaired surrogate in its strings and keys replaced by U+FFFD.

    A spec's strings become tags the policy engine reads (regorus crashes on a lone
    surrogate), names and descriptions the wire carries: they must be valid Unicode."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_unicode(v) for v in value]
    return value


def _from_app(backend: BackendSettings) -> dict[str, Any]:
    entry = backend.app or ""
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"backend {backend.name!r}: app must look like 'module:attr', "
                          f"not {entry!r}", field=_field(backend))
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"backend {backend.name!r}: cannot import {entry!r}: {exc}",
                          field=_field(backend)) from exc
    if isinstance(obj, dict):
        return obj
    openapi = getattr(obj, "openapi", None)
    if not callable(openapi):
        raise ConfigError(f"backend {backend.name!r}: {entry!r} has no openapi() method",
                          field=_field(backend))
    spec = openapi()
    if not isinstance(spec, dict):
        raise ConfigError(f"backend {backend.name!r}: {entry}.openapi() did not return a dict",
                          field=_field(backend))
    return spec


def _headers_for(backend: BackendSettings, url: str) -> dict[str, str]:
    """Send the backend's static headers only to the backend itself, never to a third party."""
    if not backend.headers:
        return {}
    if backend.base_url is None:
        return dict(backend.headers)
    a, b = urlsplit(url), urlsplit(backend.base_url)
    return dict(backend.headers) if (a.scheme, a.netloc) == (b.scheme, b.netloc) else {}


def _unreachable(backend: BackendSettings, url: str, exc: Exception) -> ConfigError:
    return ConfigError(f"backend {backend.name!r}: cannot fetch {url}: "
                       f"{type(exc).__name__}: {exc}", field=_field(backend))


def _base_url(backend: BackendSettings, spec: dict[str, Any], source: str | None) -> str | None:
    if backend.base_url:
        return backend.base_url.rstrip("/")
    servers = spec.get("servers") or [{"url": "/"}]
    server: dict[str, Any] = servers[0] if isinstance(servers[0], dict) else {"url": "/"}
    url = str(server.get("url") or "/")
    variables: dict[str, Any] = server.get("variables") or {}
    for name, var in variables.items():
        default = var.get("default", "") if isinstance(var, dict) else ""
        url = url.replace("{" + name + "}", str(default))
    if source is not None and _is_url(source):
        url = urljoin(source, url)
    return url.rstrip("/") if _is_url(url) else None


def _finish(backend: BackendSettings, spec: dict[str, Any]) -> tuple[BackendSettings,
                                                                       list[Operation]]:
    try:
        orjson.dumps(spec)
    except TypeError:  # a `\ud800` escape: an unpaired surrogate (or a key that is no string)
        spec = {clean_text(str(k)): _valid_unicode(v) for k, v in spec.items()}
    source = backend.openapi if backend.openapi else None
    base = _base_url(backend, spec, source) if backend.openapi else backend.base_url
    resolved = dataclasses.replace(backend, base_url=base)
    return resolved, operations_from_openapi(resolved, spec)


def _document(raw: bytes | dict[str, Any], backend: BackendSettings,
              where: str) -> dict[str, Any]:
    return raw if isinstance(raw, dict) else _parse(raw, backend, where)


def fetch_spec_sync(backend: BackendSettings) -> dict[str, Any]:
    """The backend's OpenAPI document as a dict (blocking)."""
    raw, where = _raw_sync(backend)
    return _document(raw, backend, where)


async def fetch_spec(backend: BackendSettings, client: httpx.AsyncClient) -> dict[str, Any]:
    """The backend's OpenAPI document as a dict; file and import work runs off the loop."""
    raw, where = await _raw(backend, client)
    return await asyncio.to_thread(_document, raw, backend, where)


# -- the on-disk cache of built operations ---------------------------------------------------
#
# Building ~2,000 operations from GitHub's 27 MB of specs (JSON parse, $ref resolution, schema
# flattening, per-operation digests) takes seconds; unpickling the result takes ~40 ms. An entry
# is keyed by the document's bytes, the backend's settings and the code that builds operations
# (the source of this package's modules, the models and the Python version), so any change to
# any of them is a miss, never a stale hit. Only documents read as bytes (files, URLs) are
# cached; an in-process app's document is built each time (small, and it has no bytes).

CACHE_ENTRIES = 16  # newest kept; older entries are removed when one is written
_CODE_FILES = ("catalog/openapi.py", "catalog/catalog.py", "catalog/loader.py",
               "catalog/_schema.py", "models.py")
_code_key: str | None = None


def cache_dir() -> Path:
    """Where built catalogs are cached: ``$SWITCHBOARD_CACHE_DIR/catalog``, else the XDG
    cache (``~/.cache/switchboard/catalog``), as the sandbox's snapshot cache."""
    env = os.environ.get("SWITCHBOARD_CACHE_DIR")
    if env:
        return Path(env) / "catalog"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "switchboard" / "catalog"


def _code_fingerprint() -> str:
    global _code_key
    if _code_key is None:
        from gateway import __version__

        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256(f"{__version__}|{sys.version}|{pickle.HIGHEST_PROTOCOL}".encode())
        for rel in _CODE_FILES:
            path = root / rel
            h.update(rel.encode())
            h.update(path.read_bytes() if path.is_file() else b"-")
        _code_key = h.hexdigest()
    return _code_key


def _cache_key(backend: BackendSettings, raw: bytes) -> str:
    h = hashlib.sha256(_code_fingerprint().encode())
    h.update(repr(backend).encode())  # every setting (hashed: headers never reach the disk)
    h.update(hashlib.sha256(raw).digest())
    return h.hexdigest()


Built = tuple[BackendSettings, list[Operation], dict[str, str]]


def cache_read(name: str) -> bytes | None:
    """The cache entry ``name`` (in :func:`cache_dir`), or None: missing, torn, a symlink, or
    not our own file that nobody else could write (a pickle runs code when loaded, and a
    cached SDK doc is shown to agents)."""
    try:
        fd = os.open(cache_dir() / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            return fh.read()
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def cache_write(name: str, data: bytes) -> None:
    """Write the cache entry ``name`` atomically (readers see all or nothing) and keep the
    newest ``CACHE_ENTRIES`` of its kind (same suffix); a read-only or full disk only costs
    the next start the work."""
    folder = cache_dir()
    suffix = Path(name).suffix
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, folder / name)
        entries = sorted(folder.glob(f"*{suffix}"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-CACHE_ENTRIES]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def _cache_read(key: str) -> Built | None:
    data = cache_read(f"{key}.pickle")
    if data is None:
        return None
    try:
        found = pickle.loads(data)
    except Exception:  # a torn or foreign entry is a miss
        return None
    if not (isinstance(found, tuple) and len(found) == 3
            and isinstance(found[0], BackendSettings) and isinstance(found[1], list)):
        return None
    return found


def _cache_write(key: str, built: Built) -> None:
    cache_write(f"{key}.pickle", pickle.dumps(built, protocol=pickle.HIGHEST_PROTOCOL))


def _build(backend: BackendSettings, raw: bytes | dict[str, Any], where: str) -> Built:
    """The backend (base_url resolved), its operations and their digests; from the cache
    when the same document was built by the same code for the same settings before."""
    if isinstance(raw, dict):
        resolved, ops = _finish(backend, raw)
        return resolved, ops, {}
    key = _cache_key(backend, raw)
    hit = _cache_read(key)
    if hit is not None:
        return hit
    resolved, ops = _finish(backend, _parse(raw, backend, where))
    built: Built = (resolved, ops, {op.name: operation_digest(op) for op in ops})
    _cache_write(key, built)
    return built


# -- the gateway's own in-process apps (the embedded demo) ------------------------------------
#
# Importing FastAPI and building the demo apps' documents is ~0.5-1 s of a ~2-3 s start. For an
# entry point inside this package (``gateway.…``, the embedded demo) the document is cached as
# JSON keyed by the gateway's own sources (the app's package, where its routes are defined,
# and the code fingerprint) and the installed FastAPI/Starlette/pydantic (path, size, mtime of
# each package and its dist-info name): a hit skips the import, and the bytes then hit the
# pickle cache above too. Any other app is imported and asked for its document every time (its
# document may depend on code this cannot see).

_APP_LIBRARIES = ("fastapi", "starlette", "pydantic", "pydantic_core")


def _app_source_key(entry: str) -> str | None:
    module_name = entry.partition(":")[0]
    if not module_name.startswith("gateway."):
        return None
    from importlib.util import find_spec

    try:
        spec = find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    h = hashlib.sha256(f"{_code_fingerprint()}|{entry}".encode())
    folder = Path(spec.origin).parent
    try:
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        for lib in _APP_LIBRARIES:
            found = find_spec(lib)
            if found is None or not found.origin:
                h.update(f"{lib}:-".encode())
                continue
            st = os.stat(found.origin)
            site = Path(found.origin).parent.parent
            dists = sorted(n for n in os.listdir(site)
                           if n.lower().startswith(lib.lower() + "-") and n.endswith(".dist-info"))
            h.update(f"{lib}:{found.origin}:{st.st_size}:{st.st_mtime_ns}:{dists}".encode())
    except (OSError, ImportError, ValueError):
        return None
    return h.hexdigest()


def _app_raw(backend: BackendSettings) -> bytes | dict[str, Any]:
    """An in-process app's document: JSON bytes from the cache or freshly built and cached
    (the gateway's own apps), else the document itself."""
    key = _app_source_key(backend.app or "")
    if key is None:
        return _from_app(backend)
    name = f"{key}.appdoc"  # its own kind (suffix) in the newest-16 rule
    data = cache_read(name)
    if data is not None:
        return data
    doc = _from_app(backend)
    try:
        data = json.dumps(doc, allow_nan=False).encode()
    except (TypeError, ValueError):
        return doc
    cache_write(name, data)
    return data


def _raw_sync(backend: BackendSettings) -> tuple[bytes | dict[str, Any], str]:
    """The document's bytes (file, URL, a cached in-process app's document) or, for an
    in-process app, the document itself."""
    if backend.app:
        return _app_raw(backend), backend.app
    source = backend.openapi or ""
    if not _is_url(source):
        path = Path(source[7:] if source.startswith("file://") else source)
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise ConfigError(f"backend {backend.name!r}: cannot read {path}: {exc.strerror}",
                              field=_field(backend)) from exc
    try:
        with httpx.Client(timeout=_FETCH_TIMEOUT_S, follow_redirects=True) as client:
            response = client.get(source, headers=_headers_for(backend, source))
    except httpx.HTTPError as exc:
        raise _unreachable(backend, source, exc) from exc
    return _response_bytes(backend, source, response), source


def _response_bytes(backend: BackendSettings, url: str, response: httpx.Response) -> bytes:
    if response.status_code != 200:
        raise ConfigError(f"backend {backend.name!r}: GET {url} returned HTTP "
                          f"{response.status_code}", field=_field(backend))
    return response.content


async def _raw(backend: BackendSettings,
               client: httpx.AsyncClient) -> tuple[bytes | dict[str, Any], str]:
    source = backend.openapi or ""
    if backend.app or not _is_url(source):
        return await asyncio.to_thread(_raw_sync, backend)
    try:
        response = await client.get(source, headers=_headers_for(backend, source))
    except httpx.HTTPError as exc:
        raise _unreachable(backend, source, exc) from exc
    return _response_bytes(backend, source, response), source


def _catalog(built: list[Built]) -> Catalog:
    digests: dict[str, str] = {}
    for _, _, found in built:
        digests.update(found)
    return Catalog([op for _, ops, _ in built for op in ops], [b for b, _, _ in built],
                   digests=digests)


async def load_catalog(backends: Sequence[BackendSettings]) -> Catalog:
    """Fetch every backend's document concurrently and build the catalog."""
    _check(backends)
    async with httpx.AsyncClient(timeout=_FETCH_TIMEOUT_S, follow_redirects=True) as client:
        raws = await asyncio.gather(*(_raw(b, client) for b in backends))
    built = await asyncio.to_thread(
        lambda: [_build(b, raw, where) for b, (raw, where) in zip(backends, raws, strict=True)])
    return await asyncio.to_thread(_catalog, built)


def load_catalog_sync(backends: Sequence[BackendSettings]) -> Catalog:
    """Blocking variant of :func:`load_catalog` (for the CLI and tests)."""
    _check(backends)
    return _catalog([_build(b, *_raw_sync(b)) for b in backends])
