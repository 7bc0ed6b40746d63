"""The on-disk cache of built catalogs (gateway/catalog/loader.py) and of the sandbox SDK
(gateway/pipeline.py): a hit gives exactly what a build gives; any change of the document or
the settings is a miss; an entry another user could have written is never loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.catalog import load_catalog_sync, loader
from gateway.catalog.loader import cache_dir
from gateway.models import BackendSettings


def _spec(summary: str = "Get a pet") -> dict[str, object]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "pets", "version": "1"},
        "paths": {
            "/pets/{pet_id}": {"get": {
                "operationId": "get_pet", "summary": summary,
                "parameters": [{"name": "pet_id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Pet"}}}}}}},
            "/pets": {"post": {
                "operationId": "create_pet",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Pet"}}}},
                "responses": {"201": {"description": "created"}}}},
        },
        "components": {"schemas": {"Pet": {"type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string"},
                                                          "age": {"type": "integer"}}}}},
    }


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SWITCHBOARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "catalog"


def _backend(tmp_path: Path, spec: dict[str, object], **kw: object) -> BackendSettings:
    path = tmp_path / "pets.json"
    path.write_text(json.dumps(spec))
    return BackendSettings(name="pets", openapi=str(path), base_url="http://pets.test", **kw)


def test_a_hit_is_the_build_and_skips_it(cache: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(tmp_path, _spec())
    built = load_catalog_sync([backend])
    assert len(list(cache.glob("*.pickle"))) == 1

    def no_build(*_: object) -> object:
        raise AssertionError("built again although cached")

    monkeypatch.setattr(loader, "operations_from_openapi", no_build)
    hit = load_catalog_sync([backend])
    assert hit.revision == built.revision
    assert hit.operations == built.operations
    assert dict(hit.backends) == dict(built.backends)
    assert [op.name for op, _ in hit.search("pet", 5)] == \
        [op.name for op, _ in built.search("pet", 5)]


def test_a_changed_document_or_setting_is_a_miss(cache: Path, tmp_path: Path) -> None:
    first = load_catalog_sync([_backend(tmp_path, _spec())])
    changed = load_catalog_sync([_backend(tmp_path, _spec("Fetch one pet"))])
    assert changed.revision != first.revision
    assert changed.require("pets.get_pet").summary == "Fetch one pet"
    tagged = load_catalog_sync([_backend(tmp_path, _spec("Fetch one pet"),
                                         tags={"create_pet": ["compliance"]})])
    assert "compliance" in tagged.require("pets.create_pet").tags
    assert len(list(cache.glob("*.pickle"))) == 3


def test_an_entry_others_could_write_is_ignored(cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(tmp_path, _spec())
    load_catalog_sync([backend])
    (entry,) = cache.glob("*.pickle")
    os.chmod(entry, 0o666)
    calls: list[object] = []
    real = loader.operations_from_openapi

    def counting(*args: object) -> object:
        calls.append(args)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "operations_from_openapi", counting)
    load_catalog_sync([backend])
    assert calls  # built, not loaded
    entry.write_bytes(b"not a pickle")
    os.chmod(entry, 0o600)
    load_catalog_sync([backend])  # a torn entry is a miss, not an error
    assert len(calls) == 2


def test_the_sdk_is_cached_by_catalog_revision(cache: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import pipeline as pl

    catalog = load_catalog_sync([_backend(tmp_path, _spec())])
    assert pl._sdk_functions(catalog, render=False) is None  # not cached yet: not rendered
    fresh = pl._sdk_functions(catalog)
    assert fresh is not None
    assert {f.operation for f in fresh} == {"pets.get_pet", "pets.create_pet"}
    entry = cache_dir() / pl._sdk_cache_name(catalog)
    assert entry.is_file()

    def no_render(*_: object) -> str:
        raise AssertionError("rendered again although cached")

    monkeypatch.setattr(pl, "sdk_doc", no_render)
    assert pl._sdk_functions(catalog) == fresh
    assert pl._sdk_functions(catalog, render=False) == fresh
    # Its docs are shown to agents: an entry someone else could have written is a miss.
    os.chmod(entry, 0o666)
    assert pl._sdk_functions(catalog, render=False) is None


def test_the_demo_apps_documents_are_cached(cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's own in-process apps (the embedded demo): the second load neither imports
    the app nor asks it for its document, and gives the same catalog."""
    from gateway.config import embedded_defaults

    backends = embedded_defaults().backends
    built = load_catalog_sync(backends)
    assert len(list(cache.glob("*.appdoc"))) == len(backends)

    def no_import(*_: object) -> object:
        raise AssertionError("app imported although its document is cached")

    monkeypatch.setattr(loader, "_from_app", no_import)
    hit = load_catalog_sync(backends)
    assert hit.revision == built.revision
    assert hit.operations == built.operations


def test_other_apps_documents_are_not_cached(cache: Path) -> None:
    assert loader._app_source_key("tests.catalog_support:app") is None
    assert loader._app_source_key("gateway.demo.ledger:app") is not None
