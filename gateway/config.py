"""Gateway configuration: one YAML file, validated strictly, turned into typed settings.

Unknown keys and wrong types are rejected with a :class:`~gateway.errors.ConfigError` naming
the offending key (``policy.engine: 'rego' is not one of ['embedded', 'opa']``). ``${VAR}``
references in string values are expanded from the environment so secrets can come from a
Kubernetes Secret. With no file, :func:`embedded_defaults` gives the demo setup the README
describes (its "A 5-minute tour").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml
from jsonschema import Draft202012Validator

from gateway.audit import AuditSettings
from gateway.errors import ConfigError
from gateway.models import BackendSettings, Principal
from gateway.policy import PolicySettings
from gateway.sandbox import SandboxSettings
from gateway.tools import IdempotencySettings

_log = structlog.get_logger("switchboard.config")

__all__ = [
    "DEFAULT_LISTEN",
    "IdentitySettings",
    "McpSettings",
    "Settings",
    "TlsSettings",
    "embedded_defaults",
    "load_settings",
    "parse_settings",
]

DEFAULT_LISTEN = "127.0.0.1:50051"

_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_PRINCIPAL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "tenant"],
    "properties": {"id": _STR, "tenant": _STR, "roles": {"type": "array", "items": _STR}},
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "listen": {"type": "string", "pattern": r"^\[?[^\s\]]*\]?:\d{1,5}$"},
        "max_message_bytes": {"type": "integer", "minimum": 1024, "maximum": 67108864},
        "max_concurrent_rpcs": {"type": "integer", "minimum": 1},
        "max_calls_in_flight_per_principal": {"type": "integer", "minimum": 1},
        "server": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"processes": {"type": "integer", "minimum": 1, "maximum": 64}},
        },
        "tls": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cert_file", "key_file"],
            "properties": {"cert_file": _STR, "key_file": _STR, "client_ca_file": _STR},
        },
        "identity": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tokens": {"type": "object", "additionalProperties": _PRINCIPAL},
                "tokens_file": _STR,
                "jwt": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["jwks_url"],
                    "properties": {"jwks_url": _STR, "issuer": _STR, "audience": _STR},
                },
            },
        },
        "policy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "engine": {"enum": ["embedded", "opa"]},
                "path": _STR,
                "opa_url": _STR,
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 60000},
                "reload": {"type": "boolean"},
                "reload_interval_s": {"type": "number", "exclusiveMinimum": 0},
                "workers": {"type": "integer", "minimum": 1, "maximum": 16},
            },
        },
        "backends": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "oneOf": [{"required": ["openapi"]}, {"required": ["app"]}],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[a-z][a-z0-9_]*$"},
                    "openapi": _STR,
                    "app": {"type": "string", "pattern": r"^[\w.]+:[\w.]+$"},
                    "base_url": {"type": "string", "pattern": r"^https?://"},
                    "timeout_ms": {"type": "integer", "minimum": 1},
                    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                    "tags": {
                        "type": "object",
                        "additionalProperties": {"type": "array", "items": _STR},
                    },
                    "headers": {"type": "object", "additionalProperties": _STR},
                    "idempotency_keys": {"type": "boolean"},
                },
            },
        },
        "sandbox": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "workers": {"type": "integer", "minimum": 1, "maximum": 64},
                # Accepted for 0.1 configs and ignored: a process now holds one interpreter.
                "spares": {"type": "integer", "minimum": 0, "maximum": 64},
                "max_sessions_per_principal": {"type": "integer", "minimum": 0},
                "process_data_limit_mb": {"type": "integer", "minimum": 1024},
                "v8_heap_mb": {"type": "integer", "minimum": 32},
                "recycle_timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "kill_grace_s": {"type": "number", "exclusiveMinimum": 0},
                "snapshot_dir": _STR,
                "wasm_max_mem_pages": {"type": "integer", "minimum": 256, "maximum": 65536},
                "max_result_bytes": {"type": "integer", "minimum": 1024, "maximum": 2097152},
                "start_timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "queue_timeout_s": {"type": "number", "exclusiveMinimum": 0},
                "max_queued_per_principal": {"type": "integer", "minimum": 1},
                "max_sessions": {"type": "integer", "minimum": 0},
                "session_idle_s": {"type": "number", "exclusiveMinimum": 0},
                "deno_path": _STR,
                "runtime_dir": _STR,
            },
        },
        "idempotency": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "dsn": _STR,
                "lease_s": {"type": "number", "exclusiveMinimum": 0},
                "wait_s": {"type": "number", "minimum": 0},
                "ttl_s": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "audit": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "file": {"type": ["string", "null"]},
                "otlp_endpoint": {"type": ["string", "null"]},
                "otlp_protocol": {"enum": ["grpc", "http/protobuf"]},
                "otlp_headers": {"type": "object", "additionalProperties": _STR},
                "service_name": _STR,
                "log_format": {"enum": ["auto", "json", "console"]},
                "log_level": {"enum": ["debug", "info", "warning", "error"]},
                "decision_log_level": {"enum": ["debug", "info"]},
                "checkpoint_key_file": {"type": ["string", "null"]},
                "checkpoint_interval_s": {"type": "number", "exclusiveMinimum": 0},
                "checkpoint_export": {"type": ["string", "null"]},
                "digest_key_file": {"type": ["string", "null"]},
            },
        },
        "mcp": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enabled": {"type": "boolean"},
                "listen": {"type": "string", "pattern": r"^\[?[^\s\]]*\]?:\d{1,5}$"},
                # Host/Origin checks (DNS-rebinding protection): host:port or host:*.
                "allowed_hosts": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "allowed_origins": {"type": "array", "items": {"type": "string",
                                                               "minLength": 1}},
                # Public URL of the endpoint, for the protected-resource metadata (RFC 9728).
                "resource_url": {"type": "string", "pattern": r"^https?://\S+$"},
                # Open connections per peer IP (0: no per-address cap, e.g. behind a proxy
                # whose address every client has) and in total; over either: 503.
                "max_connections_per_address": {"type": "integer", "minimum": 0},
                "max_connections": {"type": "integer", "minimum": 1},
            },
        },
    },
}
_VALIDATOR = Draft202012Validator(SCHEMA)
_TOKENS_VALIDATOR = Draft202012Validator(
    SCHEMA["properties"]["identity"]["properties"]["tokens"])
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class IdentitySettings:
    tokens: dict[str, Principal] = field(default_factory=dict)
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None


@dataclass(frozen=True)
class TlsSettings:
    """Serve gRPC over TLS; with ``client_ca_file``, clients must present a certificate
    signed by that CA (mTLS) in addition to their bearer token."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class McpSettings:
    enabled: bool = False
    listen: str = "127.0.0.1:8765"
    # None: no Host/Origin checks (every request needs a bearer token anyway).
    allowed_hosts: tuple[str, ...] | None = None
    allowed_origins: tuple[str, ...] | None = None
    resource_url: str | None = None
    # Connection caps of the listener (gateway.mcp_limits): one client cannot hold every
    # socket within the head/body deadlines. 0 per address: only the total cap.
    max_connections_per_address: int = 64
    max_connections: int = 1024


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 256
    # Calls one principal may have in flight on a gateway process (both doors together).
    max_calls_in_flight_per_principal: int = 64
    # server.processes: gateway processes sharing the port (gateway/supervisor.py)
    processes: int = 1
    tls: TlsSettings | None = None
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    backends: tuple[BackendSettings, ...] = ()
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    idempotency: IdempotencySettings = field(default_factory=IdempotencySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    mcp: McpSettings = field(default_factory=McpSettings)


def _expand_env(value: Any, path: str) -> Any:
    """Expand ``${VAR}`` in strings; a reference to an unset variable is a config error."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{path}: environment variable {name} is not set", field=path)
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _field_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _validate(raw: Any) -> None:
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping", field="")
    errors = sorted(_VALIDATOR.iter_errors(raw), key=lambda e: (list(e.absolute_path), e.message))
    if not errors:
        return
    err = errors[0]
    path = _field_path(err.absolute_path)
    message = err.message
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            path = f"{path}.{extra[0]}" if path else extra[0]
            message = "unknown key"
    raise ConfigError(
        f"{path or 'config'}: {message}",
        field=path,
        details={"errors": [f"{_field_path(e.absolute_path) or 'config'}: {e.message}"
                            for e in errors[:10]]},
    )


def _principals(table: dict[str, Any]) -> dict[str, Principal]:
    return {
        token: Principal(id=p["id"], tenant=p["tenant"], roles=tuple(p.get("roles", ())))
        for token, p in table.items()
    }


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else base / p


def parse_settings(raw: Any, *, base_dir: Path | None = None) -> Settings:
    """Validate a parsed YAML document and build :class:`Settings`; relative paths resolve
    against ``base_dir`` (the config file's directory)."""
    raw = _expand_env(raw if raw is not None else {}, "")
    _validate(raw)
    base = base_dir or Path.cwd()
    ident = raw.get("identity", {})
    tokens = _principals(ident.get("tokens", {}))
    if "tokens_file" in ident:
        tokens_path = _resolve(base, ident["tokens_file"])
        assert tokens_path is not None
        try:
            table = yaml.safe_load(tokens_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"identity.tokens_file: cannot read: {exc}",
                              field="identity.tokens_file") from exc
        errs = list(_TOKENS_VALIDATOR.iter_errors(table if table is not None else {}))
        if errs:
            where = _field_path(errs[0].absolute_path)
            raise ConfigError(f"identity.tokens_file: {where}: {errs[0].message}",
                              field="identity.tokens_file")
        tokens.update(_principals(table or {}))
    jwt = ident.get("jwt", {})
    identity = IdentitySettings(tokens=tokens, jwks_url=jwt.get("jwks_url"),
                                issuer=jwt.get("issuer"), audience=jwt.get("audience"))

    pol = dict(raw.get("policy", {}))
    if "path" in pol:
        pol["path"] = _resolve(base, pol["path"])
    policy = PolicySettings(**pol)

    backends = []
    names: set[str] = set()
    for i, b in enumerate(raw.get("backends", [])):
        if b["name"] in names:
            raise ConfigError(f"backends[{i}].name: duplicate backend {b['name']!r}",
                              field=f"backends[{i}].name")
        names.add(b["name"])
        b = dict(b)
        if "openapi" in b and not re.match(r"^https?://", b["openapi"]):
            b["openapi"] = str(_resolve(base, b["openapi"]))
        backends.append(BackendSettings(**b))

    sb = dict(raw.get("sandbox", {}))
    if sb.pop("spares", None) is not None:
        _log.warning("config.deprecated", key="sandbox.spares",
                     reason="ignored: each sandbox process holds one interpreter")
    for key in ("runtime_dir", "snapshot_dir"):
        if key in sb:
            sb[key] = _resolve(base, sb[key])
    sandbox = SandboxSettings(**sb)

    idem = IdempotencySettings(**raw.get("idempotency", {}))
    aud = dict(raw.get("audit", {}))
    if "file" in aud:
        aud["file"] = _resolve(base, aud["file"])
    if "checkpoint_key_file" in aud:
        aud["checkpoint_key_file"] = _resolve(base, aud["checkpoint_key_file"])
    if "checkpoint_export" in aud:
        aud["checkpoint_export"] = _resolve(base, aud["checkpoint_export"])
    if "digest_key_file" in aud:
        aud["digest_key_file"] = _resolve(base, aud["digest_key_file"])
    audit = AuditSettings(**aud)
    mcp_raw = dict(raw.get("mcp", {}))
    for key in ("allowed_hosts", "allowed_origins"):
        if key in mcp_raw:
            mcp_raw[key] = tuple(mcp_raw[key])
    mcp = McpSettings(**mcp_raw)
    tls = None
    if "tls" in raw:
        t = raw["tls"]
        paths = {k: _resolve(base, t.get(k)) for k in ("cert_file", "key_file", "client_ca_file")}
        for key, p in paths.items():
            if p is not None and not p.is_file():
                raise ConfigError(f"tls.{key}: no such file: {p}", field=f"tls.{key}")
        assert paths["cert_file"] is not None and paths["key_file"] is not None
        tls = TlsSettings(cert_file=paths["cert_file"], key_file=paths["key_file"],
                          client_ca_file=paths["client_ca_file"])
    return Settings(
        listen=raw.get("listen", DEFAULT_LISTEN),
        max_message_bytes=raw.get("max_message_bytes", 4 * 1024 * 1024),
        max_concurrent_rpcs=raw.get("max_concurrent_rpcs", 256),
        max_calls_in_flight_per_principal=raw.get("max_calls_in_flight_per_principal", 64),
        processes=int(raw.get("server", {}).get("processes", 1)),
        tls=tls,
        identity=identity,
        policy=policy,
        backends=tuple(backends),
        sandbox=sandbox,
        idempotency=idem,
        audit=audit,
        mcp=mcp,
    )


def load_settings(path: Path) -> Settings:
    """Read and validate a YAML config file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}", field="") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}", field="") from exc
    return parse_settings(raw, base_dir=path.resolve().parent)


def embedded_defaults(state_dir: Path | None = None) -> Settings:
    """The no-config setup: three demo principals (agent, finance, approver), the demo
    catalog served in-process."""
    state = state_dir or Path("state")
    return Settings(
        identity=IdentitySettings(
            tokens={
                "dev-agent": Principal(id="agent-1", tenant="demo", roles=("agent",)),
                "dev-finance": Principal(id="finance-1", tenant="demo",
                                         roles=("agent", "finance")),
                # Approves what the policy holds for approval (docs/approvals.md).
                "dev-approver": Principal(id="approver-1", tenant="demo", roles=("approver",)),
            }
        ),
        backends=(
            BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
            BackendSettings(name="workspace", app="gateway.demo.workspace:app"),
        ),
        idempotency=IdempotencySettings(dsn=f"sqlite:///{state / 'idempotency.db'}"),
        audit=AuditSettings(file=state / "audit.jsonl"),
    )
