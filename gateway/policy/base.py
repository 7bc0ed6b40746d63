"""The policy layer's public shapes: settings, the engine protocol and decision parsing.

Kept separate from the engines so the pipeline can type against :class:`PolicyEngine` without
importing regorus or aiohttp.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from gateway.errors import PolicyError
from gateway.models import ApprovalRequirement, Decision, Limits

__all__ = [
    "ADVERTISE",
    "ADVERTISE_RULE",
    "APPROVAL_OBLIGATION",
    "ENTRYPOINT",
    "ENTRYPOINT_PACKAGE",
    "ENTRYPOINT_RULE",
    "FAIL_CLOSED_MASK",
    "NO_REVISION",
    "POLICY_UNAVAILABLE",
    "PROBE_INPUT",
    "STRICT_OBLIGATION",
    "Discovery",
    "NoPolicy",
    "PolicyEngine",
    "PolicySettings",
    "default_policy_dir",
    "parse_advertise",
    "parse_decision",
]

ENTRYPOINT_PACKAGE = "switchboard.routing"
ENTRYPOINT_RULE = "decision"
ENTRYPOINT = f"data.{ENTRYPOINT_PACKAGE}.{ENTRYPOINT_RULE}"
# The discovery rule: what the manifest advertises and how search shows operations, evaluated
# once per (tenant, roles, catalog revision, policy revision) over the whole catalog.
ADVERTISE_RULE = "advertise"
ADVERTISE = f"data.{ENTRYPOINT_PACKAGE}.{ADVERTISE_RULE}"

# When the policy could not decide, nothing tells us what is sensitive: redact all arguments.
FAIL_CLOSED_MASK: tuple[str, ...] = ("action.arguments",)

# The first reason of every deny given because no valid policy is loaded (stable: match on it).
POLICY_UNAVAILABLE = "policy_unavailable: no valid policy is loaded"
# The revision stamped on decisions while the policy files hold no policy at all.
NO_REVISION = "none"
# What the load-time probe evaluates the entrypoint on (an action about nothing). A usable
# policy gives a well-formed decision here (the shipped one: a deny); undefined means the rule
# is missing or what it needs (data) is absent, and readiness reports NOT_SERVING.
PROBE_INPUT: dict[str, Any] = {"principal": {}, "action": {}, "operation": {}, "context": {}}

_ROUTES = ("tool", "code", "deny")
_LIMIT_FIELDS = ("timeout_ms", "memory_mb", "max_host_calls", "max_output_bytes")
# The largest limit the gateway can honour: its wire type (uint32 in switchboard.v1.Limits).
MAX_LIMIT = 2**32 - 1
# Every key a decision may carry; any other is a policy bug (a misspelt `require_approval`
# must not silently drop the approval), so the decision fails closed.
_DECISION_KEYS = frozenset({"route", "reasons", "limits", "obligations", "mask",
                            "require_approval", "validation"})
_APPROVAL_KEYS = frozenset({"reasons", "roles", "expires_s"})


class NoPolicy(PolicyError):
    """The policy files hold no policy (directory gone, no non-empty ``.rego`` file).

    Unlike a file that does not compile (rejected: the previous revision keeps serving), this
    is what the files say, so it is what runs: every decision is a deny until a policy is back.
    """


@dataclass(frozen=True)
class PolicySettings:
    """How the gateway finds and evaluates its routing policy."""

    engine: Literal["embedded", "opa"] = "embedded"
    path: Path | None = None  # policies dir; default: the repo's policies/ (or env override)
    opa_url: str = "http://127.0.0.1:8181"
    # The budget of one decision: OPA's answer, or (embedded) a worker's evaluation, whose
    # worker is killed and replaced when it overruns; waiting for a free worker has its own.
    timeout_ms: int = 500
    reload: bool = True
    reload_interval_s: float = 0.5
    workers: int = 2  # embedded: policy worker processes per gateway process


def default_policy_dir(path: Path | None = None) -> Path:
    """The explicit path, else ``$SWITCHBOARD_POLICY_DIR``, else the repository's ``policies/``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("SWITCHBOARD_POLICY_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "policies"


@dataclass(frozen=True)
class Discovery:
    """What :data:`ADVERTISE` gave for one role set: ``tools`` are advertised as dedicated
    tools (route ``tool`` in search), ``code`` are callable from ``execute_code`` (route
    ``code``); every other operation is hidden. ``error`` is set (and both sets are empty)
    when the rule was missing, undefined or malformed: fail closed, advertise nothing."""

    tools: frozenset[str] = frozenset()
    code: frozenset[str] = frozenset()
    policy_revision: str = ""
    error: str | None = None

    def route(self, name: str) -> str:
        """``tool``, ``code`` or ``deny`` for an operation name."""
        if name in self.tools:
            return "tool"
        return "code" if name in self.code else "deny"


@runtime_checkable
class PolicyEngine(Protocol):
    """What the pipeline calls for every action and every host call from code."""

    @property
    def revision(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self, input: dict[str, Any]) -> Decision: ...

    async def advertise(self, input: dict[str, Any]) -> Discovery:
        """Evaluate :data:`ADVERTISE`; never raises for policy problems (``error`` instead)."""
        ...

    @property
    def unavailable(self) -> str | None:
        """None while a usable policy serves; else why not (readiness reports NOT_SERVING)."""
        ...


def _str_list(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, set | frozenset):  # a Rego set; OPA's REST API sends it as an array
        value = sorted(value, key=str)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"decision.{field} must be a list of strings", field=field)
    return tuple(value)


# A mask path (gateway/maskpath.py): dot-separated segments, each optionally followed by
# ``[index]`` groups. Anything else ("" , ".", "a..b", "x]y", a blank segment) would be read as
# a different path or as none at all, and a mask that silently masks nothing is a leak.
_MASK_SEGMENT = r"[^.\[\]]+(?:\[[^.\[\]]+\])*"
_MASK_PATH = re.compile(rf"{_MASK_SEGMENT}(?:\.{_MASK_SEGMENT})*")


def _mask(value: Any) -> tuple[str, ...]:
    paths = _str_list(value, "mask")
    for path in paths:
        if _MASK_PATH.fullmatch(path) is None or any(
                not part.strip() for part in re.split(r"[.\[\]]+", path.strip("]"))):
            raise PolicyError(f"decision.mask has a malformed path {path[:200]!r} (dot-separated "
                              "keys, `*`, `**` or `[index]`)", field="mask")
    return paths


def _limits(value: Any) -> Limits:
    if value is None:
        return Limits()
    if not isinstance(value, dict):
        raise PolicyError("decision.limits must be an object", field="limits")
    unknown = sorted(str(k) for k in value if k not in _LIMIT_FIELDS)
    if unknown:
        raise PolicyError(f"decision.limits has an unknown field {unknown[0]!r} (known: "
                          f"{', '.join(_LIMIT_FIELDS)})", field=f"limits.{unknown[0]}")
    kwargs: dict[str, int] = {}
    for name in _LIMIT_FIELDS:
        if name not in value:
            continue
        v = value[name]
        # bool is an int in Python; a policy returning true for a limit is a bug, not a limit.
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > MAX_LIMIT:
            raise PolicyError(
                f"decision.limits.{name} must be an integer from 0 to {MAX_LIMIT}",
                field=f"limits.{name}"
            )
        kwargs[name] = v
    return Limits(**kwargs)


APPROVAL_OBLIGATION = "require_approval"


def _approval(value: Any, route: str) -> ApprovalRequirement | None:
    """``decision.require_approval``: absent, null or {} for none; else reasons, roles (at least
    one) and expires_s (a positive integer, default 3600). Ignored on a deny."""
    if value is None or value == {} or route == "deny":
        return None
    if not isinstance(value, dict):
        raise PolicyError("decision.require_approval must be an object", field="require_approval")
    unknown = sorted(str(k) for k in value if k not in _APPROVAL_KEYS)
    if unknown:
        raise PolicyError(f"decision.require_approval has an unknown field {unknown[0]!r}",
                          field=f"require_approval.{unknown[0]}")
    roles = _str_list(value.get("roles"), "require_approval.roles")
    if not roles:
        raise PolicyError("decision.require_approval.roles must name at least one role",
                          field="require_approval.roles")
    expires = value.get("expires_s", 3600)
    if isinstance(expires, float) and expires.is_integer():
        expires = int(expires)
    if not isinstance(expires, int) or isinstance(expires, bool) or expires <= 0:
        raise PolicyError("decision.require_approval.expires_s must be a positive integer",
                          field="require_approval.expires_s")
    return ApprovalRequirement(reasons=_str_list(value.get("reasons"), "require_approval.reasons"),
                               roles=roles, expires_s=expires)


# ``decision.validation``: how the arguments of an allowed action are checked against the
# operation's schema. "strict" also rejects every undeclared field (at any depth); the decision
# then lists STRICT_OBLIGATION among its obligations too, and a decision whose obligations say
# strict while `validation` says otherwise contradicts itself (a policy error, so a deny).
STRICT_OBLIGATION = "schema.strict"
_VALIDATIONS = ("standard", "strict")
# The obligations the gateway knows how to honour. ``audit.full``: every call is audited in
# full anyway; ``idempotency.required``: the tool channel refuses a call without a request_id
# and runs it at most once — only on the tool route (a code run and its host calls have no
# idempotency record). Any other obligation is one the gateway would silently not keep: the
# decision fails closed instead.
IDEMPOTENCY_OBLIGATION = "idempotency.required"
KNOWN_OBLIGATIONS = frozenset({APPROVAL_OBLIGATION, STRICT_OBLIGATION, IDEMPOTENCY_OBLIGATION,
                               "audit.full"})


def _obligations(value: Any, route: str) -> tuple[str, ...]:
    obligations = _str_list(value, "obligations")
    unknown = sorted(set(obligations) - KNOWN_OBLIGATIONS)
    if unknown:
        raise PolicyError(f"decision.obligations lists {unknown[0]!r}, which the gateway does "
                          f"not understand (known: {', '.join(sorted(KNOWN_OBLIGATIONS))})",
                          field="obligations")
    if route == "code" and IDEMPOTENCY_OBLIGATION in obligations:
        raise PolicyError(f"decision.obligations lists {IDEMPOTENCY_OBLIGATION!r} on route "
                          "'code', which keeps no idempotency record", field="obligations")
    return obligations


def _validation(value: Any, obligations: tuple[str, ...], route: str) -> str:
    if value is None:
        value = "strict" if STRICT_OBLIGATION in obligations else "standard"
    if not isinstance(value, str) or value not in _VALIDATIONS:
        raise PolicyError(f"decision.validation must be one of {_VALIDATIONS}, got {value!r}",
                          field="validation")
    if value != "strict" and STRICT_OBLIGATION in obligations:
        raise PolicyError(f"decision.obligations lists {STRICT_OBLIGATION!r} but "
                          f"decision.validation is {value!r}", field="validation")
    return "standard" if route == "deny" else value


def parse_decision(result: Any, *, kind: str = "") -> Decision:
    """Turn the policy's JSON result into a :class:`Decision`; raise PolicyError if malformed.

    Undefined (``None``) is an error too: the caller turns every error into a fail-closed deny.
    """
    if result is None:
        raise PolicyError(f"{ENTRYPOINT} is undefined for this input")
    if not isinstance(result, dict):
        raise PolicyError(f"{ENTRYPOINT} must be an object, got {type(result).__name__}")
    unknown = sorted(str(k) for k in result if k not in _DECISION_KEYS)
    if unknown:
        raise PolicyError(f"decision has an unknown field {unknown[0]!r} (known: "
                          f"{', '.join(sorted(_DECISION_KEYS))})", field=unknown[0])
    route = result.get("route")
    if route not in _ROUTES:
        raise PolicyError(f"decision.route must be one of {_ROUTES}, got {route!r}", field="route")
    if route == "tool" and kind in ("code", "host_call"):
        raise PolicyError(f"decision.route 'tool' is not valid for a {kind} action", field="route")
    reasons = _str_list(result.get("reasons"), "reasons")
    approval = _approval(result.get("require_approval"), route)
    obligations = _obligations(result.get("obligations"), route)
    if approval is not None and APPROVAL_OBLIGATION not in obligations:
        obligations = (*obligations, APPROVAL_OBLIGATION)
    if approval is None and route != "deny" and APPROVAL_OBLIGATION in obligations:
        # The obligation without its requirement (roles, expiry): the action would run
        # unapproved while its decision says it needs approval.
        raise PolicyError(f"decision.obligations lists {APPROVAL_OBLIGATION!r} but "
                          "decision.require_approval names no requirement",
                          field="require_approval")
    validation = _validation(result.get("validation"), obligations, route)
    if validation == "strict" and STRICT_OBLIGATION not in obligations:
        obligations = (*obligations, STRICT_OBLIGATION)
    return Decision(
        route=route,
        reasons=reasons,
        limits=_limits(result.get("limits")),
        obligations=obligations,
        mask=_mask(result.get("mask")),
        approval=approval,
        validation="strict" if validation == "strict" else "standard",
    )


def _name_set(value: Any, field: str) -> frozenset[str]:
    if isinstance(value, set | frozenset | list | tuple) and all(
            isinstance(v, str) for v in value):
        return frozenset(value)
    raise PolicyError(f"{ADVERTISE}.{field} must be a set of operation names", field=field)


def parse_advertise(result: Any) -> tuple[frozenset[str], frozenset[str]]:
    """``(tools, code)`` from the rule's JSON result; PolicyError if undefined or malformed
    (the caller then advertises nothing). An operation in both sets is malformed too: the
    policy would be saying two different things about it."""
    if result is None:
        raise PolicyError(f"{ADVERTISE} is undefined for this input")
    if not isinstance(result, dict):
        raise PolicyError(f"{ADVERTISE} must be an object {{tools, code}}, got "
                          f"{type(result).__name__}")
    missing = [k for k in ("tools", "code") if k not in result]
    if missing:
        raise PolicyError(f"{ADVERTISE} lacks {', '.join(missing)}", field=missing[0])
    tools = _name_set(result["tools"], "tools")
    code = _name_set(result["code"], "code")
    both = tools & code
    if both:
        raise PolicyError(f"{ADVERTISE}: {sorted(both)[0]!r} is in both tools and code",
                          field="tools")
    return tools, code
