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
import importlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import yaml

from gateway.catalog.catalog import Catalog
from gateway.catalog.openapi import operations_from_openapi
from gateway.errors import ConfigError
from gateway.models import BackendSettings, Operation

__all__ = ["fetch_spec", "fetch_spec_sync", "load_catalog", "load_catalog_sync"]

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


def _from_file(backend: BackendSettings, source: str) -> dict[str, Any]:
    path = Path(source[7:] if source.startswith("file://") else source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"backend {backend.name!r}: cannot read {path}: {exc.strerror}",
                          field=_field(backend)) from exc
    return _parse(data, backend, str(path))


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


def _from_response(backend: BackendSettings, url: str, response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise ConfigError(f"backend {backend.name!r}: GET {url} returned HTTP "
                          f"{response.status_code}", field=_field(backend))
    return _parse(response.content, backend, url)


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
    source = backend.openapi if backend.openapi else None
    base = _base_url(backend, spec, source) if backend.openapi else backend.base_url
    resolved = dataclasses.replace(backend, base_url=base)
    return resolved, operations_from_openapi(resolved, spec)


def fetch_spec_sync(backend: BackendSettings) -> dict[str, Any]:
    """The backend's OpenAPI document as a dict (blocking)."""
    if backend.app:
        return _from_app(backend)
    source = backend.openapi or ""
    if not _is_url(source):
        return _from_file(backend, source)
    try:
        with httpx.Client(timeout=_FETCH_TIMEOUT_S, follow_redirects=True) as client:
            response = client.get(source, headers=_headers_for(backend, source))
    except httpx.HTTPError as exc:
        raise _unreachable(backend, source, exc) from exc
    return _from_response(backend, source, response)


async def fetch_spec(backend: BackendSettings, client: httpx.AsyncClient) -> dict[str, Any]:
    """The backend's OpenAPI document as a dict; file and import work runs off the loop."""
    source = backend.openapi or ""
    if backend.app or not _is_url(source):
        return await asyncio.to_thread(fetch_spec_sync, backend)
    try:
        response = await client.get(source, headers=_headers_for(backend, source))
    except httpx.HTTPError as exc:
        raise _unreachable(backend, source, exc) from exc
    return await asyncio.to_thread(_from_response, backend, source, response)


async def load_catalog(backends: Sequence[BackendSettings]) -> Catalog:
    """Fetch every backend's document concurrently and build the catalog."""
    _check(backends)
    async with httpx.AsyncClient(timeout=_FETCH_TIMEOUT_S, follow_redirects=True) as client:
        specs = await asyncio.gather(*(fetch_spec(b, client) for b in backends))
    built = await asyncio.to_thread(
        lambda: [_finish(b, s) for b, s in zip(backends, specs, strict=True)])
    return Catalog([op for _, ops in built for op in ops], [b for b, _ in built])


def load_catalog_sync(backends: Sequence[BackendSettings]) -> Catalog:
    """Blocking variant of :func:`load_catalog` (for the CLI and tests)."""
    _check(backends)
    built = [_finish(b, fetch_spec_sync(b)) for b in backends]
    return Catalog([op for _, ops in built for op in ops], [b for b, _ in built])
