"""OpenAPI 3.0/3.1 document → :class:`~gateway.models.Operation` list.

Each operation's arguments become one flat Draft 2020-12 object schema: path, query and header
parameters, plus the properties of a JSON object body when they can be flattened without losing
meaning (else the whole body is one ``body`` argument). Every argument's HTTP location and wire
name is recorded in ``Operation.parameters`` so the tool channel can rebuild the request.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from typing import Any, Literal

from gateway.catalog._schema import SchemaConverter, deref
from gateway.errors import ConfigError
from gateway.models import BackendSettings, Operation, Parameter

__all__ = ["arg_name", "operations_from_openapi", "snake_case"]

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# OpenAPI: header parameters with these names are ignored (the HTTP layer owns them).
_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})
_LOCATIONS: dict[str, Literal["path", "query", "header"]] = {
    "path": "path", "query": "query", "header": "header"}
_COMBINATORS = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else")


def snake_case(text: str) -> str:
    """``repos/get-content`` → ``repos_get_content``; ``getBalance`` → ``get_balance``."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s)
    s = re.sub(r"[^0-9A-Za-z]+", "_", s).strip("_").lower()
    if not s:
        return "op"
    if s[0].isdigit():
        s = "op_" + s
    return s + "_" if keyword.iskeyword(s) else s


def arg_name(wire: str) -> str:
    """A Python-identifier argument name for a wire name (``X-Request-Id`` → ``x_request_id``,
    ``from`` → ``from_``), so SDK functions can take every argument as a keyword."""
    s = re.sub(r"[^0-9A-Za-z_]+", "_", wire).strip("_")
    if not s:
        s = "arg"
    if s[0].isdigit():
        s = "p_" + s
    if keyword.iskeyword(s) or s in ("True", "False", "None"):
        s += "_"
    return s


def _json_media(content: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if not content:
        return None
    for media in content:
        if media.split(";")[0].strip().lower() == "application/json":
            return media, content[media] or {}
    for media in content:
        base = media.split(";")[0].strip().lower()
        if base.endswith("+json") or base.endswith("/json") or base == "*/*":
            return media, content[media] or {}
    return None


def _tags(backend: BackendSettings, op: dict[str, Any], item: dict[str, Any], short: str,
          op_id: str) -> tuple[str, ...]:
    raw: list[Any] = list(op.get("tags") or [])
    raw += list(item.get("x-switchboard-tags") or []) + list(op.get("x-switchboard-tags") or [])
    raw += backend.tags.get(short, []) + (backend.tags.get(op_id, []) if op_id != short else [])
    out: list[str] = []
    for tag in raw:
        t = str(tag).strip().lower()
        if t and t not in out:
            out.append(t)
    return tuple(out)


class _Builder:
    """Builds the operations of one document (one converter, so schemas are shared)."""

    def __init__(self, backend: BackendSettings, spec: dict[str, Any]) -> None:
        self.backend = backend
        self.spec = spec
        self.conv = SchemaConverter(spec)
        self.used: set[str] = set()

    def unique(self, base: str) -> str:
        name, n = base, 2
        while name in self.used:
            name, n = f"{base}_{n}", n + 1
        self.used.add(name)
        return name

    def param_schema(self, param: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
        schema: Any = param.get("schema")
        if schema is None and isinstance(param.get("content"), dict) and param["content"]:
            schema = next(iter(param["content"].values())).get("schema")
        converted, needs = self.conv.convert(schema if schema is not None else {})
        out = dict(converted) if isinstance(converted, dict) else {"allOf": [converted]}
        if param.get("description"):
            out["description"] = str(param["description"])
        if param.get("deprecated") is True:
            out["deprecated"] = True
        return out, needs

    def build(self, path: str, method: str, item: dict[str, Any], op: dict[str, Any]) -> Operation:
        op_id = str(op.get("operationId") or f"{method}_{path}")
        short = self.unique(snake_case(op_id))
        tags = _tags(self.backend, op, item, short, op_id)

        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in [*(item.get("parameters") or []), *(op.get("parameters") or [])]:
            param = deref(self.spec, raw)
            if isinstance(param, dict) and "name" in param and "in" in param:
                merged[(str(param["name"]), str(param["in"]))] = param

        properties: dict[str, Any] = {}
        required: list[str] = []
        params: list[Parameter] = []
        needs: set[str] = set()
        for (wire, where), param in merged.items():
            location = _LOCATIONS.get(where)
            if location is None:
                continue  # cookie parameters are not supported
            if where == "header" and wire.lower() in _IGNORED_HEADERS:
                continue
            name = arg_name(wire.lower().replace("-", "_") if where == "header" else wire)
            if name in properties:
                name = f"{name}_{where}"
            schema, sub = self.param_schema(param)
            needs |= sub
            properties[name] = schema
            is_required = where == "path" or param.get("required") is True
            if is_required:
                required.append(name)
            params.append(Parameter(name, location, is_required, wire if wire != name else ""))

        # A path template variable the spec forgot to declare is still a required argument.
        declared = {p.wire_name or p.name for p in params if p.location == "path"}
        for wire in re.findall(r"{([^{}/]+)}", path):
            if wire not in declared:
                name = arg_name(wire)
                if name in properties:
                    name = f"{name}_path"
                properties[name] = {"type": "string"}
                required.append(name)
                params.append(Parameter(name, "path", True, wire if wire != name else ""))
                declared.add(wire)

        root_extra: dict[str, Any] = {}
        body_as_argument = False
        body = deref(self.spec, op.get("requestBody")) if op.get("requestBody") else None
        if isinstance(body, dict):
            body_required = body.get("required") is True
            content: dict[str, Any] = body.get("content") or {}
            media = _json_media(content)
            chosen: dict[str, Any] = media[1] if media else next(iter(content.values()), {}) or {}
            raw_schema = chosen.get("schema")
            converted, sub = self.conv.convert(raw_schema if raw_schema is not None else {})
            needs |= sub
            flat = self._flatten(converted, body_required, set(properties)) if media else None
            if flat is None:
                name = "body" if "body" not in properties else "request_body"
                properties[name] = converted
                if body_required:
                    required.append(name)
                params.append(Parameter(name, "body", body_required, ""))
                body_as_argument = True
            else:
                flat_props, flat_required, flat_params, root_extra = flat
                properties.update(flat_props)
                required += flat_required
                params += flat_params

        input_schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            input_schema["required"] = required
        input_schema.update(root_extra)
        if needs:
            input_schema["$defs"] = self.conv.defs_for(frozenset(needs))

        description = str(op.get("description") or "").strip()
        summary = str(op.get("summary") or "").strip() or (description.splitlines() or [""])[0]
        return Operation(
            name=f"{self.backend.name}.{short}",
            backend=self.backend.name,
            operation_id=op_id,
            summary=summary,
            description=description,
            tags=tags,
            method=method.upper(),
            path=path,
            input_schema=input_schema,
            output_schema=self._output(op),
            parameters=tuple(params),
            body_as_argument=body_as_argument,
        )

    def _flatten(
        self, schema: Any, body_required: bool, taken: set[str]
    ) -> tuple[dict[str, Any], list[str], list[Parameter], dict[str, Any]] | None:
        """Body properties as top-level arguments, or None when that would change meaning."""
        if not isinstance(schema, dict) or "$ref" in schema:
            return None
        props = schema.get("properties")
        if not isinstance(props, dict) or schema.get("type", "object") != "object":
            return None
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) or extra is True or (not props and extra is not False):
            return None  # a map-like body: keep it whole
        body_required_props = [str(r) for r in schema.get("required") or []]
        if body_required_props and not body_required:
            return None  # "all of these, or no body at all" cannot be said flat
        out: dict[str, Any] = {}
        params: list[Parameter] = []
        renamed = False
        for wire, sub in props.items():
            if isinstance(sub, dict) and sub.get("readOnly") is True:
                continue
            name = arg_name(wire)
            if name in taken or name in out:
                return None
            renamed = renamed or name != wire
            out[name] = sub
            params.append(Parameter(name, "body", wire in body_required_props,
                                    wire if wire != name else ""))
        combinators = {k: schema[k] for k in _COMBINATORS if k in schema}
        if combinators and renamed:
            return None
        required = [arg_name(r) for r in body_required_props if arg_name(r) in out]
        root_extra = dict(combinators)
        if extra is False:
            root_extra["additionalProperties"] = False
        for key in ("minProperties", "maxProperties", "dependentRequired"):
            if key in schema:
                root_extra[key] = schema[key]
        return out, required, params, root_extra

    def _output(self, op: dict[str, Any]) -> dict[str, Any] | None:
        responses = op.get("responses") or {}
        codes = sorted(str(c) for c in responses if str(c).startswith("2"))
        for code in codes:
            response = deref(self.spec, responses.get(code) if code in responses
                             else responses.get(int(code)))
            if not isinstance(response, dict):
                continue
            media = _json_media(response.get("content") or {})
            if media and media[1].get("schema") is not None:
                out = self.conv.standalone(media[1]["schema"])
                return out if isinstance(out, dict) else ({} if out is True else {"not": {}})
        return None


def _iter_operations(spec: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any], Any]]:
    for path, raw_item in (spec.get("paths") or {}).items():
        item = deref(spec, raw_item)
        if not isinstance(item, dict):
            continue
        for method in METHODS:
            if isinstance(item.get(method), dict):
                yield str(path), method, item, item[method]


def operations_from_openapi(backend: BackendSettings, spec: dict[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI 3.0/3.1 document, named ``<backend>.<snake_case id>``."""
    version = str(spec.get("openapi", ""))
    if not version.startswith("3."):
        found = version or ("swagger " + str(spec["swagger"]) if "swagger" in spec else "none")
        raise ConfigError(
            f"backend {backend.name!r}: only OpenAPI 3.0/3.1 documents are supported "
            f"(found {found})",
            field=f"backends.{backend.name}",
        )
    builder = _Builder(backend, spec)
    ops: list[Operation] = []
    # Operations with an explicit operationId claim their names first, so generated names
    # (method + path) never steal them.
    entries = list(_iter_operations(spec))
    order = sorted(range(len(entries)), key=lambda i: "operationId" not in entries[i][3])
    built: dict[int, Operation] = {}
    for i in order:
        path, method, item, op = entries[i]
        try:
            built[i] = builder.build(path, method, item, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"backend {backend.name!r}: cannot read {method.upper()} {path}: {exc}",
                field=f"backends.{backend.name}",
            ) from exc
    ops = [built[i] for i in range(len(entries))]
    return ops
