"""The catalog: every operation the gateway can route, by name, by backend, and by search."""

from __future__ import annotations

import difflib
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from gateway.catalog.search import SearchIndex
from gateway.errors import ConfigError, UnknownOperation
from gateway.models import BackendSettings, Operation
from gateway.values import MAX_NAME_LENGTH, MAX_QUERY_LENGTH, check_name, check_query

__all__ = ["Catalog", "operation_digest"]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def operation_digest(op: Operation) -> str:
    """sha256 over everything that defines an operation (its contract, not object identity)."""
    payload = {
        "name": op.name, "backend": op.backend, "operation_id": op.operation_id,
        "summary": op.summary, "description": op.description, "tags": list(op.tags),
        "method": op.method, "path": op.path, "input_schema": op.input_schema,
        "output_schema": op.output_schema, "body_as_argument": op.body_as_argument,
        "parameters": [[p.name, p.location, p.required, p.wire_name] for p in op.parameters],
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


class Catalog:
    """An immutable set of operations with a content-hash ``revision``.

    Two catalogs with the same operations have the same revision, whatever the load order, so
    the revision can key caches (SDK modules in the sandbox, compiled validators).
    """

    def __init__(
        self,
        operations: Iterable[Operation],
        backends: Mapping[str, BackendSettings] | Iterable[BackendSettings] = (),
        *,
        digests: Mapping[str, str] | None = None,
    ) -> None:
        """``digests``: :func:`operation_digest` of operations by name, when already known
        (the loader's cache holds them; any operation missing from it is digested here)."""
        ops = tuple(sorted(operations, key=lambda o: o.name))
        by_name: dict[str, Operation] = {}
        for op in ops:
            if op.name in by_name:
                raise ConfigError(f"duplicate operation name {op.name!r}",
                                  field=f"backends.{op.backend}")
            by_name[op.name] = op
        if isinstance(backends, Mapping):
            backend_map = dict(backends)
        else:
            backend_map = {b.name: b for b in backends}
        self.operations: tuple[Operation, ...] = ops
        self.backends: Mapping[str, BackendSettings] = MappingProxyType(backend_map)
        self._by_name = by_name
        self._by_backend: dict[str, list[Operation]] = {}
        for op in ops:
            self._by_backend.setdefault(op.backend, []).append(op)
        digest = hashlib.sha256()
        known = digests or {}
        for op in ops:
            digest.update((known.get(op.name) or operation_digest(op)).encode())
        self.revision: str = digest.hexdigest()[:16]
        self._index_lock = threading.Lock()
        self._index_built: SearchIndex | None = None

    @property
    def _index(self) -> SearchIndex:
        """The search index, built on first use (seconds for thousands of operations: not on
        the way to SERVING); :meth:`warm_index` builds it ahead, off the event loop."""
        index = self._index_built
        if index is None:
            with self._index_lock:
                index = self._index_built
                if index is None:
                    index = self._index_built = SearchIndex(self.operations)
        return index

    def warm_index(self) -> None:
        """Build the search index now (the server runs this in a thread once it serves)."""
        _ = self._index

    def __len__(self) -> int:
        return len(self.operations)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return (f"Catalog(revision={self.revision!r}, operations={len(self.operations)}, "
                f"backends={sorted(self.backends)})")

    def get(self, name: str) -> Operation | None:
        return self._by_name.get(name)

    def require(self, name: str, *, field: str = "tool_call.name") -> Operation:
        """The operation, or UnknownOperation naming close matches.

        A name that cannot be an operation name (empty, over ``MAX_NAME_LENGTH`` characters,
        control or unpaired surrogate characters) is ``InvalidRequest`` before any lookup or
        suggestion work: that work grows with the name, and the name comes from the caller.
        """
        check_name(name, field)
        op = self._by_name.get(name)
        if op is not None:
            return op
        suggestions = self.suggest(name)
        message = f"unknown operation {name!r}"
        if suggestions:
            message += f"; did you mean: {', '.join(suggestions)}?"
        raise UnknownOperation(message, field=field,
                               details={"name": name, "suggestions": suggestions})

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Close names: spelling first (difflib), then the search ranking of the words.
        Nothing for a name longer than any operation name may be (difflib is quadratic)."""
        if not name or len(name) > MAX_NAME_LENGTH:
            return []
        names = list(self._by_name)
        out = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
        short = {op.short_name: op.name for op in self.operations}
        tail = name.split(".", 1)[-1]
        for match in difflib.get_close_matches(tail, list(short), n=limit, cutoff=0.6):
            if short[match] not in out:
                out.append(short[match])
        for op, _ in self.search(name.replace(".", " "), limit=limit):
            if op.name not in out:
                out.append(op.name)
        return out[:limit]

    def search(self, query: str, limit: int = 10) -> list[tuple[Operation, float]]:
        """Operations ranked by BM25 relevance to a natural-language query, best first.
        ``InvalidRequest`` (field ``query``) for a query over ``MAX_QUERY_LENGTH`` characters,
        before it is tokenised; nothing for a blank one."""
        if len(query) > MAX_QUERY_LENGTH:
            check_query(query)
        return [(self.operations[i], score) for i, score in self._index.search(query, limit)]

    def for_backend(self, backend: str) -> list[Operation]:
        return list(self._by_backend.get(backend, ()))
