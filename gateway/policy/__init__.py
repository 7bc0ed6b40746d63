"""Policy routing: every action is decided by the Rego policy in ``policies/``.

Two engines behind :class:`PolicyEngine`: ``embedded`` (regorus in policy worker processes, a
deadline per decision, hot reload) and ``opa`` (a real OPA server over its REST API). Both fail
closed: any problem deciding is a deny with ``error_code="policy_error"``, and when no valid
policy is loaded (files gone, the ``decision`` rule missing or undefined) every decision is
such a deny, carrying the reason :data:`POLICY_UNAVAILABLE`, and ``engine.unavailable`` says
why (readiness: NOT_SERVING).
"""

from __future__ import annotations

from .base import (
    ADVERTISE,
    ENTRYPOINT,
    POLICY_UNAVAILABLE,
    Discovery,
    NoPolicy,
    PolicyEngine,
    PolicySettings,
    default_policy_dir,
    parse_advertise,
    parse_decision,
)
from .cli import cli_policy_check, cli_policy_eval, cli_policy_test
from .embedded import EmbeddedPolicyEngine
from .inputs import build_input, redact
from .opa import OpaPolicyEngine

__all__ = [
    "ADVERTISE",
    "ENTRYPOINT",
    "POLICY_UNAVAILABLE",
    "Discovery",
    "EmbeddedPolicyEngine",
    "NoPolicy",
    "OpaPolicyEngine",
    "PolicyEngine",
    "PolicySettings",
    "build_input",
    "cli_policy_check",
    "cli_policy_eval",
    "cli_policy_test",
    "create_policy_engine",
    "default_policy_dir",
    "parse_advertise",
    "parse_decision",
    "redact",
]


def create_policy_engine(settings: PolicySettings) -> PolicyEngine:
    """The engine ``settings.engine`` names; call ``await engine.start()`` in the serving loop."""
    if settings.engine == "embedded":
        return EmbeddedPolicyEngine(settings)
    if settings.engine == "opa":
        return OpaPolicyEngine(settings)
    from gateway.errors import ConfigError

    raise ConfigError(f"unknown policy engine {settings.engine!r}", field="policy.engine")
